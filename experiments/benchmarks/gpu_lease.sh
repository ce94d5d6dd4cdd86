#!/bin/bash
# One lease of the `device` tool's GPU, prepared so that one call measures everything
# (README "On a GPU"): from the repository root, on the device machine,
#
#   bash experiments/benchmarks/gpu_lease.sh          (the call carries .whl; results in $OUT)
#
# The machine's image has jax[cuda] (its own version) but not grain, array_record,
# ml_collections or portpicker: they come as wheels in .whl/, made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ml_collections==1.1.0 grain==0.2.18 array-record==0.8.6 portpicker \
#     flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
# Our pinned flax/optax/orbax are tried first, the image's own if ours do not import there.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_lease}; LOGS=/tmp/gpu_lease_logs; mkdir -p "$OUT" "$LOGS"
# $OUT gets the JSON results and the traces (the tool brings back 8 files at most); logs stay.
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$@"; }
pip_install /tmp/need .whl/ml_collections-* .whl/grain-* .whl/array_record-* .whl/portpicker-*
pip_install /tmp/pins .whl/flax-* .whl/optax-* .whl/orbax_checkpoint-*
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total \
  --format=csv
bench() { PYTHONPATH=$site timeout "$1" python3 -m experiments.benchmarks.gpu_attention "${@:2}"; }
for site in /tmp/need:/tmp/pins /tmp/need; do
  PYTHONPATH=$site python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', \
jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  bench 150 --smoke --attention=xla,cudnn --json="$OUT/smoke.json" > "$LOGS/smoke.log" 2>&1 \
    && break
  tail -20 "$LOGS/smoke.log"
done
grep -v "^W\|^I0000" "$LOGS/smoke.log" | tail -8
echo "== albert-large, 32 x 512, the default remat policy"
bench 270 --json="$OUT/large.json" 2>&1 | tee "$LOGS/large.log" | grep -v "^W\|^I0000"
echo "== albert-large, 32 x 512, remat_policy=none"
bench 180 --remat_policy=none --check= --json="$OUT/large_remat_none.json" 2>&1 \
  | tee "$LOGS/large_remat_none.log" | grep -v "^W\|^I0000"
echo "== where the time goes: scan/loop x xla/cudnn, traced (gpu_profile)"
PYTHONPATH=$site timeout 240 python3 -m experiments.benchmarks.gpu_profile --out="$OUT" 2>&1 \
  | tee "$LOGS/profile.log" | grep -v "^W\|^I0000"
