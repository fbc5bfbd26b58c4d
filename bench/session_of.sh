#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200, carry [".whl"]), 2026-12-04 (twentieth session): the session's final tree (dense
# frames taking bf16 gradients, which at 405M touches the embedding-side groups) — the captured 405M step() against
# fused AdamW and FlashAdamW in one process, two processes; capture_check on the 405M GPT (a NaN at step 16).
NAME=of
. bench/session_lib.sh
source bench/use_wheels.sh "FlashAdamW will be reported as not installed"
export CASES=scao_norefresh,adamw,flash
profile large1
profile large2
summary
capture
pack
