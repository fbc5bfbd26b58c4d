"""Property tests for the int8 codecs: stated error bounds, no NaN, odd and empty sizes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scao_dist import quant

sizes = st.integers(min_value=0, max_value=150)
mags = st.sampled_from([1e-30, 1e-12, 1e-6, 1e-3, 1.0, 1e3, 1e12, 1e30])


def _rand(n, mag, seed, rows=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, generator=g) * mag * torch.exp(torch.randn(rows, n, generator=g) * 2)


@settings(max_examples=60, deadline=None)
@given(n=sizes, mag=mags, seed=st.integers(0, 2**31 - 1))
def test_signed_roundtrip_bound(n, mag, seed):
    x = _rand(n, mag, seed)
    q, s = quant.encode_signed(x)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16
    y = quant.decode_signed(q, s, n)
    assert y.shape == x.shape and torch.isfinite(y).all()
    xg = torch.nn.functional.pad(x, (0, quant.n_groups(n) * 32 - n)).reshape(3, -1, 32)
    bound = s.float().unsqueeze(-1).expand_as(xg).reshape(3, -1)[:, :n] / 127.0
    assert ((y - x).abs() <= bound * 1.0001 + 1e-45).all()
    # the scale is rounded up: every value is representable without clipping
    assert (s.float() >= xg.abs().amax(-1)).all()


@settings(max_examples=60, deadline=None)
@given(n=sizes, mag=mags, seed=st.integers(0, 2**31 - 1))
def test_sqrt_roundtrip_bound(n, mag, seed):
    v = _rand(n, min(mag, 1e15), seed).square()
    q, s = quant.encode_sqrt(v)
    assert q.dtype == torch.uint8
    w = quant.decode_sqrt(q, s, n)
    assert torch.isfinite(w).all() and (w >= 0).all()
    vc = v.clamp_min(quant.V_MIN)  # what is encoded: under V_MIN counts as V_MIN
    ug = torch.nn.functional.pad(vc.sqrt(), (0, quant.n_groups(n) * 32 - n)).reshape(3, -1, 32)
    bound = s.float().unsqueeze(-1).expand_as(ug).reshape(3, -1)[:, :n] / 510.0
    assert ((w.sqrt() - vc.sqrt()).abs() <= bound * 1.0001 + 1e-30).all()
    # the root is what the codes hold: decode_root with k = s/255 squares to decode_sqrt's value (two roundings)
    root = quant.decode_root(q, s.float() * (1.0 / 255.0), n)
    assert torch.allclose(root.square(), quant.decode_sqrt(q, s, n, floor_zero=True), rtol=2**-21, atol=0.0)
    # floor_zero never decodes below the true value's possible range and never to 0 unless the group is 0
    wf = quant.decode_sqrt(q, s, n, floor_zero=True)
    assert (wf >= w).all()


def test_small_group_not_flushed_by_fp16_underflow():
    """bf16 scales keep groups whose max is far below fp16's ~6e-5 normal range."""
    x = torch.full((1, 32), 3e-9)
    q, s = quant.encode_signed(x)
    assert torch.allclose(quant.decode_signed(q, s, 32), x, rtol=1e-2)


def test_extreme_and_special_values_are_finite():
    x = torch.tensor([[0.0, -0.0, 1e-45, -3e38, 3e38, 1e-38, 5.0, -5.0, float("inf")]])
    for enc, dec in ((quant.encode_signed, quant.decode_signed), (quant.encode_sqrt, quant.decode_sqrt)):
        q, s = enc(x.abs() if enc is quant.encode_sqrt else x[:, :-1])
        assert torch.isfinite(dec(q, s, q.shape[-1])).all()
    z = torch.zeros(2, 0)
    for enc, dec in ((quant.encode_signed, quant.decode_signed), (quant.encode_sqrt, quant.decode_sqrt)):
        q, s = enc(z)
        assert dec(q, s, 0).shape == (2, 0)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 40), mag=mags, seed=st.integers(0, 2**31 - 1))
