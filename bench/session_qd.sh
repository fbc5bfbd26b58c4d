#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): which gradient copies of the 43M GPT's step
# the non-finite check's kernel leaves to torch (kernels.finite._segment refuses them: 27 direct copies a step in
# qc's bench.glue_trace), with their shapes, strides and dtypes.
NAME=qd
. bench/session_lib.sh
timeout 200 python3 - > "$OUT/gather_probe.txt" 2>&1 <<'PY'
import collections
import torch
from bench.step_profile import _grads, _model
from scao_dist import SCAO
from scao_dist.kernels import finite

seen = collections.Counter()
orig = finite._segment

def probe(src, dst):
    r = orig(src, dst)
    if r is None:
        d = None if dst is None else (tuple(dst.shape), tuple(dst.stride()), str(dst.dtype), dst.is_contiguous())
        seen[(tuple(src.shape), tuple(src.stride()), str(src.dtype), src.is_contiguous(), d)] += 1
    return r

finite._segment = probe
dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True
model = _model("small", dev, True)
opt = SCAO(model.parameters(), lr=1e-4, cuda_graph=True)
for i in range(6):
    _grads(model, 2, dev, i)
    opt.step()
    opt.zero_grad(set_to_none=True)
torch.cuda.synchronize()
print("refused (src shape, stride, dtype, contiguous, dst) x calls over 6 steps:")
for k, n in seen.most_common():
    print(n, k)
for name, p in model.named_parameters():
    print(name, tuple(p.shape), p.dtype)
PY
echo "probe rc=$?"
cat "$OUT/gather_probe.txt" | head -80
