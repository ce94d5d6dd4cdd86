"""Orbax training checkpoints: save, fingerprint, verify and resume a run's state. A run read as a
model (`from_pretrained`, `config.init_from`) and model directories: `checkpoints/model_dir.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from albert_jax import files
from albert_jax.model import AlbertConfig


# ----------------------------------------------------------------------------- training checkpoints
#
# WORKDIR/checkpoints/<step>/ holds the items
#   params/         the model parameters (what from_pretrained and orbax-to-hf read)
#   train_state/    step, optimizer state, first non-finite step
#   data/           the input pipeline's position and what defines its stream (JSON); with
#                   config.spike, the spike detector's state and the run's rollbacks (spike.py)
#   albert_config/  {"config": <HF config dict>, "head": ..., "run_config": <the job's config>}
#   fingerprints/   a checksum of every array (JSON), verified on restore
# Orbax writes each step to a temporary directory and renames it when complete (in a bucket: it
# writes commit_success.txt last), so a job killed mid-save leaves the previous step as the
# latest one. A step that turns out corrupt is renamed <step>.corrupt-<time> and kept for
# inspection, so a rerun neither trains from it nor collides with it when it saves that step.

CHECKPOINTS_DIR = "checkpoints"
ITEMS = ("params", "train_state", "data", "albert_config", "fingerprints")


# Orbax's replica-parallel save splits each replicated shard among its replicas by slicing it on
# device, one eager dispatch (and compile) per slice: for the many small arrays of an ALBERT
# state that is seconds of a run's first save and nothing gained (tiny writes). Slices under
# 1 MiB are written whole by one replica; large arrays on a pod still write in parallel.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20


def _array_handler():
  """Orbax's default jax.Array handler (built as Orbax builds it) with the threshold above."""
  # Orbax's own module for it, not exported: here, so a release that moves it breaks only this.
  from orbax.checkpoint._src.metadata import array_metadata_store
  return ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES,
      array_metadata_store=array_metadata_store.Store())


