"""One line per ``bench.compare`` run on where a scao_dist step waits for its refresh worker.

Reads the run JSONs that ``bench.compare --profile-phases N`` wrote (seed 0) under each named folder
and prints the step time (median, p99), the time inside ``step()``, the refresh worker's own time
per step (``compute_refresh`` timed with its stream synchronised, off the step) and the time the
step waited for it at the swap.

    python -m bench.refresh_summary WORKDIR olda newa oldb newb
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any


def line(name: str, run: dict[str, Any]) -> str:
    """The printed line for one run's JSON."""
    ph = run.get("phases") or {}
    swap = (ph.get("phases") or {}).get("refresh_swap", {}).get("device_ms")
    step, opt = run.get("ms_step") or {}, run.get("ms_opt_step") or {}
    return (
        f"{name}: ms/step {step.get('median')} p99 {step.get('p99')}, ms in step() {opt.get('median')}, "
        f"refresh worker ms/step {ph.get('refresh_compute_async_ms')}, waiting at the swap {swap}"
    )


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    root, names = pathlib.Path(args[0]), args[1:]
    for name in names:
        for f in sorted((root / name).rglob("*_s0.json")):
            print(line(name, json.loads(f.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
