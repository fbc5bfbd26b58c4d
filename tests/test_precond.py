"""Eigenbasis math of one side of a batch of blocks (scao_dist.precond): Nystrom recovery, rank
selection, and a batch that must give each block what it gets alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scao_dist import precond


def _psd(d: int, eig: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``L = U diag(eig) U^T`` with a random orthogonal ``U`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64)).Q
    return (u * eig) @ u.T, u


def test_nystrom_exact_sketch_recovers_the_range() -> None:
    """A sketch of a rank-k factor taken with probes spanning its range gives its eigenpairs."""
    d, k = 256, 12
    eig = torch.cat([torch.logspace(0, -2, k, dtype=torch.float64), torch.zeros(d - k, dtype=torch.float64)])
    lmat, u = _psd(d, eig, 0)
    gen = torch.Generator().manual_seed(1)
    qh = torch.linalg.qr(torch.cat([u[:, :k], torch.randn(d, 8, generator=gen, dtype=torch.float64)], 1)).Q
    vals, vecs, ok, why = precond.nystrom(qh.float()[None], (lmat @ qh).float()[None])
    assert why == [None] and int(ok[0]) == k + 8
    vals, vecs = vals[0], vecs[0]
    assert torch.allclose(vals[:k].double(), eig[:k], rtol=1e-4)
    assert vals[k:].abs().max() < 1e-6
    overlap = (vecs[:, :k].double().T @ u[:, :k]).abs().diagonal()  # distinct eigenvalues: one-to-one
    assert overlap.min() > 0.999


@pytest.mark.parametrize("seed", range(3))
def test_nystrom_survives_a_sketch_noisier_than_fp32(seed: int) -> None:
    """bf16 bases and a sketch with errors far above fp32 rounding (bf16 storage, TF32 products):
    ``Qh^T P`` is then indefinite at the textbook shift, which failed every stream refresh of the
    405M GPT on an H100. The growing shift must still give the leading eigenpairs."""
    d, k, p = 512, 48, 16
    eig = torch.cat([torch.logspace(0, -3, k, dtype=torch.float64), torch.full((d - k,), 1e-9, dtype=torch.float64)])
    lmat, u = _psd(d, eig, seed)
    probes = precond.complement_probes(u[None, :, :k].float(), p, [seed])[0].double()
    qh = torch.cat([u[:, :k], probes], 1).to(torch.bfloat16).double()
    sketch = lmat @ qh
    gen = torch.Generator().manual_seed(100 + seed)
    sketch = sketch + 1e-5 * sketch.abs().max() * torch.randn(sketch.shape, generator=gen, dtype=torch.float64)
    b = qh.T @ sketch
    assert torch.linalg.eigvalsh(0.5 * (b + b.T)).min() < 0  # the case this test is about
    vals, vecs, _, why = precond.nystrom(qh.float()[None], sketch.float()[None])
    assert why == [None]
    vals, vecs = vals[0], vecs[0]
    assert torch.allclose(vals[:8].double(), eig[:8], rtol=1e-3)
    assert (vecs[:, :8].double().T @ u[:, :8]).abs().diagonal().min() > 0.99


def test_nystrom_rejects_what_no_shift_can_fix_and_only_that_block() -> None:
    """A zero and a NaN sketch in one batch with a good one: those two fail with their reasons, the
    good block's result equals its result alone."""
    qh = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64)).Q.float()
    good = qh @ torch.diag(torch.logspace(0, -2, 8)) + 1e-3 * torch.randn(64, 8)
    bad = torch.ones(64, 8)
    bad[3, 2] = float("nan")
    vals, vecs, ok, why = precond.nystrom(qh.expand(3, -1, -1), torch.stack([torch.zeros(64, 8), good, bad]))
    assert why[0] == "nystrom: zero sketch" and why[1] is None and "non-finite" in why[2]
    alone, vecs1, _, _ = precond.nystrom(qh[None], good[None])
    assert int(ok[1]) == 8 and torch.allclose(vals[1], alone[0]) and torch.allclose(vecs[1], vecs1[0], atol=1e-6)


