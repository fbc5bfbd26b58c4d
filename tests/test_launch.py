"""The main job (launch/train.py): CLI, resume, YAML config, user hooks, torchrun (CPU, gloo)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch import train as T  # noqa: E402

SMALL = dict(max_bytes=300_000, seq_len=32, batch_size=4, eval_batches=2, log_every=1, progress=False, plot=False)


def _cfg(tmp_path, **kw):
    return T.TrainConfig(**{**SMALL, "out": str(tmp_path / "run"), **kw})


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(out):
    ck = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    return ck["model"], ck


@pytest.mark.timeout(120)
def test_cli_subprocess_writes_everything(tmp_path):
    """``python launch/train.py`` end to end: summary line, metrics, config, checkpoint, PNG."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "launch/train.py", "--steps", "6", "--eval-every", "3", "--seq-len", "32",
           "--batch-size", "4", "--max-bytes", "300000", "--eval-batches", "2", "--log-every", "2",
           "--lr", "3e-3", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("done: scao, 6 steps") and "held-out loss" in last, r.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 3, 6]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert all(k in train_rows[0] for k in ("lr", "tok_per_s", "mem_gib", "elapsed_s"))
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "ckpt.pt").exists() and not list(out.glob("*.tmp.*"))
    assert "lr: 0.003" in (out / "config.yaml").read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("optimizer", ["scao", "adamw"])
