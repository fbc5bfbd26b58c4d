"""SCAO from a DeepSpeed config on one CPU rank: "type": "SCAO", bf16 weights, accumulation,
clipping, a DeepSpeed LR scheduler, save/load_checkpoint, and the refusals (ZeRO >= 1, bf16.enabled).

The first ``deepspeed.initialize`` of a fresh machine JIT-compiles DeepSpeed's shared-memory comm op
(~60-90 s on 2 cores, cached in ~/.cache/torch_extensions afterwards).
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
if os.environ.get("CI"):
    import deepspeed  # CI installs it: a missing DeepSpeed is a failure there, not a skip
else:
    deepspeed = pytest.importorskip("deepspeed")

from scao_dist import SCAO
from scao_dist.demo import GPT, ByteCorpus, GPTConfig, stdlib_corpus
from scao_dist.integrations import deepspeed as scao_ds

pytestmark = pytest.mark.timeout(300)  # the first initialize compiles DeepSpeed's shm op

GPT_CFG = GPTConfig(seq_len=32, d_model=64, n_layer=2, n_head=4)
MICRO, ACCUM = 4, 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    """DeepSpeed initialises the default (gloo) group from these variables; torn down after the module."""
    env = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def data():
    train, _ = stdlib_corpus(max_bytes=200_000)
    return ByteCorpus(train, GPT_CFG.seq_len, MICRO, seed=0)


def _config(**over):
    cfg = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": ACCUM,
        "gradient_clipping": 0.5,
        "steps_per_print": 10**9,
        "optimizer": {"type": "SCAO", "params": {"lr": 3e-3, "weight_decay": 0.01, "precond_freq": 2}},
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 3e-3, "warmup_num_steps": 4, "warmup_type": "linear"},
        },
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": False},
    }
    cfg.update(over)
    return cfg


def _model(seed=0, dtype=torch.bfloat16):
    torch.manual_seed(seed)
    return GPT(GPT_CFG).to(dtype)


def _groups(model):
    return [
        {"params": [p for p in model.parameters() if p.ndim >= 2]},
        {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]


def _run(engine, data, start, stop):
    losses = []
    for step in range(start, stop):
        for m in range(ACCUM):
            x, y = data.batch(step * ACCUM + m)
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
        losses.append(float(loss.detach()))
    return losses


def _clip_fp32_norm_(params, max_norm):
    """Clipping as DeepSpeed does it: the norm in fp32 (torch's clip_grad_norm_ sums bf16 norms in bf16)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.stack([g.detach().float().norm() for g in grads]).pow(2).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_registration_is_cheap_and_does_not_import_deepspeed():
    code = (
        "import sys, torch, scao_dist.integrations.deepspeed as d; "
        "assert torch.optim.SCAO is d.DeepSpeedSCAO; assert 'deepspeed' not in sys.modules; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_import_scao_dist_registers():
    code = "import torch, scao_dist; assert hasattr(torch.optim, 'SCAO')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_config_type_scao_trains_like_plain_pytorch(data):
    """engine(bf16 weights) with accumulation, clipping and WarmupLR == the same loop by hand, bitwise."""
    model = _model()
    engine, opt, _, sched = deepspeed.initialize(model=model, model_parameters=_groups(model), config=_config())
    assert type(opt) is scao_ds.DeepSpeedSCAO and engine.optimizer is opt  # no DeepSpeed wrapper around it
    assert opt.comm.grad_sync == "external"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ds_losses = _run(engine, data, 0, 6)

    twin = _model()
    topt = SCAO(_groups(twin), lr=3e-3, weight_decay=0.01, precond_freq=2)
    tsched = deepspeed.runtime.lr_schedules.WarmupLR(topt, 0.0, 3e-3, 4, "linear")
    losses = []
    for step in range(6):
        for m in range(ACCUM):
            x, y = data.batch(step * ACCUM + m)
            loss = twin(x, y)
            (loss / ACCUM).backward()
        _clip_fp32_norm_(twin.parameters(), 0.5)
        topt.step()
        tsched.step()
        topt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert sched.get_last_lr() == tsched.get_last_lr()
    assert ds_losses == losses and losses[-1] < losses[0]
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_save_and_load_checkpoint_continue_identically(tmp_path, data):
    model = _model()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=_groups(model), config=_config())
    _run(engine, data, 0, 3)
    engine.save_checkpoint(str(tmp_path), tag="s3", client_state={"step": 3})
    tail = _run(engine, data, 3, 6)
    want = _weights(model)

    other = _model(seed=1)  # different initial weights: everything must come from the checkpoint
    engine2, opt2, _, sched2 = deepspeed.initialize(model=other, model_parameters=_groups(other), config=_config())
    _, client = engine2.load_checkpoint(str(tmp_path), tag="s3")
    assert client["step"] == 3 and sched2.last_batch_iteration == 2
    assert opt2.counters["steps"] == 3
    assert _run(engine2, data, 3, 6) == tail
    got = _weights(other)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_fp32_weights_work_too(data):
    model = _model(dtype=torch.float32)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=_groups(model), config=_config())
    losses = _run(engine, data, 0, 4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_refused_with_what_to_set(stage):
    model = _model()
    cfg = _config(zero_optimization={"stage": stage}, zero_allow_untested_optimizer=True)
    with pytest.raises(ValueError, match=r'"zero_optimization": \{"stage": 0\}'):
        deepspeed.initialize(model=model, model_parameters=_groups(model), config=cfg)


def test_bf16_enabled_refused_and_initialize_helper_fixes_it(data):
    model = _model(dtype=torch.float32)
    cfg = _config(bf16={"enabled": True})
    with pytest.raises(ValueError, match=r'"bf16": \{"enabled": false\}'):
        deepspeed.initialize(model=model, model_parameters=_groups(model), config=cfg)
    model = _model(dtype=torch.float32)
    engine, opt, *_ = scao_ds.initialize(model, cfg, model_parameters=_groups(model))
    assert engine.optimizer is opt and not engine.bfloat16_enabled()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert _run(engine, data, 0, 2)[-1] < 6


def test_wrapped_parameters_are_refused():
    """If some wrapper swaps SCAO's params for copies, stepping would train tensors the model never reads."""
    model = _model()
    opt = scao_ds.DeepSpeedSCAO(model.parameters(), lr=1e-3)
    assert opt.comm.grad_sync == "scao"  # not built by a DeepSpeed engine: the plain default
    opt.param_groups[0]["params"] = [p.detach().float().requires_grad_() for p in opt.param_groups[0]["params"]]
    with pytest.raises(RuntimeError, match="replaced"):
        opt.step()


def test_step_hooks_run_once_per_step():
    """DeepSpeedSCAO's own step is wrapped like SCAO's (not by torch around SCAO's wrapper): a step pre-hook and
    post-hook run once per step, and the step runs without autograd."""
    model = _model()
    opt = scao_ds.DeepSpeedSCAO(model.parameters(), lr=1e-3)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", torch.is_grad_enabled())))
    opt.register_step_post_hook(lambda o, a, k: calls.append(("post", torch.is_grad_enabled())))
    x = torch.randint(0, GPT_CFG.vocab, (2, GPT_CFG.seq_len + 1))
    for _ in range(2):
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    assert calls == [("pre", True), ("post", True)] * 2
    assert type(opt).step.hooked and type(opt).step.__wrapped__.__qualname__ == "DeepSpeedSCAO.step"
