r"""ALBERT pretraining (MLM + SOP): `--config=configs/pretrain.py:SIZE` (or `model=SIZE`).

SIZE is tiny, base, large, xlarge or xxlarge, v2 unless suffixed "-v1" (`large-v1`). Defaults
follow the paper and the original run_pretraining.py: batch 4096, sequence 512, LAMB at lr
0.00176, 125k steps with 3125 warmup steps and linear decay, weight decay 0.01, clipping 1.0.

The embedded default (what `make demo` runs, a few minutes on a laptop CPU):

  python -m albert_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/albert_tiny

  trains a 2000-piece vocabulary on the standard library's documentation, pretrains a small
  ALBERT on it (1000 steps, ~4 minutes on 2 cores), evaluates, checkpoints, and exports
  WORKDIR/hf. MLM accuracy climbs from 0 at step 1 to ~14% (held-out); rerunning the command
  resumes from the last checkpoint.

Each size is sized for the Cloud TPU slice in SLICES: the paper's batch in one step. Check it
here, without a TPU, before renting one (`pip install -e .[tpu]`):

  python -m albert_jax.aot --config=configs/pretrain.py:large --topology=v5p-128

A pod slice runs the same command on every worker (`gcloud compute tpus tpu-vm ssh NAME
--worker=all --command=...`); each host feeds its share of the global batch. Corpus, vocabulary
and workdir in a Cloud Storage bucket (experiments/tpu/run.sh):

  python -m albert_jax.main --config=configs/pretrain.py:large --workdir=gs://BUCKET/albert_large \
      --config.data.source=files --config.data.files='gs://BUCKET/corpus/*.txt' \
      --config.spm_model=gs://BUCKET/30k-clean.model

The console shows steps/s, tokens/s, MFU and the ETA; TensorBoard reads WORKDIR/tensorboard.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402

# The Cloud TPU slice each size is sized for: the paper's batch (4096 x 512) in one step with the
# config's defaults (tests/test_aot.py compiles each here and checks it fits).
SLICES = {"base": "v5p-64", "large": "v5p-128", "xlarge": "v5p-256", "xxlarge": "v5p-256"}


def get_config(arg: str = "large"):
  model = common.parse_arg(arg, model="large")["model"]
  config = common.base_config("pretraining", model)  # LAMB, batch 4096 x 512, 125k steps
  config.spike.enabled = True  # roll back loss spikes (docs/pretraining.md, "Loss spikes")

  if model == "tiny":  # the embedded default: CPU, minutes
    config.dtype = "float32"  # XLA:CPU has no fast bf16 matmul
    config.data.source = "embedded"
    config.data.vocab_size = 2000
    config.data.max_seq_length = 64
    config.data.eval_batches = 8
    config.batch_size = 32
    config.total_steps = 1000
    # LAMB is the large-batch optimizer: at batch 32 for 1000 steps it (and the original's AdamW
    # without bias correction, whose early steps are several times too large) stays at the
    # unigram plateau, always predicting the commonest piece. Bias-corrected AdamW learns
    # (experiments/optimizer_copy_task.py shows the same on a copy task).
    config.optim.name = "adamw_optax"
    config.optim.lr = 0.002
    config.optim.warmup_steps = 100
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
  return config
