#!/usr/bin/env bash
# One GPU call of the benchmark: install the anchors' wheels, show the machine, run one suite within a hard
# wall-clock budget, and leave everything under $OUT (5 files, flat): <mode>_session.log, <mode>_results.md,
# <mode>_runs.tgz (one JSON per run; merge several calls with `python -m bench.report a.tgz b.tgz`), and the
# loss-vs-step / loss-vs-seconds PNGs. The Markdown tables are printed last (the call returns the tail).
#
#   bash bench/gpu_session.sh [small|large|sweep]        # from the repo root; .whl/ must travel with it
#                                                          # (fill it here first: bash bench/fetch_wheels.sh)
# Modes
#   small (default)  43M model (d768, 6L, batch 16x512), each anchor at its best lr from DESIGN.md section 4
#                    (AdamW 5e-4, Muon 2e-3, FlashAdamW 5e-4, SOAP 1e-3, scao 0.2.4 int8 1e-3) and scao_dist at
#                    1e-3 and 2e-3; STEPS (default 1500) is lowered by --fit-steps when the estimate does not fit.
#   large            405M model (d2048, 8L, batch 8x512), 40 steps: ms/step and peak memory of every optimizer.
#   sweep            lr grid (bench.optimizers.DEFAULT_SWEEP_LRS) for OPTS (default adamw,scao) on the 43M model.
# Knobs (environment): STEPS, SEEDS (default 0; "1" in a second call gives the second seed), OPTS, LRS,
#   WALL_S (the whole script, default 530 s: under 9 minutes), EXTRA_ARGS (more bench.compare flags), OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-${MODE:-small}}
OUT=${OUT:-/tmp/bench_out}
WALL_S=${WALL_S:-530}
SEEDS=${SEEDS:-0}
EXTRA_ARGS=${EXTRA_ARGS:-}
WORK=/tmp/bench_work/$MODE
T0=$SECONDS
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.json "$WORK"/*.png "$WORK"/*.md

case "$MODE" in
  small|large|sweep) ;;
  *) echo "usage: bash bench/gpu_session.sh [small|large|sweep]"; exit 2 ;;
esac

main() {
  echo "=== gpu_session.sh $MODE: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), wall budget ${WALL_S} s"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl 2>&1 | grep -v -i "warning: running pip as" || true
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  else
    echo "WARNING: no .whl/ here (carry it: bash bench/fetch_wheels.sh, then carry ['.whl']):" \
         "flashoptim, heavyball and scao will be reported as not installed"
  fi
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
      args=(--size small --sweep --optimizers "${OPTS:-adamw,scao}" --steps "${STEPS:-1500}" --fit-steps
            --eval-every 100 --eval-batches 8 --max-minutes-per-run 3) ;;
  esac
  [[ -n "${LRS:-}" && "$MODE" == sweep ]] && args+=(--lrs "$LRS")
  # shellcheck disable=SC2086
  echo "+ python3 -m bench.compare ${args[*]} ${common[*]} $EXTRA_ARGS"
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=10 $(( budget + 40 )) \
    python3 -m bench.compare "${args[@]}" "${common[@]}" $EXTRA_ARGS
  echo "=== bench.compare exited with $? after $(( SECONDS - T0 )) s"
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