def test_select_rank_keeps_the_spectral_mass() -> None:
    eig = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.25, 0.25])  # total 10
    assert precond.select_rank(eig, 10.0, 0.8, 1, 6) == 2  # 5 + 3 = 80%
    assert precond.select_rank(eig, 10.0, 0.99, 1, 6) == 6
    assert precond.select_rank(eig, 10.0, 0.99, 1, 4) == 4  # capped
    assert precond.select_rank(eig, 10.0, 0.5, 3, 6) == 3  # floored at rank_min
    assert precond.select_rank(eig.tolist(), 10.0, 0.8, 1, 6) == 2  # the refresh passes host floats


@settings(max_examples=200, deadline=None)
@given(
    eig=st.lists(st.floats(-1.0, 1e3, allow_nan=False), min_size=1, max_size=40),
    mass=st.floats(0.05, 1.0),
    rank_min=st.integers(1, 8),
    rank_max=st.integers(1, 64),
)
def test_select_rank_in_python_is_the_cumsum_searchsorted_rule(eig, mass, rank_min, rank_max) -> None:
    """The host-side rule picks what float64 ``cumsum`` + ``searchsorted`` on the clamped eigenvalues
    picked (the previous implementation, in torch), for any spectrum, mass and clamps."""
    eig = sorted(eig, reverse=True)
    total = max(sum(max(x, 0.0) for x in eig) * 1.05, 0.0)
    t = torch.tensor(eig, dtype=torch.float64)
    hi = max(1, min(rank_max, len(eig)))
    if mass >= 1.0 or total <= 0.0:
        k = len(eig)
    else:
        cum = torch.cumsum(t.clamp_min(0.0), 0)
        k = int(torch.searchsorted(cum, torch.tensor([mass * total], dtype=cum.dtype)).item()) + 1
    want = max(min(rank_min, hi), min(k, hi))
    assert precond.select_rank(eig, total, mass, rank_min, rank_max) == want
    assert precond.select_rank(t, total, mass, rank_min, rank_max) == want


@pytest.mark.parametrize("shape", [(96, 96), (200, 40)])
def test_fast_qr_is_householder_up_to_column_signs(shape: tuple[int, int]) -> None:
    """A nearly diagonal, badly scaled factor (what a dense refresh orthogonalises) and a random
    tall matrix: the Cholesky-QR twice must give Householder's Q up to signs, orthonormal."""
    gen = torch.Generator().manual_seed(shape[0])
    d, k = shape
    a = torch.randn(d, k, generator=gen)
    if d == k:
        a = torch.diag(torch.logspace(0, -6, d)) + 1e-3 * a * torch.logspace(0, -6, d)  # columns 1 .. 1e-6
    q, why = precond.fast_qr(a[None])
    q = q[0]
    assert why == [None]
    ref = torch.linalg.qr(a.double()).Q
    signs = torch.sign((q.double() * ref).sum(0))
    assert torch.allclose(q.double(), ref * signs, atol=1e-5)
    assert torch.allclose(q.double().T @ q.double(), torch.eye(k, dtype=torch.float64), atol=1e-6)


def test_fast_qr_falls_back_on_rank_deficiency() -> None:
    a = torch.randn(32, 8, dtype=torch.float64)
    a[:, 3] = a[:, 1]  # Cholesky of the Gram breaks down: Householder takes over
    q, why = precond.fast_qr(a[None])
    assert why == [None]
    assert torch.allclose(q[0].T @ q[0], torch.eye(8, dtype=torch.float64), atol=1e-10)
    nan = a.clone()
    nan[0, 0] = float("nan")
    q, why = precond.fast_qr(torch.stack([nan, a]))
    assert why[0] is not None and why[1] is None
    assert torch.allclose(q[1].T @ q[1], torch.eye(8, dtype=torch.float64), atol=1e-10)


