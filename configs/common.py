"""What every config shares: the `FILE.py:ARG` grammar and the base config of the one training
loop (`albert_jax.train.train_and_evaluate`). Each config file is this base with its task's data
and the paper's hyperparameters for it.

`config.task` names the task (`albert_jax.tasks.TASKS`), `config.data` is that task's
`data_config(arg)`, `config.model` the architecture (a `model.SIZES` preset, every AlbertConfig
field overridable: `--config.model.num_hidden_layers=12`).
"""

import ml_collections

from albert_jax import encoder, model as M
from albert_jax import optimizer, spike, tasks


def parse_arg(arg: str, **defaults) -> dict[str, str]:
  """"task=sst2,model=large" -> {"task": "sst2", "model": "large"}; a bare word sets the first
  default's key ("sst2" -> task=sst2, "large-v1" -> model=large-v1). Unknown keys are an error."""
  out = dict(defaults)
  for i, part in enumerate(p for p in (arg or "").split(",") if p):
    key, eq, value = part.partition("=")
    if not eq:
      key, value = (next(iter(defaults)) if i == 0 and defaults else None), part
    if key not in defaults:
      raise ValueError(f"config argument {part!r}: expected KEY=VALUE with KEY in "
                       f"{sorted(defaults)}")
    out[key] = value
  return out


def model_config(preset: str) -> ml_collections.ConfigDict:
  """`config.model`: a preset's AlbertConfig fields ("large", "base-v1", "tiny"), vocab_size -1
  (the tokenizer's)."""
  fields = dict(vars(M.preset(preset)), id2label=(), vocab_size=-1)
  return ml_collections.ConfigDict(fields)


def base_config(task: str, model: str, *, data_arg: str = "") -> ml_collections.ConfigDict:
  """The fields of every job, with `task`'s default data and `model`'s architecture."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.data = tasks.get(task).data_config(data_arg)
  config.model = model_config(model)
  config.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
  # How the encoder applies its shared layer: scan | unroll | auto (unrolled on a GPU, scanned on
  # TPU and CPU; encoder.resolve_layer_loop).
  config.layer_loop = "auto"
  # Rematerialisation of the scanned layer: matmul_outputs (the default: every matmul's output
  # and the attention kernel's are kept, LayerNorms and the activation recomputed) | none |
  # dots_with_no_batch_dims | ffn_residual | layer_norm_inputs | full | dots
  # (encoder.REMAT_POLICIES; measured in docs/accelerators.md, "The scan and the remat policies on TPU").
  config.remat_policy = encoder.DEFAULT_REMAT
  # Attention core: xla | splash | cudnn | auto (splash on TPU, cudnn on GPU in bf16, else xla;
  # albert_jax/attention.py).
  config.attention = "auto"
  # Start from this checkpoint's weights: an HF or albert-jax model directory, a training run,
  # or an original TF1 release. Its architecture is used (albert_jax/init_from.py).
  config.init_from = ""
  config.spm_model = ""  # the vocabulary; "": init_from's, else (pretraining) trained in WORKDIR
  config.optim = optimizer.default_optim_config()
  config.batch_size = 4096  # global, over all hosts
  config.eval_batch_size = 0  # 0: batch_size
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
  config.export_hf = True  # write WORKDIR/hf (Hugging Face format + spiece.model) at the end
  # Resuming checks that the data would continue the checkpoint's stream of batches (seed, batch
  # size, lengths, masking, the corpus's and vocabulary's fingerprints; for fine-tuning the
  # arrays' fingerprint and the data settings) and refuses a change, naming it. True continues
  # from the checkpoint's batch index with the changed data, with a loud warning.
  config.allow_data_change = False
  # Step watchdog: a process that makes no training step for max(watchdog_min_seconds,
  # watchdog_factor x the median step time) exits with a diagnostic (all threads' stacks)
  # instead of waiting forever on a stuck peer's collective; evals and saves do not count.
  # 0 disables it. The first step (compilation) is not watched.
  config.watchdog_factor = 50.0
  config.watchdog_min_seconds = 600.0
  # One run per workdir: WORKDIR/lease.json names the run that holds it (host, pid, start) and
  # its heartbeat. A second run on the workdir is refused, naming the first; a lease without a
  # heartbeat for this many seconds (a killed run on another host) is taken over, one whose
  # process ended on this machine at once (albert_jax/lease.py). 0: no lease.
  config.lease_timeout_seconds = 120.0
  # Loss spikes (albert_jax/spike.py): a loss held above the recent ones rolls the run back to
  # the newest checkpoint before it, skipping its batches. Off here; on for pretraining.
  config.spike = spike.default_config()
  return config


def finetune_config(task: str, model: str, data_arg: str, *, lr: float, total_steps: int,
                    warmup_steps: int, batch_size: int) -> ml_collections.ConfigDict:
  """A fine-tuning job: the original run_classifier / run_squad / run_race optimizer (AdamW
  without bias correction, linear warmup then linear decay, weight decay 0.01, clipping 1.0).
  `model` is the preset used without config.init_from; with it, the checkpoint's architecture."""
  config = base_config(task, model, data_arg=data_arg)
  config.optim.update(name="adamw", lr=lr, warmup_steps=warmup_steps)
  config.update(batch_size=batch_size, total_steps=total_steps, log_every_steps=100,
                eval_every_steps=1000, checkpoint_every_steps=1000, keep_checkpoints=2)
  return config
