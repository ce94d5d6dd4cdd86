"""Orbax checkpoints: training checkpoints (fingerprinted, verified on restore) and model
directories (params + config).

A *model directory* is what `hf-to-orbax` writes and `from_pretrained` reads:
  DIR/params/            Orbax StandardCheckpointer checkpoint of the parameter tree
  DIR/albert_config.json {"config": <HF config dict>, "head": "<head name>"}
  DIR/spiece.model       the SentencePiece model, when there is one
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from albert_jax import files
from albert_jax.model import AlbertConfig, HEADS

CONFIG_FILE = "albert_config.json"
PARAMS_DIR = "params"
SPM_FILE = "spiece.model"


def _training_step_dir(path: Path) -> Path | None:
  """The checkpoint step directory `path` names: a step itself, WORKDIR/checkpoints or WORKDIR
  (then the newest complete step), or None."""
  if (path / PARAMS_DIR).is_dir() and (path / "albert_config" / "metadata").is_file():
    return path
  for root in (path / CHECKPOINTS_DIR, path):
    if root.is_dir():
      steps = [p for p in root.iterdir() if p.name.isdigit()
               and (p / PARAMS_DIR).is_dir() and (p / "albert_config" / "metadata").is_file()]
      if steps:
        return max(steps, key=lambda p: int(p.name))
  return None


def is_model_dir(path: str | os.PathLike) -> bool:
  """An albert-jax model directory, or a training run / checkpoint (its newest step)."""
  path = Path(path)
  return ((path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()) or bool(
      _training_step_dir(path))


def _restore_params_on_host(params_dir: Path):
  """Restores a params checkpoint onto one local device, whatever mesh wrote it; numpy out."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(params_dir).item_metadata.tree
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    params = ckptr.restore(params_dir, target)
  return jax.tree_util.tree_map(np.asarray, params)


def save_model_dir(path, config: AlbertConfig, params, head: str, spm_model=None,
                   overwrite: bool = False) -> Path:
  """Writes a model directory (see the module docstring) all at once."""
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  with files.atomic_directory(path, overwrite) as tmp:
    params = jax.tree_util.tree_map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / PARAMS_DIR, params)
      ckptr.wait_until_finished()
    files.write_json(tmp / CONFIG_FILE, {"config": config.to_hf_dict(), "head": head})
    if spm_model:
      shutil.copyfile(spm_model, tmp / SPM_FILE)
  return Path(path)


