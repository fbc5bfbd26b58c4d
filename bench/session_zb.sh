#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the refresh's probes drawn on the GPU (precond.seeded_normal on the device)
# against drawing them on the host and copying them over (`HEAD` before the change, run from old/): the draw
# timed alone, then the 405M GPT's refresh worker per step (bench.compare --profile-phases 10, precond_freq 5),
# alternating old/new twice. Before the call: `mkdir old && git archive 98a9933 scao_dist bench | tar -x -C old`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zb}
W=/tmp/session_zb_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
python3 - <<'PY' 2>&1 | tee "$OUT/probes.log"
import time, torch
from scao_dist import precond
dev = torch.device("cuda")
def host_draw(d, p, seeds):  # the previous code: CPU generators, one pinned copy
    gen = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(s)
        gen.append(torch.randn((d, p), generator=g, dtype=torch.float32))
    return precond.to_device(torch.stack(gen), dev)
def device_draw(d, p, seeds):
    return torch.stack([precond.seeded_normal((d, p), s, dev) for s in seeds])
for d in (2048, 8192):
    seeds = list(range(16))
    for name, f in (("host", host_draw), ("device", device_draw)):
        f(d, 16, seeds); torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            f(d, 16, seeds)
        host_ms = (time.perf_counter() - t0) / 20 * 1e3
        torch.cuda.synchronize()
        print(f"16 x ({d}, 16) probes drawn on the {name}: {host_ms:.3f} ms of the calling thread per batch")
PY
run() {  # name, tree
  (cd "$2" && timeout 100 python3 -m bench.compare --size large --optimizers scao --lrs scao=1e-3 --steps 40 \
    --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "run $1 rc=$?")
}
for pass in a b; do
  [ -d old/scao_dist ] && run "old$pass" "$here/old"
  run "new$pass" "$here"
done
tar czf "$OUT/session_zb.tgz" -C "$W" --exclude triton_cache .
python3 -m bench.refresh_summary "$W" olda newa oldb newb
