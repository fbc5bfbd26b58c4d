"""A weight whose gradients lie in one fixed rank-``r`` subspace, on the CPU: how far does each setting of
``quantize`` move the weight outside that subspace?

Every step's gradient is ``U diag(z) V^T`` with fixed orthonormal ``U`` (96 x r), ``V`` (80 x r) and fresh
``z``, so the loss never asks for movement outside ``span(U) x span(V)``; no weight decay. AdamW and SOAP with
fp32 states move there only by arithmetic noise. With int8 moments the codes' rounding noise (a step of up to
2^-7 of a scale group's largest value) lands on basis directions whose second moment is ~0 and on an
empty complement, and Adam divides it by the second moments' floors (``reference.RES_FLOOR``, ``ROT_FLOOR``:
11.5 outside at the old floors, 1.45 at today's). Prints, per setting, the norm of the weight's movement
and of its part outside the subspace (BENCHMARKS.md §0j, §0k).

    python -m bench.lowrank_toy [--steps 30] [--rank 4]
"""

from __future__ import annotations

import argparse

import torch

from scao_dist import SCAO


def movement(quantize: object, steps: int, rank: int, wdtype: torch.dtype) -> tuple[float, float]:
    """(|W_T - W_0|, |its part outside span(U) x span(V)|) after ``steps`` steps."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 80).to(wdtype))
    w0 = w.detach().float().clone()
    opt = SCAO([w], lr=1e-2, weight_decay=0.0, refresh_lag=0, full_factor_dim=32, rank_max=16, oversample=4,
               precond_freq=3, quantize=quantize)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(96, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(80, rank, generator=gen))
    for _ in range(steps):
        w.grad = (u @ torch.diag(torch.randn(rank, generator=gen) * 1e-2) @ v.T).to(wdtype)
        opt.step()
    d = w.detach().float() - w0
    outside = d - u @ (u.T @ d @ v) @ v.T
    return d.norm().item(), outside.norm().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rank", type=int, default=4)
    args = ap.parse_args()
    print("| quantize | weights | movement | outside the gradients' span |")
    print("|---|---|---:|---:|")
    settings = (True, False, ("m", "v"), ("factors", "bases"), ("v", "factors", "bases"), ("m", "factors", "bases"))
    for q in settings:
        for wdtype in (torch.float32, torch.bfloat16):
            if wdtype == torch.bfloat16 and q is not True:
                continue
            total, out = movement(q, args.steps, args.rank, wdtype)
            name = q if isinstance(q, bool) else ", ".join(q)
            print(f"| {name} | {str(wdtype)[6:]} | {total:.3f} | {out:.3f} |")


if __name__ == "__main__":
    main()
