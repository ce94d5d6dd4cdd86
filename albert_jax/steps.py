"""The train state and the pure steps, and how they are built for a mesh.

`train_step` and `eval_step` are pure functions of (state or params, a global batch); the task
(`tasks/`) gives the loss as sums and the predictions. `state_layout` gives the state's shapes and
shardings from the parameters' logical axis names, `jit_train_step` the step jitted with explicit
shardings. `train.py` (the loop) and `aot.py` (compiling for a slice) both build the step here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from albert_jax import accelerators, init_from, sharding
from albert_jax import model as M
from albert_jax.checkpoints.table import flatten

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: PyTree
  opt_state: PyTree
  # -1 while every step so far was finite; else the first step whose loss, gradient, updated
  # parameters or optimizer state were not. From then on updates are skipped, so the state (and
  # any checkpoint of it) stays finite.
  nonfinite_step: jax.Array


# ----------------------------------------------------------------------------- the steps

def all_finite(tree) -> jax.Array:
  """True when every float in `tree` is finite (one reduction per array, then one over them).

  The barrier keeps the last reduction one: XLA would otherwise rewrite it into a chain of
  scalar `and`s and fuse a copy of the chain into every consumer, as many copies as the state
  has arrays when the flag guards each update (the tests' tiny step: 37k lines of HLO, not 17k)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jax.lax.optimization_barrier(jnp.stack(checks))) if checks else jnp.array(True)


def train_step(state: TrainState, batch, *, module, task, tx, schedule, accum_steps: int,
               seed: int, lr_scale: float = 1.0):
  """One optimizer update from a global batch (split into `accum_steps` micro-batches).

  The loss of a micro-batch is its sums over the denominators of the whole batch
  (`task.counts`), so the accumulated gradient is exactly the whole batch's. `lr_scale`
  multiplies the learning rate (after a rollback: spike.py)."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)  # dropout: a fresh key per step
  denominators = task.counts(batch)

  def loss_fn(params, micro, micro_rng):
    sums = task.loss_sums(M.apply_to_batch(module, params, micro, micro_rng), micro)
    return task.normalise(sums, denominators)["loss"], sums

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

  metrics = task.normalise(sums, denominators)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if lr_scale != 1.0:  # every optimizer here ends by multiplying by the learning rate
    updates = jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
  params = optax.apply_updates(state.params, updates)
  # What is written, not only what led to it: an update can overflow with a finite loss and
  # gradient (a huge learning rate, a moment that grew past float32).
  finite = all_finite((metrics["loss"], grad_norm, params, opt_state))
  keep_going = finite & (state.nonfinite_step < 0)
  pick = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(keep_going, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1, params=pick(params, state.params),
      opt_state=pick(opt_state, state.opt_state),
      nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                               state.nonfinite_step))
  metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step) * lr_scale,
                 tokens=jnp.sum(batch["attention_mask"]).astype(jnp.float32))
  return new_state, metrics


def eval_step(params, batch, *, module, task):
  """What one eval batch sends back to the host (`task.predictions`)."""
  return task.predictions(M.apply_to_batch(module, params, batch), batch)


# ----------------------------------------------------------------------------- set-up

def make_module(config: ml_collections.ConfigDict, cfg: M.AlbertConfig, head: str) -> M._Albert:
  """The model as `config` runs it: compute dtype, layer loop, rematerialisation, attention."""
  return M.make_model(cfg, head, dtype=jnp.dtype(config.dtype), remat_policy=config.remat_policy,
                      attention=config.attention, layer_loop=config.get("layer_loop", "auto"))


def check_batch(config: ml_collections.ConfigDict, mesh) -> None:
  """The global batch must split evenly over the batch axes and the accumulation steps."""
  for name in ("batch_size", "eval_batch_size"):
    size = config.get(name) or config.batch_size
    divisor = mesh.shape["data"] * mesh.shape["fsdp"] * (
        config.grad_accum_steps if name == "batch_size" else 1)
    if size % divisor:
      raise ValueError(f"config.{name}={size} must be a multiple of data x fsdp"
                       f"{' x grad_accum_steps' if name == 'batch_size' else ''} = {divisor}")


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """The train state's shapes and shardings on a mesh, and how to initialise it there."""
  abstract: TrainState  # ShapeDtypeStructs with their shardings
  shardings: TrainState
  init: Callable[[int, dict], TrainState]  # (seed, {param path: host array} kept) -> state


def state_layout(module, tx, mesh, rules) -> StateLayout:
  """Built once from the boxed parameters: every array of the state, optimizer moments included,
  carries its parameter's logical axis names, which `rules` map onto `mesh` (counters are
  replicated). Call outside `jax.set_mesh`: its shapes are traced with an eager PRNG key."""
  def boxed_state(rng, kept):
    params = init_from.merge(module.init(rng, M.dummy_input_ids(module))["params"], kept)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))

  boxed = jax.eval_shape(boxed_state, jax.random.key(0), {})
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)

  def init(seed: int, kept: dict) -> TrainState:
    """A fresh state; the parameters at `kept`'s paths are those host arrays (`init_from`)."""
    param_shardings = flatten(abstract.params)
    kept = {k: sharding.put(v, param_shardings[k]) for k, v in kept.items()}
    make = lambda rng, kept: nn.unbox(boxed_state(rng, kept))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jax.jit(make, out_shardings=shardings)(jax.random.key(seed), kept)

  return StateLayout(abstract, shardings, init)


def jit_train_step(config, module, task, tx, schedule, state_shardings, batch_shardings,
                   replicated, compiler_options: dict | None = None, lr_scale: float = 1.0):
  """`train_step` jitted with explicit shardings and XLA options (default: the platform's,
  `accelerators.compiler_options`); the state is donated (updated in place). `lr_scale` is a
  constant of the program (one more compile for a run that lowers its learning rate)."""
  if compiler_options is None:
    compiler_options = accelerators.compiler_options(replicated.mesh.devices.flat)
  return jax.jit(
      functools.partial(train_step, module=module, task=task, tx=tx, schedule=schedule,
                        accum_steps=config.grad_accum_steps, seed=config.seed,
                        lr_scale=lr_scale),
      in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, replicated),
      donate_argnums=0, compiler_options=compiler_options or None)


def checkpoint_parts(state: TrainState) -> tuple[PyTree, dict]:
  """(params, the rest): saved as separate checkpoint items, so params read on their own."""
  return state.params, {"step": state.step, "opt_state": state.opt_state,
                        "nonfinite_step": state.nonfinite_step}
