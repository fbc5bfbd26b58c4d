"""Step scalars on the device (``scao_dist.kernels.scalars``) for a captured step, on CPU.

A :class:`StepScalars` row holds ``lr, c = 1 - lr wd, bc1, bc2, 1/bc1, 1/bc2``, each computed in
float64 and rounded to fp32 once: the values the float path's scalars round to. So every torch twin
given ``hyper=row`` (and decoy floats, which it must ignore) computes bit for bit what it computes
from the floats, for bf16 weights with int8/int16 correction bits and fp32 weights, at steps
``t = 1, 2, 7, 30, 1000`` (``bc1 = 1 - 0.9^t``, ``bc2 = 1 - 0.95^t``). The Triton kernels' side is in
``tests/kernel_checks.py`` (run under the interpreter by ``tests/test_kernels.py``).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from scao_dist import kernels
from scao_dist.kernels import reference, scalars, verify
from scao_dist.kernels.scalars import StepScalars

CPU = torch.device("cpu")
BETA1, BETA2 = 0.9, 0.95
STEPS = [(1e-3, 0.1, 1), (3e-4, 0.0, 2), (2e-2, 0.01, 7), (0.37, 1.3, 30), (1e-2, 0.1, 1000)]
"""(lr, wd, t): t = 1 (bc1 = 0.1), small t, t large enough that bc1 = bc2 = 1 exactly; wd = 0 and lr wd > 0.1."""
WEIGHTS = [(torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0)]
ROWS = [(1, 1), (3, 33), (2, 5, 95), (7, 64), (3, 18), (4099,)]


def bias(t: int) -> tuple[float, float]:
    return 1 - BETA1**t, 1 - BETA2**t


def gen_for(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit for bit (signed zeros and NaN payloads too), same dtype and shape."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}[a.dtype]
        return torch.equal(a.view(bits), b.view(bits))
    return torch.equal(a, b)


def call(fn, kw: dict) -> tuple[dict, object]:
    kw = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return kw, fn(**kw)


def check_twin(case: verify.Case, lr: float, wd: float, t: int) -> None:
    """The twin with ``hyper`` == the twin with the floats, every tensor argument and the result; and the
    twin with the decoys as floats differs (so the hyper call did not read them)."""
    hc = verify.with_hyper(case, lr, wd, *bias(t))
    fn = getattr(reference, case.kernel)
    kw_h, out_h = call(fn, hc.kwargs)
    kw_f, out_f = call(fn, verify.float_kwargs(hc))
    kw_d, out_d = call(fn, {k: v for k, v in hc.kwargs.items() if k != "hyper"})
    tensors = [k for k, v in case.kwargs.items() if isinstance(v, torch.Tensor)]
    for name in tensors:
        assert same(kw_h[name], kw_f[name]), (case.label, name)
    assert same(out_h, out_f), case.label
    assert any(not same(kw_d[n], kw_f[n]) for n in tensors) or not same(out_d, out_f), "decoys not distinguishable"
    changed = [n for n in tensors if not same(kw_f[n], case.kwargs[n])]
    assert changed or out_f is not None, "vacuous: the call changed nothing"


@pytest.mark.parametrize("lr, wd, t", STEPS)
def test_rotated_adam_with_step_scalars_is_the_float_step(lr, wd, t):
    """``u = (m ib1) / (sqrt(v ib2) + eps)`` with the row's ``ib1``, ``ib2`` == ``m (1/bc1)``, ``v (1/bc2)``."""
    gen = gen_for("adam", t)
    for shape in ROWS:
        for mode in ("state", "overwrite"):
            check_twin(verify.case_rotated_adam(shape, mode, gen, CPU, bc=("float", "float")), lr, wd, t)