def test_corr_roundtrip_bound_and_exact_diagonal(d, mag, seed):
    g = torch.Generator().manual_seed(seed)
    a = _rand(d, min(mag, 1e12), seed, rows=d)
    a = a * torch.pow(10.0, torch.rand(d, 1, generator=g) * 6 - 3)  # rows of very different sizes
    a[torch.rand(d, generator=g) < 0.2] = 0.0  # zero rows: zero diagonal
    a = a @ a.T  # symmetric psd
    q, diag = quant.encode_corr(a, seed)
    assert q.dtype == torch.int8 and q.shape == a.shape and diag.dtype == torch.float32 and diag.shape == (d,)
    back = quant.decode_corr(q, diag)
    assert torch.isfinite(back).all()
    # the diagonal is kept exactly, and decodes exactly
    assert torch.equal(diag, torch.diagonal(a).clamp_min(0.0))
    assert torch.equal(torch.diagonal(back), diag)
    # off the diagonal: |L - L_hat| <= sqrt(L_ii L_jj) / 127 (fp32 rounding of the decode in the margin)
    bound = (diag.double()[:, None] * diag.double()[None, :]).sqrt() / 127.0
    err = (back.double() - a.double()).abs()
    off = ~torch.eye(d, dtype=torch.bool)
    assert (err[off] <= bound[off] * 1.0001 + 1e-45).all()
    # rows with a zero diagonal encode as zeros
    dead = diag == 0
    assert (q[dead] == 0).all() and (q[:, dead] == 0).all()


def test_corr_dither_is_unbiased_where_round_to_nearest_flushes():
    """A correlation of 0.3 steps is always flushed by rounding to nearest; the dither keeps its mean."""
    x = 0.3 / 127.0
    a = torch.full((4, 4), x)
    a.fill_diagonal_(1.0)  # psd (diagonally dominant); C_ij = x
    off = ~torch.eye(4, dtype=torch.bool)
    assert (torch.round(a[off] * 127.0) == 0).all()
    back = torch.stack([quant.decode_corr(*quant.encode_corr(a, seed)) for seed in range(400)])
    means = back.mean(0)[off]
    assert abs(float(means.mean()) - x) < 0.03 / 127.0  # 4800 draws: sd 0.007 steps
    assert float((means - x).abs().max()) < 0.1 / 127.0  # each entry, 400 draws: sd 0.023 steps


def test_corr_dither_is_deterministic_per_seed_and_batch_entry():
    """Same seed -> same codes (no RNG state); batch entry b uses seed_b, as a lone matrix would."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 20, 6, generator=g)
    a = a @ a.mT
    seeds = torch.tensor([5, -7, 2**40 + 3])
    q1, d1 = quant.encode_corr(a, seeds)
    q2, d2 = quant.encode_corr(a.clone(), seeds.clone())
    assert torch.equal(q1, q2) and torch.equal(d1, d2)
    for b in range(3):
        qb, db = quant.encode_corr(a[b], int(seeds[b]))
        assert torch.equal(qb, q1[b]) and torch.equal(db, d1[b])
    assert not torch.equal(quant.encode_corr(a, seeds + 1)[0], q1)  # the dither does depend on the seed


def test_hash_uniform_is_deterministic_and_uniform():
    idx = torch.arange(100_000)
    u1, u2 = quant.hash_uniform(idx, 7), quant.hash_uniform(idx, 7)
    assert torch.equal(u1, u2)
    assert not torch.equal(u1, quant.hash_uniform(idx, 8))
    assert float(u1.min()) >= 0.0 and float(u1.max()) < 1.0
    assert abs(float(u1.mean()) - 0.5) < 0.01
    hist = torch.histc(u1, bins=10, min=0, max=1)
    assert float(hist.min()) > 9000


@pytest.mark.parametrize("bits", [8, 16])
@settings(max_examples=40, deadline=None)
@given(mag=mags, seed=st.integers(0, 2**31 - 1), n=st.integers(0, 100))
def test_master_weights_bound(bits, mag, seed, n):
    x = _rand(n, min(mag, 1e30), seed)
    w, rho = quant.split_master(x, bits)
    assert w.dtype == torch.bfloat16
    assert rho.dtype == (torch.int8 if bits == 8 else torch.int16)
    y = quant.join_master(w, rho)
    r = quant.correction_range(bits)
    ulp = quant.bf16_ulp(w)
    # the stated bound, plus fp32's own rounding of the reconstruction (matters for int16 bits)
    assert ((y - x).abs() <= ulp / (4 * r) * 1.001 + x.abs() * 2.0**-24 + 1e-44).all()


def test_master_weights_accumulate_small_updates():
    """Updates far below one bf16 ulp still move the weight through the correction bits."""
    x = torch.full((64,), 1.0)
    w, rho = quant.split_master(x)
    for _ in range(100):
        w, rho = quant.split_master(quant.join_master(w, rho) - 1e-4)
    assert math.isclose(float(quant.join_master(w, rho).mean()), 0.99, rel_tol=1e-3)
    # plain bf16 would not move at all: 1e-4 is below half an ulp of 1.0 (2^-8)
    assert float((torch.ones(64).bfloat16() - 1e-4).float().mean()) == 1.0


def test_correction_bits_validated():
    with pytest.raises(ValueError, match="8 or 16"):
        quant.correction_range(4)
