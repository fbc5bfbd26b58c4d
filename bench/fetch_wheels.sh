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
echo "total: $(du -ch .whl/*.whl | tail -1 | cut -f1)"
exit $status
