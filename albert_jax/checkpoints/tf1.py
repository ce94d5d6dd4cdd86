"""The original ALBERT releases (google-research/albert) as Hugging Face state dicts: variable names
of `modeling.py`, `albert_config.json`, and the release layouts, so the key table (`table`) does the
rest. A reader: it returns the head the checkpoint holds and never re-heads.

A release directory holds `albert_config.json`, `model.ckpt-best.{index,data-00000-of-00001}` (or
another single checkpoint, or a `checkpoint` file naming one) and `30k-clean.model`. A TF-Hub module
keeps the same variables under `module/` in `variables/variables.*`, the vocabulary in `assets/`,
and no config: the caller passes one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import re
from pathlib import Path

import numpy as np

from albert_jax import files
from albert_jax.checkpoints import table
from albert_jax.checkpoints.tensorbundle import Checkpoint
from albert_jax.model import AlbertConfig, HEADS, preset

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the original's names

_WHOLE = {  # variables that are a whole HF tensor, as they are
    "bert/embeddings/word_embeddings": "albert.embeddings.word_embeddings.weight",
    "bert/embeddings/position_embeddings": "albert.embeddings.position_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "albert.embeddings.token_type_embeddings.weight",
    "cls/predictions/output_bias": "predictions.bias",
    "cls/seq_relationship/output_weights": "sop_classifier.classifier.weight",  # [2, H]: as torch
    "cls/seq_relationship/output_bias": "sop_classifier.classifier.bias",
}
_MODULES = {  # dense layers and layer norms: scope -> HF module
    "bert/embeddings/LayerNorm": "albert.embeddings.LayerNorm",
    "bert/encoder/embedding_hidden_mapping_in": "albert.encoder.embedding_hidden_mapping_in",
    "bert/pooler/dense": "albert.pooler",
    "cls/predictions/transform/dense": "predictions.dense",
    "cls/predictions/transform/LayerNorm": "predictions.LayerNorm",
}
_LAYER_MODULES = {  # inside bert/encoder/transformer/group_G/inner_group_I/
    "attention_1/self/query": "attention.query",
    "attention_1/self/key": "attention.key",
    "attention_1/self/value": "attention.value",
    "attention_1/output/dense": "attention.dense",
    "LayerNorm": "attention.LayerNorm",  # after attention
    "ffn_1/intermediate/dense": "ffn",
    "ffn_1/intermediate/output/dense": "ffn_output",
    "LayerNorm_1": "full_layer_layer_norm",  # after the FFN
}
_LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_LAYER = re.compile(r"bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/(.+)/(\w+)")


def hf_key(name: str) -> str | None:
  """The HF state-dict key of an original `modeling.py` variable, or None for other names.

  Every TF kernel is [in, out] (the attention ones too: [H, heads * head_dim] and back), so a
  kernel is its torch weight transposed; everything else is the same array.
  """
  if name in _WHOLE:
    return _WHOLE[name]
  scope, _, leaf = name.rpartition("/")
  if leaf not in _LEAVES:
    return None
  if scope in _MODULES:
    return f"{_MODULES[scope]}.{_LEAVES[leaf]}"
  m = _LAYER.fullmatch(name)
  if m and m[3] in _LAYER_MODULES:
    return (f"albert.encoder.albert_layer_groups.{int(m[1])}.albert_layers.{int(m[2])}."
            f"{_LAYER_MODULES[m[3]]}.{_LEAVES[leaf]}")
  return None


def _is_training_state(name: str) -> bool:
  parts = name.split("/")
  return (parts[-1] in ("adam_m", "adam_v", "global_step")
          or any(p.endswith(("Optimizer", "Optimizer_1")) for p in parts))


# ----------------------------------------------------------------------------- the original's config

_CONFIG_KEYS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                "num_hidden_groups", "num_attention_heads", "intermediate_size", "inner_group_num",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range")
# Keys of the released configs that switch on structures modeling.py does not build; the
# defaults are the plain ALBERT every release uses.
_DEFAULT_ONLY = {"net_structure_type": 0, "gap_size": 0, "num_memory_blocks": 0,
                 "down_scale_factor": 1, "layers_to_keep": []}
# modeling.get_activation. Its "gelu" is the tanh approximation, HF's "gelu_new" (HF's "gelu" is erf).
_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu", "tanh": "tanh", "linear": "linear", "": "linear"}


def config_from_original(d: dict, source: str = "albert_config.json") -> AlbertConfig:
  """An AlbertConfig from the original's `albert_config.json` dict; other structures refused."""
  for key, value in d.items():
    if key in _DEFAULT_ONLY and value != _DEFAULT_ONLY[key]:
      raise ValueError(f"{source}: {key}={value!r} is not supported (only the default "
                       f"{_DEFAULT_ONLY[key]!r}: plain ALBERT, as every release)")
    if key not in _DEFAULT_ONLY and key not in _CONFIG_KEYS and key != "hidden_act":
      raise ValueError(f"{source}: unknown key {key!r} in the original ALBERT config")
  if d.get("vocab_size") is None:
    raise ValueError(f"{source}: no vocab_size")
  act = str(d.get("hidden_act", "gelu") or "").lower()  # get_activation: None or "" is linear
  if act not in _ACTIVATIONS:
    raise ValueError(f"{source}: hidden_act={act!r} is not one of the original's "
                     f"{sorted(k for k in _ACTIVATIONS if k)}")
  try:
    return AlbertConfig(**{k: d[k] for k in _CONFIG_KEYS if k in d},
                        hidden_act=_ACTIVATIONS[act])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- release directories

