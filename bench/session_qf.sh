#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): the low-rank kernels with wider rank chunks
# masked past the rank (lowrank._rank_chunk: 3 chunks of 64 or 5 of 32 at K = 144 instead of 9 of 16, no factor
# copied) against the default 16, each verified and timed on the 2048x8192 cases, in one call.
NAME=qf
. bench/session_lib.sh
for bk in 64 16 32; do
  kernels "bk$bk" . 110 --only complement_update,residual_stats --match "2048,8192" --set "lowrank.BK=$bk"
  grep -E "GB/s \(|verif" "$W/kernels_bk$bk.log"
done
pack
