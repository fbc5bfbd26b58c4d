#!/usr/bin/env bash
# One GPU call of the benchmark: install the anchors' wheels, show the machine, run one suite within a hard
# wall-clock budget, and leave everything under $OUT (at most 8 files, flat): <mode>_session.log (in sweep mode
# the logs of the parallel processes follow), <mode>_results.md, <mode>_runs.tgz (one JSON per run; merge several
# calls with `python -m bench.report a.tgz b.tgz`), and the loss-vs-step / loss-vs-seconds PNGs (no loss-vs-seconds
# one when every run shared the GPU). The Markdown tables are printed last (the call returns the tail).
#
#   bash bench/gpu_session.sh [small|large|sweep]        # from the repo root; .whl/ must travel with it
#                                                          # (fill it here first: bash bench/fetch_wheels.sh)
# Modes
#   small (default)  43M model (d768, 6L, batch 16x512), each anchor at its best lr from DESIGN.md section 4
#                    (AdamW 5e-4, Muon 2e-3, FlashAdamW 5e-4, SOAP 1e-3, scao 0.2.4 int8 1e-3) and scao_dist at
#                    1e-3 and 2e-3; STEPS (default 1500) is lowered by --fit-steps when the estimate does not fit.
#   large            405M model (d2048, 8L, batch 8x512), 40 steps: ms/step and peak memory of every optimizer.
#   sweep            lr grid (bench.optimizers.DEFAULT_SWEEP_LRS) for OPTS (default adamw,scao) on the 43M model,
#                    PARALLEL processes sharing the GPU (bench.compare --shard i/PARALLEL, i = 0..PARALLEL-1: run j of
#                    the plan goes to process j % PARALLEL; same flags, same work dir, each its own log and the same
#                    time budget). Only losses count: the report leaves the timings of runs that shared the GPU out.
#                    No --fit-steps when PARALLEL > 1 (its estimate is of runs alone): STEPS (default 1500) is kept,
#                    and a run still going at the budget is cut and marked "truncated". LRS names the lrs to run
#                    instead of the grid, per optimizer ("adamw=5e-4,1e-3;scao=1e-3", or a best_lrs.json in the
#                    tree); an optimizer of OPTS not named in LRS runs its whole grid.
# Knobs (environment): STEPS, SEEDS (comma-separated, default 0; "1" in a second call gives the second seed,
#   "0,1" both), OPTS, LRS, PARALLEL (sweep only, default 4; 1: one process, with --fit-steps), WALL_S (the
#   whole script, default 530 s: under 9 minutes), EXTRA_ARGS (more bench.compare flags, last: they override), OUT.
# Examples (device tool, carry [".whl"]):
#   PARALLEL=6 OPTS=adamw,muon,scao,flash,soap bash bench/gpu_session.sh sweep
#   SEEDS=1 PARALLEL=6 OPTS=adamw,muon,scao,flash,soap \
#     LRS='adamw=5e-4,1e-3;muon=2e-3,4e-3;scao=1e-3,2e-3;flash=5e-4,1e-3;soap=1e-3,2e-3' \
#     bash bench/gpu_session.sh sweep                     # the second seed at the lrs that the first call liked
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-${MODE:-small}}
OUT=${OUT:-/tmp/bench_out}
WALL_S=${WALL_S:-530}
SEEDS=${SEEDS:-0}
PARALLEL=${PARALLEL:-4}
EXTRA_ARGS=${EXTRA_ARGS:-}
WORK=/tmp/bench_work/$MODE
T0=$SECONDS
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.json "$WORK"/*.png "$WORK"/*.md "$WORK"/shard_*.log

case "$MODE" in
  small|large|sweep) ;;
  *) echo "usage: bash bench/gpu_session.sh [small|large|sweep]"; exit 2 ;;
esac
if ! [[ "$PARALLEL" =~ ^[0-9]+$ ]] || (( PARALLEL < 1 )); then
  echo "PARALLEL must be a whole number >= 1, got '$PARALLEL'"; exit 2
fi
[[ "$MODE" == sweep ]] || PARALLEL=1

main() {
  echo "=== gpu_session.sh $MODE: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), wall budget ${WALL_S} s"
  source bench/use_wheels.sh "flashoptim, heavyball and scao will be reported as not installed"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  nvidia-smi || true
  python3 -m bench.env_report triton numpy matplotlib flashoptim heavyball scao scao_dist

  # what is left of the wall budget, less the report/archive at the end
  local budget=$(( WALL_S - (SECONDS - T0) - 35 ))
  if (( budget < 60 )); then echo "only ${budget} s left for the suite: giving up"; return 1; fi
  local common=(--out "$WORK" --no-report --time-budget-s "$budget" --seeds "$SEEDS")
  local args
  case "$MODE" in
    small)
      args=(--size small --optimizers "${OPTS:-adamw,muon,scao,flash,soap,scao024_int8}"
            --lrs "${LRS:-adamw=5e-4;muon=2e-3;scao=1e-3,2e-3;flash=5e-4;soap=1e-3;scao024_int8=1e-3}"
            --steps "${STEPS:-1500}" --fit-steps --eval-every 100 --eval-batches 8 --profile-phases 20
            --max-minutes-per-run 3.5) ;;
    large)
      args=(--size large
            --optimizers "${OPTS:-adamw,muon,flash,soap,scao024_int8,scao024,scao,scao_soap}"
            --lrs "${LRS:-adamw=5e-4;muon=2e-3;flash=5e-4;soap=1e-3;scao024_int8=1e-3;scao024=1e-3;scao=1e-3;scao_soap=1e-3}"
            --steps "${STEPS:-40}" --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10
            --profile-phases 10 --max-minutes-per-run 2) ;;
    sweep)
      args=(--size small --sweep --optimizers "${OPTS:-adamw,scao}" --steps "${STEPS:-1500}"
            --eval-every 100 --eval-batches 8 --max-minutes-per-run 3)
      (( PARALLEL > 1 )) || args+=(--fit-steps) ;;  # its estimate is of runs alone on the GPU
  esac
  [[ -n "${LRS:-}" && "$MODE" == sweep ]] && args+=(--lrs "$LRS")
  if (( PARALLEL == 1 )); then
    # shellcheck disable=SC2086
    echo "+ python3 -m bench.compare ${args[*]} ${common[*]} $EXTRA_ARGS"
    # shellcheck disable=SC2086
    timeout --signal=TERM --kill-after=10 $(( budget + 40 )) \
      python3 -m bench.compare "${args[@]}" "${common[@]}" $EXTRA_ARGS
    echo "=== bench.compare exited with $? after $(( SECONDS - T0 )) s"
    return
  fi
  # PARALLEL processes on the one GPU, each with the whole budget; their logs go into the session log after.
  # Host threads split between them (the GPU does the work; 16 threads each would only fight over the cores).
  local i pids=()
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PARALLEL > 0 ? $(nproc) / PARALLEL : 1 ))}
  # shellcheck disable=SC2086
  echo "+ OMP_NUM_THREADS=$OMP_NUM_THREADS python3 -m bench.compare ${args[*]} ${common[*]} $EXTRA_ARGS --shard I/$PARALLEL  (I = 0..$(( PARALLEL - 1 )))"
  for (( i = 0; i < PARALLEL; i++ )); do
    # shellcheck disable=SC2086
    timeout --signal=TERM --kill-after=10 $(( budget + 40 )) \
      python3 -m bench.compare "${args[@]}" "${common[@]}" $EXTRA_ARGS --shard "$i/$PARALLEL" \
      > "$WORK/shard_$i.log" 2>&1 &
    pids+=($!)
  done
  for (( i = 0; i < PARALLEL; i++ )); do
    wait "${pids[$i]}"
    echo "=== shard $i/$PARALLEL exited with $? after $(( SECONDS - T0 )) s"
  done
  for (( i = 0; i < PARALLEL; i++ )); do
    echo
    echo "=================================== shard $i/$PARALLEL: log ==================================="
    cat "$WORK/shard_$i.log"
  done
}

main 2>&1 | tee "$OUT/${MODE}_session.log"

# Tables, plots and the archive, even after a failure above (whatever JSON exists is reported).
python3 -m bench.report "$WORK" --out "$WORK" > /dev/null 2> "$WORK/report.err" || cat "$WORK/report.err"
cp "$WORK/results.md" "$OUT/${MODE}_results.md" 2>/dev/null
cp "$WORK"/loss_vs_*.png "$OUT/" 2>/dev/null
( cd "$WORK" && tar czf "$OUT/${MODE}_runs.tgz" ./*.json 2>/dev/null )
echo "=== files in \$OUT: $(ls "$OUT" | tr '\n' ' ')(after $(( SECONDS - T0 )) s)" | tee -a "$OUT/${MODE}_session.log"
echo
cat "$OUT/${MODE}_results.md" 2>/dev/null
echo
echo "=================================== brief (same numbers) ==================================="
python3 -m bench.report "$WORK" --out "$WORK/brief" --no-plots --brief 2>/dev/null | sed -n '/^## /,$p'
