"""Print the machine and the versions of some modules (the first lines of every GPU session log).

    python3 -m bench.env_report triton deepspeed scao_dist ...
"""

from __future__ import annotations

import importlib
import platform
import sys

import torch


def main(modules: list[str]) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = torch.cuda.get_device_name() if gpus else "none"
    print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}", end="")
    print(f"  gpus {gpus} ({name})")
    for m in modules:
        try:
            mod = importlib.import_module(m)
        except Exception as e:
            print(f"  {m}: NOT importable ({type(e).__name__}: {e})")
            continue
        version = getattr(mod, "__version__", getattr(mod, "VERSION", "?"))
        print(f"  {m} {version}  ({mod.__file__})")


if __name__ == "__main__":
    main(sys.argv[1:])
