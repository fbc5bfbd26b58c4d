#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): ema_signed_ decoding its codes through a 256-entry table instead of an
# IEEE division per value (bench.kernels --grid: the table on/off, two launch settings); the complement kernel's
# tile shapes, warps and pipeline depth after the bf16 split (its case as the 405M step runs it); the 405M step()
# without refreshes, captured, against fused AdamW in the same process (after the host-path trims of 91232da);
# capture_check on the 405M GPT with refreshes (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz}
W=/tmp/session_zz_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only ema_signed_ --sweep --match "bf16 out" --out "$OUT/kernels_ema.json" \
  --grid '[{"moments.DECODE_LUT": false}, {"moments.DECODE_LUT": true}, {"moments.DECODE_LUT": true, "moments.BG": 16, "num_warps": 2}, {"moments.DECODE_LUT": true, "moments.BG": 64, "num_warps": 8}]' \
  > "$OUT/kernels_ema.log" 2>&1
echo "ema rc=$?"; grep -E "verif|mismatch|sweep|GB/s" "$OUT/kernels_ema.log" | head -6
python3 -c "import json; d=json.load(open('$OUT/kernels_ema.json')); [print(c) for r in d.get('rows', d.get('results', [])) for c in r.get('sweep', [])]" 2>&1 | head -8
timeout 240 python3 -m bench.kernels --only complement_update --sweep --match "bf16 Q_R, bf16 M" --out "$OUT/kernels_cu.json" \
  --grid '[{}, {"lowrank.BM": 128}, {"lowrank.BN": 128}, {"lowrank.BM": 128, "lowrank.COMPLEMENT_WARPS": [8, 8]}, {"lowrank.BN": 128, "lowrank.COMPLEMENT_WARPS": [8, 8]}, {"lowrank.BK": 32}, {"num_stages": 2}, {"num_stages": 4}]' \
  > "$OUT/kernels_cu.log" 2>&1
echo "complement rc=$?"; grep -E "verif|mismatch|sweep|GB/s" "$OUT/kernels_cu.log" | head -6
python3 -c "import json; d=json.load(open('$OUT/kernels_cu.json')); [print(c) for r in d.get('rows', d.get('results', [])) for c in r.get('sweep', [])]" 2>&1 | head -10
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|ms .*x  " "$W/prof_graph.log" | cut -c1-200 | head -16
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','skipped_steps','steps_taken','step_ms_median')})"
tar czf "$OUT/session_zz.tgz" -C "$W" --exclude triton_cache .
