"""Launch chosen timed cases of :mod:`bench.kernels` a few times and nothing else: a target for Nsight Compute.

``bench.kernels`` first verifies every kernel on small shapes, so under ``ncu`` its launches of one
kernel name mix verification and timing; this script builds the operands of the named cases (the
same :func:`bench.kernels.make_operands`) and launches each ``--repeat`` times, in order. ::

    ncu --clock-control none --set full -o $OUT/step_kernels python3 -m bench.ncu_kernels \\
        --case 'ema_signed_:bf16 x, bf16 out' --case 'complement_update:bf16 X_m'

A case is ``kernel:text``: the first timed case of ``kernel`` whose variant label contains ``text``.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", required=True, help="kernel:variant-text (repeatable)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--mb", type=float, default=400.0)
    args = ap.parse_args()

    import torch

    from bench.kernels import make_operands, shapes
    from scao_dist.kernels import triton_ops

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # the timed cases' products run in TF32, as in bench.kernels
    cases = shapes(False, args.mb)
    for want in args.case:
        kernel, _, text = want.partition(":")
        found = [(k, v, s) for k, v, s in cases if k == kernel and text in v]
        if not found:
            print(f"no timed case of {kernel!r} has {text!r} in its label", file=sys.stderr)
            return 2
        _, variant, spec = found[0]
        ops = make_operands(kernel, spec, device)
        fn = getattr(triton_ops, kernel)
        for _ in range(args.repeat):
            fn(**ops)
        torch.cuda.synchronize()
        print(f"{kernel} [{variant}] x{args.repeat}", flush=True)
        del ops
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