CONFIG_FILE = "albert_config.json"
SPM_FILES = ("30k-clean.model", "spiece.model")
HUB_PREFIX = "variables/variables"
HUB_SCOPE = "module/"


@dataclasses.dataclass(frozen=True)
class Release:
  prefix: Path  # the checkpoint: prefix.index, prefix.data-*
  config: Path | None  # albert_config.json (TF-Hub modules have none)
  spm_model: Path | None


def _checkpoint_prefix(d: Path) -> Path | None:
  """The checkpoint a release directory holds: `checkpoint` file, model.ckpt-best, the only one."""
  state = d / "checkpoint"
  if state.is_file():
    m = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(), re.MULTILINE)
    if m:
      # Only the name's last part, beside the file: TF writes the training machine's absolute
      # path, and a path that leaves the directory (../other/model.ckpt-best) is never read.
      name = posixpath.basename(m[1].replace("\\", "/"))
      if name in ("", ".", ".."):
        raise ValueError(f"{state}: model_checkpoint_path {m[1]!r} names no checkpoint; write "
                         "the checkpoint's name there (model_checkpoint_path: \"model.ckpt-N\")")
      prefix = d / name
      if not files.path(f"{prefix}.index").is_file():
        raise FileNotFoundError(f"{state} names checkpoint {m[1]!r}, but {prefix}.index is not "
                                "there (only the checkpoint beside that file is read)")
      if name != m[1]:
        log.info("%s names %r: reading %s, beside it", state, m[1], prefix)
      return prefix
  if (d / "model.ckpt-best.index").is_file():
    return d / "model.ckpt-best"
  if files.path(f"{d / HUB_PREFIX}.index").is_file():
    return d / HUB_PREFIX
  found = sorted(d.glob("*.index"))
  if len(found) > 1:
    raise ValueError(f"{d} holds several checkpoints {[p.name for p in found]} and no "
                     "`checkpoint` file naming one: pass the prefix (DIR/model.ckpt-N)")
  return found[0].with_suffix("") if found else None


def find_release(path) -> Release | None:
  """The release at `path` (a directory, or a checkpoint prefix in one), or None if not one."""
  path = files.path(path)
  if files.path(f"{path}.index").is_file():
    prefix, d = path, path.parent
  elif path.is_dir():
    prefix, d = _checkpoint_prefix(path), path
    if prefix is None:
      return None
  else:
    return None
  if prefix.name == "variables" and prefix.parent.name == "variables":
    d = prefix.parent.parent  # a TF-Hub module: DIR/variables/variables
  find = lambda names: next((d / sub / n for sub in ("", "assets") for n in names
                             if (d / sub / n).is_file()), None)
  return Release(prefix, find((CONFIG_FILE,)), find(SPM_FILES))


