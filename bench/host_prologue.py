"""Host time of a captured ``step()`` before its first group replay, on the CPU (no GPU needed).

    python -m bench.host_prologue [--steps 300]

The 405M GPT's group structure (stream sides, row and column blocks, the 1-D AdamW group) on a GPT of
``d_model`` 512 with ``max_precond_dim`` 1024, stepped through ``GroupGraphs(record=False)`` with the
device work stubbed out (each group's body, the NaN/inf check and the gradient copies): what is left is the
step's Python. Prints the median time from ``step()``'s entry to the NaN/inf check's launch and to the
first group's replay, and of the whole step. A CPU proxy: the GPU host's own speed and a profiler change
the absolute figures (BENCHMARKS.md §0l and §0m say which were measured where); it tells host-side changes apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scao_dist import SCAO, kernels
from scao_dist.capture import GroupGraphs
from scao_dist.demo.gpt import GPT, GPTConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = GPTConfig(seq_len=64, d_model=512, n_layer=8, n_head=8)
    model = GPT(cfg).to(torch.bfloat16)
    opt = SCAO(model.parameters(), lr=1e-4, max_precond_dim=1024, refresh_lag=0, rank_max=64, full_factor_dim=256)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False).install(opt)

    def backward() -> None:
        x = torch.randint(0, cfg.vocab, (2, cfg.seq_len + 1))
        model(x[:, :-1], x[:, 1:]).backward()

    for _ in range(6):  # bases built, every group captured (as device-input steps)
        backward()
        opt.step()
        opt.zero_grad()
    for g in opt.param_groups:
        g["precond_freq"] = 10**9
    backward()
    flag = torch.ones((), dtype=torch.bool)
    first: list[float] = []
    checked: list[float] = []

    def check(checks, copies=(), keep=None) -> torch.Tensor:  # (the check's device work)
        checked.append(time.perf_counter())
        return flag

    kernels.finite_gather = check

    def body(self, grp, hp, runs, e) -> None:  # (a group's device work)
        if not first:
            first.append(time.perf_counter())

    GroupGraphs._eager = body
    graphs._copy_gradients = lambda work: None
    pre, pro, tot = [], [], []
    for _ in range(args.steps):
        first.clear()
        checked.clear()
        t0 = time.perf_counter()
        opt.step()
        t1 = time.perf_counter()
        pre.append((checked[0] - t0) * 1e6)
        pro.append((first[0] - t0) * 1e6)
        tot.append((t1 - t0) * 1e6)
    print(f"before the check: median {statistics.median(pre):.0f} us; "
          f"before the first replay: median {statistics.median(pro):.0f} us; "
          f"whole step: median {statistics.median(tot):.0f} us (device work stubbed)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
