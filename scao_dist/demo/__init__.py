"""The embedded default workload: a byte-level GPT and a corpus that needs no download."""

from .corpus import ByteCorpus, stdlib_corpus
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "ByteCorpus", "GPTConfig", "stdlib_corpus"]
