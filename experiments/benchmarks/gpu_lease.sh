#!/bin/bash
# One lease of the `device` tool's GPU, in one call of at most ~6 minutes (README "On a GPU"):
# from the repository root on the device machine,
#
#   bash experiments/benchmarks/gpu_lease.sh          (the call carries .whl; results in $OUT)
#
# runs `python -m experiments.benchmarks.gpu_lease` (ceilings, the default large step, a trace of
# it, variants), which writes OUT/lease.json after every phase, so a timeout or a failed phase
# loses only itself. Check it on the CPU first: `python -m experiments.benchmarks.gpu_lease --smoke`.
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
OUT=${OUT:-/tmp/gpu_lease}; mkdir -p "$OUT"
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$@"; }
pip_install /tmp/need .whl/ml_collections-* .whl/grain-* .whl/array_record-* .whl/portpicker-*
pip_install /tmp/pins .whl/flax-* .whl/optax-* .whl/orbax_checkpoint-*
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total \
  --format=csv
site=/tmp/need
PYTHONPATH=/tmp/need:/tmp/pins python3 -c "import jax, flax, optax, orbax.checkpoint" 2>/dev/null \
  && site=/tmp/need:/tmp/pins
PYTHONPATH=$site python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', \
flax.__version__, jax.devices())"
# The budget leaves the call's start-up and the wheels' install inside the 6 minutes.
PYTHONPATH=$site timeout 345 python3 -m experiments.benchmarks.gpu_lease --out="$OUT" \
  --budget_s=320 2>&1 | grep -v "^W0000\|^I0000"
ls -la "$OUT"
