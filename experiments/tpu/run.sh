#!/usr/bin/env bash
# Runs `python -m albert_jax.main` on every worker of a TPU VM set up by install.sh, the workdir
# in the bucket: gs://BUCKET/RUN_NAME (RUN_NAME defaults to the config, e.g. pretrain_large).
# The package reads and writes gs:// paths itself (corpus, vocabulary, init_from, workdir); the
# TPU VM's service account needs read/write access to the bucket.
#
#   experiments/tpu/run.sh NAME ZONE PROJECT BUCKET CONFIG [--config.x=y ...]
#   experiments/tpu/run.sh albert-v4-32 us-central2-b my-project my-bucket \
#       configs/pretrain.py:large \
#       --config.data.source=files --config.data.files='gs://my-bucket/corpus/*.txt' \
#       --config.spm_model=gs://my-bucket/30k-clean.model
#
# BUCKET may be given as my-bucket, gs://my-bucket or my-bucket/some/prefix (workdir
# gs://my-bucket/some/prefix/RUN_NAME). Flags are passed on as they are. Rerunning the same
# command resumes from the newest checkpoint. Environment: RUN_NAME; WORKDIR (the whole workdir,
# e.g. /gcs/BUCKET/RUN on a Cloud Storage FUSE mount made by install.sh ... BUCKET); DETACH=1
# (run under nohup, output in ~/albert-jax/logs/, so the job outlives the ssh session); GCLOUD
# (default gcloud).
set -euo pipefail

usage() {
  echo "usage: $0 NAME ZONE PROJECT BUCKET CONFIG [--config.x=y ...]" >&2
  echo "  workdir gs://BUCKET/RUN_NAME; bucket files as gs:// paths, e.g." >&2
  echo "  --config.data.files='gs://my-bucket/corpus/*.txt'" >&2
  exit 2
}

[[ $# -ge 5 ]] || usage
NAME=$1 ZONE=$2 PROJECT=$3 BUCKET=$4 CONFIG=$5
shift 5
BUCKET=${BUCKET#gs://}
BUCKET=${BUCKET%/}
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || { echo "error: zone '$ZONE'?" >&2; usage; }
[[ $BUCKET =~ ^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[^/].*)?$ ]] ||
  { echo "error: bucket '$BUCKET'?" >&2; usage; }
[[ $CONFIG =~ ^[^:]+\.py(:.*)?$ ]] ||
  { echo "error: config '$CONFIG' is not FILE.py[:ARG]" >&2; usage; }
for flag in "$@"; do
  [[ $flag == --* ]] || { echo "error: '$flag' is not a --flag" >&2; usage; }
done

# configs/finetune_glue.py:task=mnli,model=large -> finetune_glue_task_mnli_model_large
default_name() {
  local file=${1%%:*} arg=${1#*:}
  [[ $1 == *:* ]] || arg=""
  file=$(basename "$file" .py)
  echo "${file}${arg:+_${arg}}" | tr -c 'A-Za-z0-9._\n-' '_'
}
RUN_NAME=${RUN_NAME:-$(default_name "$CONFIG")}
WORKDIR=${WORKDIR:-gs://$BUCKET/$RUN_NAME}

COMMAND=$(printf '%q ' .venv/bin/python -m albert_jax.main --config="$CONFIG" \
  --workdir="$WORKDIR" "$@")
COMMAND=${COMMAND% }
if [[ ${DETACH:-0} == 1 ]]; then
  LOG=logs/$(printf '%q' "$RUN_NAME").log
  REMOTE="cd albert-jax && mkdir -p logs && nohup $COMMAND >$LOG 2>&1 </dev/null &
    echo started, log: albert-jax/$LOG"
else
  REMOTE="cd albert-jax && $COMMAND"
fi
echo "workdir: $WORKDIR" >&2
"${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --project="$PROJECT" \
  --worker=all --command="$REMOTE"
