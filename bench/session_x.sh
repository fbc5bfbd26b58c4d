#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the persistent low-rank kernels (one program per multiprocessor
# slot walks the tiles and loads the next tile during this tile's product) against the one-tile-per-
# program kernels they replace, in one run. Before the call: `mkdir old && git archive 7cc24aa scao_dist
# bench | tar -x -C old` (the previous kernels; skipped when old/ is missing).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_x}
mkdir -p "$OUT"
here=$PWD
if [ -d old/scao_dist ]; then
  (cd old && timeout 120 python3 -m bench.kernels --only residual_sumsq,complement_update --rep 100 \
    --out "$OUT/kernels_old.json" > "$OUT/kernels_old.log" 2>&1; echo "old rc=$?")
fi
cd "$here"
timeout 150 python3 -m bench.kernels --only residual_sumsq,complement_update --rep 100 \
  --out "$OUT/kernels_new.json" > "$OUT/kernels_new.log" 2>&1
echo "new rc=$?"
grep -E "^\| |verification" "$OUT"/kernels_old.log "$OUT/kernels_new.log"
timeout 330 python3 -m bench.kernels --only residual_sumsq,complement_update --match "(B,2048,8192)" --sweep \
  --rep 40 --warmup 10 --out "$OUT/kernels_sweep.json" > "$OUT/kernels_sweep.log" 2>&1
echo "sweep rc=$?"
grep -E "sweep " "$OUT/kernels_sweep.log"
python3 - "$OUT/kernels_sweep.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["kernels"]:
    print(r["kernel"], r["variant"], f"shipped {r['ms']:.3f} ms")
    for c in sorted(r.get("sweep", []), key=lambda c: c["ms"])[:8]:
        print("   ", {k: v for k, v in c.items() if k != "ms"}, f"{c['ms']:.3f} ms")
PY
