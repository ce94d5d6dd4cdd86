"""Optimizers as ALBERT trained with them: LAMB and AdamW without bias correction, the
warmup + polynomial-decay schedule, global-norm clipping and the weight-decay masks.

Follows google-research/albert `optimization.py` (`create_optimizer`, `AdamWeightDecayOptimizer`)
and `lamb_optimizer.py` (`LAMBOptimizer`); `adamw_optax` is the standard bias-corrected AdamW.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


def default_optim_config() -> ml_collections.ConfigDict:
  """The original's pretraining settings (run_pretraining.py flags and create_optimizer)."""
  return ml_collections.ConfigDict(dict(
      name="lamb",  # "lamb" | "adamw" (both as the original) | "adamw_optax" (bias-corrected)
      lr=0.00176,  # the paper's LAMB lr for batch 4096
      warmup_steps=3125,
      start_warmup_step=0,  # warmup runs over [start_warmup_step, start_warmup_step + warmup_steps)
      decay_power=1.0,
      end_lr=0.0,
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      clip_norm=1.0,  # global-norm clipping before the update; 0 or None disables
      exclude_from_weight_decay=("LayerNorm", "layer_norm", "bias"),
      # LAMB's trust ratio skips these; None (or empty) means exclude_from_weight_decay, as in
      # the original.
      exclude_from_layer_adaptation=ml_collections.config_dict.placeholder(tuple),
  ))


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """lr at step `count` (updates applied so far): linear warmup, then polynomial decay.

  As `create_optimizer`: the decay runs from step 0 over `total_steps` (not from the end of the
  warmup), and while `count - start_warmup_step < warmup_steps` the warmup value
  `lr * (count - start_warmup_step) / warmup_steps` replaces it, so the first update has lr 0.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  lr, end_lr, power = optim_cfg.lr, optim_cfg.end_lr, optim_cfg.decay_power
  warmup, start = optim_cfg.warmup_steps, optim_cfg.start_warmup_step

  def schedule(count):
    count = jnp.asarray(count)
    # tf.train.polynomial_decay(cycle=False); (T - t) / T rather than 1 - t / T, so that XLA's
    # division by a constant cannot leave a residue at t = T.
    left = (total_steps - jnp.minimum(count, total_steps)) / total_steps
    decayed = (lr - end_lr) * left ** power + end_lr
    if not warmup:
      return decayed
    since = count - start
    # The original would go negative before start_warmup_step; we hold 0 there instead.
    warm = lr * (jnp.maximum(since, 0) / warmup)
    return jnp.where(since < warmup, warm, decayed)

  return schedule


def weight_decay_mask(params: PyTree, patterns: Sequence[str]) -> PyTree:
  """True for leaves whose "/"-joined path no pattern `re.search`-es: the ones decayed.

  LAMB's trust ratio uses the same test with `exclude_from_layer_adaptation`.
  """
  def keep(path, _):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return not any(re.search(p, name) for p in patterns)
  return jax.tree_util.tree_map_with_path(keep, params)


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
  mu: PyTree
  nu: PyTree


def scale_by_adam_no_bias_correction(b1: float, b2: float,
                                     eps: float) -> optax.GradientTransformation:
  """m / (sqrt(v) + eps) with m, v uncorrected running moments, as both original optimizers."""

  def init(params):
    # The original keeps m and v in float32 whatever the variable's dtype.
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.promote_types(p.dtype, jnp.float32))
    return ScaleByAdamNoBiasCorrectionState(jax.tree.map(zeros, params),
                                            jax.tree.map(zeros, params))

  def update(grads, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, grads)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, ScaleByAdamNoBiasCorrectionState(mu, nu)

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then LAMB / AdamW as the original, or optax's AdamW, on the schedule.

  The original's step, per tensor: update = m / (sqrt(v) + eps) + weight_decay * param (decayed
  tensors only); LAMB scales it by ||param|| / ||update|| (1 where either is 0) unless excluded
  from layer adaptation; param -= lr * update.
  """
  c = optim_cfg
  schedule = learning_rate_schedule(c, total_steps)
  decay_mask = functools.partial(weight_decay_mask, patterns=tuple(c.exclude_from_weight_decay))
  clip = optax.clip_by_global_norm(c.clip_norm) if c.clip_norm else optax.identity()

  if c.name == "adamw_optax":
    return optax.chain(clip, optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                                         weight_decay=c.weight_decay, mask=decay_mask))
  if c.name not in ("lamb", "adamw"):
    raise ValueError(f"Unknown optimizer {c.name!r}; choose 'lamb', 'adamw' or 'adamw_optax'")

  steps = [clip, scale_by_adam_no_bias_correction(c.b1, c.b2, c.eps),
           optax.add_decayed_weights(c.weight_decay, mask=decay_mask)]
  if c.name == "lamb":
    adapt = tuple(c.exclude_from_layer_adaptation or c.exclude_from_weight_decay)
    adapt_mask = functools.partial(weight_decay_mask, patterns=adapt)
    steps.append(optax.masked(optax.scale_by_trust_ratio(), adapt_mask))
  steps.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*steps)
