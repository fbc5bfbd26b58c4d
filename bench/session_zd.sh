#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): bf16 gradients kept bf16 through the frame-less groups' step (the 405M GPT's
# groups are all stream-stream). Checks the two kernels that now read a bf16 G against their twins and times them,
# checks torch.bmm(out_dtype=float32) on bf16 operands against the fp32 (TF32) product, then the 405M step without
# refreshes (bench.step_profile, case scao_norefresh) and the default step (bench.compare), old tree (the commit
# before, run from old/) and new alternating. Before the call: `mkdir old && git archive 6df4857 scao_dist bench |
# tar -x -C old`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zd}
W=/tmp/session_zd_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
timeout 200 python3 -m bench.kernels --only ema_signed_,residual_sumsq --rep 60 --out "$OUT/kernels.json" \
  > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"
python3 - <<'PY' 2>&1 | tee "$OUT/matmul.log"
import torch, triton
from scao_dist.groups import matmul_f32
torch.backends.cuda.matmul.allow_tf32 = True
g = (torch.randn(8, 2048, 4096, device="cuda") * 1e-3).bfloat16()
q = torch.linalg.qr(torch.randn(8, 4096, 160, device="cuda"))[0].bfloat16()
ref = g.double() @ q.double()
for name, f in (("fp32 operands (TF32)", lambda: g.float() @ q.float()), ("bf16 operands, fp32 out", lambda: matmul_f32(g, q))):
    out = f()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    gf, qf = g.float(), q.float()
    ms = triton.testing.do_bench((lambda: gf @ qf) if "fp32" in name else (lambda: matmul_f32(g, q)), rep=100)
    print(f"(8,2048,4096) x (8,4096,160) {name}: {ms:.3f} ms, relative error vs float64 {err:.2e}")
PY
prof() {  # name, tree
  (cd "$2" && timeout 150 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 20 \
    --profile-steps 5 --out "$W/$1.json" > "$W/$1.log" 2>&1; echo "profile $1 rc=$?")
}
for pass in a b; do
  prof "old$pass" "$here/old"
  prof "new$pass" "$here"
done
(timeout 100 python3 -m bench.step_profile --size large --cases adamw --steps 20 --out "$W/adamw.json" \
  > "$W/adamw.log" 2>&1; echo "adamw rc=$?")
run() {  # name, tree
  (cd "$2" && timeout 100 python3 -m bench.compare --size large --optimizers scao --lrs scao=1e-3 --steps 40 \
    --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "run $1 rc=$?")
}
run f5old "$here/old"
run f5new "$here"
tar czf "$OUT/session_zd.tgz" -C "$W" --exclude triton_cache .
grep -E "^\| |verification|mismatch" "$OUT/kernels.log" | head -30
for f in olda newa oldb newb adamw; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/$f.log" | head -4; done
python3 -m bench.refresh_summary "$W" f5old f5new
grep -h "^\[run 1/1\].*ok" "$W"/f5*.log