def _stream_batch(seed: int, ks: list[int], width: int, d: int = 160, p: int = 8):
    """Stored-layout inputs of stream sides: block ``j``'s old basis is its first ``ks[j]`` columns,
    zero up to ``width``, then ``p`` probes; the sketch is ``L qh`` of a decaying spectrum."""
    qhs, sks, traces = [], [], []
    for j, k in enumerate(ks):
        eig = torch.logspace(0, -4, d, dtype=torch.float64)
        lmat, u = _psd(d, eig, seed + j)
        probes = precond.complement_probes(u[None, :, :k].float(), p, [seed + 50 + j])[0].double()
        qh = torch.cat([u[:, :k], torch.zeros(d, width - k, dtype=torch.float64), probes], 1)
        qhs.append(qh.float())
        sks.append((lmat @ qh).float())
        traces.append(float(eig.sum()))
    return torch.stack(qhs), torch.stack(sks), torch.tensor(traces)


def test_stream_refresh_of_a_batch_equals_each_block_alone() -> None:
    """Blocks of different ranks refreshed as one batch (their padding columns zero) get the bases
    they get one by one: the batch must not leak between blocks nor depend on the padding."""
    ks, width = [12, 5, 9], 12
    qh, sk, tr = _stream_batch(0, ks, width)
    kw = dict(spectral_mass=0.99, rank_min=2, rank_max=24, oversample=8)
    batch, why = precond.refresh_stream(qh, sk, tr, ks, seeds=[1, 2, 3], **kw)
    assert why == [None] * 3
    for j, k in enumerate(ks):
        cols = list(range(k)) + list(range(width, width + 8))  # the block as it would be stored alone
        one, why1 = precond.refresh_stream(qh[j : j + 1, :, cols], sk[j : j + 1, :, cols], tr[j : j + 1], [k],
                                           seeds=[j + 1], **kw)  # fmt: skip
        assert why1 == [None]
        r = one.ranks[0]
        assert batch.ranks[j] == r
        got = batch.rows([j])
        signs = torch.sign((got.q[0] * one.q[0]).sum(0))  # eigenvectors: up to sign
        torch.testing.assert_close(got.q[0] * signs, one.q[0], atol=2e-4, rtol=0)
        torch.testing.assert_close(got.eig, one.eig, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(got.overlap[..., :k].abs(), one.overlap.abs(), atol=2e-4, rtol=0)
        assert torch.all(got.overlap[..., k:] == 0)  # the padding columns of the old basis
        assert torch.all(batch.q[j, :, r:] == 0) and torch.all(batch.eig[j, r:] == 0)
        assert torch.allclose(got.probes[0].T @ got.q[0], torch.zeros(8, r), atol=1e-5)


def test_dense_refresh_of_a_batch_equals_each_block_alone() -> None:
    d, b = 40, 3
    facs, qs = [], []
    for j in range(b):
        lmat, u = _psd(d, torch.logspace(0, -3, d, dtype=torch.float64), 10 + j)
        noise = torch.randn(d, d, generator=torch.Generator().manual_seed(j), dtype=torch.float64)
        q = torch.linalg.qr(u + 0.05 * noise).Q  # an old basis near the eigenvectors
        facs.append((q.T @ lmat @ q).float())
        qs.append(q.float())
    batch, why = precond.refresh_dense(torch.stack(facs), torch.stack(qs))
    assert why == [None] * b
    for j in range(b):
        one, _ = precond.refresh_dense(facs[j][None], qs[j][None])
        assert torch.equal(batch.perm[j], one.perm[0])
        signs = torch.sign((batch.q[j] * one.q[0]).sum(0))
        torch.testing.assert_close(batch.q[j] * signs, one.q[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.eig[j], one.eig[0], atol=1e-6, rtol=1e-5)


def test_transport_of_a_batch_equals_each_block_alone() -> None:
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(2, 6, 5, generator=gen)
    overlap = torch.randn(2, 7, 6, generator=gen) * 0.3
    fill = torch.tensor([0.5, 2.0])
    basis = precond.Basis(q=torch.zeros(2, 10, 7), eig=torch.zeros(2, 7), ranks=[7, 7], overlap=overlap)
    out = precond.transport_second_moment(v, basis, 1, fill)
    for j in range(2):
        w = overlap[j].square()
        ref = w @ v[j] + (1 - w.sum(1)).clamp_min(0)[:, None] * fill[j]
        torch.testing.assert_close(out[j], ref)
    perm = torch.stack([torch.randperm(5, generator=gen) for _ in range(2)])
    pbasis = precond.Basis(q=torch.zeros(2, 5, 5), eig=torch.zeros(2, 5), ranks=[5, 5], perm=perm)
    out = precond.transport_second_moment(v, pbasis, 2, fill)
    for j in range(2):
        assert torch.equal(out[j], v[j][:, perm[j]])


def test_a_block_whose_gram_eigh_fails_is_dropped_alone(monkeypatch) -> None:
    """LAPACK rejects the batch, then one block on its own: that block fails with the reason, the
    others get what they get alone."""
    ks, width = [6, 6, 6], 6
    qh, sk, _ = _stream_batch(4, ks, width)
    eigh, calls = precond.safe_eigh, []

    def flaky(a, checked=False):
        calls.append(a.ndim)
        if a.ndim == 3 or calls.count(2) == 2:
            raise precond.BasisError("eigh: did not converge")
        return eigh(a, checked=checked)

    monkeypatch.setattr(precond, "safe_eigh", flaky)
    vals, vecs, _, why = precond.nystrom(qh, sk)
    assert why == [None, "eigh: did not converge", None]
    monkeypatch.setattr(precond, "safe_eigh", eigh)
    for j in (0, 2):
        alone, vecs1, _, _ = precond.nystrom(qh[j : j + 1], sk[j : j + 1])
        torch.testing.assert_close(vals[j], alone[0])
        torch.testing.assert_close(vecs[j], vecs1[0])


def test_basis_rows_and_cat_are_inverse() -> None:
    """Splitting a batch into blocks (each trimmed to its own rank) and joining them again gives
    the batch back (checkpoints store blocks; a resume rebuilds their batch)."""
    ks, width = [7, 3, 5], 7
    qh, sk, tr = _stream_batch(5, ks, width)
    batch, _ = precond.refresh_stream(qh, sk, tr, ks, 0.99, 2, 24, 8, [1, 2, 3])
    again = precond.Basis.cat([batch.rows([j]) for j in range(3)])
    assert again.ranks == batch.ranks
    for name in ("q", "eig", "overlap", "probes", "sketch"):
        assert torch.equal(getattr(again, name), getattr(batch, name)), name


@pytest.mark.parametrize("n", [2, 3, 5])
def test_eigh_in_parallel_is_the_batched_eigh(n: int) -> None:
    """The Grams cut into chunks on their own threads (streams on CUDA) give the same bits as one
    batch, in block order, and a chunk that fails raises for the whole call (``_gram_eigh`` then
    goes block by block)."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(7, 20, 20, generator=gen, dtype=torch.float64)
    gram = a @ a.mT
    vals, vecs = precond.eigh_in_parallel(gram, n)
    ref_vals, ref_vecs = precond.safe_eigh(gram, checked=True)
    assert torch.equal(vals, ref_vals) and torch.equal(vecs, ref_vecs)
    bad = gram.clone()
    bad[4] = float("nan")
    with pytest.raises(precond.BasisError):
        precond.eigh_in_parallel(bad, n)


def test_seeded_normal_is_reproducible_per_seed_and_drawn_on_its_device() -> None:
    """The probes' draws: the same seed gives the same numbers (a resumed run refreshes as the
    original did), another seed others, and on the CPU they are the CPU generator's draws."""
    cpu = torch.device("cpu")
    a, b = precond.seeded_normal((50, 3), 7, cpu), precond.seeded_normal((50, 3), 7, cpu)
    assert torch.equal(a, b) and a.device == cpu and a.dtype == torch.float32
    assert not torch.equal(a, precond.seeded_normal((50, 3), 8, cpu))
    assert torch.equal(a, torch.randn((50, 3), generator=torch.Generator().manual_seed(7)))
    probes = precond.complement_probes(torch.zeros(2, 40, 0), 5, [3, 4])
    again = precond.complement_probes(torch.zeros(2, 40, 0), 5, [3, 4])
    assert torch.equal(probes, again)
    torch.testing.assert_close(probes.mT @ probes, torch.eye(5).expand(2, 5, 5), atol=1e-5, rtol=0)
