#!/usr/bin/env bash
# Installs albert-jax on every worker of a TPU VM: the code in ~/albert-jax, a Python >= 3.11
# virtual environment in ~/albert-jax/.venv, `pip install -e .` and the matching jax[tpu].
#
#   experiments/tpu/install.sh NAME ZONE PROJECT REPO_URL_OR_PATH [BUCKET]
#   experiments/tpu/install.sh albert-v4-32 us-central2-b my-project . my-bucket  # this checkout
#   experiments/tpu/install.sh albert-v4-8 us-central2-b my-project \
#       https://github.com/ORG/albert-jax.git my-bucket
#
# A local path is copied as its git-tracked and untracked-unignored files (not .venv, workdirs);
# a URL is cloned, or pulled when the clone exists ($REF: a branch, tag or commit to check out).
# The package reads and writes gs:// paths itself (run.sh puts the workdir at gs://BUCKET/...).
# With BUCKET (my-bucket or gs://my-bucket), every worker also mounts the bucket with Cloud
# Storage FUSE at /gcs/BUCKET (`gcsfuse --implicit-dirs`, installed from Google's apt repository
# when missing), for those who prefer local paths (WORKDIR=/gcs/BUCKET/... for run.sh): every
# host of a pod slice must see the same workdir either way. The TPU VM's service account needs
# read/write access to the bucket.
# Rerunning updates the code and the packages (and mounts the bucket again if it is not mounted,
# e.g. after a reboot). $GCLOUD replaces the gcloud binary.
set -euo pipefail

usage() {
  echo "usage: $0 NAME ZONE PROJECT REPO_URL_OR_PATH [BUCKET]" >&2
  echo "  BUCKET (my-bucket or gs://my-bucket): also mount it on every worker at /gcs/BUCKET" >&2
  echo "  with Cloud Storage FUSE (gcsfuse), an alternative to gs:// paths" >&2
  exit 2
}

[[ $# -eq 4 || $# -eq 5 ]] || usage
NAME=$1 ZONE=$2 PROJECT=$3 SOURCE=$4 BUCKET=${5:-}
BUCKET=${BUCKET#gs://}
BUCKET=${BUCKET%/}
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || { echo "error: zone '$ZONE'?" >&2; usage; }
[[ -z $BUCKET || $BUCKET =~ ^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$ ]] ||
  { echo "error: bucket '$BUCKET'? (a bucket name, no prefix)" >&2; usage; }
GCLOUD=${GCLOUD:-gcloud}
DIR=albert-jax  # relative to the workers' home directories; experiments.sweep expects it
TPU=("$NAME" --zone="$ZONE" --project="$PROJECT" --worker=all)

# copy_checkout PATH: packs the checkout and unpacks it on every worker.
copy_checkout() {
  local tarball
  PACK_DIR=$(mktemp -d)
  trap 'rm -rf "$PACK_DIR"' EXIT
  tarball=$PACK_DIR/albert-jax.tar.gz
  if git -C "$1" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$1" && git ls-files -z --cached --others --exclude-standard |
      tar --null -czf "$tarball" -T -)
  else
    tar -C "$1" --exclude=.venv --exclude='*workdir*' --exclude=__pycache__ -czf "$tarball" .
  fi
  "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$NAME":albert-jax.tar.gz --zone="$ZONE" \
    --project="$PROJECT" --worker=all
  "$GCLOUD" compute tpus tpu-vm ssh "${TPU[@]}" \
    --command="mkdir -p $DIR && tar -xzf albert-jax.tar.gz -C $DIR && rm albert-jax.tar.gz"
}

clone_checkout() {
  local url ref
  url=$(printf '%q' "$1") ref=$(printf '%q' "${REF:-}")
  "$GCLOUD" compute tpus tpu-vm ssh "${TPU[@]}" --command="set -e
    if [ -d $DIR/.git ]; then git -C $DIR fetch --tags origin; else git clone $url $DIR; fi
    if [ -n $ref ]; then git -C $DIR checkout $ref; else git -C $DIR pull --ff-only; fi"
}

if [[ -d $SOURCE ]]; then copy_checkout "$SOURCE"; else clone_checkout "$SOURCE"; fi

# The TPU images ship Python 3.10; setup.py asks for 3.11, which uv provides when missing.
"$GCLOUD" compute tpus tpu-vm ssh "${TPU[@]}" --command="$(cat <<REMOTE
set -euo pipefail
cd $DIR
if [ ! -x .venv/bin/python ]; then
  PY=python3
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=\$HOME/.local/bin:\$PATH
    uv python install 3.11
    PY=\$(uv python find 3.11)
  fi
  "\$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
JAX_VERSION=\$(.venv/bin/python -c 'import jax; print(jax.__version__)')
.venv/bin/pip install --quiet "jax[tpu]==\$JAX_VERSION"
# Every worker prints: its process index, its chips, all chips, the chip kind.
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(),
                                     jax.device_count(), jax.devices()[0].device_kind)'
REMOTE
)"

# Cloud Storage FUSE: the bucket at /gcs/BUCKET on every worker (the same path on every host).
if [[ -n $BUCKET ]]; then
  "$GCLOUD" compute tpus tpu-vm ssh "${TPU[@]}" --command="$(cat <<REMOTE
set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  REPO="https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main"
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] \$REPO" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
fi
MOUNT=/gcs/$BUCKET
if mountpoint -q "\$MOUNT"; then
  echo "\$(hostname): \$MOUNT already mounted"
else
  sudo mkdir -p "\$MOUNT"
  sudo chown "\$(id -u):\$(id -g)" "\$MOUNT"
  gcsfuse --implicit-dirs $BUCKET "\$MOUNT"
  echo "\$(hostname): gs://$BUCKET mounted at \$MOUNT"
fi
REMOTE
)"
fi
