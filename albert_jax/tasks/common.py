"""Pieces fine-tuning tasks share: the dataset container and the classification loss."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

IGNORE = -100  # label of positions without a loss (as Hugging Face)


@dataclasses.dataclass
class Dataset:
  """Model inputs, one row per feature, and what post-processing needs to read them back."""
  features: dict[str, np.ndarray]
  meta: Any = None

  def __post_init__(self):
    sizes = {k: len(v) for k, v in self.features.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"features have different numbers of rows: {sizes}")

  def __len__(self) -> int:
    return len(next(iter(self.features.values()))) if self.features else 0


def input_spec(*shape: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The model inputs of one row (`input_ids`, `attention_mask`, `token_type_ids`): int32 `shape`."""
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
          for k in ("input_ids", "attention_mask", "token_type_ids")}


def classification_sums(logits, labels, weight) -> dict[str, jax.Array]:
  """Summed cross-entropy (num_labels > 1) or squared error (one logit: regression)."""
  weight = weight.astype(jnp.float32)
  if logits.shape[-1] == 1:
    error = logits[..., 0] - labels.astype(jnp.float32)
    return {"loss": jnp.sum(jnp.square(error) * weight), "weight": jnp.sum(weight)}
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(xent * weight), "weight": jnp.sum(weight),
          "correct": jnp.sum(correct * weight)}


def classification_normalise(sums) -> dict[str, jax.Array]:
  out = {"loss": sums["loss"] / jnp.maximum(sums["weight"], 1e-9)}
  if "correct" in sums:
    out["accuracy"] = sums["correct"] / jnp.maximum(sums["weight"], 1e-9)
  return out


# ----------------------------------------------------------------------------- configs

def parse_arg(arg: str, **defaults) -> dict[str, str]:
  """"task=sst2,model=large" -> {"task": "sst2", "model": "large"}; a bare word sets the first
  default's key ("sst2" -> task=sst2). Unknown keys are an error."""
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


def finetune_config(model: str, task_cfg, *, lr: float, total_steps: int, warmup_steps: int,
                    batch_size: int):
  """The fields every fine-tuning config shares (the pretraining config's, for one train loop).

  `model` is a preset name ("large", "base-v1", ...) used when config.init_from is empty; with
  init_from the architecture is the checkpoint's and only the dropout comes from config.model.
  The optimizer is the original run_classifier/run_squad's: AdamW without bias correction,
  linear warmup then linear decay, weight decay 0.01, clipping 1.0.
  """
  import ml_collections

  from albert_jax import model as M
  from albert_jax import optimizer

  size, _, version = model.partition("-")
  preset = M.preset(f"{size}-{version or 'v2'}")
  config = ml_collections.ConfigDict()
  config.task = task_cfg
  fields = {f: v for f, v in vars(preset).items()}
  fields["id2label"] = ()
  config.model = ml_collections.ConfigDict(fields)
  config.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
  config.remat_policy = "dots_with_no_batch_dims"  # the model's default (configs/pretrain.py)
  # Attention core: xla | splash | cudnn | auto (splash on TPU, cudnn on GPU in bf16, else xla;
  # albert_jax/attention.py).
  config.attention = "auto"
  config.init_from = ""  # an HF or albert-jax model directory (or a pretraining run's checkpoint)
  config.spm_model = ""  # "": the init_from directory's spiece.model
  config.optim = optimizer.default_optim_config()
  config.optim.update(name="adamw", lr=lr, warmup_steps=warmup_steps)
  config.batch_size = batch_size
  config.eval_batch_size = 0  # 0: batch_size
  config.grad_accum_steps = 1
  config.total_steps = total_steps
  config.seed = 0
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding = "fsdp_tensor"
  config.peak_tflops_per_device = 0.0
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.export_hf = True  # WORKDIR/hf: the last step; WORKDIR/best: the best eval
  return config
