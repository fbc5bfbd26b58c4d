#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (twentieth session): the tree issue 5 is closed on (HEAD, whose
# kernels are the nineteenth session's plus common.row_tile's review mend, never run on a GPU before) — every kernel
# verified against its twin on the H200 and timed (the whole bench.kernels table with the division and square-root
# checks), then the captured step bit for bit against the eager one (43M with a basis widened at step 8 and a NaN at
# 11; 405M with a NaN at 16). The same call as session_pd.sh.
NAME=ob exec bash "$(dirname "$0")/session_pd.sh"