def _register_array_handler():
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)  # Orbax warns on every override, at every start
  try:
    ocp.type_handlers.register_type_handler(jax.Array, _array_handler(), override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


@dataclasses.dataclass
class _NewestAtMost:
  """Orbax retention: keeps the newest step at or before `limit()`, whatever the count."""
  limit: Callable[[], int]

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    limit = self.limit()
    kept = max((c.step for c in checkpoints if c.step <= limit), default=None)
    return [c.step == kept for c in checkpoints]


def make_manager(workdir, *, max_to_keep: int | None, async_save: bool = True,
                 keep_at_most: Callable[[], int] | None = None):
  """The Orbax CheckpointManager of a training run (WORKDIR/checkpoints, local or gs://).
  `keep_at_most`: the newest step at or before it is kept too, beyond `max_to_keep` (spike.py:
  the newest judged step, where a rollback goes)."""
  retention = {"max_to_keep": max_to_keep}
  if keep_at_most is not None:
    managers = ocp.checkpoint_managers
    retention = {"preservation_policy": managers.AnyPreservationPolicy(
        [managers.LatestN(max_to_keep), _NewestAtMost(keep_at_most)])}
  options = ocp.CheckpointManagerOptions(
      **retention, enable_async_checkpointing=async_save, create=True,
      # Steps are chosen by the trainer (interval, end, preemption, SIGTERM): save when asked.
      # No save_decision_policy: none can drop a preemption save.
      save_interval_steps=1,
      # What a kill mid-save left (<step>.orbax-checkpoint-tmp-*) is removed at start.
      cleanup_tmp_directories=True)
  handlers = {"params": ocp.StandardCheckpointHandler(),
              "train_state": ocp.StandardCheckpointHandler(),
              **{k: ocp.JsonCheckpointHandler() for k in ("data", "albert_config", "fingerprints")}}
  return ocp.CheckpointManager(files.absolute(workdir) / CHECKPOINTS_DIR, options=options,
                               item_handlers=handlers)


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


def path_name(path) -> str:
  """"a/b/0/mu": a tree path as the fingerprints and the mismatch messages name it."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def fingerprints(tree) -> dict[str, list[int]]:
  """{path: [h1, h2, size]} for every array of `tree` (computed on device, sharding-agnostic)."""
  sums = jax.device_get(_fingerprint_tree(tree))
  return {path_name(path): [int(v) for v in s]
          for path, s in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _mismatched(expected: dict, actual: dict) -> list[str]:
  return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))


def _listed(names: list[str], n: int = 5) -> str:
  return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def verify_params(step_dir, params) -> None:
  """Raises CorruptCheckpoint when a step's `params`, restored alone (as a model), do not match
  the fingerprints saved with them."""
  expected = json.loads((files.path(step_dir) / "fingerprints" / "metadata").read_text())["params"]
  bad = _mismatched(expected, fingerprints(params))
  if bad:
    raise CorruptCheckpoint(f"params do not match their fingerprints: {_listed(bad)}")


class CheckpointNotWritten(RuntimeError):
  """An asynchronous save failed: the step was never committed."""


def check_written(manager) -> None:
  """Raises CheckpointNotWritten when the newest step the manager saved is not committed on
  storage. Orbax only logs a failed background write (and leaves the step unfinished), so
  without this the run would go on, and end, as if the step were saved."""
  step = manager.latest_step()
  advice = ("Stopping rather than training on without it; rerun to resume from the last "
            "committed step once storage works again")
  try:
    manager.wait_until_finished()  # raises the background error, unless Orbax only logged it
  except Exception as e:  # noqa: BLE001
    raise CheckpointNotWritten(f"checkpoint step {step} in {manager.directory} was not written: "
                               f"its asynchronous save failed ({type(e).__name__}: {e}). "
                               f"{advice}") from e
  if step is None:
    return
  path = files.path(manager.directory) / str(step)
  if not (path.exists() and ocp.step.is_path_finalized(path)):
    raise CheckpointNotWritten(
        f"checkpoint step {step} in {manager.directory} was not written: its asynchronous save "
        f"failed (Orbax's error is logged above). {advice}")


def save_train_state(manager, step: int, params, train_state, data_state, model_info: dict):
  """Saves a step (asynchronously: returns once the arrays are copied off the devices), after
  checking that the previous save committed (`check_written`)."""
  check_written(manager)
  prints = {"params": fingerprints(params), "train_state": fingerprints(train_state)}
  manager.save(step, force=True, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), train_state=ocp.args.StandardSave(train_state),
      data=ocp.args.JsonSave(data_state), albert_config=ocp.args.JsonSave(model_info),
      fingerprints=ocp.args.JsonSave(prints)))


def saved_model_info(manager) -> dict | None:
  """What the run's newest readable step says about its model ({"config": <HF dict>, "head":
  ..., "run_config": ...}), or None when the run has no checkpoint."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.Composite(
          albert_config=ocp.args.JsonRestore()))["albert_config"]
    except Exception:  # noqa: BLE001  (an incomplete step: restore_train_state will say why)
      continue
  return None


def saved_model_config(manager) -> AlbertConfig | None:
  """The architecture the run's checkpoints hold (the newest step that says), or None when the
  run has none: a resumed run keeps its own architecture."""
  info = saved_model_info(manager)
  return None if info is None else AlbertConfig.from_hf_dict(info["config"])


class CorruptCheckpoint(ValueError):
  """A step whose files are missing or unreadable, or whose arrays do not match their
  fingerprints."""


class CheckpointMismatch(ValueError):
  """The run's checkpoint holds a state of other shapes or dtypes than the config builds (a
  changed optimizer, head or number of labels): refused, never taken for corruption."""


_OK, _CORRUPT, _MISMATCH = 0, 1, 2


def _agreed(code: int) -> int:
  """The worst of every process's `code`: all processes take the same decision."""
  if jax.process_count() == 1:
    return code
  return int(np.max(multihost_utils.process_allgather(np.int32(code))))


