#!/usr/bin/env bash
# Download the anchors' wheels into .whl/ (git-ignored) for the GPU machine: Python 3.12, manylinux x86_64,
# no internet there. Run from anywhere; needs pip and unzip here. Then carry .whl to the GPU call; there:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site
#
# Dependencies (Requires-Dist without an extra, read from each wheel's METADATA):
#   flashoptim 0.1.4   torch>=2.6.0, triton>=3.0.0            -> both on the GPU image
#   heavyball 3.2.1    opt-einsum>=3.4.0, torch<3,>=2.2, numpy>=2.3.4   -> all on the GPU image (heavyball itself
#                      never imports opt_einsum; torch.backends.opt_einsum uses it when present)
#   scao 0.2.4         torch>=2.0.0                           -> on the GPU image
# so nothing beyond the three anchors travels. The check at the end fails loudly if a new version adds a
# dependency that the GPU image does not have (list GPU_HAS below).
set -euo pipefail
cd "$(dirname "$0")/.."

ANCHORS=(flashoptim==0.1.4 heavyball==3.2.1 scao==0.2.4)
EXTRA=()  # dependencies missing on the GPU image: none today (see above)
GPU_HAS="torch triton numpy scipy transformers accelerate einops matplotlib pandas tqdm rich pyyaml opt-einsum"

mkdir -p .whl
for spec in "${ANCHORS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done

status=0
echo "wheels in .whl/ (non-extra Requires-Dist):"
for spec in "${ANCHORS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}; do
  name=${spec%%==*}
  version=${spec##*==}
  whl=$(ls .whl/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
  if [[ -z "$whl" ]]; then
    echo "  MISSING: $spec"
    status=1
    continue
  fi
  printf '  %-45s %6s KiB\n' "$(basename "$whl")" "$(( $(stat -c %s "$whl") / 1024 ))"
  while read -r dep; do
    [[ -z "$dep" ]] && continue
    dname=$(echo "$dep" | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | tr '[:upper:]_.' '[:lower:]--')
    if [[ " $GPU_HAS " == *" $dname "* ]] || printf '%s\n' "${EXTRA[@]+"${EXTRA[@]}"}" | grep -qi "^$dname=="; then
      echo "      $dep   (on the GPU image)"
    else
      echo "      $dep   <-- NOT on the GPU image: add it to EXTRA"
      status=1
    fi
  done < <(unzip -p "$whl" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true)
done

# ============================================================================================================
# DeepSpeed section (for bench/scaling.py: the ZeRO-1 AdamW rows). SKIP_DS=1 skips it.
# DeepSpeed is sdist-only on PyPI, so a pure py3-none-any wheel is built here with DS_BUILD_OPS=0: no CUDA
# extension is compiled, and the ZeRO-1 path bench/scaling.py configures needs none ("torch_adam": true
# gives torch.optim.AdamW instead of the FusedAdam extension). The build imports torch (--no-build-isolation).
# Its runtime dependencies (Requires-Dist without an extra: einops hjson msgpack ninja numpy packaging psutil
# py-cpuinfo pydantic torch tqdm) travel as wheels, all but torch and numpy (which the GPU image has), because
# nobody has checked the image for the others; pydantic brings pydantic-core (pinned ==), annotated-types,
# typing-inspection and typing-extensions, at versions checked against each other below. One version each.
# They install into /tmp/site first on PYTHONPATH, so they take precedence over the image's copies.
# ============================================================================================================
DS_SPEC=deepspeed==0.19.8
DS_DEPS=(hjson==3.1.0 msgpack==1.2.4 py-cpuinfo==9.0.0 ninja==1.13.2 einops==0.8.2 psutil==7.2.2 packaging==26.2
         tqdm==4.70.1 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
         typing-extensions==4.16.0)
if [[ "${SKIP_DS:-0}" != 1 ]]; then
  if ! ls .whl/deepspeed-"${DS_SPEC##*==}"-py3-none-any.whl >/dev/null 2>&1; then
    # the build runs in this environment (--no-build-isolation): it imports torch and needs `wheel`
    python3 -c "import torch" 2>/dev/null || { echo "building DeepSpeed's wheel needs torch here first:" \
      "pip install torch==2.13.0 (or SKIP_DS=1)"; exit 1; }
    python3 -c "import wheel" 2>/dev/null || python3 -m pip install -q wheel
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation "$DS_SPEC" -w .whl
  fi
  for spec in "${DS_DEPS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
  done
  # Every non-extra requirement of these wheels (markers read for CPython 3.12 on Linux) must be met by a
  # shipped wheel, or be torch/numpy; a second version of any shipped package in .whl/ is an error too.
  python3 - "$DS_SPEC" "${DS_DEPS[@]}" <<'PYEOF' || status=1
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.version import Version

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

ON_IMAGE = {"torch", "numpy"}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
wanted = {norm(s.split("==")[0]): s.split("==")[1] for s in sys.argv[1:]}
found, ok = {}, True
for whl in sorted(Path(".whl").glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if norm(name) in wanted:
        found.setdefault(norm(name), []).append((Version(version), whl))
print("DeepSpeed wheels in .whl/ (requirements checked for CPython 3.12, Linux):")
total = 0
for name, want in wanted.items():
    have = found.get(name, [])
    if [str(v) for v, _ in have] != [want]:
        print(f"  {name}=={want}: found {[str(v) for v, _ in have] or 'nothing'}  <-- ERROR")
        ok = False
        continue
    whl = have[0][1]
    total += whl.stat().st_size
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    print(f"  {whl.name:<90} {whl.stat().st_size // 1024:>6} KiB")
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = norm(req.name)
        if dep in ON_IMAGE:
            print(f"      {req}   (on the GPU image)")
        elif dep in wanted and Version(wanted[dep]) in req.specifier:
            print(f"      {req}   (shipped: {wanted[dep]})")
        else:
            print(f"      {req}   <-- NOT met: add it to DS_DEPS at a version that satisfies it")
            ok = False
print(f"DeepSpeed and its dependencies: {total / 2**20:.1f} MiB")
sys.exit(0 if ok else 1)
PYEOF
fi

echo "total: $(du -ch .whl/*.whl | tail -1 | cut -f1)"
exit $status
