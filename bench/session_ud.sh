#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fourteenth session): the first-moment and AdamW kernels with
# fewer instructions (rows on the 32-value grid skip the row's integer division; the codecs divide once per group
# with Markstein's correction after an exact power-of-two scaling; adamw_ decodes through the table), verified
# against their twins and timed against 7cf1060 (ab_old/: the glue cut, the kernels as at the session's start) in the same call; the division
# checked against div_rn over every fp32 x bf16 mantissa pair; the 405M step, new and old alternating, two each.
NAME=ud
. bench/session_lib.sh
timeout 240 python3 -m bench.kernels --only ema_signed_,adamw_,division --out "$OUT/kernels_new.json" > "$W/kernels_new.log" 2>&1
echo "kernels new rc=$?"
(cd ab_old && timeout 180 python3 -m bench.kernels --only ema_signed_,adamw_ --out "$OUT/kernels_old.json" > "$W/kernels_old.log" 2>&1)
echo "kernels old rc=$?"
kernels_report "$OUT"/kernels_*.json
grep -iE "division|mismatch" "$W/kernels_new.log" | head -12
capture_grow
profile_ab
for f in "$OUT"/prof_*.json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cases']['scao_norefresh']; sw=c['torch_profile'].get('step_windows',{}); print(sys.argv[1].split('/')[-1], 'step', c['step_ms']['median'], 'adamw', d['cases']['adamw']['step_ms']['median'], 'busy', sw.get('busy_ms'), 'wall', sw.get('wall_ms'), 'peak', c.get('peak_mb'), 'skipped', c['counters'].get('skipped_steps', 0)); [print('   ', round(us,1), n[:40]) for n, calls, us in sw.get('kernels_in_step', [])[:4]]" "$f"
done
tar czf "$OUT/logs_ud.tgz" -C "$W" --exclude triton_cache .
