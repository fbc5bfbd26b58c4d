#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the record of the step-scalar kernels (hyper=) verified against their twins
# and timed (bench.kernels, the "hyper" cases), the 43M step without refreshes eager and captured (bench.step_profile),
# and the 405M GPT at precond_freq 10 eager against captured in both orders (bench.compare).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zj}
W=/tmp/session_zj_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.kernels --only rotated_adam_,apply_update_,adamw_,complement_update --match hyper \
  --rep 20 --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"
prof() {  # name, extra SCAO kwargs
  timeout 100 python3 -m bench.step_profile --size small --cases scao_norefresh --steps 20 --profile-steps 5 \
    --scao-kwargs "$2" --out "$W/prof_$1.json" > "$W/prof_$1.log" 2>&1; echo "profile $1 rc=$?"
}
prof small_eager '{}'
prof small_graph '{"cuda_graph": true}'
G='graph={"cuda_graph": true, "precond_freq": 10}'
large() {  # name, optimizers
  timeout 120 python3 -m bench.compare --size large --optimizers "$2" --scao-variant "$G" \
    --scao-variant 'eager={"precond_freq": 10}' --lrs "eager=1e-3;graph=1e-3" --steps 40 --warmup 10 \
    --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "large $1 rc=$?"
}
large f10a eager,graph
large f10b graph,eager
tar czf "$OUT/session_zj.tgz" -C "$W" --exclude triton_cache .
grep -E "verification|mismatch|^\| " "$OUT/kernels.log" | head -24
for f in small_eager small_graph; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/prof_$f.log" | head -3 | cut -c1-200; done
grep -h "^\[run.*ok" "$W"/f10a.log "$W"/f10b.log
python3 -m bench.refresh_summary "$W" f10a f10b 2>&1 | tail -6