@pytest.mark.parametrize("wdtype, bits", WEIGHTS)
@pytest.mark.parametrize("lr, wd, t", STEPS)
def test_apply_update_with_step_scalars_is_the_float_step(lr, wd, t, wdtype, bits):
    """``x <- x c - u lr`` with the row's ``c``, ``lr`` == with ``1 - lr wd``, ``lr`` (weights and bits)."""
    gen = gen_for("apply", t, bits)
    for shape in ROWS:
        check_twin(verify.case_apply(shape, "state", gen, CPU, wdtype, bits), lr, wd, t)


@pytest.mark.parametrize("wdtype, bits", WEIGHTS)
@pytest.mark.parametrize("lr, wd, t", STEPS)
def test_adamw_with_step_scalars_is_the_float_step(lr, wd, t, wdtype, bits):
    """The whole AdamW step (both moments' codes and scales, weights, bits) with lr, wd, bc1, bc2 from the row."""
    gen = gen_for("adamw", t, bits)
    for shape in ROWS:
        check_twin(verify.case_adamw(shape, "state", gen, CPU, wdtype, bits), lr, wd, t)


@pytest.mark.parametrize("apply", [None, *WEIGHTS])
@pytest.mark.parametrize("lr, wd, t", STEPS)
def test_complement_update_with_step_scalars_is_the_float_step(lr, wd, t, apply):
    """``U = X_u Y_u^T + mask (M - X_m Y_m^T)/bc1 / (sqrt(max(r c, floor)/bc2) + eps)`` returned, or applied
    to the weights, with bc1, bc2 (and c, lr) from the row."""
    gen = gen_for("complement", t, str(apply))
    for shape, mode, k in (
        ((3, 5, 95), "exact", (16, 33)),
        ((1, 33, 17), "exact", (0, 5)),
        ((2, 70, 90), "dense", (37, 70)),
    ):
        check_twin(verify.case_complement_update(shape, mode, gen, CPU, k=k, apply=apply), lr, wd, t)


def test_dispatch_forwards_step_scalars():
    """``scao_dist.kernels.<fn>(..., hyper=row)`` reaches the backend with the row (decoy floats ignored)."""
    gen = gen_for("dispatch")
    lr, wd, t = 2e-2, 0.01, 7
    with kernels.use_reference():
        cases = [
            verify.case_rotated_adam((3, 33), "state", gen, CPU, bc=("float", "float")),
            verify.case_apply((3, 33), "state", gen, CPU, torch.bfloat16, 16),
            verify.case_adamw((3, 33), "state", gen, CPU, torch.float32, 0),
            verify.case_complement_update((3, 5, 95), "exact", gen, CPU, k=(16, 33), apply=(torch.bfloat16, 8)),
        ]
        for case in cases:
            hc = verify.with_hyper(case, lr, wd, *bias(t))
            kw_h, out_h = call(getattr(kernels, case.kernel), hc.kwargs)
            kw_f, out_f = call(getattr(reference, case.kernel), verify.float_kwargs(hc))
            assert same(out_h, out_f)
            for name, v in case.kwargs.items():
                if isinstance(v, torch.Tensor):
                    assert same(kw_h[name], kw_f[name]), (case.kernel, name)


