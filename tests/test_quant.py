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
    ug = torch.nn.functional.pad(v.sqrt(), (0, quant.n_groups(n) * 32 - n)).reshape(3, -1, 32)
    bound = s.float().unsqueeze(-1).expand_as(ug).reshape(3, -1)[:, :n] / 510.0
    assert ((w.sqrt() - v.sqrt()).abs() <= bound * 1.0001 + 1e-30).all()
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
def test_rows_roundtrip_bound_and_unbiased(d, mag, seed):
    a = _rand(d, min(mag, 1e15), seed, rows=d)
    a = a @ a.T  # symmetric psd, rows of very different sizes
    q, amax = quant.encode_rows(a, seed)
    back = quant.decode_rows(q, amax)
    assert torch.isfinite(back).all()
    assert ((back - a).abs() <= amax.unsqueeze(-1) / 127.0 * 1.0001 + 1e-45).all()


def test_rows_dither_is_unbiased_where_round_to_nearest_flushes():
    """An entry of 0.3 steps is always flushed by rounding to nearest; the dither keeps its mean."""
    a = torch.zeros(4, 4)
    a[:, 0] = 127.0  # row max -> step of 1.0
    a[:, 1] = 0.3
    means = torch.stack([quant.decode_rows(*quant.encode_rows(a, seed))[:, 1] for seed in range(400)]).mean()
    assert abs(float(means) - 0.3) < 0.05


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
