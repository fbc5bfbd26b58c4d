#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), after session_z (whose step times moved by +-7 ms between runs of one
# setting): the refresh worker's own time per step (bench.phases: compute_refresh timed with its stream
# synchronised), the Nystrom refresh without its two host syncs against `e190d1c`, 405M GPT, precond_freq 5,
# alternating old/new twice. Before the call: `mkdir old && git archive e190d1c scao_dist bench | tar -x -C old`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_z2}
W=/tmp/session_z2_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
run() {  # name, tree
  (cd "$2" && timeout 100 python3 -m bench.compare --size large --optimizers scao --lrs scao=1e-3 --steps 40 \
    --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "run $1 rc=$?")
}
for pass in a b; do
  [ -d old/scao_dist ] && run "old$pass" "$here/old"
  run "new$pass" "$here"
done
tar czf "$OUT/session_z2.tgz" -C "$W" --exclude triton_cache .
python3 - "$W" <<'PY'
import json, pathlib, sys
def walk(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(x, (int, float)):
        yield path, x
for name in ("olda", "newa", "oldb", "newb"):
    for f in sorted(pathlib.Path(sys.argv[1], name).rglob("*_s0.json")):
        d = json.load(open(f))
        ph = d.get("phases") or {}
        swap = (ph.get("phases") or {}).get("refresh_swap", {}).get("device_ms")
        print(name, "ms/step", d.get("ms_step"), "ms in step()", d.get("ms_opt_step"),
              "worker ms/step", ph.get("refresh_compute_async_ms"), "waiting at swap", swap)
PY
