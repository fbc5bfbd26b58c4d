#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): the 43M GPT's step of f298989 against fused
# AdamW and FlashAdamW in one process (issue 5 asks for both sizes; rf ran the 405M), twice.
NAME=rg
. bench/session_lib.sh
# shellcheck source=bench/use_wheels.sh
source bench/use_wheels.sh "FlashAdamW (bench.step_profile's flash case is skipped)"
SIZE=small CASES=scao_norefresh,adamw,flash profile small
SIZE=small CASES=scao_norefresh,adamw,flash profile small2
summary
pack
