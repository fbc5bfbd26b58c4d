"""Quality ablations of scao_dist's design on a tiny byte-level GPT, on the CPU (no timings).

    python -m bench.tiny_ablation                       # every variant below
    python -m bench.tiny_ablation adamw shipped fp32    # a subset
    python -m bench.tiny_ablation toy                   # the rank-deficient full-batch toy
    python -m bench.tiny_ablation s_adamw s_dense_all s_stream_r128 s_stream_r32 s_stream_r128_mass999
                                                        # d=256, 300 steps: truncated streamed sides

d=128, 2 layers, 4 heads, seq 128, batch 16, 400 steps, warmup 30 then cosine to 10%, lr 3e-3
(AdamW's best of 1e-3, 3e-3, 1e-2 on this setup), held-out loss on 4 fixed batches. One thread,
so a run takes about a minute on a laptop core. Results: BENCHMARKS.md section 5.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import torch

from scao_dist import SCAO
from scao_dist.demo import GPT, ByteCorpus, GPTConfig, stdlib_corpus

VARIANTS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3),
    "shipped": lambda p: SCAO(p, lr=3e-3),
    "shipped_b999": lambda p: SCAO(p, lr=3e-3, betas=(0.9, 0.999)),
    "fp32": lambda p: SCAO(p, lr=3e-3, quantize=False),
    "q_moments_only": lambda p: SCAO(p, lr=3e-3, quantize=("m", "v")),
    "q_factors_only": lambda p: SCAO(p, lr=3e-3, quantize=("factors",)),
    "graft_norm": lambda p: SCAO(p, lr=3e-3, graft="norm"),
}


STREAM_VARIANTS = {  # d=256: full_factor_dim=512 makes the 768 and 1024 sides streamed (truncated)
    "s_adamw": lambda p: torch.optim.AdamW(p, lr=3e-3),
    "s_dense_all": lambda p: SCAO(p, lr=3e-3, full_factor_dim=4096),
    "s_stream_r128": lambda p: SCAO(p, lr=3e-3, full_factor_dim=512, rank_max=128),
    "s_stream_r32": lambda p: SCAO(p, lr=3e-3, full_factor_dim=512, rank_max=32),
    "s_stream_r128_mass999": lambda p: SCAO(p, lr=3e-3, full_factor_dim=512, rank_max=128, spectral_mass=0.999),
}


def run(name: str, steps: int = 400, warmup: int = 30) -> float:
    torch.manual_seed(0)
    train, val = stdlib_corpus(max_bytes=4_000_000)
    if name in STREAM_VARIANTS:
        steps, model = 300, GPT(GPTConfig(seq_len=128, d_model=256, n_layer=2, n_head=4))
        opt = STREAM_VARIANTS[name](model.parameters())
    else:
        model = GPT(GPTConfig(seq_len=128, d_model=128, n_layer=2, n_head=4))
        opt = VARIANTS[name](model.parameters())
    data, held = ByteCorpus(train, 128, 16, seed=0), ByteCorpus(val, 128, 32, seed=1)
    base = [g["lr"] for g in opt.param_groups]
    t0 = time.time()
    for k in range(steps):
        f = min(1.0, (k + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        x, y = data.batch(k)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val_loss = sum(model(*held.batch(i)).item() for i in range(4)) / 4
    print(f"{name:<16} held-out {val_loss:.4f}   train {loss.item():.3f}   {time.time() - t0:.0f} s", flush=True)
    return val_loss


def toy(steps: int = 60) -> None:
    """MLP 64 -> 128 -> 10 memorising 512 random labels, full batch: its first layer's gradient
    has rank <= 64 < 128, so half of that side's eigen-directions carry (almost) nothing. Prints the
    loss at step 60 for fp32 state and for each compressed piece alone."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10))
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    for pieces in [(), ("m",), ("v",), ("factors",), ("bases",), True]:
        model = copy.deepcopy(base)
        opt = SCAO(model.parameters(), lr=3e-3, quantize=pieces)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"toy quantize={pieces!s:<24} loss@{steps} {loss.item():.3f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(VARIANTS)
    for name in names:
        toy() if name == "toy" else run(name)
