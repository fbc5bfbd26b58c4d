"""SCAO in a Hugging Face ``Trainer``: one argument, ``optimizer_cls_and_kwargs``.

    from transformers import Trainer, TrainingArguments
    from scao_dist.integrations.hf import scao_optimizer_cls_and_kwargs

    args = TrainingArguments("out", learning_rate=3e-4, weight_decay=0.01, lr_scheduler_type="cosine",
                             warmup_steps=100, max_grad_norm=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      optimizer_cls_and_kwargs=scao_optimizer_cls_and_kwargs(args, precond_freq=5))
    trainer.train()

What the Trainer does with it (``Trainer.create_optimizer``): it builds the two usual param groups
itself — ``args.weight_decay`` on the weights, 0 on biases and norm weights
(``Trainer.get_decay_parameter_names``) — and calls ``SCAO(groups, **kwargs)``. For a custom class
it does **not** pass ``args.learning_rate``, ``adam_beta1/2`` or ``adam_epsilon``;
:func:`scao_optimizer_cls_and_kwargs` copies them into the kwargs, so ``--learning_rate`` and the
scheduler (which starts from each group's lr) behave as with the built-in AdamW. Gradient
accumulation, ``max_grad_norm`` clipping and ``resume_from_checkpoint`` work unchanged (SCAO's
state dict holds tensors only).

Precision: ``bf16=True`` in ``TrainingArguments`` autocasts a fp32 model (SCAO then keeps fp32
weights). For SCAO's lean path load the model in bf16 (``torch_dtype=torch.bfloat16``) and leave
``bf16``/``fp16`` off: its int8 correction bits stand in for an fp32 master copy.

Several GPUs: the Trainer wraps the model in DDP, which averages the gradients, so the kwargs
carry ``grad_sync="external"``: SCAO shards its states over the ranks and only all-gathers the
weights it updated. FSDP flattens parameters and is not supported; for DeepSpeed use its config
entry (``"optimizer": {"type": "SCAO"}``, see :mod:`scao_dist.integrations.deepspeed`).
"""

from __future__ import annotations

from typing import Any

from ..optim import SCAO


def scao_optimizer_cls_and_kwargs(args: Any = None, **knobs: Any) -> tuple[type[SCAO], dict[str, Any]]:
    """``(SCAO, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``.

    Args:
        args: the ``TrainingArguments`` whose ``learning_rate``, ``adam_beta1``/``adam_beta2`` and
            ``adam_epsilon`` to use (``None``: SCAO's defaults or ``knobs``).
        **knobs: any other SCAO argument (``precond_freq``, ``rank_max``, ...); they win over ``args``.
    """
    kwargs: dict[str, Any] = {"grad_sync": "external"}
    if args is not None:
        kwargs.update(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    kwargs.update(knobs)
    if kwargs.get("grad_release"):
        raise ValueError(
            "grad_release=True does not fit the Trainer: it clips and accumulates gradients after backward, "
            "and grad_release consumes them inside it"
        )
    return SCAO, kwargs
