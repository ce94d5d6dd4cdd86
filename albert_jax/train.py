"""`train_and_evaluate(config, workdir)`: the one training loop, for pretraining and every task.

One linear story: the workdir's lease (one run at a time) -> mesh and rules -> the task, its
vocabulary and data -> model, optimizer and state layout -> resume (the run's newest good
checkpoint, else `config.init_from`, else a fresh init) -> the loop (step, log, eval,
checkpoint, preemption; a loss spike rolls back: spike.py) -> final checkpoint, eval and export.
The task (`tasks/`) gives the head, the data, the loss as sums and the eval; nothing here depends
on which task runs. The steps are pure functions, jitted with explicit shardings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from albert_jax import accelerators, checkpointing, files, hf_convert, init_from, lease
from albert_jax import metrics as metrics_lib
from albert_jax import model as M
from albert_jax import optimizer, sharding, spike, steps, tasks, watchdog
from albert_jax.data import packed_batches, packed_pairs

PyTree = Any


class _StopFlag:
  """Set by SIGTERM (single process; several processes rely on Orbax's preemption sync)."""

  def __init__(self):
    self.set = False
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
    self.set = True


class _Spikes:
  """The loop's side of spike.py: each step's loss (a replicated device scalar) until it is
  judged, the periodic saves held until the steps they cover are, and the rollbacks. The
  detector's state and the run's rollbacks are saved in the data state."""

  def __init__(self, cfg: ml_collections.ConfigDict, shardings: steps.TrainState,
               save: Callable[[int, steps.TrainState, dict], None]):
    self.cfg, self._save = cfg, save
    self.detector, self.rollbacks = spike.fresh(), []
    self._losses = []  # [(step, loss)] not judged yet, oldest first
    self._held = []  # [(step, copy of the state, data state)] saves waiting for their judgment
    self._copy = jax.jit(lambda state: jax.tree_util.tree_map(jnp.copy, state),
                         out_shardings=shardings)

  def resume(self, data_state: dict) -> None:
    """The state a checkpoint's data item holds (none in a run's older checkpoints)."""
    saved = data_state.get(spike.DATA_KEY) or {}
    self.detector = saved.get("detector") or spike.fresh()
    self.rollbacks = list(saved.get("rollbacks", []))
    self._losses, self._held = [], []

  def data_state(self) -> dict:
    return {spike.DATA_KEY: {"detector": self.detector, "rollbacks": self.rollbacks}}

  def add(self, step: int, loss: jax.Array) -> None:
    self._losses.append((step, loss))

  def judge(self, through: int) -> spike.Spike | None:
    """Feeds the losses of the steps up to `through` (finished: the fetch does not wait) to
    the detector, saving each held step once it is judged; the spike they complete, if any (the
    held saves left are then dropped: they are inside it)."""
    while self._losses and self._losses[0][0] <= through:
      step, loss = self._losses.pop(0)
      self.detector, found = spike.observe(self.cfg, self.detector, step,
                                           float(jax.device_get(loss)))
      if found is not None:
        self._losses, self._held = [], []
        return found
      while self._held and self._held[0][0] <= self.judged_through():
        self._save(*self._held.pop(0))
    return None

  def hold(self, step: int, state: steps.TrainState, data_state: dict) -> None:
    """A periodic save of `step`, written once the steps it covers are judged."""
    self._held.append((step, self._copy(state), data_state))

  def drop_held(self) -> None:
    """The run stops (preempted, or at its end) and saves its last step: held saves not judged
    by now are left out."""
    self._held = []

  def judged_through(self) -> int:
    return spike.judged_through(self.detector)

  def lr_scale(self, step: int) -> float:
    return spike.lr_scale(self.rollbacks, step)


def _roll_back(found: spike.Spike, spikes: _Spikes, manager, abstract: steps.TrainState,
               initial_state: Callable[[], steps.TrainState], position: int, run_config: dict,
               writer: metrics_lib.MetricsWriter) -> tuple[int, steps.TrainState]:
  """(step, state) of the newest checkpoint `found` does not reach, every newer one deleted
  first (a preemption's, saved before its steps were judged); the data position stays at
  `position` (the batches since that checkpoint are skipped) and the rollback is recorded in
  `spikes` and as an event in the metrics. With no such checkpoint, the initial state at step 0.
  PersistentSpike when `max_rollbacks` rollbacks within `rollback_window` steps came before."""
  cfg = spikes.cfg
  checkpointing.check_written(manager)  # a save in flight lands (or fails) first
  for step in sorted(manager.all_steps(), reverse=True):
    if step > found.first_step - 2:
      manager.delete(step)
  if spike.rollbacks_within(spikes.rollbacks, found.first_step,
                            cfg.rollback_window) >= cfg.max_rollbacks:
    newest = manager.latest_step()
    writer.rewind(newest or 0)
    writer.event(newest or 0, "persistent_spike", {
        "spike": [found.first_step, found.last_step], "losses": found.losses,
        "reference": found.reference, "threshold": found.threshold,
        "rollbacks": len(spikes.rollbacks)})
    raise spike.PersistentSpike(
        f"The loss spiked at steps {found.first_step}-{found.last_step} (losses "
        f"{', '.join(f'{x:.4g}' for x in found.losses)}; the {cfg.window} steps before averaged "
        f"{found.reference:.4g}) after {cfg.max_rollbacks} rollbacks within "
        f"{cfg.rollback_window} steps: stopping. The checkpoints up to step {newest} are "
        "intact; lower the learning rate (config.optim.lr, or config.spike.lr_factor and "
        "lr_steps for a while after each rollback) or check the data, then rerun to resume.")
  restored = checkpointing.restore_train_state(manager, *steps.checkpoint_parts(abstract),
                                               run_config=run_config, log=logging.warning)
  if restored:
    step, params, rest, data_state = restored
    state = steps.TrainState(params=params, **rest)
  else:
    step, state, data_state = 0, initial_state(), {"next_batch": 0}
  rollbacks = spikes.rollbacks
  spikes.resume(data_state)
  spikes.rollbacks = rollbacks + [spike.record(found, step, (data_state["next_batch"], position),
                                               cfg)]
  writer.rewind(step)
  writer.event(step, "rollback", spikes.rollbacks[-1])
  return step, state


# ----------------------------------------------------------------------------- the job

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.task` as `config` says in `workdir` (local or gs://); rerunning resumes.
  Returns a summary."""
  # First of all: a SIGTERM while the job starts (data, restore, compile) saves at step one.
  stop = _StopFlag()
  workdir = files.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Then the workdir's lease, before anything is written: one run at a time (lease.py).
  held = take_lease(workdir, config.get("lease_timeout_seconds", 120.0))
  try:
    return _train_and_evaluate(config, workdir, stop, held)
  finally:
    if held is not None:
      held.release()


def take_lease(workdir, timeout_s: float) -> lease.Lease | None:
  """The workdir's lease for this run, held by process 0 (None elsewhere, and with timeout 0).
  Every process learns whether it was taken, so all refuse together (WorkdirInUse) when another
  run holds the workdir."""
  if not timeout_s:
    return None
  held, refusal = None, None
  if jax.process_index() == 0:
    try:
      held = lease.Lease(workdir, timeout_s).acquire()
    except lease.WorkdirInUse as e:
      refusal = e
  if jax.process_count() > 1:
    if not int(multihost_utils.broadcast_one_to_all(np.int32(held is not None))):
      raise refusal or lease.WorkdirInUse(
          f"{workdir} is in use by another run: process 0 could not take its lease (its log "
          "names the run that holds it)")
  elif refusal is not None:
    raise refusal
  return held


def _train_and_evaluate(config, workdir, stop: _StopFlag, held: lease.Lease | None):
  """The job, once the workdir is this run's."""
  is_main = jax.process_index() == 0
  run_config = json.loads(config.to_json_best_effort())
  if is_main:  # the resolved config, overrides applied, beside the checkpoints
    files.write_json(workdir / "config.json", run_config)

  # Mesh and sharding rules.
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules(config.sharding)
  spike_cfg = _spike_config(config)  # None: no loss-spike rollback for this job (spike.py)
  steps.check_batch(config, mesh)
  logging.info("Mesh %s over %d devices (%d processes); sharding %r", dict(mesh.shape),
               mesh.size, jax.process_count(), config.sharding)

  # The task: its vocabulary and data.
  task = tasks.of(config)
  tokenizer = task.tokenizer(config, workdir)
  train_iter, evals = task.data(config, tokenizer)

  # The model: the run's own architecture when it has checkpoints, else init_from's, else
  # config.model (init_from.py); then the optimizer and the state's layout on the mesh.
  # With config.spike (spike.py), retention keeps the newest judged step: where a rollback goes.
  manager = checkpointing.make_manager(
      workdir, max_to_keep=config.keep_checkpoints,
      keep_at_most=(lambda: spikes.judged_through()) if spike_cfg else None)
  saved = checkpointing.saved_model_config(manager)
  loaded = init_from.load(config.init_from) if config.init_from and saved is None else None
  cfg = init_from.model_config(config, task, tokenizer.vocab_size,
                               saved if saved is not None else loaded and loaded.config,
                               resumed=saved is not None)
  head = task.head(config.data)
  module = steps.make_module(config, cfg, head)
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)
  layout = steps.state_layout(module, tx, mesh, rules)
  logging.info("Model (%s head): %s parameters; %s", head,
               f"{M.count_params(layout.abstract.params):,}", cfg)

  # Resume order: the newest good checkpoint in the workdir (with the data position), else
  # config.init_from's parameters (the backbone kept, the new head fresh), else a fresh init.
  # A corrupt step is set aside for the one before it; a state this config does not build (a
  # changed optimizer, head or labels) is refused, naming the fields; a changed data stream is
  # refused by the iterator's set_state unless config.allow_data_change.
  restored = checkpointing.restore_train_state(manager, *steps.checkpoint_parts(layout.abstract),
                                               run_config=run_config, log=logging.warning)
  model_info = {"config": cfg.to_hf_dict(), "head": head, "run_config": run_config}
  save = lambda step, state, data: _save(manager, step, state, data, model_info)
  spikes = _Spikes(spike_cfg, layout.shardings, save) if spike_cfg else None

  def initial_state() -> steps.TrainState:
    nonlocal loaded
    if loaded is None and config.init_from:  # every checkpoint was unusable
      loaded = init_from.load(config.init_from)
    kept = {} if loaded is None else init_from.matching(
        loaded.params, loaded.head, layout.abstract.params, head)[0]
    if loaded is not None:
      logging.info("Initialised parameters from %s", config.init_from)
    return layout.init(config.seed, kept)

  if restored:
    step, params, rest, data_state = restored
    state = steps.TrainState(params=params, **rest)
    train_iter.set_state({k: v for k, v in data_state.items() if k != spike.DATA_KEY})
    if spikes:
      spikes.resume(data_state)
    logging.info("Resumed from checkpoint step %d", step)
  else:
    state = initial_state()
  start_step = int(jax.device_get(state.step))

  # The steps, jitted for the shapes the task's examples have (known without pulling a batch).
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_shardings = {k: sharding.batch_sharding(mesh, 1 + len(s.shape))
                     for k, s in task.example_spec(config.data).items()}
  p_train_step = steps.jit_train_step(config, module, task, tx, schedule, layout.shardings,
                                batch_shardings, replicated)
  p_eval_step = jax.jit(functools.partial(steps.eval_step, module=module, task=task),
                        out_shardings=replicated,
                        compiler_options=accelerators.compiler_options(mesh.devices.flat))

  writer = metrics_lib.MetricsWriter(workdir, start_step, enabled=is_main)
  flops_per_step = 3 * flops_per_batch(config, task, cfg, train_iter)
  throughput = metrics_lib.Throughput(config.total_steps, flops_per_step,
                                      metrics_lib.peak_flops(config))
  best = _Best(workdir, f"eval/{task.METRIC}", cfg, head, tokenizer) if task.METRIC else None
  evaluate = Evaluator(p_eval_step, evals, task, config.data, mesh, workdir, writer, best)
  guard = watchdog.StepWatchdog(
      config.get("watchdog_factor", 0.0), config.get("watchdog_min_seconds", 600.0),
      describe=f"process {jax.process_index()} of {jax.process_count()}")
  data_now = lambda: {**train_iter.get_state(), **(spikes.data_state() if spikes else {})}
  train_steps = {1.0: p_train_step}  # by learning-rate factor (spike.lr_factor), compiled when needed

  def roll_back(found: spike.Spike) -> tuple[int, steps.TrainState]:
    """A spike: back to the newest checkpoint before it, past its batches (spike.py)."""
    logging.warning("!!! Loss spike at steps %d-%d (losses %s; the window's mean %.4g, "
                    "threshold %.4g): rolling back", found.first_step, found.last_step,
                    ", ".join(f"{x:.4g}" for x in found.losses), found.reference,
                    found.threshold)
    with throughput.paused(), guard.paused():
      to_step, new_state = _roll_back(found, spikes, manager, layout.abstract, initial_state,
                                      train_iter.get_state()["next_batch"], run_config, writer)
    logging.warning("Rolled back to step %d, skipping batches [%d, %d)", to_step,
                    *spikes.rollbacks[-1]["skipped_batches"])
    throughput.rewind(to_step)
    return to_step, new_state

  step, preempted, last_eval = start_step, False, None
  pending = []  # device metrics since the last log line: fetched together at the log step
  ticks = 0  # steps run by this process: Orbax's preemption sync counts them (steps go back)
  logging.info("Training from step %d to %d", start_step, config.total_steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    try:
      while step < config.total_steps:
        if held is not None:
          held.check()  # another run took the workdir over: stop before writing more
        batch = sharding.global_batch(next(train_iter), mesh)
        scale = spikes.lr_scale(step + 1) if spikes else 1.0
        if scale not in train_steps:
          train_steps[scale] = steps.jit_train_step(
              config, module, task, tx, schedule, layout.shardings, batch_shardings, replicated,
              lr_scale=scale)
        state, step_metrics = train_steps[scale](state, batch)
        step += 1
        ticks += 1
        pending.append(step_metrics)
        if ticks == 1:
          jax.block_until_ready(step_metrics)
          throughput.start(step)  # the compile is not step time
          guard.beat(step)
        elif len(pending) > 1:
          # One step in flight: the host prepares step k+1 while the devices run step k, and
          # a step that never finishes (a stuck peer) stops the beats the watchdog counts.
          jax.block_until_ready(pending[-2])
          guard.beat(step - 1)
        stopping = stop.set  # read once a step: SIGTERM saves this step
        if spikes:  # the finished steps' losses; this step's too where a save needs it
          spikes.add(step, step_metrics["loss"])
          saving = step % config.checkpoint_every_steps == 0 or step == config.total_steps
          with throughput.paused(), guard.paused():  # a judged save may be written
            found = spikes.judge(step if saving or stopping else step - 1)
          if found:
            step, state = roll_back(found)
            pending = []
            continue

        # Step 1 too: the untrained model's metrics are the baseline the run is judged by.
        if step % config.log_every_steps == 0 or step in (1, config.total_steps):
          _check_finite(state, step, manager)
          row = throughput.row(step, jax.device_get(pending))
          pending = []
          guard.beat(step)
          writer.write(step, row)
          logging.info("%s", throughput.line(step, row, task.CONSOLE))

        with throughput.paused(), guard.paused():  # evals and saves are not step time
          if config.eval_every_steps and step % config.eval_every_steps == 0:
            last_eval = evaluate(state, step)
          if step % config.checkpoint_every_steps == 0 and step < config.total_steps:
            if spikes:  # written once the steps it covers are judged
              spikes.hold(step, state, data_now())
            else:
              save(step, state, data_now())
        if stopping or (jax.process_count() > 1 and manager.reached_preemption(ticks)):
          # The one save written before its steps are judged: the rerun goes on judging them.
          found = spikes and spikes.judge(step)
          if found:  # back to a saved step (or step 0): the rerun resumes there
            step, state = roll_back(found)
          logging.warning("Preempted: saving step %d and exiting", step)
          if spikes:
            spikes.drop_held()
          if manager.latest_step() != step:
            save(step, state, data_now())
          preempted = True
          break

      if not preempted:
        if not (config.eval_every_steps and step % config.eval_every_steps == 0):
          last_eval = evaluate(state, step)
        if spikes:
          spikes.drop_held()
        if manager.latest_step() != step:
          save(step, state, data_now())
      checkpointing.check_written(manager)  # a failed save stops the job non-zero
    finally:  # let good checkpoints in flight land, even when stopping on NaN
      guard.close()
      writer.close()
      manager.wait_until_finished()

  summary = {"step": step, "preempted": preempted, "first": throughput.first,
             "last": throughput.last, "eval": last_eval}
  if not preempted and best is not None and is_main:
    summary["eval_results"] = best.write_results(step, last_eval)
  if not preempted and config.export_hf:
    summary.update(_export(state, cfg, head, tokenizer, workdir, is_main))
  manager.close()
  return summary


# ----------------------------------------------------------------------------- the loop's pieces

def flops_per_example(config, task, cfg: M.AlbertConfig, length: int | None = None) -> float:
  """Forward FLOPs of one example (or packed row, of `length` tokens) as it runs (model.py):
  every application of the shared layer, the MLM head only at the masked positions."""
  spec = task.example_spec(config.data)
  inputs = spec["input_ids"].shape  # [length] or [choices, length]
  rows = math.prod(inputs[:-1])
  predictions = spec["masked_lm_positions"].shape[0] if "masked_lm_positions" in spec else 0
  return rows * M.pretraining_flops_per_example(cfg, length or inputs[-1], predictions)


def flops_per_batch(config, task, cfg: M.AlbertConfig, train_iter) -> float:
  """Forward FLOPs of a global batch as it runs: its examples, or its packed rows (GLUE and NER
  examples, pretraining pairs)."""
  if isinstance(train_iter, (packed_batches.PackedIterator, packed_pairs.PackedPairs)):
    rows, length = train_iter.row_shape
    return rows * flops_per_example(config, task, cfg, length)
  return config.batch_size * flops_per_example(config, task, cfg)


def _spike_config(config) -> ml_collections.ConfigDict | None:
  """config.spike when it is enabled (a config built without it has none)."""
  cfg = config.get("spike")
  return cfg if cfg is not None and cfg.enabled else None


def _check_finite(state: steps.TrainState, step: int, manager) -> None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    raise FloatingPointError(
        f"The loss, gradient or updated state became NaN/Inf at step {bad + 1}; its update was "
        f"skipped and training stopped at step {step}. The last checkpoint, step "
        f"{manager.latest_step()}, holds finite values (lower the learning rate or check the "
        "data, then rerun to resume from it).")


def _save(manager, step: int, state: steps.TrainState, data_state: dict, model_info: dict) -> None:
  _check_finite(state, step, manager)
  checkpointing.save_train_state(manager, step, *steps.checkpoint_parts(state), data_state,
                                 model_info)


@dataclasses.dataclass
class Evaluator:
  """`evaluator(state, step)`: every eval set's metrics (logged as NAME/metric, prediction files
  under WORKDIR/predictions/step_N/NAME), and the best checkpoint kept up to date."""
  eval_step: Callable
  evals: list
  task: Any
  data_cfg: ml_collections.ConfigDict
  mesh: Any
  workdir: Any  # an epath.Path: local or gs://
  writer: metrics_lib.MetricsWriter
  best: "_Best | None"

  def __call__(self, state: steps.TrainState, step: int) -> dict[str, float] | None:
    result = {}
    for eval_set in self.evals:
      outputs = [jax.device_get(self.eval_step(state.params, sharding.global_batch(b, self.mesh)))
                 for b in eval_set.batches]
      out_dir = self.workdir / "predictions" / f"step_{step}" / eval_set.name
      # The prediction files appear whole or not at all (process 0's; the others score into a
      # scratch directory: every process holds the same global predictions).
      with (files.atomic_directory(out_dir, overwrite=True, skip_if_empty=True)
            if jax.process_index() == 0 else tempfile.TemporaryDirectory()) as tmp:
        scores = self.task.score(outputs, eval_set, self.data_cfg, Path(tmp))
      result.update({f"{eval_set.name}/{k}": v for k, v in scores.items()})
    if not result:
      return None
    self.writer.write(step, result)
    logging.info("eval @ step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    if self.best is not None and self.best.improves(result):
      self.best.keep(step, result, sharding.to_host(state.params))
    return result


def _export(state, cfg, head, tokenizer, workdir: Path, is_main: bool) -> dict[str, str]:
  """WORKDIR/hf (Hugging Face format with spiece.model); WORKDIR/model for a head transformers
  has no class for (an albert-jax model directory)."""
  host_params = sharding.to_host(state.params)
  name = "hf" if M.has_hf_class(head) else "model"
  if is_main:
    kind = hf_convert.save_model(cfg, host_params, workdir / name, head=head, tokenizer=tokenizer,
                                 overwrite=True)
    logging.info("Exported the model to %s (%s format, with spiece.model)", workdir / name, kind)
  return {f"{name}_dir": str(workdir / name)}


BEST_RECORD = "best.json"


class _Best:
  """The best eval so far by one metric: WORKDIR/best (HF format; an albert-jax model directory
  for a head transformers lacks) holding its record, best.json, written with it as one directory
  (so the model and the record that says which step and metrics it has never disagree), and a
  copy of the record in WORKDIR/best.json."""

  def __init__(self, workdir, metric: str, cfg: M.AlbertConfig, head: str, tokenizer):
    self.workdir, self.metric = workdir, metric
    self.cfg, self.head, self.tokenizer = cfg, head, tokenizer
    self.record = None  # survives restarts: the record beside the model, else the copy
    for path in (workdir / "best" / BEST_RECORD, workdir / BEST_RECORD):
      if path.is_file():
        self.record = json.loads(path.read_text())
        break

  def improves(self, result: dict[str, float]) -> bool:
    if self.metric not in result:
      raise KeyError(f"the task's metric {self.metric!r} is not among the eval results "
                     f"{sorted(result)}")
    return self.record is None or result[self.metric] > self.record["metrics"][self.metric]

  def keep(self, step, result, host_params):
    self.record = {"step": step, "metric": self.metric, "metrics": result}
    if jax.process_index() == 0:
      with files.atomic_directory(self.workdir / "best", overwrite=True) as tmp:
        hf_convert.save_model(self.cfg, host_params, tmp, head=self.head,
                              tokenizer=self.tokenizer, overwrite=True)
        files.write_json(tmp / BEST_RECORD, self.record)
      files.write_json(self.workdir / BEST_RECORD, self.record)
      logging.info("New best %s %.4f at step %d: saved to %s", self.metric, result[self.metric],
                   step, self.workdir / "best")

  def write_results(self, last_step: int, last: dict[str, float] | None) -> dict[str, float]:
    """WORKDIR/eval_results.json: the best checkpoint's metrics (unprefixed), its step, and the
    last eval's metrics as last/..."""
    out = {k.split("/", 1)[1] if k.startswith("eval/") else k: v
           for k, v in (self.record or {}).get("metrics", {}).items()}
    out["best_step"] = (self.record or {}).get("step", -1)
    out["last_step"] = last_step
    out.update({f"last/{k}": v for k, v in (last or {}).items()})
    files.write_json(self.workdir / "eval_results.json", out)
    logging.info("Eval results (best step %d by %s): %s", out["best_step"], self.metric,
                 json.dumps(out))
    return out
