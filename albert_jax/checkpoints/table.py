"""The Flax <-> Hugging Face key table: one row per parameter (Flax path, HF key, transform), the
shapes a config implies, and state dicts converted both ways with their checks. The HF directory
reader (`hf`) and the TF1 release reader (`tf1`, which names its variables by HF keys) share it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import numpy as np

from albert_jax.model import AlbertConfig, HEADS, abstract_params, init_params, make_model

log = logging.getLogger(__name__)

Array = np.ndarray


# ----------------------------------------------------------------------------- the table

@dataclasses.dataclass(frozen=True)
class Row:
  """One parameter: where it lives in the Flax tree and in the HF state dict, and how to map it."""
  flax: str  # "/"-joined path in the Flax params tree
  hf: str  # key in the HF state dict
  to_hf: Callable[[Array], Array]
  from_hf: Callable[[Array], Array]
  backbone: bool  # embeddings/encoder weights (a head change keeps them)


_COPY = (lambda x: x, lambda x: x)
_TRANSPOSE = (lambda k: k.T, lambda w: w.T)  # Dense: Flax kernel [in, out], torch weight [out, in]


def _layer_rows(cfg: AlbertConfig, f: str, h: str) -> list[tuple[str, str, tuple]]:
  """The shared AlbertLayer. Flax keeps attention heads as their own axis (for sharding)."""
  H, heads, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  qkv_kernel = (lambda k: k.reshape(H, heads * d).T, lambda w: w.T.reshape(H, heads, d))
  qkv_bias = (lambda b: b.reshape(heads * d), lambda b: b.reshape(heads, d))
  out_kernel = (lambda k: k.reshape(heads * d, H).T, lambda w: w.T.reshape(heads, d, H))
  rows = []
  for proj in ("query", "key", "value"):
    rows += [(f"{f}/attention/{proj}/kernel", f"{h}.attention.{proj}.weight", qkv_kernel),
             (f"{f}/attention/{proj}/bias", f"{h}.attention.{proj}.bias", qkv_bias)]
  rows += [
      (f"{f}/attention/dense/kernel", f"{h}.attention.dense.weight", out_kernel),
      (f"{f}/attention/dense/bias", f"{h}.attention.dense.bias", _COPY),
      (f"{f}/attention/LayerNorm/scale", f"{h}.attention.LayerNorm.weight", _COPY),
      (f"{f}/attention/LayerNorm/bias", f"{h}.attention.LayerNorm.bias", _COPY),
      (f"{f}/ffn/kernel", f"{h}.ffn.weight", _TRANSPOSE),
      (f"{f}/ffn/bias", f"{h}.ffn.bias", _COPY),
      (f"{f}/ffn_output/kernel", f"{h}.ffn_output.weight", _TRANSPOSE),
      (f"{f}/ffn_output/bias", f"{h}.ffn_output.bias", _COPY),
      (f"{f}/full_layer_layer_norm/scale", f"{h}.full_layer_layer_norm.weight", _COPY),
      (f"{f}/full_layer_layer_norm/bias", f"{h}.full_layer_layer_norm.bias", _COPY),
  ]
  return rows


def _dense(f, h):
  return [(f"{f}/kernel", f"{h}.weight", _TRANSPOSE), (f"{f}/bias", f"{h}.bias", _COPY)]


def _layer_norm(f, h):
  return [(f"{f}/scale", f"{h}.weight", _COPY), (f"{f}/bias", f"{h}.bias", _COPY)]


# Heads whose AlbertModel has the pooler (HF builds the others with add_pooling_layer=False).
_POOLED = {"base", "pretraining", "sequence_classification", "multiple_choice"}

# HF state-dict keys that carry no information of their own: buffers and tied copies.
_TIED_OR_BUFFER = ("embeddings.position_ids", "embeddings.token_type_ids",
                   "predictions.decoder.weight", "predictions.decoder.bias")


def param_table(cfg: AlbertConfig, head: str) -> list[Row]:
  """Every parameter of `head` for `cfg`: Flax path, HF key, transform. The single source of truth."""
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  fp, hp = ("", "") if head == "base" else ("albert/", "albert.")
  backbone = [
      (f"{fp}embeddings/word_embeddings/embedding", f"{hp}embeddings.word_embeddings.weight", _COPY),
      (f"{fp}embeddings/position_embeddings/embedding",
       f"{hp}embeddings.position_embeddings.weight", _COPY),
      (f"{fp}embeddings/token_type_embeddings/embedding",
       f"{hp}embeddings.token_type_embeddings.weight", _COPY),
      *_layer_norm(f"{fp}embeddings/LayerNorm", f"{hp}embeddings.LayerNorm"),
      *_dense(f"{fp}encoder/embedding_hidden_mapping_in", f"{hp}encoder.embedding_hidden_mapping_in"),
  ]
  for g in range(cfg.num_hidden_groups):
    for i in range(cfg.inner_group_num):
      backbone += _layer_rows(cfg, f"{fp}encoder/albert_layer_groups_{g}/albert_layers_{i}",
                              f"{hp}encoder.albert_layer_groups.{g}.albert_layers.{i}")
  rest = _dense(f"{fp}pooler", f"{hp}pooler") if head in _POOLED else []
  if head in ("pretraining", "masked_lm"):
    rest += [*_dense("predictions/dense", "predictions.dense"),
             *_layer_norm("predictions/LayerNorm", "predictions.LayerNorm"),
             ("predictions/bias", "predictions.bias", _COPY)]
  if head == "pretraining":
    rest += _dense("sop_classifier/classifier", "sop_classifier.classifier")
  if head in ("sequence_classification", "token_classification", "multiple_choice"):
    rest += _dense("classifier", "classifier")
  if head == "question_answering":
    rest += _dense("qa_outputs", "qa_outputs")
  if head == "squad_v2_original":
    # No ALBERT class in transformers has this head: these are the keys of XLNet's (and XLM's
    # SQuADHead's) modules of the same structure, used within albert-jax only (head changes,
    # init_from); `save` refuses to write them as an ALBERT checkpoint.
    rest += [*_dense("start_logits/dense", "start_logits.dense"),
             *_dense("end_logits/dense_0", "end_logits.dense_0"),
             *_layer_norm("end_logits/LayerNorm", "end_logits.LayerNorm"),
             *_dense("end_logits/dense_1", "end_logits.dense_1"),
             *_dense("answer_class/dense_0", "answer_class.dense_0"),
             ("answer_class/dense_1/kernel", "answer_class.dense_1.weight", _TRANSPOSE)]
  return ([Row(f, h, *t, backbone=True) for f, h, t in backbone]
          + [Row(f, h, *t, backbone=False) for f, h, t in rest])


# ----------------------------------------------------------------------------- flat trees

def flatten(tree) -> dict[str, Any]:
  """{"a/b/kernel": leaf}: a parameter tree by "/"-joined path, in jax's (sorted) order; boxed
  leaves (nn.Partitioned, with their logical names) stay boxed. The one flattener: conversion,
  re-heading and the train state's shardings all name parameters this way."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict:
  """The nested dicts of a `flatten`ed tree."""
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    *parents, name = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = leaf
  return tree


