"""bf16 gradients of frame-less groups stay bf16 through the step (``KronGroup.grad_dtype``).

Every product that reads such a gradient has bf16 bases as its other operand, so it is exact in
fp32 whatever the operands' storage: the updates must equal those of the fp32-gradient path bit
for bit (on CPU both run the same fp32 products). Only the sketch update rounds ``Qh^T G`` to bf16
before its second product; the sketch is stored in bf16 (a relative error of about 2^-9 each
step either way), so the two paths' sketches agree within that, in norm.

The first moment of such a group is handed to the step's products in bf16 too (``KronGroup.m_dtype``):
that one rounds (2^-9 relative, under the int8 code's own error), so it is checked against fp32 ``M``
within a tolerance; so are the complement's coefficient factors in bf16 (``u_dtype``, ``p_dtype``)."""

from __future__ import annotations

import pytest
import torch

from scao_dist import SCAO
from scao_dist.groups import KronGroup


def _run(
    bf16_path: bool,
    steps: int,
    m_dtype: torch.dtype = torch.bfloat16,
    u_dtype: torch.dtype = torch.bfloat16,
    p_dtype: torch.dtype = torch.bfloat16,
    shape: tuple[int, int] = (96, 80),
    **kw,
) -> tuple[torch.Tensor, KronGroup]:
    torch.manual_seed(0)
    m, n = shape
    w = torch.nn.Parameter(torch.randn(m, n).bfloat16())
    opt = SCAO([w], lr=1e-2, refresh_lag=0, full_factor_dim=32, rank_max=16, oversample=4, **kw)
    grp = next(g for g in opt.groups if isinstance(g, KronGroup))
    assert grp.grad_dtype == torch.bfloat16  # stream sides on both ends, bf16 weights and bases
    assert grp.m_dtype == torch.bfloat16
    grp.m_dtype = m_dtype
    assert grp.u_dtype == torch.bfloat16
    grp.u_dtype = u_dtype
    assert grp.p_dtype == torch.bfloat16
    grp.p_dtype = p_dtype
    if not bf16_path:
        grp.grad_dtype = torch.float32
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        w.grad = (torch.randn(m, 8, generator=gen) @ torch.randn(8, n, generator=gen)).bfloat16()
        opt.step()
    return w.detach().clone(), grp


@pytest.mark.parametrize("shape", [(96, 80), (80, 96)])  # the core's second product on Q_R / on Q_L
def test_bf16_gradient_path_updates_equal_the_fp32_path(shape: tuple[int, int]) -> None:
    w16, g16 = _run(True, 6, precond_freq=100, shape=shape)  # no refresh reads the sketches yet
    w32, g32 = _run(False, 6, precond_freq=100, shape=shape)
    assert torch.equal(w16, w32)
    assert not torch.equal(w16, _run(True, 0, precond_freq=100, shape=shape)[0])  # the steps moved the weights
    for side in ("L", "R"):
        a, b = g16.t[f"{side}.sketch"].float(), g32.t[f"{side}.sketch"].float()
        assert 0 < (a - b).norm() < 2**-8 * b.norm()  # measured 1.2e-3 = 2^-9.7


def test_bf16_gradient_path_trains_through_refreshes() -> None:
    """With refreshes on the two paths' bases come from slightly different sketches: the weights stay close."""
    w16, _ = _run(True, 12, precond_freq=3)
    w32, _ = _run(False, 12, precond_freq=3)
    start = _run(True, 0, precond_freq=3)[0]
    moved = (w32.float() - start.float()).norm()
    assert moved > 0
    assert (w16.float() - w32.float()).norm() < 0.05 * moved


def test_bf16_first_moment_stays_close_to_fp32() -> None:
    """bf16 ``M`` in the rotation and the complement vs fp32 ``M``: the weights move by the same steps up to
    the rounding of ``M``; measured 1.2% of the movement in norm, the weights differing by one bf16 ulp
    where a rounding flipped."""
    for freq in (100, 3):
        w16, _ = _run(True, 12, precond_freq=freq)
        w32, _ = _run(True, 12, m_dtype=torch.float32, precond_freq=freq)
        moved = (w32.float() - _run(True, 0, precond_freq=freq)[0].float()).norm()
        assert 0 < (w16.float() - w32.float()).norm() < 2**-5 * moved


