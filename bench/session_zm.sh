#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): where the applied complement kernel's time goes (bench.complement_probe:
# variants with one stage left out or cheapened, tile shapes; ncu counters of it and of residual_sumsq where the
# runtime allows), then the 405M step() without refreshes, captured and eager, with fused AdamW timed in the same
# process as the captured one (bench.step_profile).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zm}
W=/tmp/session_zm_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
timeout 200 python3 -m bench.complement_probe --out "$OUT/probe.json" 2>&1 | tee "$OUT/probe.log"
echo "probe rc=$?"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  timeout 150 "$NCU" --clock-control none -k "regex:_complement_update_kernel|_sumsq_kernel" -c 2 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section LaunchStats --section InstructionStats \
    python3 -m bench.complement_probe --ncu > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Registers|Achieved Occupancy|Stall|Issued Ipc|No Eligible" "$OUT/ncu.txt" | head -60
fi
prof() {  # name, cases, extra SCAO kwargs
  timeout 150 python3 -m bench.step_profile --size large --cases "$2" --steps 20 --profile-steps 5 \
    --scao-kwargs "$3" --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1; echo "profile $1 rc=$?"
}
prof graph scao_norefresh,adamw '{"cuda_graph": true}'
prof eager scao_norefresh,adamw '{}'
for f in graph eager; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/prof_$f.log" | head -6; done
tar czf "$OUT/session_zm.tgz" -C "$W" --exclude triton_cache .
