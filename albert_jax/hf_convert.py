"""Hugging Face <-> albert-jax checkpoints: one table of (Flax path, HF key, transform), with checks.

    python -m albert_jax.hf_convert hf-to-orbax HF_DIR OUT_DIR [--head=...] [--overwrite]
    python -m albert_jax.hf_convert orbax-to-hf CKPT_DIR OUT_DIR [--head=...] [--spm_model=...]
    python -m albert_jax.hf_convert tf-to-hf RELEASE_DIR OUT_DIR [--head=...] [--config=...]
    python -m albert_jax.hf_convert tf-to-orbax RELEASE_DIR OUT_DIR [--head=...] [--config=...]

An HF directory is `config.json` + `model.safetensors` (or `pytorch_model.bin`, read only with
`torch.load(weights_only=True)` and torch >= 2.6, or a sharded `*.index.json` whose shards must be
plain file names in the directory); local or in a bucket (`gs://...`), sources and destinations. Exports
write `config.json`, `model.safetensors` and, given a SentencePiece model, the tokenizer files,
loadable by `transformers.AlbertFor*.from_pretrained(dir)` with no missing or unused weights.
The `squad_v2_original` head has no such class: exporting it to HF is refused (it is kept as an
albert-jax model directory, `save_model`), while loading an HF or original checkpoint into it
keeps the backbone and initialises the head.
The original TF1 releases (RELEASE_DIR, a TF-Hub module or a checkpoint prefix) are read by
`tf1_release` without TensorFlow; `--config` (a preset such as base-v2, or an albert_config.json)
is needed only for a TF-Hub module, which carries no config.
An OUT_DIR that is the source, holds it or lies inside it (links followed) is refused before
anything is read or written: `--overwrite` would otherwise replace the source with its copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import numpy as np
import safetensors.numpy

from albert_jax import checkpointing, files
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.model import (AlbertConfig, HEADS, abstract_params, has_hf_class,
                              head_from_architecture, init_params, make_model)

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

def flatten(tree) -> dict[str, Array]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
  return flat


def unflatten(flat: dict[str, Array]) -> dict:
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
  activation sharding constraints of a mesh the caller may be inside: shapes are all we need)."""
  return dict(_traced_shapes(cfg, head))


@functools.lru_cache(maxsize=32)
def _traced_shapes(cfg: AlbertConfig, head: str) -> tuple[tuple[str, tuple], ...]:
  """`_expected_shapes`, traced once per (config, head) in a process: loads, conversions and
  exports of the same model ask again, and each would trace the model's init."""
  with jax.set_mesh(None):
    abstract = nn.unbox(abstract_params(make_model(cfg, head)))
  return tuple((k, tuple(v.shape)) for k, v in flatten(abstract).items())