def load_model_dir(path) -> tuple[AlbertConfig, dict, str]:
  """(config, params as numpy arrays, head) from a model directory or a training checkpoint."""
  path = Path(path).absolute()
  if (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir():
    meta_file, params_dir = path / CONFIG_FILE, path / PARAMS_DIR
  elif step_dir := _training_step_dir(path):
    meta_file, params_dir = step_dir / "albert_config" / "metadata", step_dir / PARAMS_DIR
  else:
    raise FileNotFoundError(f"{path} is not an albert-jax model directory (it needs {CONFIG_FILE} "
                            f"and {PARAMS_DIR}/) nor a training run with checkpoints")
  meta = json.loads(meta_file.read_text())
  for key in ("config", "head"):
    if key not in meta:
      raise ValueError(f"{meta_file} has no {key!r} entry")
  config = AlbertConfig.from_hf_dict(meta["config"])
  return config, _restore_params_on_host(params_dir), meta["head"]


def spm_model_in(path) -> str | None:
  """The `spiece.model` stored with a model: in its directory or, for a training checkpoint, in
  the run's workdir."""
  path = Path(path).absolute()
  for candidate in (path, path.parent, path.parent.parent, path.parent.parent.parent):
    if (candidate / SPM_FILE).is_file():
      return str(candidate / SPM_FILE)
  return None


# ----------------------------------------------------------------------------- training checkpoints
#
# WORKDIR/checkpoints/<step>/ holds the items
#   params/         the model parameters (what from_pretrained and orbax-to-hf read)
#   train_state/    step, optimizer state, first non-finite step
#   data/           the input pipeline's position (JSON)
#   albert_config/  {"config": <HF config dict>, "head": ...} (JSON)
#   fingerprints/   a checksum of every array (JSON), verified on restore
# Orbax writes each step to a temporary directory and renames it when complete, so a job killed
# mid-save leaves the previous step as the latest one.

CHECKPOINTS_DIR = "checkpoints"


def make_manager(workdir, *, max_to_keep: int | None, async_save: bool = True):
  """The Orbax CheckpointManager of a training run (WORKDIR/checkpoints)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
      # Steps are chosen by the trainer (interval, end, preemption, SIGTERM): save when asked.
      save_interval_steps=1)
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS_DIR, options=options,
                               item_names=("params", "train_state", "data", "albert_config",
                                           "fingerprints"))


def _fingerprint_leaf(x):
  """Two position-weighted uint32 sums of the array's bits and its size: exact and order-free,
  so the same on any mesh; a flipped bit or a moved element changes them."""
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  index = jnp.arange(x.size, dtype=jnp.uint32)
  h1 = jnp.sum(bits * (index * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
  mixed = bits ^ (bits >> 16) ^ jnp.uint32(0x9E3779B9)
  h2 = jnp.sum(mixed * (index * jnp.uint32(2246822519) + jnp.uint32(3266489917)),
               dtype=jnp.uint32)
  return jnp.stack([h1, h2, jnp.uint32(x.size)])


@jax.jit
def _fingerprint_tree(tree):
  return jax.tree_util.tree_map(_fingerprint_leaf, tree)


def fingerprints(tree) -> dict[str, list[int]]:
  """{path: [h1, h2, size]} for every array of `tree` (computed on device, sharding-agnostic)."""
  sums = jax.device_get(_fingerprint_tree(tree))
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): [int(v) for v in s]
          for path, s in jax.tree_util.tree_flatten_with_path(sums)[0]}


def save_train_state(manager, step: int, params, train_state, data_state, model_info: dict):
  """Saves a step (asynchronously: returns once the arrays are copied off the devices)."""
  prints = {"params": fingerprints(params), "train_state": fingerprints(train_state)}
  manager.save(step, force=True, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), train_state=ocp.args.StandardSave(train_state),
      data=ocp.args.JsonSave(data_state), albert_config=ocp.args.JsonSave(model_info),
      fingerprints=ocp.args.JsonSave(prints)))


def saved_model_config(manager) -> AlbertConfig | None:
  """The architecture the run's checkpoints hold (the newest step that says), or None when the
  run has none: a resumed run keeps its own architecture."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      info = manager.restore(step, args=ocp.args.Composite(albert_config=ocp.args.JsonRestore()))
      return AlbertConfig.from_hf_dict(info["albert_config"]["config"])
    except Exception:  # noqa: BLE001  (an incomplete step: restore_train_state will say why)
      continue
  return None


class CorruptCheckpoint(ValueError):
  pass


def restore_train_state(manager, abstract_params, abstract_train_state, log=print):
  """(step, params, train_state, data_state) of the newest checkpoint that restores and verifies.

  `abstract_*` are trees of jax.ShapeDtypeStruct with the shardings to restore onto (any mesh).
  A step that fails to restore or whose arrays do not match their fingerprints is skipped with a
  loud message, and the one before it is tried. None when there is no usable checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          train_state=ocp.args.StandardRestore(abstract_train_state),
          data=ocp.args.JsonRestore(), fingerprints=ocp.args.JsonRestore()))
      for item in ("params", "train_state"):
        expected, actual = restored["fingerprints"][item], fingerprints(restored[item])
        bad = sorted(k for k in expected.keys() | actual.keys()
                     if expected.get(k) != actual.get(k))
        if bad:
          raise CorruptCheckpoint(f"{item} arrays do not match their fingerprints: {bad[:5]}"
                                  f"{' ...' if len(bad) > 5 else ''}")
      return step, restored["params"], restored["train_state"], restored["data"]
    except Exception as e:  # a corrupt or half-written step must not end the job
      log(f"!!! checkpoint step {step} in {manager.directory} cannot be used "
          f"({type(e).__name__}: {e}); falling back to the previous checkpoint")
  return None
