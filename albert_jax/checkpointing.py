"""Orbax checkpoints: the model directory (params + config) and all-or-nothing directory writes.

A *model directory* is what `hf-to-orbax` writes and `from_pretrained` reads:
  DIR/params/            Orbax StandardCheckpointer checkpoint of the parameter tree
  DIR/albert_config.json {"config": <HF config dict>, "head": "<head name>"}
  DIR/spiece.model       the SentencePiece model, when there is one
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from albert_jax.model import AlbertConfig, HEADS

CONFIG_FILE = "albert_config.json"
PARAMS_DIR = "params"
SPM_FILE = "spiece.model"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False):
  """Yields a temporary directory that becomes `path` only if the block succeeds.

  The temporary directory is a sibling of `path` (same filesystem, so the final rename is
  atomic). An existing `path` is refused unless `overwrite`, and is replaced only after the new
  content is complete: a failure at any point leaves it untouched.
  """
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
    if path.exists():
      old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.rename(path, old / path.name)
      try:
        os.rename(tmp, path)
      except BaseException:
        os.rename(old / path.name, path)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
  """Writes JSON to `path` through a temporary file and a rename."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def is_model_dir(path: str | os.PathLike) -> bool:
  path = Path(path)
  return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def save_model_dir(path, config: AlbertConfig, params, head: str, spm_model=None,
                   overwrite: bool = False) -> Path:
  """Writes a model directory (see the module docstring) all at once."""
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  with atomic_directory(path, overwrite) as tmp:
    params = jax.tree_util.tree_map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / PARAMS_DIR, params)
      ckptr.wait_until_finished()
    write_json_atomic(tmp / CONFIG_FILE, {"config": config.to_hf_dict(), "head": head})
    if spm_model:
      shutil.copyfile(spm_model, tmp / SPM_FILE)
  return Path(path)


def load_model_dir(path) -> tuple[AlbertConfig, dict, str]:
  """(config, params as numpy arrays, head) from a model directory."""
  path = Path(path).absolute()
  if not is_model_dir(path):
    raise FileNotFoundError(f"{path} is not an albert-jax model directory: it needs "
                            f"{CONFIG_FILE} and {PARAMS_DIR}/")
  meta = json.loads((path / CONFIG_FILE).read_text())
  for key in ("config", "head"):
    if key not in meta:
      raise ValueError(f"{path / CONFIG_FILE} has no {key!r} entry")
  config = AlbertConfig.from_hf_dict(meta["config"])
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(path / PARAMS_DIR)
  return config, jax.tree_util.tree_map(np.asarray, params), meta["head"]


def spm_model_in(path) -> str | None:
  """The `spiece.model` stored beside a model, if any."""
  spm = Path(path) / SPM_FILE
  return str(spm) if spm.is_file() else None
