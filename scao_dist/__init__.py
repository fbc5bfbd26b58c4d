"""scao_dist: SOAP-quality second-order optimization at the memory of an 8-bit AdamW, sharded."""

from .integrations import deepspeed as _deepspeed  # noqa: F401  (registers torch.optim.SCAO for DeepSpeed)
from .optim import SCAO
from .state import memory_report

__all__ = ["SCAO", "__version__", "memory_report"]
__version__ = "0.1.0"
