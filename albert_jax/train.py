"""`train_and_evaluate(config, workdir)`: ALBERT pretraining (MLM + SOP) on a device mesh.

One linear story: mesh and rules -> data and tokenizer -> model, optimizer, state shardings ->
resume (checkpoint, else `config.init_from`, else fresh) -> the loop (step, log, eval,
checkpoint, preemption) -> final checkpoint and Hugging Face export. The step functions are pure
and jitted with explicit in/out shardings; the state is donated.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from albert_jax import checkpointing, hf_convert, jobs, metrics as metrics_lib, optimizer, sharding
from albert_jax import model as M

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: PyTree
  opt_state: PyTree
  # -1 while every loss so far was finite; else the first step whose loss or gradient was not.
  # From then on updates are skipped, so the state (and any checkpoint of it) stays finite.
  nonfinite_step: jax.Array


# ----------------------------------------------------------------------------- the steps

def train_step(state: TrainState, batch, *, module, tx, schedule, accum_steps: int, seed: int,
               loss: jobs.Loss = jobs.PRETRAINING_LOSS):
  """One optimizer update from a global batch (split into `accum_steps` micro-batches)."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)  # dropout: a fresh key per step

  def loss_fn(params, micro, micro_rng):
    sums = loss.sums(module, params, micro, micro_rng)
    return loss.objective(sums, batch), sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (_, sums), grads = grad_fn(state.params, batch, rng)
  else:
    # Micro-batch i takes rows i, i + accum, ...: every data shard contributes to each one, so
    # the split needs no data movement. [batch, ...] -> [accum, batch / accum, ...]
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
        batch)

    def accumulate(carry, xs):
      (_, sums), grads = grad_fn(state.params, xs[0], jax.random.fold_in(rng, xs[1]))
      return jax.tree_util.tree_map(jnp.add, carry, (grads, sums)), None

    (_, sums_shape), grads_shape = jax.eval_shape(
        grad_fn, state.params, jax.tree_util.tree_map(lambda x: x[0], micro), rng)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum_steps)))
  divisor = loss.grad_divisor(sums)
  grads = jax.tree_util.tree_map(lambda g: g / divisor, grads)

  metrics = loss.normalise(sums)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  keep_going = finite & (state.nonfinite_step < 0)
  pick = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(keep_going, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1, params=pick(params, state.params),
      opt_state=pick(opt_state, state.opt_state),
      nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                               state.nonfinite_step))
  metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                 tokens=sums["tokens"], examples=sums["examples"])
  return new_state, metrics


def eval_step(params, batch, *, outputs, module):
  """What one eval batch contributes: summed losses (pretraining) or per-row predictions."""
  return outputs(module, params, batch)


# ----------------------------------------------------------------------------- set-up helpers

model_config = jobs.model_config  # where the tests and benchmarks look for it


def peak_flops(config) -> tuple[float, str]:
  """Peak FLOP/s of all devices together, for MFU: config.peak_tflops_per_device, else a table
  of accelerators (dense bf16), else, on CPU, a float32 matmul measured now."""
  devices = jax.devices()
  if config.get("peak_tflops_per_device"):
    return config.peak_tflops_per_device * 1e12 * len(devices), "config.peak_tflops_per_device"
  kind = devices[0].device_kind.lower()
  table = {"v4": 275e12, "v5 lite": 197e12, "v5e": 197e12, "v5p": 459e12, "v6": 918e12,
           "h100": 989e12, "h200": 989e12, "a100": 312e12, "b200": 2250e12}
  for name, flops in table.items():
    if name in kind:
      return flops * len(devices), f"{devices[0].device_kind} bf16 peak"
  if devices[0].platform != "cpu":
    return 0.0, "unknown device"
  # CPU: simulated devices share the host's cores, so measure the host once.
  x = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < 0.5:
    matmul(x).block_until_ready()
    n += 1
  return 2 * 1024**3 * n / (time.perf_counter() - start), "float32 matmul measured on this host"


