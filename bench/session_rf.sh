#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): the 405M step of a835a2e against both anchors
# in one process each — fused torch AdamW and flashoptim's FlashAdamW (bf16 weights, 8-bit states, correction bits;
# the wheels carried in .whl/, bench/use_wheels.sh) — twice.
NAME=rf
. bench/session_lib.sh
# shellcheck source=bench/use_wheels.sh
source bench/use_wheels.sh "FlashAdamW (bench.step_profile's flash case is skipped)"
CASES=scao_norefresh,adamw,flash profile flash
CASES=scao_norefresh,adamw,flash profile flash2
summary
pack
