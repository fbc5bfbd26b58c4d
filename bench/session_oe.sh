#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (twentieth session): the 43M GPT's step with its dense-framed groups
# taking bf16 gradients (KronGroup.to_frame: the first frame product in bf16, exact as before; no widening copies)
# against ab_old/ = 5967b3c (fp32 gradients for every group with a dense side), two processes a side, alternating;
# then capture_check on the 43M GPT (a basis widened at step 8, a NaN at 11) and where the step's GPU time goes now.
# Before the call, here: mkdir ab_old && git archive 5967b3c scao_dist bench launch pyproject.toml | tar -x -C ab_old \
#   --exclude=bench/results   (untracked, so it travels with the tree; remove it after).
NAME=oe
. bench/session_lib.sh
export SIZE=small
profile_ab 2
summary
capture_grow
timeout 200 python3 -m bench.glue_trace --size small --steps 3 --depth 4 --top 30 --out "$OUT/glue_small.json" \
  > "$W/glue_small.log" 2>&1
echo "glue_trace rc=$?"
cut -c1-200 "$W/glue_small.log" | head -32
pack
