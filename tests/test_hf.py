"""SCAO in a Hugging Face Trainer on a tiny randomly initialised Llama (CPU)."""

import os

import pytest
import torch

if os.environ.get("CI"):
    import transformers  # CI installs it: missing is a failure there, not a skip
else:
    transformers = pytest.importorskip("transformers")

from scao_dist import SCAO
from scao_dist.integrations.hf import scao_optimizer_cls_and_kwargs

pytestmark = pytest.mark.timeout(120)
VOCAB, SEQ = 64, 32


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=SEQ,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).to(dtype)


class Copies(torch.utils.data.Dataset):
    """Eight fixed sequences, each a random 8-token motif repeated: memorised in a few steps."""

    def __len__(self):
        return 256

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i % 8)
        ids = torch.randint(0, VOCAB, (8,), generator=g).repeat(SEQ // 8)
        return {"input_ids": ids, "labels": ids.clone()}


def _args(out, **kw):
    base = dict(
        output_dir=str(out), max_steps=16, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=3e-3, weight_decay=0.1, lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=1.0,
        logging_steps=1, save_strategy="steps", save_steps=8, report_to=[], use_cpu=True, disable_tqdm=True,
        seed=0, data_seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _trainer(model, args, **knobs):
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Copies(),
        optimizer_cls_and_kwargs=scao_optimizer_cls_and_kwargs(args, precond_freq=4, **knobs),
    )


def test_trainer_trains_with_scao_and_hf_param_groups(tmp_path):
    model = _model()
    trainer = _trainer(model, _args(tmp_path))
    trainer.train()
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    assert isinstance(opt, SCAO)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["params"] and all("norm" in names[id(p)] for p in no_decay["params"])
    assert all("norm" not in names[id(p)] for p in decay["params"])
    assert decay["initial_lr"] == 3e-3 and decay["betas"] == (0.9, 0.999)  # from TrainingArguments
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 16 and losses[-1] < 0.8 * losses[0]
    assert opt.counters["refreshes"] > 0  # the second-order path ran


def test_resume_from_checkpoint_matches_the_uninterrupted_run(tmp_path):
    model = _model()
    _trainer(model, _args(tmp_path)).train()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    other = _model()
    _trainer(other, _args(tmp_path)).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6)


def test_bf16_weights_without_autocast(tmp_path):
    """SCAO's lean path: the model itself in bf16 (int8 correction bits, no fp32 master copy)."""
    model = _model(torch.bfloat16)
    trainer = _trainer(model, _args(tmp_path, save_strategy="no"))
    trainer.train()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0]


def test_helper_arguments():
    cls, kw = scao_optimizer_cls_and_kwargs(None, rank_max=64)
    assert cls is SCAO and kw == {"grad_sync": "external", "rank_max": 64}
    with pytest.raises(ValueError, match="grad_release"):
        scao_optimizer_cls_and_kwargs(None, grad_release=True)