# ----------------------------------------------------------------------------- reading HF files

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _reject_duplicates(pairs):
  seen = {}
  for key, value in pairs:
    if key in seen:
      raise ValueError(f"duplicate tensor name {key!r} in the safetensors header")
    seen[key] = value
  return seen


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors(path: str | Path) -> dict[str, Array]:
  """Reads a safetensors file strictly, as the format defines it: a JSON header (under 100 MB)
  of {name: {dtype, shape, data_offsets}} and a flat `__metadata__` of strings, then a byte
  buffer the tensors cover exactly, without holes, overlaps or trailing bytes. Duplicate names
  and NaN/Inf (checked by the callers) are errors too: the safetensors library accepts both."""
  import ml_dtypes
  dtypes = {**_ST_DTYPES, "BF16": ml_dtypes.bfloat16}
  remote = files.is_remote(path)
  path = files.path(path)
  # A local file is mapped (read as the arrays are used); an object in a bucket is read whole.
  with (io.BytesIO(path.read_bytes()) if remote else open(path, "rb")) as f:
    size = len(f.getvalue()) if remote else os.fstat(f.fileno()).st_size
    if size < 8:
      raise ValueError(f"{path}: not a safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
      raise ValueError(f"{path}: header of {n} bytes is over the {MAX_HEADER_BYTES} limit")
    if n > size - 8:
      raise ValueError(f"{path}: header length {n} exceeds the file size {size}")
    try:
      header = json.loads(f.read(n), object_pairs_hook=_reject_duplicates)
    except ValueError as e:  # invalid UTF-8 or JSON
      raise ValueError(f"{path}: invalid safetensors header: {e}") from None
    if size <= 8 + n:
      buf = b""
    elif remote:
      buf = f.getvalue()
    else:
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  if not isinstance(header, dict):
    raise ValueError(f"{path}: the safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", {})
  if not isinstance(metadata, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise ValueError(f"{path}: __metadata__ must map strings to strings")
  tensors, spans = {}, []
  for key, info in header.items():
    if not isinstance(info, dict) or info.keys() != {"dtype", "shape", "data_offsets"}:
      raise ValueError(f"{path}: tensor {key!r} has a malformed entry {info!r}")
    if info["dtype"] not in dtypes:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']!r}")
    dtype = np.dtype(dtypes[info["dtype"]])
    shape, offsets = info["shape"], info["data_offsets"]
    if (not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape)
        or not isinstance(offsets, list) or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)):
      raise ValueError(f"{path}: tensor {key!r} has malformed shape {shape!r} or data_offsets "
                       f"{offsets!r}")
    start, end = offsets
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= start <= end <= size - 8 - n or end - start != count * dtype.itemsize:
      raise ValueError(f"{path}: tensor {key!r} has data_offsets {offsets} that do "
                       f"not fit shape {tuple(shape)} {info['dtype']} in the file")
    spans.append((start, end, key))
    tensors[key] = np.frombuffer(buf, dtype, count, 8 + n + start).reshape(shape)
  position = 0
  for start, end, key in sorted(spans):
    if start != position:
      raise ValueError(f"{path}: tensor {key!r} starts at byte {start} of the data, not "
                       f"{position}: the tensors overlap or leave a hole")
    position = end
  if position != size - 8 - n:
    raise ValueError(f"{path}: {size - 8 - n - position} bytes after the last tensor")
  return tensors


MIN_TORCH = (2, 6)  # torch.load(weights_only=True) runs code from a crafted file before 2.6
                   # (CVE-2025-32434)


def _torch_version(version: str) -> tuple[int, int]:
  parts = version.split("+")[0].split(".")
  try:
    return int(parts[0]), int(parts[1])
  except (IndexError, ValueError):
    return (0, 0)


