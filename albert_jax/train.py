"""`train_and_evaluate(config, workdir)`: ALBERT pretraining (MLM + SOP) on a device mesh.

One linear story: mesh and rules -> data and tokenizer -> model, optimizer, state shardings ->
resume (checkpoint, else `config.init_from`, else fresh) -> the loop (step, log, eval,
checkpoint, preemption) -> final checkpoint and Hugging Face export. The step functions are pure
and jitted with explicit in/out shardings; the state is donated.
"""

from __future__ import annotations

import dataclasses
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

from albert_jax import checkpointing, hf_convert, metrics as metrics_lib, optimizer, sharding
from albert_jax import model as M
from albert_jax.data import pipeline
from albert_jax.tasks import pretraining as task

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

def train_step(state: TrainState, batch, *, module, tx, schedule, accum_steps: int, seed: int):
  """One optimizer update from a global batch (split into `accum_steps` micro-batches)."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)  # dropout: a fresh key per step
  mlm_denominator, sop_denominator = task.denominators(batch)

  def loss_fn(params, micro, micro_rng):
    mlm_logits, sop_logits = task.forward(module, params, micro, deterministic=False, rng=micro_rng)
    sums = task.loss_sums(mlm_logits, sop_logits, micro)
    return task.objective(sums, mlm_denominator, sop_denominator), sums

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

  metrics = task.normalise(sums)
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


def eval_step(params, batch, *, module):
  """Summed losses and counts of one batch (added up over the eval set, then normalised)."""
  mlm_logits, sop_logits = task.forward(module, params, batch, deterministic=True)
  return task.loss_sums(mlm_logits, sop_logits, batch)


# ----------------------------------------------------------------------------- set-up helpers

def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> M.AlbertConfig:
  """AlbertConfig from `config.model`; vocab_size -1 means the tokenizer's."""
  fields = dict(config.model)
  if fields.get("vocab_size", -1) in (-1, None):
    fields["vocab_size"] = vocab_size
  if fields["vocab_size"] < vocab_size:
    raise ValueError(f"config.model.vocab_size={fields['vocab_size']} is smaller than the "
                     f"tokenizer's {vocab_size} pieces")
  fields["id2label"] = tuple(fields.get("id2label") or ())
  return M.AlbertConfig(**fields)


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


def checkpoint_parts(state: TrainState) -> tuple[PyTree, dict]:
  """(params, the rest): saved as separate checkpoint items, so params read on their own."""
  return state.params, {"step": state.step, "opt_state": state.opt_state,
                        "nonfinite_step": state.nonfinite_step}


