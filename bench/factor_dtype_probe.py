"""The applied complement kernel (the 405M step's case: 16 blocks of 2048 x 4096, rank 144, one bf16 basis
``Y`` shared by both products, bf16 ``M``, bf16 weights with int8 bits) timed with
its two row factors in different dtypes, each call the library's ``complement_update``:

* ``xu bf16, xm fp32`` (what the step passes: the fp32 ``X_m`` split into two bf16 terms in registers, three
  products per tile),
* ``xu bf16, xm bf16`` (two exact bf16 products, no split: what one product fewer and no split buy),
* ``xu fp32, xm fp32`` (both split: four products).

    python -m bench.factor_dtype_probe --out probe.json        # CUDA only
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

from scao_dist.kernels import triton_ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--blocks", type=int, default=16)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    B, M, N, K = args.blocks, 2048, 4096, 144
    wide = torch.randn(B, N, K + 16, device=dev, generator=gen).to(torch.bfloat16)
    y = wide[..., :K]
    xu = torch.randn(B, M, K, device=dev, generator=gen) * 1e-2
    xm = torch.randn(B, M, K, device=dev, generator=gen) * 1e-3
    m = (xm @ y.float().mT + 1e-4 * torch.randn(B, M, N, device=dev, generator=gen)).to(torch.bfloat16)
    row = torch.rand(B, M, device=dev, generator=gen) * 1e-6 + 1e-8
    col = torch.rand(B, N, device=dev, generator=gen) * 1e-6 + 1e-8
    g_row = torch.rand(B, M, device=dev, generator=gen) * 1e-6 + 1e-8
    mask = torch.ones(B, dtype=torch.bool, device=dev)
    w = torch.randn(B, M, N, device=dev, generator=gen).to(torch.bfloat16)
    rho = torch.zeros(B, M, N, dtype=torch.int8, device=dev)
    res = {"shape": [B, M, N, K], "cases": {}}
    variants = {"xu bf16, xm fp32": (xu.bfloat16(), xm), "xu bf16, xm bf16": (xu.bfloat16(), xm.bfloat16()),
                "xu fp32, xm fp32": (xu, xm)}  # fmt: skip
    for name, (a, b) in variants.items():
        def call(a=a, b=b):
            triton_ops.complement_update(m, a, y, b, y, row, col, g_row, mask, 0.5, 0.25, 1e-8, w=w, rho=rho,
                                         lr=1e-3, wd=0.1)  # fmt: skip
        call()
        torch.cuda.synchronize()
        ms = float(triton.testing.do_bench(call, warmup=50, rep=300, return_mode="median"))
        res["cases"][name] = ms
        print(f"{name:20s} {ms:.3f} ms", flush=True)
    from scao_dist.kernels import lowrank

    if hasattr(lowrank, "to_f16_rows"):  # a tree with the fp16 products (session_yb's patch): the conversions alone
        for name, t in (("to_f16_rows X (fp32)", xm), ("to_f16_rows X_u (bf16)", xu.bfloat16()), ("to_f16_rows Y", y)):
            ms = float(triton.testing.do_bench(lambda t=t: lowrank.to_f16_rows(t, K), warmup=50, rep=300,
                                               return_mode="median"))  # fmt: skip
            res["cases"][name] = ms
            print(f"{name:24s} {ms:.3f} ms", flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