def test_resume_continues_identically(tmp_path, optimizer):
    """Stop at step 5 and resume: the same weights and losses as one uninterrupted run."""
    kw = dict(optimizer=optimizer, steps=10, eval_every=4, ckpt_every=3, scao={"precond_freq": 3})
    whole = T.train(cfg=_cfg(tmp_path / "a", **kw))
    T.train(cfg=_cfg(tmp_path / "b", stop_at=5, **kw))
    resumed = T.train(cfg=_cfg(tmp_path / "b", resume="auto", **kw))
    assert resumed["steps"] == whole["steps"] == 10
    (wa, cka), (wb, ckb) = _params(tmp_path / "a" / "run"), _params(tmp_path / "b" / "run")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["last_val"] == whole["last_val"]
    assert resumed["first_val"] == whole["first_val"]
    rows_a = T.read_metrics(str(tmp_path / "a" / "run"))
    rows_b = T.read_metrics(str(tmp_path / "b" / "run"))
    strip = lambda rows: [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    assert cka["step"] == ckb["step"] == 10


def test_yaml_config_and_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nsteps: 40\noptimizer: adamw\nbetas: [0.9, 0.95]\nscao:\n  precond_freq: 5\n")
    cfg = T.load_config(["--config", str(path), "--steps", "7", "--scao", "rank_max=32", "--no-plot"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)  # YAML reads 1e-3 as a string
    assert cfg.steps == 7 and cfg.optimizer == "adamw" and cfg.betas == [0.9, 0.95]
    assert cfg.scao == {"precond_freq": 5, "rank_max": 32}
    assert cfg.plot is False and cfg.progress is True
    with pytest.raises(SystemExit):
        T.load_config(["--config", str(path), "--no-such-flag", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lrr: 1e-3\n")
    with pytest.raises(SystemExit, match="unknown config keys"):
        T.load_config(["--config", str(bad)])


def test_defaults_resolve_per_device():
    cpu = T.resolve(T.TrainConfig(), torch.device("cpu"))
    assert (cpu.model, cpu.steps, cpu.seq_len, cpu.dtype) == ("tiny", 400, 128, "fp32")
    gpu = T.resolve(T.TrainConfig(), torch.device("cuda", 0))
    assert (gpu.model, gpu.steps, gpu.seq_len, gpu.dtype) == ("small", 1500, 512, "bf16")
    assert T.resolve(T.TrainConfig(optimizer="adamw"), torch.device("cuda", 0)).dtype == "fp32"
    lam = T.lr_lambda(cpu)
    assert lam(0) == pytest.approx(1 / cpu.warmup) and lam(cpu.warmup) == pytest.approx(1.0)
    assert lam(cpu.steps) == pytest.approx(cpu.min_lr_frac)


USER_MODULE = """
import torch

class Regressor(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, d))

    def forward(self, x, y):
        return (self.net(x) - y).square().mean()

def build(cfg):
    return Regressor(16)

_W = torch.randn(16, 16, generator=torch.Generator().manual_seed(1)) / 4

def batches(split, index, cfg):
    g = torch.Generator().manual_seed(index * 2 + (split == "val"))
    x = torch.randn(cfg.batch_size, 16, generator=g)
    return x, torch.tanh(x @ _W)
"""


@pytest.mark.timeout(120)
def test_user_model_and_data_hooks(tmp_path):
    """``--model file.py:fn --data file.py:fn`` and ``train(model_fn, batch_fn, cfg)``, no edits to the script."""
    mod = tmp_path / "mymodels.py"
    mod.write_text(textwrap.dedent(USER_MODULE))
    summary = T.main([
        "--model", f"{mod}:build", "--data", f"{mod}:batches", "--steps", "60", "--batch-size", "32",
        "--eval-every", "30", "--lr", "1e-2", "--out", str(tmp_path / "hook"), "--no-progress",
    ])  # fmt: skip
    assert summary["last_val"] < 0.5 * summary["first_val"]
    assert (tmp_path / "hook" / "loss.png").exists()

    sys.path.insert(0, str(tmp_path))
    try:
        import mymodels
    finally:
        sys.path.remove(str(tmp_path))
    cfg = T.TrainConfig(steps=20, batch_size=32, lr=1e-2, optimizer="adamw", out=str(tmp_path / "fn"), plot=False,
                        progress=False, eval_every=10)  # fmt: skip
    s2 = T.train(model_fn=mymodels.build, batch_fn=mymodels.batches, cfg=cfg)
    assert s2["last_val"] < s2["first_val"]


def _torchrun(tmp_path, nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "launch/train.py", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(180)
def test_torchrun_two_ranks_adamw_matches_one_process(tmp_path):
    """2 ranks under DDP (gloo) see the same global batch as 1 process with 2 micro-steps."""
    common = ["--optimizer", "adamw", "--steps", "6", "--eval-every", "6", "--seq-len", "32", "--batch-size", "4",
              "--max-bytes", "300000", "--eval-batches", "2", "--no-plot", "--no-progress"]  # fmt: skip
    r = _torchrun(tmp_path, 2, *common, "--out", str(tmp_path / "ddp"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s) on cpu" in r.stdout
    single = T.train(cfg=_cfg(tmp_path, optimizer="adamw", steps=6, eval_every=6, grad_accum=2, eval_batches=4,
                              out=str(tmp_path / "one")))  # fmt: skip
    (w2, _), (w1, _) = _params(tmp_path / "ddp"), _params(tmp_path / "one")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    rows = T.read_metrics(str(tmp_path / "ddp"))
    assert rows[-1]["val_loss"] == pytest.approx(single["last_val"], rel=1e-4)


@pytest.mark.timeout(180)
def test_torchrun_two_ranks_scao_matches_one_process(tmp_path):
    """SCAO on 2 ranks (grads averaged by SCAO itself, no DDP) == 1 process with 2 micro-steps.

    Both runs are subprocesses with one thread each: fp32 full-rank SOAP is chaotic enough that a
    different matmul reduction order (threads) shows in the weights after a few steps.
    """
    common = ["--steps", "6", "--eval-every", "6", "--seq-len", "32", "--batch-size", "4", "--max-bytes", "300000",
              "--no-plot", "--no-progress", "--grad-clip", "0", "--scao", "quantize=false"]  # fmt: skip
    r = _torchrun(tmp_path, 2, *common, "--eval-batches", "2", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    one = [sys.executable, "launch/train.py", *common, "--grad-accum", "2", "--eval-batches", "4",
           "--out", str(tmp_path / "one")]  # fmt: skip
    r1 = subprocess.run(one, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=110)
    assert r1.returncode == 0, r1.stderr[-3000:]
    (w2, ck2), (w1, ck1) = _params(tmp_path / "two"), _params(tmp_path / "one")
    for k in w1:  # fp32 all-reduce vs. summed micro-steps: equal up to rounding
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert ck2["optimizer"]["state"].keys() == ck1["optimizer"]["state"].keys()  # full state gathered on rank 0
    v2, v1 = T.read_metrics(str(tmp_path / "two"))[-1], T.read_metrics(str(tmp_path / "one"))[-1]
    assert v2["val_loss"] == pytest.approx(v1["val_loss"], rel=1e-4)