def test_bf16_update_factor_stays_close_to_fp32() -> None:
    """The update's coefficient factor in bf16 against the bf16 basis (``KronGroup.u_dtype``) vs fp32: the
    weights move by the same steps up to that rounding (2^-9 of U's low-rank part)."""
    for freq in (100, 3):
        w16, _ = _run(True, 12, precond_freq=freq)
        w32, _ = _run(True, 12, u_dtype=torch.float32, precond_freq=freq)
        moved = (w32.float() - _run(True, 0, precond_freq=freq)[0].float()).norm()
        assert 0 < (w16.float() - w32.float()).norm() < 2**-5 * moved


def test_bf16_projection_factors_stay_close_to_fp32() -> None:
    """The coefficient factors of the projections of ``G`` and ``M`` in bf16 against the bf16 basis
    (``KronGroup.p_dtype``) vs fp32: the weights move by the same steps up to that rounding (about 2^-9 of
    each projection, under the bf16 gradient's and the int8 moment's own rounding)."""
    for freq in (100, 3):
        w16, _ = _run(True, 12, precond_freq=freq)
        w32, _ = _run(True, 12, p_dtype=torch.float32, precond_freq=freq)
        moved = (w32.float() - _run(True, 0, precond_freq=freq)[0].float()).norm()
        diff = (w16.float() - w32.float()).norm()
        assert 0 < diff < 2**-5 * moved


def test_bf16_left_products_stay_close_to_tf32_ones(monkeypatch) -> None:
    """``Q_L C`` as one bf16 product of the stored basis and the cores rounded to bf16
    (``KronGroup.bf16_left_products``) against the fp32 product rounded after: the weights move by the
    same steps up to that rounding."""
    for freq in (100, 3):
        w_bf, _ = _run(True, 12, precond_freq=freq)
        monkeypatch.setattr(KronGroup, "bf16_left_products", False)
        w_f, _ = _run(True, 12, precond_freq=freq)
        monkeypatch.setattr(KronGroup, "bf16_left_products", True)
        moved = (w_f.float() - _run(True, 0, precond_freq=freq)[0].float()).norm()
        diff = (w_bf.float() - w_f.float()).norm()
        assert 0 < diff < 2**-5 * moved, (float(diff), float(moved))


def test_frames_keep_fp32_gradients() -> None:
    """A dense side rotates G by an fp32 frame first: that group gathers fp32 gradients."""
    w = torch.nn.Parameter(torch.randn(24, 80).bfloat16())
    opt = SCAO([w], lr=1e-2, full_factor_dim=32, rank_max=16, oversample=4)
    grp = next(g for g in opt.groups if isinstance(g, KronGroup))
    assert [s.mode for s in grp.sides] == ["dense", "stream"]
    assert grp.grad_dtype == torch.float32 and grp.m_dtype == torch.float32


def test_matmul_f32_falls_back_without_bmm_out_dtype(monkeypatch) -> None:
    """On CUDA the bf16 products ask ``torch.bmm`` for an fp32 result; a torch without that keyword
    (before 2.8) raises TypeError, and the products then run on fp32 copies, with the same values."""
    from scao_dist import groups

    class OnCuda(torch.Tensor):  # a CPU tensor that takes the CUDA branch
        @property
        def is_cuda(self) -> bool:
            return True

    def old_bmm(*args, **kw):
        if "out_dtype" in kw:
            raise TypeError("bmm() got an unexpected keyword argument 'out_dtype'")
        return torch.ops.aten.bmm(*args)

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 7, generator=gen).bfloat16()
    b = torch.randn(2, 7, 3, generator=gen).bfloat16()
    monkeypatch.setattr(groups, "_BMM_OUT_DTYPE", None)
    monkeypatch.setattr(torch, "bmm", old_bmm)
    out = groups.matmul_f32(a.as_subclass(OnCuda), b)
    assert groups._BMM_OUT_DTYPE is False
    assert out.dtype == torch.float32
    assert torch.equal(out.as_subclass(torch.Tensor), a.float() @ b.float())