def _read_torch_bin(path) -> dict[str, Array]:
  try:
    import torch
  except ImportError:
    raise ImportError(
        f"{path} is a PyTorch pickle; reading it needs torch (`pip install torch`), or convert "
        "it to model.safetensors with transformers first") from None
  if _torch_version(torch.__version__) < MIN_TORCH:
    raise ImportError(
        f"{path} is a PyTorch pickle and torch {torch.__version__} is installed: before 2.6, "
        "torch.load(weights_only=True) can run code from a crafted file (CVE-2025-32434), so it "
        "is not read. Upgrade torch (`pip install 'torch>=2.6'`), or convert the directory to "
        "model.safetensors with transformers where torch is current")
  try:
    source = (io.BytesIO(files.path(path).read_bytes()) if files.is_remote(path)
              else Path(path))
    state = torch.load(source, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only refuses arbitrary pickles; never fall back
    raise ValueError(f"{path}: torch.load(weights_only=True) refused the file ({e}); it is not a "
                     "plain state dict and will not be unpickled") from None
  if not isinstance(state, dict):
    raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
  out = {}
  for key, t in state.items():
    if not isinstance(t, torch.Tensor):
      raise ValueError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")
    t = t.detach()
    out[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
  return out


def read_hf_weights(hf_dir: str | Path) -> dict[str, Array]:
  """The state dict of an HF directory, from safetensors (preferred) or pytorch_model.bin."""
  hf_dir = files.path(hf_dir)
  for name, reader in (("model.safetensors", read_safetensors),
                       ("pytorch_model.bin", _read_torch_bin)):
    if (hf_dir / name).is_file():
      tensors = reader(hf_dir / name)
      break
    index = hf_dir / f"{name}.index.json"
    if index.is_file():
      weight_map = json.loads(index.read_text())["weight_map"]
      shards = [files.child(hf_dir, shard, index)
                for shard in sorted(set(weight_map.values()), key=str)]
      tensors = {}
      for shard in shards:
        part = reader(shard)
        for key in part.keys() & tensors.keys():
          raise ValueError(f"{index}: tensor {key!r} appears in more than one shard")
        tensors.update(part)
      break
  else:
    found = sorted(p.name for p in hf_dir.iterdir()) if hf_dir.is_dir() else []
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (found {found})")
  check_finite(tensors, hf_dir)
  return tensors


def check_finite(tensors: dict[str, Array], source) -> None:
  """NaN or Inf in a checkpoint means it is broken: refuse it, naming the tensor."""
  for key, t in tensors.items():
    if np.issubdtype(t.dtype, np.floating) or t.dtype.name == "bfloat16":
      bad = ~np.isfinite(t.astype(np.float32))
      if bad.any():
        raise ValueError(f"{source}: tensor {key!r} holds {int(bad.sum())} non-finite values")


def read_hf_config(hf_dir: str | Path) -> tuple[AlbertConfig, str | None]:
  """(config, head the checkpoint was saved from, or None) from `config.json`."""
  path = files.path(hf_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
  d = json.loads(path.read_text())
  if "model_type" not in d:
    raise ValueError(f"{path} has no model_type; expected 'albert'")
  try:
    config = AlbertConfig.from_hf_dict(d)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  archs = d.get("architectures") or []
  return config, (head_from_architecture(archs[0]) if archs else None)


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


# ----------------------------------------------------------------------------- public API

def load(path, head: str | None = None, seed: int = 0) -> tuple[AlbertConfig, dict, str]:
  """(config, params, head) from an HF directory; `head` defaults to the saved architecture.
  Another head than the saved one keeps the backbone (`init_from.rehead`)."""
  from albert_jax import init_from
  config, source_head = read_hf_config(path)
  if head is not None and head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  own = source_head or head or "base"  # the head the tensors are read into
  tensors = read_hf_weights(path)
  try:
    params = from_hf_state_dict(config, tensors, own, source_head, seed)
    if head is not None and head != own:
      params = init_from.rehead(params, own, config, head, seed)
  except (KeyError, ValueError) as e:
    raise type(e)(f"{path}: {e.args[0]}") from None
  return config, params, head or own


def save(config: AlbertConfig, params, path, head: str | None = None, tokenizer=None,
         overwrite: bool = False, sources=()) -> Path:
  """Writes an HF directory for `params`; `tokenizer`: an AlbertTokenizer or a spiece.model path;
  `sources`: the paths `params` were read from (an output that is one, holds one or lies inside
  one is refused, files.OverlappingPaths).

  Everything is written to a temporary directory first and renamed into place. A head
  transformers has no class for (squad_v2_original) is refused: `save_model` writes it as an
  albert-jax model directory.
  """
  head = head or infer_head(params)
  if head in HEADS and not has_hf_class(head):
    raise ValueError(
        f"the {head} head cannot be exported to Hugging Face: transformers has no ALBERT class "
        "for it, so no AlbertFor* model could load it. Keep it as an albert-jax model directory "
        "(hf_convert.save_model, checkpointing.save_model_dir, or the training run's "
        "checkpoints), which from_pretrained and config.init_from read")
  tensors = to_hf_state_dict(config, params, head)
  if tokenizer is not None and not isinstance(tokenizer, AlbertTokenizer):
    tokenizer = AlbertTokenizer(tokenizer, model_max_length=config.max_position_embeddings)
  with files.atomic_directory(path, overwrite, sources=sources) as tmp:
    hf_config = {"architectures": [HEADS[head][1]], **config.to_hf_dict()}
    files.write_json(tmp / "config.json", hf_config)
    safetensors.numpy.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
  return files.path(path)


def save_model(config: AlbertConfig, params, path, head: str, tokenizer=None,
               overwrite: bool = False, sources=()) -> str:
  """Writes `path` as an HF directory (`save`) or, for a head transformers has no class for
  (squad_v2_original), as an albert-jax model directory; returns "hf" or "albert-jax".
  `load_any`, `from_pretrained` and `config.init_from` read both."""
  if has_hf_class(head):
    save(config, params, path, head, tokenizer, overwrite, sources)
    return "hf"
  spm = tokenizer.vocab_file if isinstance(tokenizer, AlbertTokenizer) else tokenizer
  checkpointing.save_model_dir(path, config, params, head, spm, overwrite, sources)
  return "albert-jax"


def load_any(path, head: str | None = None, seed: int = 0,
             config: AlbertConfig | str | None = None) -> tuple[AlbertConfig, dict, str]:
  """(config, params, head) from an HF directory, an albert-jax (Orbax) model directory or an
  original TF1 release; `config` (an AlbertConfig, a preset name or an albert_config.json) only
  for a TF-Hub module, which carries none."""
  from albert_jax import init_from, tf1_release  # imported here: they import this module
  if checkpointing.is_model_dir(path):
    saved_cfg, params, saved_head = checkpointing.load_model_dir(path)
    if head in (None, saved_head):
      return saved_cfg, params, saved_head
    return saved_cfg, init_from.rehead(params, saved_head, saved_cfg, head, seed), head
  if not (files.path(path) / "config.json").is_file() and tf1_release.is_release(path):
    return tf1_release.load_release(path, head, seed, config)
  return load(path, head, seed)


def from_pretrained(path, head: str | None = None, seed: int = 0,
                    config: AlbertConfig | str | None = None, **runtime):
  """(module, params) for an HF, Orbax or TF1 release directory; `runtime`: dtype, remat_policy..."""
  config, params, head = load_any(path, head, seed, config)
  return make_model(config, head, **runtime), params


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m albert_jax.hf_convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_ in (("hf-to-orbax", "HF directory -> albert-jax model directory (Orbax)"),
                      ("orbax-to-hf", "albert-jax model directory (Orbax) -> HF directory"),
                      ("tf-to-hf", "original TF1 release or TF-Hub module -> HF directory"),
                      ("tf-to-orbax", "original TF1 release or TF-Hub module -> Orbax directory")):
    p = sub.add_parser(name, help=help_)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--head", choices=sorted(HEADS), default=None,
                   help="head to write (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--spm_model", default=None,
                   help="SentencePiece model to include (default: the source's)")
    if name.startswith("tf-"):
      p.add_argument("--config", default=None,
                     help="a preset (base-v2, ...) or an albert_config.json, for a TF-Hub module "
                          "(it carries no config)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    # Every path the command reads: the output may overlap none (checked before loading, and
    # again by the write).
    sources = [args.src, args.spm_model]
    if getattr(args, "config", None) and files.path(args.config).is_file():
      sources.append(args.config)
    files.check_apart(args.dst, sources)
    if args.command == "hf-to-orbax":
      config, params, head = load(args.src, args.head)
      spm = args.spm_model or checkpointing.spm_model_in(args.src)
      sources.append(spm)
      checkpointing.save_model_dir(args.dst, config, params, head, spm, args.overwrite, sources)
    elif args.command == "orbax-to-hf":
      config, params, head = load_any(args.src, args.head)
      spm = args.spm_model or checkpointing.spm_model_in(args.src)
      sources.append(spm)
      save(config, params, args.dst, head, spm, args.overwrite, sources)
    else:
      from albert_jax import tf1_release
      config, params, head = tf1_release.load_release(args.src, args.head, config=args.config)
      spm = args.spm_model or tf1_release.find_release(args.src).spm_model
      sources.append(spm)
      if spm is None:
        log.warning("%s has no SentencePiece model (30k-clean.model): writing no tokenizer",
                    args.src)
      if args.command == "tf-to-hf":
        save(config, params, args.dst, head, spm and str(spm), args.overwrite, sources)
      else:
        checkpointing.save_model_dir(args.dst, config, params, head, spm, args.overwrite, sources)
  except (FileNotFoundError, FileExistsError, KeyError, ValueError, ImportError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 1
  n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  print(f"wrote {args.dst}: {head} head, {n:,} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