def _shapes(tree) -> dict[str, tuple]:
  return {path_name(p): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _structure_diff(saved, abstract) -> list[str]:
  """How the saved arrays (Orbax metadata) differ from the ones the config builds."""
  have, want = _shapes(saved), _shapes(abstract)
  out = [f"{k}: checkpoint {have[k][1]}{list(have[k][0])}, config {want[k][1]}{list(want[k][0])}"
         for k in sorted(have.keys() & want.keys()) if have[k] != want[k]]
  out += [f"{k}: only in the checkpoint" for k in sorted(have.keys() - want.keys())]
  out += [f"{k}: only in the config's state" for k in sorted(want.keys() - have.keys())]
  return out


def _flat_config(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _config_changes(saved: dict | None, current: dict | None) -> list[str]:
  if not saved or not current:
    return []
  a, b = _flat_config(saved), _flat_config(current)
  return [f"config.{k}={b.get(k)!r} (the run's checkpoints: {a.get(k)!r})"
          for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _try_restore(manager, step: int, abstract_params, abstract_train_state):
  """(code, what went wrong, the restored items) of one step on this process."""
  try:
    meta = manager.item_metadata(step)
    saved = {k: getattr(meta[k], "tree", None) for k in ("params", "train_state")}
  except Exception as e:  # noqa: BLE001  (missing or unreadable metadata: corruption)
    return _CORRUPT, f"its metadata cannot be read ({type(e).__name__}: {e})", None
  if any(v is None for v in saved.values()):
    return _CORRUPT, f"it lacks items {[k for k, v in saved.items() if v is None]}", None
  diff = _structure_diff(saved, {"params": abstract_params, "train_state": abstract_train_state})
  if diff:
    return _MISMATCH, "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8
                                             else ""), None
  error = None
  for attempt in range(2):  # once more after a pause: a read error may be transient
    try:
      return _OK, "", manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          train_state=ocp.args.StandardRestore(abstract_train_state),
          data=ocp.args.JsonRestore(), albert_config=ocp.args.JsonRestore(),
          fingerprints=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  (unreadable or missing files: corruption)
      error = e
      if attempt == 0:
        time.sleep(1.0)
  return _CORRUPT, f"it cannot be restored ({type(error).__name__}: {error})", None


def _verify(restored) -> str:
  """What does not match the fingerprints stored at save time ("" when all do). Computed on
  the global arrays, so every process gets the same answer."""
  problems = []
  for item in ("params", "train_state"):
    bad = _mismatched(restored["fingerprints"].get(item, {}), fingerprints(restored[item]))
    if bad:
      problems.append(f"{item} arrays do not match their fingerprints: {_listed(bad)}")
  return "; ".join(problems)


def set_aside(manager, step: int, reason: str, log=logging.warning) -> str:
  """Renames a corrupt step <step>.corrupt-<time> (process 0; every process waits for it), so
  the run goes on past it and can save that step again; returns the new name."""
  directory = files.path(manager.directory)
  name = f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
  if jax.process_index() == 0:
    files.move(directory / str(step), directory / name)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"albert_jax set aside checkpoint {step}")
  manager.reload()
  log(f"!!! checkpoint step {step} in {directory} cannot be used ({reason}); moved to {name} "
      "for inspection, falling back to the step before it")
  return name


def restore_train_state(manager, abstract_params, abstract_train_state, *,
                        run_config: dict | None = None, log=logging.warning):
  """(step, params, train_state, data_state) of the newest checkpoint that restores and verifies.

  `abstract_*` are trees of jax.ShapeDtypeStruct with the shardings to restore onto (any mesh).
  A corrupt step (missing or unreadable files, arrays that do not match their fingerprints) is
  set aside with a loud message and the one before it is tried; a step whose arrays have other
  shapes or dtypes than the config builds is refused (CheckpointMismatch), naming the config
  fields that differ from `run_config`, the config the checkpoint was saved with. Every process
  takes the same decision. None when no step is usable.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if jax.process_count() > 1:  # one list for everyone: process 0's
    n = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
    steps = [int(s) for s in multihost_utils.broadcast_one_to_all(
        np.array((steps + [-1] * n)[:n], np.int64))]
  for step in steps:
    code, reason, restored = _try_restore(manager, step, abstract_params, abstract_train_state)
    agreed = _agreed(code)
    if agreed == _MISMATCH:
      changes = _config_changes(_saved_run_config(manager, step), run_config)
      raise CheckpointMismatch(
          f"checkpoint step {step} in {manager.directory} holds a train state this config does "
          f"not build ({reason or 'another process found a mismatch'}). "
          + (f"The config differs from the run's in: {'; '.join(changes[:10])}. "
             if changes else "")
          + "Set the config back to the run's (its config is stored with every checkpoint, "
          "albert_config/metadata), or start a new workdir.")
    if agreed == _OK:
      reason = _verify(restored)
      if not reason:
        return step, restored["params"], restored["train_state"], restored["data"]
    elif code == _OK:
      reason = "another process could not restore it"
    set_aside(manager, step, reason, log)
  return None


def _saved_run_config(manager, step: int) -> dict | None:
  try:
    return manager.restore(step, args=ocp.args.Composite(
        albert_config=ocp.args.JsonRestore()))["albert_config"].get("run_config")
  except Exception:  # noqa: BLE001
    return None
