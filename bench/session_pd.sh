#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (nineteenth session): the session's end — every kernel verified
# against its twin on the H200 and timed (the whole bench.kernels table, with the division and square-root checks),
# then the captured step bit for bit against the eager one (43M with a basis widened at step 8 and a NaN at 11; 405M
# with a NaN at 16). The call's name from NAME (default pd): session_ob.sh runs it again as ob.
NAME=${NAME:-pd}
. bench/session_lib.sh
kernels all . 330
grep -E "GB/s \(|verif|division" "$W/kernels_all.log" | head -60
capture_grow
capture
pack