def _hf_shape(row: Row, flax_shape: tuple) -> tuple:
  """The HF shape of a Flax parameter of `flax_shape`: its transform applied to a zero-strided
  view, so no memory is allocated whatever the config claims (vocab_size 10**9)."""
  return row.to_hf(np.broadcast_to(np.float32(0), flax_shape)).shape


def expected_hf_shapes(cfg: AlbertConfig, head: str) -> dict[str, tuple]:
  """HF key -> shape of every tensor of `head` (keys as param_table names them)."""
  expected = _expected_shapes(cfg, head)
  return {r.hf: _hf_shape(r, expected[r.flax]) for r in param_table(cfg, head)}


def _expected_shapes(cfg: AlbertConfig, head: str) -> dict[str, tuple]:
  """Flax path -> shape for `head`, traced without allocating anything (and without the
  activation sharding constraints of a mesh the caller may be inside: shapes are all we need;
  `abstract_params` traces a model once a process)."""
  with jax.set_mesh(None):
    abstract = nn.unbox(abstract_params(make_model(cfg, head)))
  return {k: tuple(v.shape) for k, v in flatten(abstract).items()}


def check_finite(tensors: dict[str, Array], source) -> None:
  """NaN or Inf in a checkpoint means it is broken: refuse it, naming the tensor."""
  for key, t in tensors.items():
    if np.issubdtype(t.dtype, np.floating) or t.dtype.name == "bfloat16":
      bad = ~np.isfinite(t.astype(np.float32))
      if bad.any():
        raise ValueError(f"{source}: tensor {key!r} holds {int(bad.sum())} non-finite values")


