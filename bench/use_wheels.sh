# Sourced by the GPU scripts (`source bench/use_wheels.sh "what is missing without them"`), from the repo
# root: install the carried wheels in .whl/ (bash bench/fetch_wheels.sh; device tool carry [".whl"]) into
# /tmp/site and put it on PYTHONPATH; without .whl/, print a warning naming what will be missing.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl 2>&1 | grep -v -i "warning: running pip as" || true
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "installed: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
else
  echo "WARNING: no .whl/ here (bash bench/fetch_wheels.sh here, then carry ['.whl']): ${1:-the anchors are missing}"
fi
