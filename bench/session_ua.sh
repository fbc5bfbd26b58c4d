#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fourteenth session): recaptures on two lanes (basis widening
# mid-run, with a NaN step) bit for bit against the eager step, small and large; the 405M step's GPU work by full
# kernel name, captured (kernels_in_step) and eager (aten operators by input shape: where the glue comes from).
NAME=ua
. bench/session_lib.sh
timeout 100 python3 -m bench.capture_check --size small --steps 14 --grow-at 8 --nan-at 11 \
  --out "$OUT/capture_small_grow.json" > "$W/capture_small_grow.log" 2>&1
echo "capture small grow rc=$?"
timeout 150 python3 -m bench.capture_check --size large --steps 20 --grow-at 10 --nan-at 16 \
  --out "$OUT/capture_large_grow.json" > "$W/capture_large_grow.log" 2>&1
echo "capture large grow rc=$?"
for f in "$OUT"/capture_*.json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], {k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})" "$f"
done
profile new
profile eager . '"cuda_graph": false'
python3 - "$OUT" <<'PY'
import json, sys
for lab in ("new", "eager"):
    d = json.load(open(f"{sys.argv[1]}/prof_{lab}.json"))
    c = d["cases"]["scao_norefresh"]
    tp = c.get("torch_profile", c.get("profile", {}))
    sw = tp.get("step_windows", {}) if isinstance(tp, dict) else {}
    print("==", lab, "step", c.get("step_ms"), "peak", c.get("peak_mb"), "adamw", d["cases"]["adamw"].get("step_ms"))
    for name, calls, us in sw.get("kernels_in_step", [])[:40]:
        print(f"  {us:8.1f} us {calls:6.1f}x  {name[:230]}")
    for row in (tp.get("top_device_by_shape") or [])[:30] if lab == "eager" else []:
        print(f"  {row['device_ms_per_step']:8.3f} ms {row['calls_per_step']:6.1f}x {row['name']} {row['input_shapes']}"[:300])
PY
pack
