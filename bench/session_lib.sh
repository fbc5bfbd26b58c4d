# Shared helpers of the GPU-call scripts (bench/session_v*.sh): source it after setting NAME.
#   NAME=va; . bench/session_lib.sh
# Sets OUT (what comes back), W (work files), a Triton cache in W, and defines
#   profile LABEL [DIR [KW [EXTRA]]]  bench.step_profile of the 405M step without refreshes, captured, SCAO against fused
#                         AdamW in one process (CASES: other cases, e.g. CASES=scao_norefresh,adamw,flash; SIZE=small:
#                         the 43M GPT), 60 timed steps; run in DIR (default .: this tree; ab_old: an older tree
#                         unpacked there, given this tree's bench/step_profile.py and knobs.py; KW: the SCAO keyword
#                         arguments as JSON members, default '"cuda_graph": true'; EXTRA: more options, e.g.
#                         '--set lowrank.COMPLEMENT_MAXNREG=168'); JSON to $OUT/prof_LABEL.json, the lines that
#                         matter printed.
#   profile_ab [N]        N rounds (default 2) of profile new / profile old ab_old, alternating (labels new, old,
#                         new2, old2, ...).
#   capture [KW]          bench.capture_check on the 405M GPT, a NaN at step 16 (KW: more SCAO keyword
#                         arguments as JSON members): its verdict printed.
#   capture_grow          bench.capture_check on the 43M GPT: a basis widened at step 8 (recaptures on both lanes),
#                         a NaN at step 11: its verdict printed.
#   kernels LABEL DIR LIMIT ARGS..  bench.kernels ARGS in DIR (.: this tree; ab_old: the older one) under a LIMIT of
#                         seconds; JSON to $OUT/kernels_LABEL.json, log to $W/kernels_LABEL.log, its exit status printed.
#   sweep LABEL KERNEL MATCH GRID  bench.kernels --sweep of KERNEL's cases matching MATCH over the settings GRID (JSON
#                         list); every setting's time printed, the JSON kept in the work files ($W/sweep_LABEL.json).
#   kernels_report FILE.. each bench.kernels JSON: copy bandwidth, the verification's verdict, the table.
#   summary               one line per $OUT/prof_*.json: step, AdamW, GPU busy and wall in step(), peak, skipped.
#   pack                  the work files (logs) as $OUT/session_$NAME.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_$NAME}
W=/tmp/session_${NAME}_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
if [ -d ab_old/bench ]; then cp bench/step_profile.py bench/knobs.py ab_old/bench/; fi

profile() {
  local D=${2:-.} KW=${3:-'"cuda_graph": true'} EXTRA=${4:-}
  # shellcheck disable=SC2086  # (EXTRA: options split on spaces)
  (cd "$D" && timeout 150 python3 -m bench.step_profile --size "${SIZE:-large}" --cases "${CASES:-scao_norefresh,adamw}" --steps 60 \
    --profile-steps 3 --scao-kwargs "{$KW}" $EXTRA --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1)
  echo "profile $1 ($D) rc=$?"
  grep -E "step\(\)|inside step|host split|_complement_update|_sumsq|_ema_signed" "$W/prof_$1.log" | cut -c1-330 | head -8
}

profile_ab() {
  local n=${1:-2} i s
  for ((i = 1; i <= n; i++)); do
    s=""; [ "$i" -gt 1 ] && s=$i
    profile "new$s"
    profile "old$s" ab_old
  done
}

capture() {
  local KW=${1:-}
  timeout 130 python3 -m bench.capture_check --size large --steps 20 --nan-at 16 --scao-kwargs "{$KW}" \
    --out "$OUT/capture_large.json" > "$W/capture_large.log" 2>&1
  echo "capture ($KW) rc=$?"
  python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})"
}

capture_grow() {
  timeout 100 python3 -m bench.capture_check --size small --steps 14 --grow-at 8 --nan-at 11 \
    --out "$OUT/capture_small_grow.json" > "$W/capture_small_grow.log" 2>&1
  echo "capture small rc=$?"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('bit_exact','state_mismatch_counts','graph_counts','inputs_counts','skipped_steps')})" "$OUT/capture_small_grow.json"
}

kernels() {
  local label=$1 dir=$2 limit=$3
  shift 3
  (cd "$dir" && timeout "$limit" python3 -m bench.kernels "$@" --out "$OUT/kernels_$label.json" \
    > "$W/kernels_$label.log" 2>&1)
  echo "kernels $label rc=$?"
}

sweep() {
  timeout 150 python3 -m bench.kernels --only "$2" --match "$3" --sweep --grid "$4" --out "$W/sweep_$1.json" \
    > "$W/sweep_$1.log" 2>&1
  echo "sweep $1 rc=$?"
  python3 - "$W/sweep_$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k in d["kernels"]:
    print(f"  {k['kernel']} {k['variant']}: default {k['ms']:.4f} ms ({k['frac_of_copy']:.0%})")
    for s in k.get("sweep", []):
        print(f"     {s['ms']:.4f}  {({a: b for a, b in s.items() if a != 'ms'})}")
PY
}

kernels_report() {
  for f in "$@"; do
    python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = d["verify"]
print(sys.argv[1].split("/")[-1], "copy GB/s", round(d["copy"]["gbps"]), "verify ok", v.get("ok"), v.get("cases"), v.get("failures", [])[:3])
print(d["markdown"])
PY
  done
}

summary() {
  for f in "$OUT"/prof_*.json; do
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cases']['scao_norefresh']; sw=c['torch_profile'].get('step_windows',{}); fl=d['cases'].get('flash',{}); print(sys.argv[1].split('/')[-1], 'step', c['step_ms']['median'], 'adamw', d['cases']['adamw']['step_ms']['median'], *(('flash', fl.get('step_ms',{}).get('median', fl.get('skipped'))) if fl else ()), 'busy', sw.get('busy_ms'), 'wall', sw.get('wall_ms'), 'peak', c.get('peak_mb'), 'skipped', c['counters'].get('skipped_steps', 0))" "$f"
  done
}

pack() {
  tar czf "$OUT/session_$NAME.tgz" -C "$W" --exclude triton_cache .
}
