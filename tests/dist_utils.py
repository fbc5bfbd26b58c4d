"""Run a function on N CPU ranks over gloo, with a hard timeout (a hang fails, never blocks CI)."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, outdir, pg_timeout):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=pg_timeout))
        result = fn(rank, world, *args)
        err = None
    except BaseException as e:
        result, err = None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    with open(os.path.join(outdir, f"{rank}.pkl"), "wb") as f:
        pickle.dump((result, err), f)
    if dist.is_initialized() and err is None:
        dist.destroy_process_group()
    os._exit(0 if err is None else 1)


def run_ranks(world, fn, *args, timeout=120.0, pg_timeout=60.0, expect_fail=False):
    """Run ``fn(rank, world, *args)`` on ``world`` processes; returns [(result, error)] per rank."""
    outdir = tempfile.mkdtemp(prefix="scao-dist-")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, outdir, pg_timeout)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    if hung:
        raise TimeoutError(f"ranks {hung} still running after {timeout}s")
    out = []
    for r in range(world):
        path = os.path.join(outdir, f"{r}.pkl")
        if os.path.exists(path):
            with open(path, "rb") as f:
                out.append(pickle.load(f))
            continue
        out.append((None, f"rank {r} died (exit {procs[r].exitcode})"))
    if not expect_fail:
        errors = [e for _, e in out if e]
        assert not errors, "\n".join(errors)
    return out