def _put_params(host_params, abstract):
  """Host numpy params -> global arrays with `abstract`'s shardings (works on many hosts)."""
  def put(x, a):
    if tuple(x.shape) != tuple(a.shape):
      raise ValueError(f"parameter shape {x.shape} does not match the model's {a.shape}")
    x = np.asarray(x, a.dtype)
    return jax.make_array_from_callback(a.shape, a.sharding, lambda index: x[index])
  return jax.tree_util.tree_map(put, host_params, abstract)


def _host_params(params):
  """Parameters as host numpy arrays on every process (gathered across hosts if needed)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


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


def check_batch(config: ml_collections.ConfigDict, mesh) -> None:
  """The global batch must split evenly over the batch axes and the accumulation steps."""
  if config.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"] * config.grad_accum_steps):
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of data x fsdp "
                     f"x grad_accum_steps = {mesh.shape['data']} x {mesh.shape['fsdp']} x "
                     f"{config.grad_accum_steps}")


def state_layout(module, tx, mesh, rules):
  """(init_state(rng), the state's shapes with their shardings, the shardings) on `mesh`.

  Parameters are placed by their logical axis names and `rules`; optimizer moments follow the
  parameter they belong to; counters are replicated.
  """
  def init_state(rng):
    params = nn.unbox(module.init(rng, M.dummy_input_ids(module))["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))

  replicated = NamedSharding(mesh, P())
  param_shardings = sharding.logical_shardings(M.abstract_params(module), mesh, rules)
  shapes = jax.eval_shape(init_state, jax.random.key(0))
  shardings = TrainState(
      step=replicated, params=param_shardings,
      opt_state=sharding.match_param_shardings(shapes.opt_state, shapes.params, param_shardings,
                                               mesh),
      nonfinite_step=replicated)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
  return init_state, abstract, shardings


def make_module(config: ml_collections.ConfigDict, cfg: M.AlbertConfig, head: str) -> M._Albert:
  """The model as `config` runs it: compute dtype, rematerialisation, attention."""
  return M.make_model(cfg, head, dtype=jnp.dtype(config.dtype), remat_policy=config.remat_policy,
                      attention=config.attention)


def jit_train_step(config, module, tx, schedule, loss, state_shardings, batch_shardings,
                   replicated):
  """`train_step` jitted with explicit shardings; the state is donated (updated in place)."""
  return jax.jit(
      functools.partial(train_step, loss=loss, module=module, tx=tx, schedule=schedule,
                        accum_steps=config.grad_accum_steps, seed=config.seed),
      in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, replicated),
      donate_argnums=0)


def checkpoint_parts(state: TrainState) -> tuple[PyTree, dict]:
  """(params, the rest): saved as separate checkpoint items, so params read on their own."""
  return state.params, {"step": state.step, "opt_state": state.opt_state,
                        "nonfinite_step": state.nonfinite_step}


# ----------------------------------------------------------------------------- the job

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains as `config` says (pretraining, or the fine-tuning task `config.task`) in `workdir`;
  rerunning resumes. Returns a summary."""
  if str(workdir).startswith(("gs://", "s3://")):
    raise ValueError(f"workdir {workdir!r}: albert-jax reads and writes local paths; mount the "
                     "bucket (Cloud Storage FUSE: /gcs/BUCKET, see experiments/tpu/README.md) "
                     "and pass the mounted path")
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:  # the resolved config, overrides applied, beside the checkpoints
    checkpointing.write_json_atomic(workdir / "config.json", json.loads(config.to_json_best_effort()))

  # Mesh and sharding rules.
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules(config.sharding)
  logging.info("Mesh %s over %d devices (%d processes); sharding %r", dict(mesh.shape),
               mesh.size, jax.process_count(), config.sharding)
  check_batch(config, mesh)

  # Data, tokenizer, model config and head, the loss and the eval sets of the task.
  job = jobs.make_job(config, workdir)
  cfg = job.model_config
  module = make_module(config, cfg, job.head)
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)

  init_state, abstract, state_shardings = state_layout(module, tx, mesh, rules)
  replicated = NamedSharding(mesh, P())
  logging.info("Model (%s head): %s parameters; %s", job.head,
               f"{M.count_params(abstract.params):,}", cfg)

  # Resume order: the newest good checkpoint in the workdir, else config.init_from (params
  # only), else a fresh init. The data iterator resumes with the checkpoint.
  manager = checkpointing.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = checkpointing.restore_train_state(manager, *checkpoint_parts(abstract),
                                               log=logging.warning)
  train_iter = job.train_iter
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if restored:
      step, params, rest, data_state = restored
      state = TrainState(params=params, **rest)
      train_iter.set_state(data_state)
      logging.info("Resumed from checkpoint step %d", step)
    elif job.init_params is not None:
      params = _put_params(job.init_params, abstract.params)
      state = jax.jit(lambda p: TrainState(
          step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
          nonfinite_step=jnp.full((), -1, jnp.int32)), out_shardings=state_shardings)(params)
      logging.info("Initialised parameters from %s", config.init_from)
    else:
      state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(config.seed))
    start_step = int(jax.device_get(state.step))

    first_batch = next(train_iter)
    batch_shardings = {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in first_batch.items()}
    p_train_step = jit_train_step(config, module, tx, schedule, job.loss, state_shardings,
                                  batch_shardings, replicated)
    p_eval_step = jax.jit(functools.partial(eval_step, outputs=job.eval_outputs, module=module),
                          out_shardings=replicated)

    writer = metrics_lib.MetricsWriter(workdir, start_step, enabled=is_main)
    flops_per_step = 3 * config.batch_size * job.flops_per_example
    peak, peak_source = peak_flops(config)
    logging.info("%.3g TFLOP per step (%d applications of the shared layer%s); peak %.3g "
                 "TFLOP/s (%s)", flops_per_step / 1e12, cfg.num_hidden_layers * cfg.inner_group_num,
                 ", MLM head at the masked positions only" if job.task == "pretraining" else "",
                 peak / 1e12, peak_source)
    throughput = metrics_lib.Throughput(start_step, config.total_steps, flops_per_step, peak)
    model_info = {"config": cfg.to_hf_dict(), "head": job.head}
    stop = _StopFlag()
    best = _Best(workdir, job.best_metric) if job.best_metric else None

    def check_finite(step):
      bad = int(jax.device_get(state.nonfinite_step))
      if bad >= 0:
        last = manager.latest_step()
        raise FloatingPointError(
            f"The loss or gradient became NaN/Inf at step {bad + 1}; its update was skipped and "
            f"training stopped at step {step}. The last checkpoint, step {last}, holds finite "
            "values (lower the learning rate or check the data, then rerun to resume from it).")

    def save(step):
      check_finite(step)
      checkpointing.save_train_state(manager, step, *checkpoint_parts(state),
                                     train_iter.get_state(), model_info)

    def evaluate(step):
      result = {}
      for eval_set in job.evals:
        outputs = [jax.device_get(p_eval_step(state.params, sharding.global_batch(local, mesh)))
                   for local in eval_set.batches]
        scores = eval_set.score(outputs, workdir / "predictions" / f"step_{step}" / eval_set.name)
        result.update({f"{eval_set.name}/{k}": v for k, v in scores.items()})
      if not result:
        return None
      writer.write(step, result)
      logging.info("eval @ step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
      if best is not None and best.improves(result):
        best.keep(step, result, _host_params(state.params), cfg, job, is_main)
      return result

    history = {"first": None, "last": None, "eval": None}
    pending = []  # device metrics since the last log line: fetched together, no per-step sync
    tokens_seen = 0.0
    step = start_step
    preempted = False
    logging.info("Training from step %d to %d", start_step, config.total_steps)
    try:
      local_batch = first_batch
      while step < config.total_steps:
        batch = sharding.global_batch(local_batch if local_batch is not None else next(train_iter),
                                      mesh)
        local_batch = None
        state, step_metrics = p_train_step(state, batch)
        step += 1
        pending.append(step_metrics)

        # Step 1 too: the untrained model's metrics are the baseline the run is judged by.
        if step % config.log_every_steps == 0 or step in (1, config.total_steps):
          check_finite(step)
          fetched = jax.device_get(pending)
          pending = []
          tokens_seen += sum(float(m["tokens"]) for m in fetched)
          # The logged step's own values (not a window mean): a resumed run logs the same.
          row = {k: float(v) for k, v in fetched[-1].items() if k not in ("tokens", "examples")}
          row.update(throughput.update(step, tokens_seen))
          writer.write(step, row)
          history["first"] = history["first"] or row
          history["last"] = row
          logging.info(
              "step %d/%d | %s | lr %.3g | %.2f steps/s %s tok/s%s | ETA %s", step,
              config.total_steps, " ".join(f"{k} {row[k]:.4f}" for k in job.console if k in row),
              row["learning_rate"], row["steps_per_second"],
              f"{row['tokens_per_second']:,.0f}",
              f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "",
              metrics_lib.format_duration(row["eta_seconds"]))

        if config.eval_every_steps and step % config.eval_every_steps == 0:
          history["eval"] = evaluate(step)
        if step % config.checkpoint_every_steps == 0 and step < config.total_steps:
          save(step)
        if stop.set or (jax.process_count() > 1 and manager.reached_preemption(step)):
          logging.warning("Preempted: saving step %d and exiting", step)
          if manager.latest_step() != step:
            save(step)
          preempted = True
          break

      if not preempted:
        if not (config.eval_every_steps and step % config.eval_every_steps == 0):
          history["eval"] = evaluate(step)
        if manager.latest_step() != step:
          save(step)
    finally:  # let good checkpoints in flight land, even when stopping on NaN
      manager.wait_until_finished()
      writer.close()

  summary = {"step": step, "preempted": preempted, "first": history["first"],
             "last": history["last"], "eval": history["eval"]}
  if job.task == "pretraining" and history["first"] and history["last"] and history["eval"]:
    logging.info("MLM accuracy: %.4f at the first logged step of this run -> %.4f at step %d "
                 "(held-out: %.4f); SOP accuracy %.4f -> %.4f", history["first"]["mlm_accuracy"],
                 history["last"]["mlm_accuracy"], step, history["eval"]["eval/mlm_accuracy"],
                 history["first"]["sop_accuracy"], history["last"]["sop_accuracy"])
  if not preempted and best is not None and is_main:
    summary["eval_results"] = best.write_results(step, history["eval"])
  if not preempted and config.export_hf:
    host_params = _host_params(state.params)
    # A head transformers has no class for (squad_v2_original): an albert-jax model directory.
    name = "hf" if M.has_hf_class(job.head) else "model"
    if is_main:
      kind = hf_convert.save_model(cfg, host_params, workdir / name, head=job.head,
                                   tokenizer=job.tokenizer, overwrite=True)
      logging.info("Exported the model to %s (%s format, with spiece.model)", workdir / name, kind)
    summary[f"{name}_dir"] = str(workdir / name)
  manager.close()
  return summary


class _Best:
  """The best eval so far by one metric: WORKDIR/best (HF format; an albert-jax model directory
  for a head transformers lacks) and WORKDIR/best.json."""

  def __init__(self, workdir: Path, metric: str):
    self.workdir, self.metric = workdir, metric
    self.record = jobs.read_json(workdir / "best.json")  # survives restarts

  def improves(self, result: dict[str, float]) -> bool:
    if self.metric not in result:
      raise KeyError(f"the task's metric {self.metric!r} is not among the eval results "
                     f"{sorted(result)}")
    return self.record is None or result[self.metric] > self.record["metrics"][self.metric]

  def keep(self, step, result, host_params, cfg, job, is_main):
    self.record = {"step": step, "metric": self.metric, "metrics": result}
    if is_main:
      hf_convert.save_model(cfg, host_params, self.workdir / "best", head=job.head,
                            tokenizer=job.tokenizer, overwrite=True)
      checkpointing.write_json_atomic(self.workdir / "best.json", self.record)
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
    checkpointing.write_json_atomic(self.workdir / "eval_results.json", out)
    logging.info("Eval results (best step %d by %s): %s", out["best_step"], self.metric,
                 json.dumps(out))
    return out