def test_mask_over_bc1_same_bits_as_float_division():
    """``complement_update``'s scale ``mask / bc1`` (mask 0 or 1): the float path divides by a Python float,
    the hyper path forms it from the row (``reference.hyper_scale``); the same bits for every
    ``bc1 = 1 - b1^t``, t = 1..2000, b1 = 0.9, 0.95, 0.99, 0.999. On CPU torch divides by the float's fp32
    rounding (IEEE), so that is dividing by the row's 0-d fp32 ``bc1``; multiplying by the row's
    ``ib1 = fp32(1/bc1)`` (what CUDA torch does with a float) differs from it by an ulp for about 1 in 8."""
    assert not reference.scalar_div_by_reciprocal(CPU)
    mask = torch.tensor([True, False, True])
    row, col, g_row = torch.rand(3, 4), torch.rand(3, 5), torch.rand(3, 4)
    checked = by_ib1_differs = 0
    for b1 in (0.9, 0.95, 0.99, 0.999):
        for t in range(1, 2001):
            bc1 = 1 - b1**t
            hyper = StepScalars.of(1e-3, 0.1, bc1, 0.5)
            by_float = mask[:, None, None] / bc1
            assert by_float.dtype == torch.float32
            assert same(reference.hyper_scale(mask, hyper), by_float), (b1, t)
            assert same(mask[:, None, None] / hyper.bc1, by_float), (b1, t)
            by_ib1_differs += not same(mask[:, None, None] * hyper.ib1, by_float)
            checked += 1
    assert checked == 8000 and by_ib1_differs > 500  # the two rules do differ on this set
    bc1 = 1 - 0.9**5  # one of those
    _, _, s_float = reference.complement_vectors(row, col, g_row, mask, bc1)
    _, _, s_row = reference.complement_vectors(row, col, g_row, mask, 0.3, hyper=StepScalars.of(0.0, 0.0, bc1, 1.0))
    assert same(s_float, s_row) and not same(s_float, mask[:, None, None] * StepScalars.of(0, 0, bc1, 1).ib1)


@pytest.mark.parametrize(
    "row",
    [
        torch.zeros(6),
        torch.zeros(8),
        torch.zeros(2, 7),
        torch.zeros(7, 1),
        torch.zeros(7, dtype=torch.float64),
        torch.zeros(7, dtype=torch.bfloat16),
        torch.zeros(7, dtype=torch.float16),
        torch.zeros(7, dtype=torch.int32),
        torch.zeros(14)[::2],  # (7,) fp32, not contiguous
    ],
)
def test_step_scalars_reject_other_rows(row):
    with pytest.raises(ValueError):
        StepScalars(row)


def rounded(lr: float, wd: float, bc1: float, bc2: float) -> torch.Tensor:
    """:func:`scalars.host_values` (float64) rounded to fp32 one by one with numpy."""
    vals = scalars.host_values(lr, wd, bc1, bc2)
    assert vals == [lr, 1.0 - lr * wd, bc1, bc2, 1.0 / bc1, 1.0 / bc2, 1.0]  # float64, as the float path; gate open
    return torch.from_numpy(np.array([np.float32(v) for v in vals], dtype=np.float32))


def test_of_set_and_fill_table_write_the_rounded_host_values():
    """``StepScalars.of``, ``.set`` (on a view into a table) and ``fill_table`` (of ``host_values`` rows)
    all store ``host_values`` rounded to fp32 once, at the offsets the kernels load (``FIELDS``), and the
    0-d views read them."""
    assert scalars.FIELDS == ("lr", "c", "bc1", "bc2", "ib1", "ib2", "gate")
    steps = [(lr, wd, *bias(t)) for lr, wd, t in STEPS] + [(0.1234567, 0.987654, 0.3333333, 0.0123)]
    table = torch.full((len(steps) + 1, len(scalars.FIELDS)), -1.0)
    scalars.fill_table(table[:-1], [scalars.host_values(*vals) for vals in steps])
    views = [StepScalars(table[i]) for i in range(len(steps))]
    for i, vals in enumerate(steps):
        want = rounded(*vals)
        assert same(table[i], want)
        assert same(StepScalars.of(*vals).row, want)
        h = views[i]
        for k, name in enumerate(scalars.FIELDS):
            assert same(getattr(h, name), want[k]) and getattr(h, name).dim() == 0
        assert h.device == CPU
    assert bool((table[-1] == -1.0).all())  # untouched
    # set overwrites a row in place (through its view), leaving the others
    before = table.clone()
    views[1].set(*steps[-1])
    assert same(table[1], rounded(*steps[-1])) and same(views[1].lr, rounded(*steps[-1])[scalars.LR])
    assert same(table[0], before[0]) and same(table[2:], before[2:])