def _hf_tensors(ckpt: Checkpoint) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(HF key -> array, HF key -> the checkpoint's name) for the model's variables; names this
  table does not know pass through as they are, optimizer slots and the step are dropped."""
  tensors, names, skipped = {}, {}, []
  for name in ckpt.entries:
    short = name.removeprefix(HUB_SCOPE)
    if _is_training_state(short):
      skipped.append(name)
      continue
    key = hf_key(short) or name
    array = ckpt.read(name)
    table.check_finite({name: array}, ckpt.prefix)
    tensors[key] = array.T if name.endswith("/kernel") and key != name else array
    names[key] = name
  if skipped:
    log.info("%s: skipped %d optimizer/training variables: %s", ckpt.prefix, len(skipped),
             skipped)
  return tensors, names


def _tf_names(config: AlbertConfig) -> dict[str, str]:
  """HF key -> original variable name, for every parameter a release can hold."""
  names = [*_WHOLE]
  for scope in _MODULES:
    names += [f"{scope}/{leaf}" for leaf in _leaves(scope)]
  for g in range(config.num_hidden_groups):
    for i in range(config.inner_group_num):
      for scope in _LAYER_MODULES:
        names += [f"bert/encoder/transformer/group_{g}/inner_group_{i}/{scope}/{leaf}"
                  for leaf in _leaves(scope)]
  return {hf_key(n): n for n in names}


def _leaves(scope: str) -> tuple[str, str]:
  return ("gamma", "beta") if scope.rpartition("/")[2].startswith("LayerNorm") else ("kernel", "bias")


def _source_head(tensors) -> str:
  if "sop_classifier.classifier.weight" in tensors:
    return "pretraining"
  return "masked_lm" if "predictions.bias" in tensors else "base"


def _check_variables(ckpt: Checkpoint, tensors, names, config: AlbertConfig, source: str,
                     strict: bool) -> None:
  """The variables `source` needs (all of them if `strict`, else its backbone) are there with the
  config's shapes, and if `strict` nothing else is; errors name variables as the checkpoint does."""
  scope = HUB_SCOPE if any(n.startswith(HUB_SCOPE) for n in ckpt.entries) else ""
  expected_names = _tf_names(config)
  prefix = "albert." if source == "base" else ""  # AlbertModel's own keys have no "albert."
  shapes = table.expected_hf_shapes(config, source)
  for row in table.param_table(config, source):
    if not (strict or row.backbone):
      continue
    key = prefix + row.hf
    transpose = expected_names[key].endswith("/kernel")
    expected = shapes[row.hf][::-1] if transpose else shapes[row.hf]
    if key not in tensors:
      raise KeyError(f"{ckpt.prefix}: missing variable {scope + expected_names[key]!r} (shape "
                     f"{list(expected)}) for the {source} head")
    found = tensors[key].shape[::-1] if transpose else tensors[key].shape
    if tuple(found) != tuple(expected):
      raise ValueError(f"{ckpt.prefix}: variable {names[key]!r} has shape {list(found)} but "
                       f"the config expects {list(expected)}")
  wanted = {prefix + row.hf for row in table.param_table(config, source)}
  unexpected = sorted(names[k] for k in tensors.keys() - wanted)
  if strict and unexpected:
    raise ValueError(f"{ckpt.prefix}: unexpected variables for the {source} head (does the "
                     f"config match the checkpoint?): {unexpected}")


_LAYER0 = "bert/encoder/transformer/group_0/inner_group_0/"
_SIZES = (  # variables whose index shapes give config fields, one per dimension
    ("bert/embeddings/word_embeddings", ("vocab_size", "embedding_size")),
    ("bert/embeddings/position_embeddings", ("max_position_embeddings", "embedding_size")),
    ("bert/embeddings/token_type_embeddings", ("type_vocab_size", "embedding_size")),
    ("bert/encoder/embedding_hidden_mapping_in/kernel", ("embedding_size", "hidden_size")),
    (_LAYER0 + "ffn_1/intermediate/dense/kernel", ("hidden_size", "intermediate_size")),
)


def _check_sizes(ckpt: Checkpoint, config: AlbertConfig, source: str) -> None:
  """The config's sizes and layer groups against the shapes the index records, before a tensor
  is read or the model traced (a num_hidden_groups of 2000 would trace 2000 groups first).
  Variables missing here are named later, by `_check_variables`."""
  scope = HUB_SCOPE if any(n.startswith(HUB_SCOPE) for n in ckpt.entries) else ""
  shapes = {n.removeprefix(scope): list(e.shape) for n, e in ckpt.entries.items()}
  for name, fields in _SIZES:
    expected = [getattr(config, f) for f in fields]
    if name in shapes and shapes[name] != expected:
      wrong = [f"{f}={n}" for f, c, n in zip(fields, expected, shapes[name]) if c != n]
      fix = (f"set {', '.join(wrong)} in {source}" if len(shapes[name]) == len(expected)
             else f"the checkpoint is not an ALBERT of {source}'s kind")
      raise ValueError(f"{ckpt.prefix}: variable {scope + name!r} has shape {shapes[name]} but "
                       f"the config expects {expected}: {fix}")
  layers = [m for n in shapes if (m := _LAYER.fullmatch(n))]
  if not layers:
    return
  for field, scope, count in (
      ("num_hidden_groups", "group", 1 + max(int(m[1]) for m in layers)),
      ("inner_group_num", "inner_group", 1 + max(int(m[2]) for m in layers))):
    if getattr(config, field) != count:
      raise ValueError(f"{ckpt.prefix}: {field}={getattr(config, field)} in {source}, but the "
                       f"checkpoint's layers are {scope}_0 ... {scope}_{count - 1}: set "
                       f"{field}={count} in {source}")


def read_config(release: Release, config: AlbertConfig | str | None = None) -> AlbertConfig:
  """The release's config, or `config` (an AlbertConfig, a preset name or an original
  albert_config.json) where it has none."""
  if isinstance(config, (str, os.PathLike)) and files.path(config).is_file():
    return config_from_original(json.loads(files.path(config).read_text()), str(config))
  if isinstance(config, str):
    return preset(config)
  if config is not None:
    return config
  if release.config is None:
    raise FileNotFoundError(
        f"{release.prefix.parent}: no {CONFIG_FILE} (TF-Hub modules carry none): pass the "
        "config: config= an AlbertConfig, a preset name such as 'base-v2' or an "
        f"{CONFIG_FILE} (--config on the command line), or put the release's {CONFIG_FILE} in "
        "the module directory")
  try:
    d = json.loads(release.config.read_text())
  except ValueError as e:
    raise ValueError(f"{release.config}: not JSON ({e})") from None
  return config_from_original(d, str(release.config))


def load_release(path, head: str | None = None, seed: int = 0,
                 config: AlbertConfig | str | None = None) -> tuple[AlbertConfig, dict, str]:
  """(config, params, head) from a release directory, TF-Hub module or checkpoint prefix (or the
  `Release` `find_release` found there): the head the checkpoint holds (pretraining for a
  release). `head`: the one the caller will re-head it to (`init_from.load`); when another, only
  the backbone must be complete, and what else the held head lacks is initialised fresh."""
  release = path if isinstance(path, Release) else find_release(path)
  if release is None:
    raise FileNotFoundError(f"{path}: no TF checkpoint (*.index) in it")
  config_source = (str(config) if isinstance(config, (str, os.PathLike))
                   else str(release.config) if config is None else "the config passed")
  config = read_config(release, config)
  ckpt = Checkpoint(release.prefix)
  log.info("Reading the TF1 checkpoint %s (%d variables), config from %s", ckpt.prefix,
           len(ckpt.entries), config_source)
  _check_sizes(ckpt, config, config_source)
  tensors, names = _hf_tensors(ckpt)
  source = _source_head(tensors)
  head = head or source
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  strict = head == source  # another head needs the backbone only
  _check_variables(ckpt, tensors, names, config, source, strict=strict)
  try:
    params = table.from_hf_state_dict(config, tensors, source, source if strict else None, seed)
  except (KeyError, ValueError) as e:
    raise type(e)(f"{release.prefix}: {e.args[0]}") from None
  return config, params, source
