"""Byte-level corpus from the Python standard library's own ``.py`` files (present wherever
Python is, so nothing is downloaded). Files are sorted by path; the last 5% are held out.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch


def stdlib_corpus(max_bytes: int | None = None, holdout: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 tensors of the stdlib sources; ``max_bytes`` caps the total read."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no .py files under {root}; pass your own data to ByteCorpus")
    n_val = max(1, int(len(files) * holdout))
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    budget = {"train": None, "val": None}
    if max_bytes is not None:
        budget = {"train": int(max_bytes * (1 - holdout)), "val": max(int(max_bytes * holdout), 4096)}
    for split, chunk in (("train", files[:-n_val]), ("val", files[-n_val:])):
        total = 0
        for f in chunk:
            data = f.read_bytes()
            parts[split].append(data)
            total += len(data)
            if budget[split] is not None and total >= budget[split]:
                break
    return tuple(torch.frombuffer(bytearray(b"".join(parts[s])), dtype=torch.uint8) for s in ("train", "val"))


class ByteCorpus:
    """Deterministic random windows of a byte stream: batch ``k`` is the same for every run."""

    def __init__(self, data: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0) -> None:
        if data.numel() <= seq_len + 1:
            raise ValueError(f"corpus of {data.numel()} bytes is shorter than seq_len + 1 = {seq_len + 1}")
        self.data, self.seq_len, self.batch_size, self.seed = data, seq_len, batch_size, seed

    def batch(self, k: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        starts = torch.randint(0, self.data.numel() - self.seq_len - 1, (self.batch_size,), generator=gen)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        chunk = self.data[idx].long()
        return chunk[:, :-1].to(device), chunk[:, 1:].to(device)
