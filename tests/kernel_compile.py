"""Compile every kernel variant the tests launch for an H100 (sm_90), without a GPU, and check the PTX.

The interpreter runs the kernels in numpy, so it cannot catch what only the GPU compiler does.
This script (run by ``tests/test_kernels.py`` in a process *without* ``TRITON_INTERPRET``) calls
the wrappers on the interpreter suite's operands with the kernels replaced by a recorder, then
compiles each recorded launch (same argument types, 16-byte-aligned pointers, the real launch
options) to PTX + cubin and checks that the fp32 arithmetic is the IEEE one the twins use: no
approximate division or square root, no flush-to-zero, no contracted FMA. The suite's ``hyper``
cases (step scalars from a ``StepScalars`` row) give the ``HP_DEV`` variants.

    python tests/kernel_compile.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback

import torch


def explicit_fmas(llir: str) -> int:
    """fp32 FMAs the kernel's source asks for (``tl.fma``: LLVM's ``fma`` intrinsic, one per lane of a vector call);
    any more in the PTX were contracted from a product and a sum."""
    calls = re.findall(r"call [^@\n]*@llvm\.fma\.(?:v(\d+))?f32\(", llir)
    return sum(int(n) if n else 1 for n in calls)


FORBIDDEN = {
    "approximate division": r"div\.(full|approx)",
    "approximate sqrt": r"sqrt\.approx",
    "flush to zero": r"\.ftz",
    "contracted FMA": r"fma\.rn\.f32",
}
NO_DIVISION = {"_apply_kernel", "_factor_corr_kernel"}
"""Kernels without a tensor division (the rest must show IEEE ``div.rn.f32``)."""
NO_DIVISION |= {"_sumsq_kernel", "_stats_kernel", "_complement_update_kernel", "_finite_gather_kernel"}
RECIPROCAL_SEED = r"rcp\.approx\.ftz\.f32"
"""One of two approximate instructions allowed, in the kernels that encode the signed companding: the reciprocal that
seeds ``common.div_companding``'s Newton step and correction (its quotients are ``div_rn``'s, checked on every fp32
on the GPU by ``verify.division_errors``). Taken out of the PTX before the flush-to-zero check."""
COMPANDING = {"_ema_signed_kernel", "_adamw_kernel"}
RSQRT_SEED = r"rsqrt\.approx\.ftz\.f32"
"""The other one, in the kernels that take square roots of their second moments: the reciprocal square root that seeds
``common.sqrt_fast`` (its roots are ``sqrt_rn``'s, checked on every operand it takes on the GPU by the same check)."""
SQRT_FAST = {"_rotated_adam_kernel", "_adamw_kernel"}
DIVISION_IF = {"_stats_finish_kernel": "HAS_BACK"}
"""Kernels that divide only in the variants where this constexpr is true."""
NEEDS_SQRT = {"_factor_diag_kernel", "_complement_prep_kernel"}
"""Kernels whose square root must show up as IEEE ``sqrt.rn.f32``."""
NEEDS_NAN = {"_complement_update_kernel": ("min", ""), "_rotated_adam_kernel": ("max", "FLOOR")}
"""Kernels whose minimum / maximum must propagate NaN (``min.NaN.f32`` / ``max.NaN.f32``, as ``torch.minimum`` /
``torch.maximum``), in the variants where the named constexpr is true (every variant for "")."""
TYPES = {
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.int32: "*i32",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.int16: "*i16",
    torch.int64: "*i64",
}


class Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kw)`` records the launch."""

    def __init__(self, fn, seen):
        self.fn, self.seen = fn, seen

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.seen.append((self.fn, args, kw))

        return launch


def signature(fn, args, kw):
    names = fn.arg_names
    sig, consts, attrs = {}, {}, {}
    options = {k: v for k, v in kw.items() if k not in names}
    values = list(args) + [kw[n] for n in names[len(args) :]]
    for i, (name, v) in enumerate(zip(names, values)):
        if name in kw and name not in names[: len(args)] and fn.params[i].is_constexpr:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = TYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int) and (name in fn.do_not_specialize or i in fn.do_not_specialize):
            sig[name] = "i32"
        elif isinstance(v, int) and v == 1:
            sig[name], consts[name] = "constexpr", 1  # as Triton's launcher does: an int equal to 1 is compiled in
        elif isinstance(v, int):
            sig[name] = "i32"
            if v % 16 == 0 and v:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32"
    return sig, consts, attrs, options


def variant_key(sig: dict, consts: dict, attrs: dict) -> tuple:
    """What tells two compiled variants of one kernel apart (argument types, constants, divisibility hints)."""
    return tuple(sorted(sig.items())), tuple(sorted(consts.items())), tuple(sorted(attrs))


GROUP_KERNELS = {"_ema_signed_kernel", "_rotated_adam_kernel", "_adamw_kernel"}
"""Kernels that walk scale groups with ``common.group_tile``."""


def width_variants(seen: list) -> list[str]:
    """Launch the rotated-space moment steps at every basis width a group allocates (multiples of
    16, ``Side.width_for``), at several row counts, and return a problem for each kernel that would
    need more than one compiled variant across them: a variant first needed when a refresh grows a
    basis is compiled in the middle of a step (the 320-355 ms stalls of BENCHMARKS.md §0c). Counted
    per ``HP_DEV``: a captured step reads its scalars from a ``StepScalars`` row (one variant more,
    which must not multiply either). ``ema_signed_`` and ``adamw_`` read weight-shaped rows only, whose widths
    are fixed for a run (``common.ALIGNED_KERNELS``: they compile a variant for rows of a multiple of 32)."""
    from scao_dist import quant
    from scao_dist.kernels import triton_ops
    from scao_dist.kernels.scalars import StepScalars

    hyper = StepScalars.of(1e-3, 0.1, 0.5, 0.25)

    start = len(seen)
    gen = torch.Generator().manual_seed(1)
    for width in range(16, 513, 16):
        for lead in ((1, 16), (3, 48), (5, 32)):
            shape = (*lead, width)
            g, m = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
            groups = quant.n_groups(width)
            u8 = torch.zeros(*lead, groups * 32, dtype=torch.uint8)
            sc = torch.ones(*lead, groups, dtype=torch.bfloat16)
            triton_ops.rotated_adam_(u8, sc, g, m, 0.99, 0.5, 0.25, 1e-8)
            triton_ops.rotated_adam_(u8, sc, g, m, 0.99, 0.5, 0.25, 1e-8, hyper=hyper)
            floor = torch.rand(lead[0], 1, 1, generator=gen)  # a stream group's (groups.KronGroup._rot_floor)
            triton_ops.rotated_adam_(u8, sc, g, m, 0.99, 0.5, 0.25, 1e-8, floor=floor)
            triton_ops.rotated_adam_(u8, sc, g, m, 0.99, 0.5, 0.25, 1e-8, hyper=hyper, floor=floor)
    keys: dict[tuple[str, bool], set] = {}
    for fn, a, kw in seen[start:]:
        sig, consts, attrs, _ = signature(fn, a, kw)
        key = (fn.__name__, bool(consts.get("HP_DEV")), bool(consts.get("FLOOR")))
        keys.setdefault(key, set()).add(variant_key(sig, consts, attrs))
    del seen[start:]
    if len(keys) != 4:  # rotated_adam_ with floats and with the row, each with and without a floor
        return [f"expected 4 (kernel, HP_DEV, FLOOR) triples across basis widths, got {sorted(keys)}"]
    return [
        f"{name} (HP_DEV={hp}, FLOOR={fl}): {len(k)} variants across basis widths 16..512"
        for (name, hp, fl), k in sorted(keys.items())
        if len(k) != 1
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res: dict[str, list[str]] = {"compile": []}
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:  # a Triton without this compile API: nothing to check here
        res["skipped"] = [f"Triton compile API unavailable: {e}"]
        with open(args.out, "w") as f:
            json.dump(res, f)
        return 0

    from scao_dist.kernels import adamw, apply, factor, finite, lowrank, moments, triton_ops, verify

    seen: list = []
    kernels = {
        (moments, "_ema_signed_kernel"),
        (moments, "_rotated_adam_kernel"),
        (apply, "_apply_kernel"),
        (factor, "_factor_diag_kernel"),
        (factor, "_factor_corr_kernel"),
        (adamw, "_adamw_kernel"),
        (lowrank, "_sumsq_kernel"),
        (lowrank, "_stats_kernel"),
        (lowrank, "_stats_finish_kernel"),
        (lowrank, "_complement_update_kernel"),
        (lowrank, "_complement_prep_kernel"),
        (finite, "_finite_gather_kernel"),
    }
    for mod, name in kernels:
        setattr(mod, name, Recorder(getattr(mod, name), seen))
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    for cases in verify.small_cases(gen, cpu).values():
        for c in cases:
            getattr(triton_ops, c.kernel)(**c.kwargs)
    verify.finite_gather_errors(triton_ops, gen, cpu)  # (recorded, not run: its result is not looked at here)
    factor_big = verify.case_factor((1,), 300, "state", gen, cpu)  # full-size [32, 128] tiles
    triton_ops.factor_ema_corr_(**factor_big.kwargs)
    # the low-rank kernels with TF32 products too (what torch's matmuls use when allowed)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        for bc in (("float", "float"), ("tensor", "tensor")):
            triton_ops.complement_update(**verify.case_complement_update((2, 40, 768), "exact", gen, cpu, bc=bc).kwargs)
        for ap in (None, (torch.bfloat16, 16)):  # a captured step's: the scalars from a StepScalars row
            c = verify.case_complement_update((2, 40, 768), "exact", gen, cpu, apply=ap, hyper=True)
            triton_ops.complement_update(**c.kwargs)
        triton_ops.residual_sumsq(**verify.case_residual((2, 40, 768, 40), "exact", gen, cpu).kwargs)
        # the step's products on a bf16 basis: the fp32 core split in two bf16 terms (three in "ieee")
        c = verify.case_complement_update((2, 64, 128), "exact", gen, cpu, k=(32, 32), apply=(torch.bfloat16, 8),
                                          hyper=True, bf16="shared")  # fmt: skip
        triton_ops.complement_update(**c.kwargs)
        c = verify.case_residual((2, 40, 768, 32), "exact", gen, cpu, torch.bfloat16, bf16="y")
        triton_ops.residual_sumsq(**c.kwargs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32

    res["widths"] = width_variants(seen)
    done = set()
    target = GPUTarget("cuda", 90, 32)
    for fn, a, kw in seen:
        sig, consts, attrs, options = signature(fn, a, kw)
        key = (fn.__name__, *variant_key(sig, consts, attrs))
        if key in done:
            continue
        done.add(key)
        label = f"{fn.__name__}{consts}"
        ranks = sorted(set(consts) & set(lowrank.RANK_ARGS))
        if ranks:  # see lowrank.RANK_ARGS: a constant rank of 1 lets Triton fold the tail into the dot
            res["compile"].append(f"{label}: rank argument(s) {ranks} compiled as constants")
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=target,
                               options=options)  # fmt: skip
            ptx = k.asm["ptx"]
            for kernels, seed, what in ((COMPANDING, RECIPROCAL_SEED, "reciprocal seed (common.div_companding)"),
                                        (SQRT_FAST, RSQRT_SEED, "rsqrt seed (common.sqrt_fast)")):  # fmt: skip
                if fn.__name__ in kernels:
                    ptx, seeds = re.subn(seed, "", ptx)
                    if not seeds:
                        res["compile"].append(f"{label}: no hardware {what} in the PTX")
        except Exception:
            res["compile"].append(f"{label}: compile failed\n{traceback.format_exc()[-9000:]}")
            continue
        for what, pat in FORBIDDEN.items():
            if what == "contracted FMA" and "'ieee'" in str(consts):
                continue  # a full-fp32 tl.dot accumulates with FMA, as cuBLAS does; the TF32 variants check the tail
            hits = re.findall(pat, ptx)
            if what == "contracted FMA":  # the FMAs the source asks for (tl.fma: common.div_by_groups) are allowed
                hits = hits[explicit_fmas(k.asm["llir"]) :]
            if hits:
                res["compile"].append(f"{label}: {len(hits)} x {what} ({hits[0]}) in the PTX")
        divides = fn.__name__ not in NO_DIVISION and consts.get(DIVISION_IF.get(fn.__name__, ""), True)
        if not re.search(r"div\.rn\.f32", ptx) and divides:
            res["compile"].append(f"{label}: expected IEEE div.rn.f32 in the PTX")
        if not re.search(r"sqrt\.rn\.f32", ptx) and fn.__name__ in NEEDS_SQRT:
            res["compile"].append(f"{label}: expected IEEE sqrt.rn.f32 in the PTX")
        vector = re.search(r"ld\.global(\.\w+)*\.v4", ptx)
        if fn.__name__ == "_finite_gather_kernel" and consts["ALIGNED"] and not vector:
            res["compile"].append(f"{label}: aligned segments but no 16-byte vector load in the PTX")
        if fn.__name__ in GROUP_KERNELS and consts.get("NMUL", 1) >= 4 and not vector:
            res["compile"].append(f"{label}: rows aligned to NMUL elements but no 16-byte vector load in the PTX")
        op, flag = NEEDS_NAN.get(fn.__name__, ("", None))
        if op and consts.get(flag, True) and not re.search(rf"{op}\.NaN\.f32", ptx):
            res["compile"].append(f"{label}: expected NaN-propagating {op}.NaN.f32 in the PTX")
    res["variants"] = [str(len(done))]
    print(f"compiled {len(done)} kernel variants for sm_90")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
