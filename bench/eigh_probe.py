"""Time the small symmetric eigensolves of a stream-side refresh, by backend and dtype.

A stream refresh diagonalises one ``s x s`` Nystrom Gram per block (``precond.nystrom``;
``s = k + p <= rank_max + oversample``, 144-160 at the defaults). On the 405M GPT the float64
``eigh`` of these Grams was ~13 ms of the refresh worker's GPU time per step (BENCHMARKS.md §0b):
cuSOLVER's ``syevd`` runs one small matrix at a time, latency-bound. This script times the
candidates on Grams shaped like the real ones (a decaying spectrum, float64 formed) and reports
how far each result is from the float64 ``syevd`` one: the eigenvalues relative to the largest,
and the subspace of the vectors above 1e-5 of the top eigenvalue (below it the refresh's Nystrom
shift, ~1e-5 of the sketch's norm at d = 2048, makes them zero anyway).

    python -m bench.eigh_probe --out $OUT/eigh_probe.json     # CUDA; --dry-run: CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from scao_dist import precond


def grams(b: int, s: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``b`` psd float64 ``s x s`` matrices with eigenvalues decaying over ~12 decades (as ``F^T F``)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, s, s, generator=gen, dtype=torch.float64))
    jitter = 1 + 0.1 * torch.rand(b, s, generator=gen, dtype=torch.float64)
    vals = torch.logspace(0, -12, s, dtype=torch.float64) * jitter
    a = (q * vals[:, None, :]) @ q.mT
    return (0.5 * (a + a.mT)).to(device)


def candidates(device: torch.device) -> dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """name -> f(float64 Grams) -> (ascending eigenvalues, vectors) in float64."""

    def eigh(dtype: torch.dtype) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        def f(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            vals, vecs = torch.linalg.eigh(a.to(dtype))
            return vals.double(), vecs.double()

        return f

    def fp32_ritz(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 vectors, float64 Rayleigh quotients ``diag(V^T A V)`` as the eigenvalues."""
        _, v = torch.linalg.eigh(a.float())
        v = v.double()
        vals = (v * (a @ v)).sum(-2)
        order = torch.argsort(vals, dim=-1)
        return torch.take_along_dim(vals, order, -1), torch.take_along_dim(v, order[:, None, :], -1)

    def svd_jacobi(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, sv, _ = torch.linalg.svd(a.float(), driver="gesvdj")
        return sv.double().flip(-1), u.double().flip(-1)

    def host(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vals, vecs = torch.linalg.eigh(a.cpu())
        return vals.to(a.device), vecs.to(a.device)

    def threads(n: int, on_host: bool = False) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """float64, the batch cut into ``n`` chunks on their own threads: the shipped
        :func:`scao_dist.precond.eigh_in_parallel` (one CUDA stream per chunk), or on the host."""

        def f(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            vals, vecs = precond.eigh_in_parallel(a.cpu() if on_host else a, n)  # descending
            return vals.flip(-1).to(a.device), vecs.flip(-1).to(a.device)

        return f

    out = {"eigh float64": eigh(torch.float64), "eigh float32": eigh(torch.float32)}
    out["float32 + float64 Ritz"] = fp32_ritz
    for n in (4, 8, 16):
        out[f"eigh float64 {n} threads"] = threads(n)
    if device.type == "cuda":
        out["svd float32 gesvdj"] = svd_jacobi
        out["eigh float64 host"] = host
        for n in (4, 8):
            out[f"eigh float64 host {n} threads"] = threads(n, on_host=True)
    return out


Pair = tuple[torch.Tensor, torch.Tensor]


def errors(a: torch.Tensor, ref: Pair, got: Pair, k: int) -> dict[str, float]:
    """Largest eigenvalue error relative to the top eigenvalue; largest principal-angle sine between
    the top-``k`` subspaces; residual ``||A V - V diag(vals)|| / ||A||`` of the top ``k``."""
    rv, rq = ref
    gv, gq = got
    top = rv[:, -1:]
    val_err = ((gv - rv).abs() / top).amax().item()
    cos = torch.linalg.svdvals(rq[..., -k:].mT @ gq[..., -k:])
    sin = (1 - cos.clamp(max=1.0).square()).clamp_min(0).sqrt().amax().item()
    resid = torch.linalg.matrix_norm(a @ gq[..., -k:] - gq[..., -k:] * gv[:, None, -k:]) / torch.linalg.matrix_norm(a)
    return {"eig_rel_err": val_err, "top_k_sin": sin, "top_k_residual": resid.amax().item()}


def timed(f: Callable[[], Any], device: torch.device, reps: int) -> float:
    f()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        f()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    shapes = [(2, 24)] if args.dry_run else [(16, 144), (16, 160), (4, 144), (32, 144)]
    rows = []
    for b, s in shapes:
        a = grams(b, s, device)
        ref = torch.linalg.eigh(a)
        # the directions that matter: the Nystrom shift puts everything below ~1e-5 of the top at zero
        k = int((ref[0] > 1e-5 * ref[0][:, -1:]).sum(-1).min())
        for name, f in candidates(device).items():
            try:
                ms = timed(lambda f=f, a=a: f(a), device, args.reps)
                err = errors(a, ref, f(a), k=k)
            except RuntimeError as e:  # a backend this build lacks
                rows.append({"b": b, "s": s, "method": name, "error": str(e)[:200]})
                continue
            rows.append({"b": b, "s": s, "method": name, "ms": ms, **err})
            print(f"b={b:3d} s={s:4d} {name:24s} {ms:8.3f} ms  eig err {err['eig_rel_err']:.1e}  "
                  f"top-k sin {err['top_k_sin']:.1e}  residual {err['top_k_residual']:.1e}", flush=True)  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump({"device": str(device), "torch": torch.__version__, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
