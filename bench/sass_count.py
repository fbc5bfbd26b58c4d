"""Instructions a group kernel executes per thread, from its sm_90 SASS compiled here (no GPU needed).

Compiles the step's variants of the first moment (``ema_signed_``: bf16 ``x``, bf16 out, step scalars from a
row) and of ``adamw_`` (bf16 weights + int8 bits, bf16 gradient, row), the first moment on rows off the 16-value
grid and ``factor_ema_corr_``'s tiles for an H100/H200 with this Triton, as
``tests/kernel_compile.py`` does, disassembles them with the ``nvdisasm`` Triton ships, and counts the main
body's instructions up to its last ``EXIT``, leaving out the blocks a branch skips: the IEEE division's slow
path (taken only for operands near the ends of the fp32 range) and any other forward branch's body (an
``@P BRA`` over a block up to the ``BSYNC`` it jumps to). For these straight-line kernels that is the
instruction count of a thread in the common case, and per value (:func:`values_per_thread`), the
figure an issue-bound kernel's time follows. ::

    python -m bench.sass_count            # each kernel, the opcodes it uses most
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:  # tests/kernel_compile.py: the launch recorder and its signatures
    sys.path.insert(0, str(ROOT / "tests"))


def fast_path(lines: list[str]) -> list[str]:
    """The instructions up to the last ``EXIT``, without those between a predicated ``BRA`` and the next ``BSYNC``."""
    end = max(i for i, line in enumerate(lines) if line.startswith("EXIT"))
    out, skip = [], False
    for line in lines[: end + 1]:
        if skip:
            if line.startswith("BSYNC"):
                skip = False
                out.append(line)
            continue
        out.append(line)
        if line.startswith("@") and " BRA" in line:
            skip = True
    return out


def sass(kernel, args, kw) -> list[str]:
    """The SASS instructions of one recorded launch compiled for sm_90."""
    import kernel_compile as kc
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, consts, attrs, options = kc.signature(kernel, args, kw)
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
        options=options,
    )  # fmt: skip
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([str(nvdisasm), "-c", path], capture_output=True, text=True, check=True).stdout
    return [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", line).strip() for line in text.splitlines()
            if re.match(r"\s*/\*[0-9a-f]{4}\*/", line)]  # fmt: skip


def recorded_launches() -> list[tuple]:
    """(label, kernel, args, kw) of the launches counted: the first moment and ``adamw_`` as the 405M step makes them,
    the first moment on rows off the 16-value grid (fp32, 767 wide: scalar loads) and ``factor_ema_corr_``'s tiled
    pass (small operands: the variant is what matters)."""
    import kernel_compile as kc

    from scao_dist.kernels import adamw, factor, moments, triton_ops, verify
    from scao_dist.kernels.scalars import StepScalars

    seen: list = []
    names = ((adamw, "_adamw_kernel"), (moments, "_ema_signed_kernel"), (factor, "_factor_corr_kernel"),
             (factor, "_factor_diag_kernel"))  # fmt: skip
    saved = {(m, n): getattr(m, n) for m, n in names}
    for (mod, name), fn in saved.items():
        setattr(mod, name, kc.Recorder(fn, seen))
    labels = []
    try:
        hyper = StepScalars.of(1e-3, 0.1, 0.5, 0.25)
        rows, n = 64, 768
        groups = (n + 31) // 32
        g = torch.randn(rows, n).bfloat16()
        mc, ms = torch.zeros(rows, groups * 32, dtype=torch.int8), torch.ones(rows, groups, dtype=torch.bfloat16)
        vc, vs = torch.zeros(rows, groups * 32, dtype=torch.uint8), torch.ones(rows, groups, dtype=torch.bfloat16)
        w, rho = torch.randn(rows, n).bfloat16(), torch.zeros(rows, n, dtype=torch.int8)
        triton_ops.ema_signed_(mc, ms, g, 0.9, torch.bfloat16, hyper=hyper)
        labels.append("the step's")
        triton_ops.adamw_(w, rho, g, mc, ms, vc, vs, lr=1e-3, beta1=0.9, beta2=0.99, bc1=0.5, bc2=0.5, eps=1e-8,
                          wd=0.1, hyper=hyper)  # fmt: skip
        labels.append("the step's")
        odd = torch.randn(rows, 767)
        triton_ops.ema_signed_(mc[:, :768].contiguous(), ms.clone(), odd, 0.9)
        labels.append("fp32, rows of 767")
        case = verify.case_factor((2,), 768, "state", torch.Generator().manual_seed(0), torch.device("cpu"))
        triton_ops.factor_ema_corr_(**case.kwargs)
        labels += ["diagonal", "tiles"]
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    return [(label, *launch) for label, launch in zip(labels, seen) if launch[0].__name__ != "_factor_diag_kernel"]


def values_per_thread(kw: dict) -> int:
    """Values a thread holds: ``BG`` groups of 32 (or a ``BI x BJ`` tile) over ``num_warps x 32`` threads."""
    per_program = kw["BG"] * 32 if "BG" in kw else kw["BI"] * kw["BJ"]
    return per_program // (32 * kw["num_warps"])


def main() -> int:
    for label, kernel, args, kw in recorded_launches():
        body = fast_path(sass(kernel, args, kw))
        ops = collections.Counter((line.split()[1] if line.startswith("@") else line.split()[0]).split(".")[0]
                                  for line in body)  # fmt: skip
        per = values_per_thread(kw)
        print(f"{kernel.__name__} ({label}): {len(body)} instructions per thread ({per} values, "
              f"{len(body) / per:.1f} a value) on the common path")  # fmt: skip
        print("   " + ", ".join(f"{op} {n}" for op, n in ops.most_common(14)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
