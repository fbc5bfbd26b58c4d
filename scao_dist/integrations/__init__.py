"""Integrations with training frameworks; each module imports its framework lazily.

* :mod:`scao_dist.integrations.deepspeed` — ``"optimizer": {"type": "SCAO"}`` in a DeepSpeed config;
* :mod:`scao_dist.integrations.hf` — SCAO in a Hugging Face ``Trainer``.
"""
