r"""ALBERT pretraining (MLM + SOP): `--config=configs/pretrain.py:SIZE[,v1]`.

SIZE is tiny, base, large, xlarge or xxlarge (v2 unless ",v1"). Defaults follow the paper and
the original run_pretraining.py: batch 4096, sequence 512, LAMB at lr 0.00176, 125k steps with
3125 warmup steps and linear decay, weight decay 0.01, gradient clipping 1.0.

The embedded default (what `make demo` runs, a few minutes on a laptop CPU):

  python -m albert_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/albert_tiny

  trains a 4000-piece vocabulary on the standard library's documentation, pretrains a small
  ALBERT on it (1000 steps, ~4 minutes on 2 cores), evaluates, checkpoints, and exports
  WORKDIR/hf. MLM accuracy climbs from 0 at step 1 to ~14% (held-out); rerunning the command
  resumes from the last checkpoint.

One Cloud TPU VM (v4-8: 4 chips, one host), albert-large on text files in a bucket mounted at
/gcs/BUCKET with Cloud Storage FUSE (paths are local; experiments/tpu/install.sh ... BUCKET):

  python -m albert_jax.main --config=configs/pretrain.py:large --workdir=/gcs/BUCKET/albert_large \
      --config.data.source=files --config.data.files='/gcs/BUCKET/corpus/*.txt' \
      --config.data.spm_model=/gcs/BUCKET/30k-clean.model

A pod slice (v4-32: 16 chips, 4 hosts): the same command on every worker
(`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`); each host feeds its quarter
of the global batch, and `--config.mesh.fsdp=4` shards the weights and optimizer state if
memory is short. Expect roughly 1 step/s for albert-large at 4096 x 512 on a v4-32 at ~45% MFU
(the console shows steps/s, tokens/s, MFU and the ETA; TensorBoard reads WORKDIR/tensorboard).
"""

import ml_collections

from albert_jax import model as M
from albert_jax import optimizer
from albert_jax.data import pipeline

# The Cloud TPU slice each size is sized for: the paper's batch (4096 x 512) in one step with the
# config's defaults. `python -m albert_jax.aot --config=configs/pretrain.py:SIZE --topology=SLICE`
# compiles it here and reports the HBM it needs (tests/test_aot.py checks every size fits).
SLICES = {"base": "v5p-64", "large": "v5p-128", "xlarge": "v5p-256", "xxlarge": "v5p-256"}

TINY = dict(embedding_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=512, hidden_act="gelu_new", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, vocab_size=-1)


def get_config(arg: str = "large") -> ml_collections.ConfigDict:
  size, _, version = arg.partition(",")
  config = ml_collections.ConfigDict()

  # The model: a preset, every AlbertConfig field overridable (--config.model.num_hidden_layers=12).
  # vocab_size -1: the tokenizer's.
  if size == "tiny":
    model = TINY
  else:
    model = {f: v for f, v in vars(M.preset(f"{size}-{version or 'v2'}")).items()}
    model["id2label"] = ()
  config.model = ml_collections.ConfigDict(model)
  config.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
  # Rematerialisation of the scanned layer: dots_with_no_batch_dims (the model's default: as fast
  # as unrolled layers, a fraction of their memory) | none | ffn_residual | layer_norm_inputs |
  # full | dots (model.REMAT_POLICIES; measured in the README's "The scan" section).
  config.remat_policy = "dots_with_no_batch_dims"
  # Attention core: xla | splash | cudnn | auto (splash on TPU, cudnn on GPU in bf16, else xla;
  # albert_jax/attention.py).
  config.attention = "auto"

  config.data = pipeline.default_data_config()
  config.data.max_seq_length = 512

  config.optim = optimizer.default_optim_config()  # LAMB as the original
  config.batch_size = 4096  # global, over all hosts
  config.grad_accum_steps = 1
  config.total_steps = 125_000
  config.seed = 0

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding = "fsdp_tensor"  # data_parallel | fsdp | fsdp_tensor (sharding.RULES)
  config.peak_tflops_per_device = 0.0  # for MFU; 0: known accelerators' table, CPU measured

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.init_from = ""  # an HF directory or an Orbax checkpoint: start from its weights
  config.export_hf = True  # write WORKDIR/hf (Hugging Face format + spiece.model) at the end

  if size == "tiny":  # the embedded default: CPU, minutes
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
