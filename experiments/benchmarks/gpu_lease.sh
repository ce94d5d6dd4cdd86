#!/bin/bash
# One lease of the `device` tool's GPU, in one call of at most ~6 minutes (docs/accelerators.md):
# from the repository root on the device machine,
#
#   bash experiments/benchmarks/gpu_lease.sh          (the call carries .whl; results in $OUT)
#
# runs `python -m experiments.benchmarks.gpu_lease` (ceilings, the default large step, a trace of
# it, variants), which writes OUT/lease.json after every phase, so a timeout or a failed phase
# loses only itself. Check it on the CPU first: `python -m experiments.benchmarks.gpu_lease --smoke`.
#
# The machine cannot reach a registry. Its image has jax[cuda] (0.11.2 with CUDA 13 when last
# lent), which our range admits (setup.py: jax >= 0.10.2, < 0.13): the package runs on the
# image's own jax, flax, optax and orbax when they are in range. What the image lacks comes as
# wheels in .whl/ (an ignored folder the call carries), made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ml_collections==1.1.0 grain==0.2.18 array-record==0.8.6 portpicker \
#     flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8
# (the last three are used only if the image's are missing or out of range).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_lease}; mkdir -p "$OUT"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$@"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total \
  --format=csv
# Which of our requirements the image has in range; the rest from the carried wheels.
missing=$(python3 - <<'EOF'
import importlib.metadata as md, re
try:
  from packaging.requirements import Requirement
except ImportError:  # pip carries its own
  from pip._vendor.packaging.requirements import Requirement
setup = open("setup.py").read()
block = setup[setup.index("INSTALL_REQUIRES"):setup.index("]", setup.index("INSTALL_REQUIRES"))]
wanted = {"jax", "flax", "optax", "orbax-checkpoint", "grain", "array-record", "ml-collections"}
for text in re.findall(r'"([^"]+)"', block):
  req = Requirement(text)
  if req.name not in wanted:
    continue
  try:
    ok = md.version(req.name) in req.specifier
  except md.PackageNotFoundError:
    ok = False
  if not ok:
    print(req.name.replace("-", "_"))
EOF
)
echo "from the carried wheels: ${missing:-nothing} (+ portpicker)"
wheels=(.whl/portpicker-*)
for name in $missing; do wheels+=(.whl/${name}-*); done
pip_target /tmp/need "${wheels[@]}"
export PYTHONPATH=/tmp/need:$PWD
python3 -c "import jax, flax, optax, orbax.checkpoint; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())"
# The budget leaves the call's start-up and the wheels' install inside the 6 minutes.
timeout 345 python3 -m experiments.benchmarks.gpu_lease --out="$OUT" --budget_s=320 2>&1 \
  | grep -v "^W0000\|^I0000"
ls -la "$OUT"
