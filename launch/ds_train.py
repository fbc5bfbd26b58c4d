"""Train the embedded GPT through DeepSpeed, with SCAO named in the JSON config (launch/ds_config.json).

    deepspeed --num_gpus 2 launch/ds_train.py                       # GPUs
    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 launch/ds_train.py   # CPU, gloo (or: deepspeed --num_gpus 2)
    python launch/ds_train.py --steps 50 --out runs/ds --resume      # one process; continue from the last tag

The config's ``"optimizer": {"type": "SCAO", "params": {...}}`` resolves because ``import scao_dist``
registers ``torch.optim.SCAO`` (see scao_dist/integrations/deepspeed.py for the settings SCAO needs:
ZeRO stage 0, ``bf16.enabled`` false with the model cast to bf16 here). Batches, the schedule,
gradient accumulation and clipping come from the config; ``engine.save_checkpoint`` writes
``OUT/<tag>/`` every ``--save-every`` steps and at the end, and ``--resume`` loads the latest tag.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import scao_dist.integrations.deepspeed as scao_ds  # registers torch.optim.SCAO
from scao_dist.demo import GPT, ByteCorpus, GPTConfig, stdlib_corpus
from scao_dist.shard.comm import closing_process_group

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ds-config", default=os.path.join(HERE, "ds_config.json"), help="DeepSpeed JSON config")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (each = gradient_accumulation_steps)")
    p.add_argument("--model", default="auto", choices=["auto", "tiny", "small", "large"])
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (the model's by default)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="parameter dtype")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--out", default="runs/deepspeed")
    p.add_argument("--resume", action="store_true", help="load the latest checkpoint in --out first")
    p.add_argument("--max-bytes", type=int, default=None, help="cap on the stdlib corpus read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (the config's weight_decay is the default of the first group)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> dict:
    import deepspeed

    args = parse_args(argv)
    cpu = not torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu"
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    with open(args.ds_config) as fh:
        ds_config = json.load(fh)
    ds_config, cast = scao_ds.scao_config(ds_config)  # bf16.enabled -> cast here instead
    dtype = torch.bfloat16 if (args.dtype == "bf16" or cast is not None) else torch.float32

    gcfg = {"tiny": GPTConfig.tiny, "small": GPTConfig.small, "large": GPTConfig.large}[
        args.model if args.model != "auto" else ("tiny" if cpu else "small")
    ]()
    if args.seq_len:
        gcfg.seq_len = args.seq_len
    torch.manual_seed(args.seed)
    model = GPT(gcfg).to(dtype)  # bf16 weights; SCAO keeps the master bits (no fp32 copy)
    wd = ds_config.get("optimizer", {}).get("params", {}).get("weight_decay", 0.0)
    engine, opt, _, sched = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, wd), config=ds_config
    )
    micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()

    train_bytes, val_bytes = stdlib_corpus(args.max_bytes)
    train_data = ByteCorpus(train_bytes, gcfg.seq_len, micro, seed=args.seed)
    val_data = ByteCorpus(val_bytes, gcfg.seq_len, micro, seed=args.seed + 1)
    device = engine.device

    start = 0
    if args.resume and os.path.exists(os.path.join(args.out, "latest")):
        _, client = engine.load_checkpoint(args.out)
        start = int(client["step"])

    @torch.no_grad()
    def evaluate() -> float:
        engine.eval()
        losses = [float(engine(*val_data.batch(j * world + rank, device))) for j in range(args.eval_batches)]
        engine.train()
        t = torch.tensor(sum(losses) / len(losses), dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t) / world

    history: list[dict] = []
    for step in range(start, args.steps):
        if step % args.eval_every == 0:
            history.append({"step": step, "val_loss": evaluate()})
        for m in range(accum):
            x, y = train_data.batch((step * accum + m) * world + rank, device)
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()  # DeepSpeed steps SCAO (and the scheduler) on the last micro-batch only
        done = step + 1
        if done == args.steps or (args.save_every and done % args.save_every == 0):
            engine.save_checkpoint(args.out, tag=f"step{done}", client_state={"step": done})
        if rank == 0 and (done % 10 == 0 or done == args.steps):
            print(f"step {done}: loss {float(loss.detach()):.4f} lr {sched.get_last_lr()[0]:.2e}", flush=True)
    history.append({"step": args.steps, "val_loss": evaluate()})
    summary = {"first_val": history[0]["val_loss"], "last_val": history[-1]["val_loss"], "world_size": world}
    if rank == 0:
        print(f"optimizer: {type(opt).__name__} (grad_sync={opt.comm.grad_sync}), {world} rank(s)")
        print(f"done: held-out loss {summary['first_val']:.4f} -> {summary['last_val']:.4f}", flush=True)
    return summary


if __name__ == "__main__":
    with closing_process_group():  # barrier, then destroy: no rank leaves while another still needs the group
        main()
