"""Hugging Face model directories: `config.json` + `model.safetensors` (or `pytorch_model.bin`, read
only with `torch.load(weights_only=True)` and torch >= 2.6, or a sharded `*.index.json` whose shards
must be plain file names in the directory), local or in a bucket (`gs://...`), read strictly and
written as transformers' `AlbertFor*.from_pretrained(dir)` loads them. A reader: it returns the
head the directory holds and never re-heads (`init_from.load` does).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy

from albert_jax import files
from albert_jax.checkpoints.table import (Array, check_finite, from_hf_state_dict, infer_head,
                                         to_hf_state_dict)
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.model import AlbertConfig, HEADS, has_hf_class, head_from_architecture

CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------- reading HF files

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
              "BF16": ml_dtypes.bfloat16}


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
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']!r}")
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
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
    import torch  # optional: only a pytorch_model.bin needs it
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


def read_hf_config(hf_dir: str | Path) -> tuple[AlbertConfig, str | None]:
  """(config, head the checkpoint was saved from, or None) from `config.json`."""
  path = files.path(hf_dir) / CONFIG_FILE
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


# ----------------------------------------------------------------------------- the directory

def load(path, head: str | None = None, seed: int = 0) -> tuple[AlbertConfig, dict, str]:
  """(config, params, head) from an HF directory: the head its config.json's architecture names,
  read strictly. A directory that names none is read as `head` (default base), initialising what
  that head has beyond the tensors there. Never re-heads: `init_from.load` does."""
  config, source_head = read_hf_config(path)
  if head is not None and head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  own = source_head or head or "base"  # the head the tensors are read into
  tensors = read_hf_weights(path)
  try:
    params = from_hf_state_dict(config, tensors, own, source_head, seed)
  except (KeyError, ValueError) as e:
    raise type(e)(f"{path}: {e.args[0]}") from None
  return config, params, own


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
        "(hf_convert.save_model, model_dir.save_model_dir, or the training run's "
        "checkpoints), which from_pretrained and config.init_from read")
  tensors = to_hf_state_dict(config, params, head)
  if tokenizer is not None and not isinstance(tokenizer, AlbertTokenizer):
    tokenizer = AlbertTokenizer(tokenizer, model_max_length=config.max_position_embeddings)
  with files.atomic_directory(path, overwrite, sources=sources) as tmp:
    hf_config = {"architectures": [HEADS[head][1]], **config.to_hf_dict()}
    files.write_json(tmp / CONFIG_FILE, hf_config)
    safetensors.numpy.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
  return files.path(path)