# ----------------------------------------------------------------------------- the job

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains ALBERT as `config` says, in `workdir`; rerunning resumes. Returns a summary."""
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
  if config.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"] * config.grad_accum_steps):
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of data x fsdp "
                     f"x grad_accum_steps = {mesh.shape['data']} x {mesh.shape['fsdp']} x "
                     f"{config.grad_accum_steps}")

  # Data and tokenizer.
  tokenizer = pipeline.build_tokenizer(config.data, workdir)
  train_iter = pipeline.train_iterator(config.data, tokenizer, global_batch_size=config.batch_size,
                                       seed=config.seed)
  eval_set = pipeline.eval_batches(config.data, tokenizer, global_batch_size=config.batch_size,
                                   seed=config.seed + 1)

  # Model, optimizer, and the shapes and shardings of the state.
  cfg = model_config(config, tokenizer.vocab_size)
  module = M.AlbertForPreTraining(cfg, dtype=jnp.dtype(config.dtype),
                                  remat_policy=config.remat_policy)
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)

  init_state, abstract, state_shardings = state_layout(module, tx, mesh, rules)
  replicated = NamedSharding(mesh, P())
  logging.info("Model: %s parameters; %s", f"{M.count_params(abstract.params):,}", cfg)

  # Resume order: the newest good checkpoint in the workdir, else config.init_from (params
  # only), else a fresh init. The data iterator resumes with the checkpoint.
  manager = checkpointing.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = checkpointing.restore_train_state(manager, *checkpoint_parts(abstract),
                                               log=logging.warning)
  host_init = None
  if not restored and config.init_from:  # read on the host, outside the mesh context
    loaded_cfg, host_init, _ = hf_convert.load_any(config.init_from, head="pretraining")
    changed = {f.name: (getattr(loaded_cfg, f.name), getattr(cfg, f.name))
               for f in dataclasses.fields(cfg)
               if getattr(loaded_cfg, f.name) != getattr(cfg, f.name)}
    if changed:  # e.g. a deeper model from a shallower one: legal with shared layers
      logging.warning("config.init_from differs from config.model in (theirs, ours): %s", changed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if restored:
      step, params, rest, data_state = restored
      state = TrainState(params=params, **rest)
      train_iter.set_state(data_state)
      logging.info("Resumed from checkpoint step %d", step)
    elif host_init is not None:
      params = _put_params(host_init, abstract.params)
      state = jax.jit(lambda p: TrainState(
          step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
          nonfinite_step=jnp.full((), -1, jnp.int32)), out_shardings=state_shardings)(params)
      logging.info("Initialised parameters from %s", config.init_from)
    else:
      state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(config.seed))
    start_step = int(jax.device_get(state.step))

    batch_shardings = {name: sharding.batch_sharding(mesh, 1 if name == "sentence_order_label"
                                                     else 2) for name in task.FEATURES}
    p_train_step = jax.jit(
        functools.partial(train_step, module=module, tx=tx, schedule=schedule,
                          accum_steps=config.grad_accum_steps, seed=config.seed),
        in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, replicated),
        donate_argnums=0)
    p_eval_step = jax.jit(functools.partial(eval_step, module=module),
                          in_shardings=(state_shardings.params, batch_shardings),
                          out_shardings=replicated)

    writer = metrics_lib.MetricsWriter(workdir, start_step, enabled=is_main)
    seq_len = config.data.max_seq_length
    predictions = pipeline.example_config(config.data).max_predictions
    flops_per_step = 3 * config.batch_size * M.pretraining_flops_per_example(cfg, seq_len,
                                                                             predictions)
    peak, peak_source = peak_flops(config)
    logging.info("%.3g TFLOP per step (what runs: %d layer applications, MLM at %d positions); "
                 "peak %.3g TFLOP/s (%s)", flops_per_step / 1e12,
                 cfg.num_hidden_layers * cfg.inner_group_num, predictions, peak / 1e12, peak_source)
    throughput = metrics_lib.Throughput(start_step, config.total_steps, flops_per_step, peak)
    model_info = {"config": cfg.to_hf_dict(), "head": "pretraining"}
    stop = _StopFlag()

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
      sums = None
      for local in eval_set:
        out = p_eval_step(state.params, sharding.global_batch(local, mesh))
        sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
      result = {f"eval/{k}": float(v) for k, v in task.normalise(jax.device_get(sums)).items()}
      writer.write(step, result)
      logging.info("eval @ step %d: %s", step,
                   ", ".join(f"{k[5:]} {v:.4f}" for k, v in result.items()))
      return result

    history = {"first": None, "last": None, "eval": None}
    pending = []  # device metrics since the last log line: fetched together, no per-step sync
    tokens_seen = 0.0
    step = start_step
    preempted = False
    logging.info("Training from step %d to %d", start_step, config.total_steps)
    try:
      while step < config.total_steps:
        batch = sharding.global_batch(next(train_iter), mesh)
        state, step_metrics = p_train_step(state, batch)
        step += 1
        pending.append(step_metrics)

        if step % config.log_every_steps == 0 or step == config.total_steps:
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
              "step %d/%d | loss %.4f mlm_acc %.4f sop_acc %.4f | lr %.3g | %.2f steps/s "
              "%s tok/s%s | ETA %s", step, config.total_steps, row["loss"], row["mlm_accuracy"],
              row["sop_accuracy"], row["learning_rate"], row["steps_per_second"],
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
  if history["first"] and history["last"] and history["eval"]:
    logging.info("MLM accuracy: %.4f at the first logged step of this run -> %.4f at step %d "
                 "(held-out: %.4f); SOP accuracy %.4f -> %.4f", history["first"]["mlm_accuracy"],
                 history["last"]["mlm_accuracy"], step, history["eval"]["eval/mlm_accuracy"],
                 history["first"]["sop_accuracy"], history["last"]["sop_accuracy"])
  if not preempted and config.export_hf:
    host_params = _host_params(state.params)
    if is_main:
      hf_convert.save(cfg, host_params, workdir / "hf", head="pretraining", tokenizer=tokenizer,
                      overwrite=True)
      logging.info("Exported the model to %s (Hugging Face format, with spiece.model)",
                   workdir / "hf")
    summary["hf_dir"] = str(workdir / "hf")
  manager.close()
  return summary
