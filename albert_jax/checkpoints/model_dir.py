"""albert-jax model directories and training runs, read as models: what `hf-to-orbax` and
`tf-to-orbax` write, and what `from_pretrained` and `config.init_from` read (the run's newest step
that verifies). A reader: it returns the head the directory holds and never re-heads.

A *model directory*:
  DIR/params/            Orbax StandardCheckpointer checkpoint of the parameter tree
  DIR/albert_config.json {"config": <HF config dict>, "head": "<head name>"}
  DIR/spiece.model       the SentencePiece model, when there is one
A *training run*: WORKDIR/checkpoints/<step>/ as `checkpointing` writes them.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from albert_jax import checkpointing, files
from albert_jax.checkpointing import CHECKPOINTS_DIR, CorruptCheckpoint
from albert_jax.model import AlbertConfig, HEADS

CONFIG_FILE = "albert_config.json"
PARAMS_DIR = "params"
SPM_FILE = "spiece.model"


def _is_step_dir(path) -> bool:
  """A training checkpoint's step directory, complete (Orbax's commit marker where it uses one)."""
  return ((path / PARAMS_DIR).is_dir() and (path / "albert_config" / "metadata").is_file()
          and ocp.step.is_path_finalized(path))


def training_steps(path) -> tuple[list, bool]:
  """([step directories, newest first], whether `path` named one step) for a training run
  (`WORKDIR`, `WORKDIR/checkpoints` or a step); ([], False) when `path` is none of those."""
  path = files.path(path)
  if path.name.isdigit() and _is_step_dir(path):
    return [path], True
  for root in (path / CHECKPOINTS_DIR, path):
    if root.is_dir():
      steps = [p for p in root.iterdir() if p.name.isdigit() and _is_step_dir(p)]
      if steps:
        return sorted(steps, key=lambda p: int(p.name), reverse=True), False
  return [], False


def is_model_dir(path: str | os.PathLike) -> bool:
  """An albert-jax model directory, or a training run / checkpoint (its newest step)."""
  path = files.path(path)
  return ((path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()) or bool(
      training_steps(path)[0])


def _restore_params_on_host(params_dir):
  """Restores a params checkpoint onto one local device, whatever mesh wrote it; numpy out."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(params_dir).item_metadata.tree
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    params = ckptr.restore(params_dir, target)
  return params


def save_model_dir(path, config: AlbertConfig, params, head: str, spm_model=None,
                   overwrite: bool = False, sources=()):
  """Writes a model directory (see the module docstring) all at once; `sources`: the paths
  `params` were read from (files.atomic_directory refuses an output that overlaps one)."""
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  with files.atomic_directory(path, overwrite, sources=sources) as tmp:
    params = jax.tree_util.tree_map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / PARAMS_DIR, params)
      ckptr.wait_until_finished()
    files.write_json(tmp / CONFIG_FILE, {"config": config.to_hf_dict(), "head": head})
    if spm_model:
      files.copy(spm_model, tmp / SPM_FILE)
  return files.path(path)


def _read_meta(meta_file) -> tuple[AlbertConfig, str]:
  meta = json.loads(meta_file.read_text())
  for key in ("config", "head"):
    if key not in meta:
      raise ValueError(f"{meta_file} has no {key!r} entry")
  return AlbertConfig.from_hf_dict(meta["config"]), meta["head"]


def load_model_dir(path) -> tuple[AlbertConfig, dict, str]:
  """(config, params as numpy arrays, head) from a model directory or a training run.

  A training run's step is verified against the fingerprints stored with it, as the trainer
  does: a corrupt newest step is skipped, loudly, for the one before it; a step named
  explicitly that does not verify is refused (CorruptCheckpoint)."""
  path = files.absolute(path)
  if (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir():
    config, head = _read_meta(path / CONFIG_FILE)
    params = _restore_params_on_host(path / PARAMS_DIR)
    return config, jax.tree_util.tree_map(np.asarray, params), head
  steps, named = training_steps(path)
  if not steps:
    raise FileNotFoundError(f"{path} is not an albert-jax model directory (it needs {CONFIG_FILE} "
                            f"and {PARAMS_DIR}/) nor a training run with checkpoints")
  for step_dir in steps:
    try:
      config, head = _read_meta(step_dir / "albert_config" / "metadata")
      params = _restore_params_on_host(step_dir / PARAMS_DIR)
      checkpointing.verify_params(step_dir, params)
      return config, jax.tree_util.tree_map(np.asarray, params), head
    except Exception as e:  # noqa: BLE001  (whatever makes a step unreadable: try the next)
      if named:
        raise CorruptCheckpoint(f"checkpoint {step_dir} cannot be used ({type(e).__name__}: "
                                f"{e}); name an earlier step, or the run's directory to take "
                                "its newest good one") from e
      logging.warning("!!! checkpoint %s cannot be used (%s: %s); trying the step before it",
                      step_dir, type(e).__name__, e)
  raise CorruptCheckpoint(f"no checkpoint of {path} verifies against its fingerprints")


def spm_model_in(path) -> str | None:
  """The `spiece.model` stored with a model: in its directory or, for a training run (WORKDIR,
  WORKDIR/checkpoints or a step), in the run's workdir. Nowhere else: a vocabulary found
  further up could belong to another model."""
  path = files.absolute(path)
  candidates = [path]
  if path.name == CHECKPOINTS_DIR:
    candidates.append(path.parent)
  elif path.name.isdigit() and path.parent.name == CHECKPOINTS_DIR:
    candidates.append(path.parent.parent)
  for candidate in candidates:
    if (candidate / SPM_FILE).is_file():
      return str(candidate / SPM_FILE)
  return None
