"""Eigenbasis math of one side (scao_dist.precond): Nystrom recovery and rank selection."""

from __future__ import annotations

import pytest
import torch

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
    vals, vecs = precond.nystrom(qh.float(), (lmat @ qh).float())
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
    probes = precond.complement_probes(u[:, :k].float(), p, seed).double()
    qh = torch.cat([u[:, :k], probes], 1).to(torch.bfloat16).double()
    sketch = lmat @ qh
    gen = torch.Generator().manual_seed(100 + seed)
    sketch = sketch + 1e-5 * sketch.abs().max() * torch.randn(sketch.shape, generator=gen, dtype=torch.float64)
    b = qh.T @ sketch
    assert torch.linalg.eigvalsh(0.5 * (b + b.T)).min() < 0  # the case this test is about
    vals, vecs = precond.nystrom(qh.float(), sketch.float())
    assert torch.allclose(vals[:8].double(), eig[:8], rtol=1e-3)
    assert (vecs[:, :8].double().T @ u[:, :8]).abs().diagonal().min() > 0.99


def test_nystrom_rejects_what_no_shift_can_fix() -> None:
    qh = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64)).Q.float()
    with pytest.raises(precond.BasisError, match="zero sketch"):
        precond.nystrom(qh, torch.zeros(64, 8))
    bad = torch.ones(64, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(precond.BasisError, match="non-finite"):
        precond.nystrom(qh, bad)


def test_select_rank_keeps_the_spectral_mass() -> None:
    eig = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.25, 0.25])  # total 10
    assert precond.select_rank(eig, 10.0, 0.8, 1, 6) == 2  # 5 + 3 = 80%
    assert precond.select_rank(eig, 10.0, 0.99, 1, 6) == 6
    assert precond.select_rank(eig, 10.0, 0.99, 1, 4) == 4  # capped
    assert precond.select_rank(eig, 10.0, 0.5, 3, 6) == 3  # floored at rank_min


@pytest.mark.parametrize("shape", [(96, 96), (200, 40)])
def test_fast_qr_is_householder_up_to_column_signs(shape: tuple[int, int]) -> None:
    """A nearly diagonal, badly scaled factor (what a dense refresh orthogonalises) and a random
    tall matrix: the Cholesky-QR twice must give Householder's Q up to signs, orthonormal."""
    gen = torch.Generator().manual_seed(shape[0])
    d, k = shape
    a = torch.randn(d, k, generator=gen)
    if d == k:
        a = torch.diag(torch.logspace(0, -6, d)) + 1e-3 * a * torch.logspace(0, -6, d)  # columns 1 .. 1e-6
    q = precond.fast_qr(a)
    ref = torch.linalg.qr(a.double()).Q
    signs = torch.sign((q.double() * ref).sum(0))
    assert torch.allclose(q.double(), ref * signs, atol=1e-5)
    assert torch.allclose(q.double().T @ q.double(), torch.eye(k, dtype=torch.float64), atol=1e-6)


def test_fast_qr_falls_back_on_rank_deficiency() -> None:
    a = torch.randn(32, 8, dtype=torch.float64)
    a[:, 3] = a[:, 1]  # Cholesky of the Gram breaks down: Householder takes over
    q = precond.fast_qr(a)
    assert torch.allclose(q.T @ q, torch.eye(8, dtype=torch.float64), atol=1e-10)
    a[0, 0] = float("nan")
    with pytest.raises(precond.BasisError):
        precond.fast_qr(a)
