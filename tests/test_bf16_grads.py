"""bf16 gradients stay bf16 through the step (``KronGroup.grad_dtype``).

Every product that reads such a gradient has bf16 bases (stream sides) or a dense side's stored bf16 frame as
its other operand, so it is exact in fp32 whatever the operands' storage: the updates must equal those of the
fp32-gradient path bit for bit (on CPU both run the same fp32 products). Only the sketch update of a frame-less
group rounds ``Qh^T G`` to bf16 before its second product; the sketch is stored in bf16 (a relative error of
about 2^-9 each step either way), so the two paths' sketches agree within that, in norm.

The first moment of such a group is handed to the step's products in bf16 too (``KronGroup.m_dtype``):
that one rounds (2^-9 relative, under the int8 code's own error), so it is checked against fp32 ``M``
within a tolerance; so are the complement's coefficient factors in bf16 (``u_dtype``, ``p_dtype``)."""

from __future__ import annotations

import pytest
import torch

from scao_dist import SCAO
from scao_dist.groups import KronGroup


def _setup(shape: tuple[int, int], **kw) -> tuple[torch.nn.Parameter, SCAO, KronGroup]:
    """A bf16 weight of ``shape`` and SCAO on it (sides over 32 stream, rank 16 + 4 probes); its group."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(*shape).bfloat16())
    opt = SCAO([w], lr=1e-2, refresh_lag=0, full_factor_dim=32, rank_max=16, oversample=4, **kw)
    return w, opt, next(g for g in opt.groups if isinstance(g, KronGroup))


def _train(w: torch.nn.Parameter, opt: SCAO, steps: int) -> torch.Tensor:
    """``steps`` steps on rank-8 bf16 gradients (the same ones every call); the weights after them."""
    gen = torch.Generator().manual_seed(1)
    m, n = w.shape
    for _ in range(steps):
        w.grad = (torch.randn(m, 8, generator=gen) @ torch.randn(8, n, generator=gen)).bfloat16()
        opt.step()
    return w.detach().clone()


def _run(
    bf16_path: bool,
    steps: int,
    m_dtype: torch.dtype = torch.bfloat16,
    u_dtype: torch.dtype = torch.bfloat16,
    p_dtype: torch.dtype = torch.bfloat16,
    shape: tuple[int, int] = (96, 80),
    **kw,
) -> tuple[torch.Tensor, KronGroup]:
    w, opt, grp = _setup(shape, **kw)
    assert grp.grad_dtype == torch.bfloat16  # stream sides on both ends, bf16 weights and bases
    assert grp.m_dtype == torch.bfloat16
    grp.m_dtype = m_dtype
    assert grp.u_dtype == torch.bfloat16
    grp.u_dtype = u_dtype
    assert grp.p_dtype == torch.bfloat16
    grp.p_dtype = p_dtype
    if not bf16_path:
        grp.grad_dtype = torch.float32
    return _train(w, opt, steps), grp


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


def _run_framed(bf16_path: bool, shape: tuple[int, int], steps: int) -> tuple[torch.Tensor, KronGroup]:
    """A bf16 weight whose group has a dense side (``full_factor_dim`` 32), refreshed every third step."""
    w, opt, grp = _setup(shape, precond_freq=3)
    assert grp.grad_dtype == torch.bfloat16 and grp.m_dtype == torch.float32
    if not bf16_path:
        grp.grad_dtype = torch.float32
    return _train(w, opt, steps), grp


@pytest.mark.parametrize("shape", [(24, 80), (80, 24), (24, 20)])
def test_frames_take_bf16_gradients_bit_for_bit(shape: tuple[int, int]) -> None:
    """A dense side's frame is stored in bf16, so ``F_L^T G`` (or ``G F_R``) is exact with the bf16 gradient as
    with its fp32 copy (``KronGroup.to_frame``): the group gathers bf16 gradients, and weights and every state
    equal those of the fp32-gradient path bit for bit on CPU, refreshes included (the first moment stays fp32:
    ``G_F`` is an fp32 product there). Shapes: dense-stream, stream-dense, dense on both sides."""
    w16, g16 = _run_framed(True, shape, 10)
    w32, g32 = _run_framed(False, shape, 10)
    assert [s.mode for s in g16.sides] == {(24, 80): ["dense", "stream"], (80, 24): ["stream", "dense"],
                                           (24, 20): ["dense", "dense"]}[shape]  # fmt: skip
    assert not torch.equal(w16, _run_framed(True, shape, 0)[0])  # the steps moved the weights
    assert torch.equal(w16, w32)
    assert g16.t.keys() == g32.t.keys()
    for k in g16.t:
        assert torch.equal(g16.t[k], g32.t[k]), k


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
