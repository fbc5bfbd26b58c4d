#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200, carry [".whl"]), 2026-12-04 (twentieth session): issue 5's step figures on the
# tree it is closed on — the captured step() without refreshes against fused AdamW and FlashAdamW (flashoptim 0.1.4
# from the carried wheels) in one process, on the 405M GPT and the 43M one, two processes each, alternating.
NAME=oc
. bench/session_lib.sh
source bench/use_wheels.sh "FlashAdamW will be reported as not installed"
export CASES=scao_norefresh,adamw,flash
profile large1
SIZE=small profile small1
profile large2
SIZE=small profile small2
summary
pack
