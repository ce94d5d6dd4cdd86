#!/usr/bin/env bash
# Creates a Cloud TPU VM (v4-8: one host) or pod slice (v4-32: four hosts) for albert-jax.
#
#   experiments/tpu/create_tpu.sh NAME ZONE PROJECT ACCELERATOR_TYPE [RUNTIME_VERSION]
#   experiments/tpu/create_tpu.sh albert-v4-32 us-central2-b my-project v4-32
#
# RUNTIME_VERSION defaults to the one Google lists for JAX on that generation. Extra gcloud flags
# (--spot, --reserved, --network=...) go in $CREATE_FLAGS; $GCLOUD replaces the gcloud binary.
set -euo pipefail

usage() {
  cat >&2 <<USAGE
usage: $0 NAME ZONE PROJECT ACCELERATOR_TYPE [RUNTIME_VERSION]
  NAME              the TPU's name: lower case letters, digits, '-' (e.g. albert-v4-32)
  ZONE              a zone with that TPU type (e.g. us-central2-b for v4, europe-west4-a)
  PROJECT           the Google Cloud project id (e.g. my-project)
  ACCELERATOR_TYPE  generation-chips or -cores (e.g. v4-8, v4-32, v5p-8, v5litepod-16, v6e-8)
  RUNTIME_VERSION   default: tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5 (v5p),
                    v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e)
environment: CREATE_FLAGS (extra gcloud flags, e.g. --spot), GCLOUD (default gcloud)
USAGE
  exit 2
}

# check WHAT VALUE REGEX: exits with the usage when VALUE does not look like a WHAT.
check() {
  if [[ ! $2 =~ $3 ]]; then
    echo "error: $1 '$2' does not look right" >&2
    usage
  fi
}

default_runtime() {
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

[[ $# -eq 4 || $# -eq 5 ]] || usage
NAME=$1 ZONE=$2 PROJECT=$3 ACCELERATOR=$4
check NAME "$NAME" '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
check ZONE "$ZONE" '^[a-z]+-[a-z]+[0-9]+-[a-z]$'
check PROJECT "$PROJECT" '^([a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$'
check ACCELERATOR_TYPE "$ACCELERATOR" '^v[0-9]+[a-z]*-[0-9]+$'
RUNTIME=${5:-$(default_runtime "$ACCELERATOR")}
check RUNTIME_VERSION "$RUNTIME" '^[a-z0-9][-a-z0-9.]*$'

# shellcheck disable=SC2086  # CREATE_FLAGS is a list of flags
"${GCLOUD:-gcloud}" compute tpus tpu-vm create "$NAME" --zone="$ZONE" --project="$PROJECT" \
  --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${CREATE_FLAGS:-}
