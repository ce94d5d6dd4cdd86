"""The model a job trains, and `config.init_from`: one rule for pretraining and every task.

Without `config.init_from` the architecture is `config.model` (vocab_size -1: the tokenizer's).
With it (an HF directory, an albert-jax model directory or training run, or an original TF1
release), the architecture is the checkpoint's: only the dropout rates come from `config.model`,
and num_labels / id2label from the task. Its parameters are matched to the new head by path and
shape, in Flax: the backbone must be there; what the new head adds (a classifier) is initialised
fresh, what the checkpoint has beyond it (an MLM head) is dropped, both logged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np

from albert_jax import model as M

log = logging.getLogger(__name__)

PyTree = Any
FROM_CONFIG = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")
BACKBONE = ("albert/embeddings/", "albert/encoder/")  # what any head's checkpoint must bring


@dataclasses.dataclass(frozen=True)
class Loaded:
  config: M.AlbertConfig
  params: PyTree  # host arrays, the tree of `head`
  head: str


def load(path: str) -> Loaded:
  from albert_jax import hf_convert  # the readers import model code; keep this module light
  cfg, params, head = hf_convert.load_any(path)
  return Loaded(cfg, params, head)


def model_config(config, task, vocab_size: int, checkpoint: M.AlbertConfig | None = None,
                 resumed: bool = False) -> M.AlbertConfig:
  """The architecture the job trains (see the module doc). `checkpoint`: the architecture of
  config.init_from, or of the run's own checkpoints when it resumes (`resumed`): then a
  config.model that asks for another one is refused, naming the fields."""
  labels = task.num_labels(config.data)
  names = tuple(config.data.get("label_names", ()) or ())
  heading = dict(num_labels=labels, id2label=names if len(names) == labels else ())
  if checkpoint is None:
    fields = dict(config.model)
    if fields.get("vocab_size", -1) in (-1, None):
      fields["vocab_size"] = vocab_size
    if fields["vocab_size"] < vocab_size:
      raise ValueError(f"config.model.vocab_size={fields['vocab_size']} is smaller than the "
                       f"tokenizer's {vocab_size} pieces")
    return M.AlbertConfig(**{**fields, **heading})
  differ = {k: (v, getattr(checkpoint, k)) for k, v in dict(config.model).items()
            if k not in FROM_CONFIG + ("num_labels", "id2label") and hasattr(checkpoint, k)
            and not (k == "vocab_size" and v in (-1, None)) and getattr(checkpoint, k) != v}
  if differ and resumed and not config.init_from:
    raise ValueError(
        "config.model asks for another architecture than the run's checkpoints hold ("
        + ", ".join(f"config.model.{k}={a!r}, checkpoints {b!r}" for k, (a, b) in differ.items())
        + "): set it back, or start a new workdir")
  if differ:
    log.warning("The architecture is the checkpoint's; config.model differs in "
                    "(config.model, checkpoint): %s", differ)
  fields = {k: config.model[k] for k in FROM_CONFIG if k in config.model}
  return dataclasses.replace(checkpoint, **fields, **heading)


def flat(params) -> dict[str, Any]:
  """{"a/b/kernel": leaf}: a parameter tree by "/"-joined path (boxed leaves stay boxed)."""
  return flax.traverse_util.flatten_dict(params, sep="/", is_leaf=lambda _, v: not isinstance(
      v, dict) and not isinstance(v, flax.core.FrozenDict))


def _rooted(path: str, head: str) -> str:
  """A path as it is under a head with the `albert/` backbone scope (the base head has none)."""
  return f"albert/{path}" if head == "base" else path


def matching(params: PyTree, from_head: str, target: PyTree, to_head: str
             ) -> tuple[dict[str, Any], list[str]]:
  """({path in `target`: the checkpoint's array}, [target paths initialised fresh]).

  `target` holds the new head's parameters or their shapes. Refuses a checkpoint whose backbone
  is missing or shaped otherwise, naming the parameters."""
  source = {_rooted(k, from_head): v for k, v in flat(params).items()}
  kept, fresh, bad = {}, [], []
  for path, leaf in flat(target).items():
    shape = tuple(nn.unbox(leaf).shape)
    have = source.get(_rooted(path, to_head))
    if have is not None and tuple(np.shape(have)) == shape:
      kept[path] = have
    elif _rooted(path, to_head).startswith(BACKBONE):
      bad.append(f"{path} {shape}: " + ("missing" if have is None else
                                        f"the checkpoint has {tuple(np.shape(have))}"))
    else:
      fresh.append(path)
  if bad:
    raise ValueError("config.init_from does not fit the model's backbone: " + "; ".join(bad[:5])
                     + (" ..." if len(bad) > 5 else ""))
  used = {_rooted(k, to_head) for k in kept}
  dropped = sorted(k.removeprefix("albert/") if from_head == "base" else k
                   for k in source if k not in used)  # as the checkpoint's head names them
  if fresh:
    log.warning("Newly initialised %s weights (not in the checkpoint; train them): %s", to_head,
                fresh)
  if dropped:
    log.warning("Checkpoint weights not used by the %s head: %s", to_head, dropped)
  return kept, fresh


def merge(params: PyTree, kept: dict[str, Any]) -> PyTree:
  """`params` (plain or boxed with logical names) with the leaves at `kept`'s paths replaced."""
  leaves = flat(params)
  for path, value in kept.items():
    leaf = leaves[path]
    leaves[path] = leaf.replace_boxed(value) if isinstance(leaf, nn.Partitioned) else value
  return flax.traverse_util.unflatten_dict(leaves, sep="/")


def rehead(params: PyTree, from_head: str, cfg: M.AlbertConfig, to_head: str,
           seed: int = 0) -> PyTree:
  """Host parameters of `to_head` from a checkpoint of `from_head` (see `matching`)."""
  if to_head == from_head:
    return params
  module = M.make_model(cfg, to_head)
  kept, fresh = matching(params, from_head, nn.unbox(M.abstract_params(module)), to_head)
  new = M.init_params(module, seed) if fresh else nn.unbox(M.abstract_params(module))
  return jax.tree_util.tree_map(np.asarray, merge(new, kept))