# ----------------------------------------------------------------------------- conversion

def from_hf_state_dict(config: AlbertConfig, tensors: dict[str, Array], head: str,
                       source_head: str | None, seed: int = 0) -> dict:
  """Flax params for `head` from an HF state dict saved from `source_head` (None: unknown).

  Loading into the head the checkpoint was saved from is strict: every tensor must be there,
  with the right shape, and nothing may be left over. Loading into another head keeps the
  backbone and initialises what the checkpoint lacks, saying so, as transformers does.
  """
  strict = source_head == head
  src_prefixed = any(k.startswith("albert.") for k in tensors)
  if "predictions.bias" not in tensors and "predictions.decoder.bias" in tensors:
    tensors = {**tensors, "predictions.bias": tensors["predictions.decoder.bias"]}
  expected = _expected_shapes(config, head)
  flat, used, new = {}, set(), []
  for row in param_table(config, head):
    key = row.hf
    if head == "base" or key.startswith("albert."):  # AlbertModel weights: add or strip "albert."
      key = ("albert." if src_prefixed else "") + key.removeprefix("albert.")
    hf_shape = _hf_shape(row, expected[row.flax])
    if key not in tensors:
      if strict or row.backbone:
        raise KeyError(f"missing tensor {key!r} (shape {hf_shape}) for the {head} head")
      new.append(row.flax)
      continue
    t = tensors[key]
    if not (np.issubdtype(t.dtype, np.floating) or t.dtype.name == "bfloat16"):
      raise ValueError(f"tensor {key!r} has dtype {t.dtype}; parameters are floating point")
    if t.shape != hf_shape:
      raise ValueError(f"tensor {key!r} has shape {tuple(t.shape)} but the config expects "
                       f"{hf_shape} (Flax {row.flax} {expected[row.flax]})")
    flat[row.flax] = np.ascontiguousarray(row.from_hf(t).astype(np.float32))
    used.add(key)
  unused = sorted(k for k in tensors.keys() - used if not k.endswith(_TIED_OR_BUFFER))
  if unused and strict:
    raise ValueError(f"unexpected tensors for the {head} head: {unused}")
  if unused:
    log.warning("Checkpoint weights not used by the %s head: %s", head, unused)
  if new:
    log.warning("Newly initialised %s weights (not in the checkpoint; train them): %s", head, new)
    fresh = flatten(init_params(make_model(config, head), seed))
    flat.update({k: np.asarray(fresh[k]) for k in new})
  return unflatten(flat)


def to_hf_state_dict(config: AlbertConfig, params, head: str) -> dict[str, Array]:
  """The HF state dict (as transformers saves it: no tied copies) for Flax `params`."""
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  expected = _expected_shapes(config, head)
  rows = param_table(config, head)
  extra = sorted(flat.keys() - {r.flax for r in rows})
  if extra:
    raise ValueError(f"parameters not part of the {head} head for this config: {extra}")
  out = {}
  for row in rows:
    if row.flax not in flat:
      raise KeyError(f"missing parameter {row.flax!r} (shape {expected[row.flax]}) "
                     f"for the {head} head")
    if flat[row.flax].shape != expected[row.flax]:
      raise ValueError(f"parameter {row.flax!r} has shape {flat[row.flax].shape} but the config "
                       f"expects {expected[row.flax]} (HF {row.hf})")
    out[row.hf] = np.ascontiguousarray(row.to_hf(flat[row.flax]))
  return out


def infer_head(params) -> str:
  """The head a params tree belongs to, from its top-level names."""
  if "albert" not in params:
    return "base"
  names = set(params) - {"albert"}
  if "sop_classifier" in names:
    return "pretraining"
  if "predictions" in names:
    return "masked_lm"
  if "qa_outputs" in names:
    return "question_answering"
  if "answer_class" in names:
    return "squad_v2_original"
  raise ValueError("cannot tell the head from the parameters (sequence/token/multiple-choice "
                   "classification share their names); pass head=...")
