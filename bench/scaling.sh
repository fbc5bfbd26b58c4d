#!/usr/bin/env bash
# One device-tool call of the weak-scaling run (issues 4 and 8): scao_dist SCAO and DeepSpeed ZeRO-1 AdamW on the
# 405M GPT at every N in {1, 2, 4} that the host's GPUs allow, smallest N first (a budget cut loses the largest),
# within WALL_S seconds in all (default 550: under 9.5 minutes). The table is printed last.
#
#   bash bench/fetch_wheels.sh             # here, once: .whl/ (DeepSpeed + its dependencies, the anchors)
#   device tool: command "bash bench/scaling.sh", kind nvidia-h200-x2 (or -x4), carry [".whl"]
#
# Files under $OUT (3, flat): scaling.md (the table), scaling_session.log (everything printed),
# scaling_runs.tgz (one JSON per configuration with per-rank numbers, and every rank's log).
# Knobs (environment): WALL_S, STEPS (timed, default 30), WARMUP (default 10), NPROC (default auto),
#   OPTS (default scao,deepspeed), EXTRA_ARGS (more bench.scaling flags), OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

# NVLink multicast can take the host's GPUs down: off for this shell and every process it starts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/scaling_out}
WALL_S=${WALL_S:-550}
WORK=/tmp/scaling_work
T0=$SECONDS
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK"

main() {
  echo "=== scaling.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), wall budget ${WALL_S} s"
  echo "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST" \
       "NVSHMEM_DISABLE_NVLS=$NVSHMEM_DISABLE_NVLS"
  source bench/use_wheels.sh "DeepSpeed rows will fail"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  echo "--- nvidia-smi topo -m (how the GPUs are linked)"
  nvidia-smi topo -m || true
  python3 -m bench.env_report deepspeed pydantic hjson msgpack triton scao_dist

  local budget=$(( WALL_S - (SECONDS - T0) - 25 ))
  if (( budget < 90 )); then echo "only ${budget} s left for the runs: giving up"; return 1; fi
  local args=(--nproc "${NPROC:-auto}" --optimizers "${OPTS:-scao,deepspeed}" --steps "${STEPS:-30}"
              --warmup "${WARMUP:-10}" --out "$WORK" --time-budget-s "$budget")
  # shellcheck disable=SC2086
  echo "+ python3 -m bench.scaling ${args[*]} ${EXTRA_ARGS:-}"
  # the launcher kills its workers on a timeout or a signal; this outer timeout is the last resort
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=15 $(( budget + 20 )) python3 -m bench.scaling "${args[@]}" ${EXTRA_ARGS:-}
  echo "=== bench.scaling exited with $? after $(( SECONDS - T0 )) s"
}

main 2>&1 | tee "$OUT/scaling_session.log"

python3 -m bench.scaling --report "$WORK" > /dev/null 2>&1 || true
cp "$WORK/scaling.md" "$OUT/scaling.md" 2>/dev/null
tar czf "$OUT/scaling_runs.tgz" -C "$WORK" . 2>/dev/null
echo "=== files in \$OUT: $(ls "$OUT" | tr '\n' ' ')(after $(( SECONDS - T0 )) s)" | tee -a "$OUT/scaling_session.log"
echo
echo "--- GPU links (nvidia-smi topo -m; full machine report at the top of scaling_session.log)"
nvidia-smi topo -m 2>/dev/null | head -12 || true
echo
cat "$OUT/scaling.md" 2>/dev/null || echo "(no table: see scaling_session.log)"
