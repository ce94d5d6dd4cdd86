r"""Compile a job's real train step for a Cloud TPU slice on any host: does it fit, how fast.

    python -m albert_jax.aot --config=configs/pretrain.py:large --topology=v5p-128 \
        [--num_slices=N] [--config.x=...] [--json=PATH] [--noestimate]

MaxText's `train_compile` for albert-jax. libtpu (`pip install -e .[tpu]`) describes the slice's
chips without owning them, and XLA's TPU compiler builds the very program `main` would run there:
the config's mesh and sharding rules, its model, optimizer, remat policy, attention and batch.
Shapes come from the config alone (no data, vocabulary or checkpoint). The report gives the bytes
each chip needs against its HBM and the compile time; a program too big for the chip does not
compile, which is reported as not fitting (exit 0) with the bytes it needed. The step time and
MFU are estimates of XLA's TPU cost model (see `estimate_step_seconds`), not measurements.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

GiB = 2**30

# Per chip: libtpu's topology name, TensorCores the accelerator type counts per chip (v4-8 is 4
# chips), the HBM XLA may use (libtpu 0.0.42's "available HBM", read from its out-of-memory
# message), the dense bf16 peak in FLOP/s, and whether chips form a 3D torus.
@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu: str
  cores_per_chip: int
  hbm_bytes: int
  peak_flops: float
  dims: int

GENERATIONS = {
    "v4": Generation("v4", 2, int(30.75 * GiB), 275e12, 3),
    "v5p": Generation("v5p", 2, int(95.74 * GiB), 459e12, 3),
    "v5e": Generation("v5e", 1, int(15.75 * GiB), 197e12, 2),
    "v6e": Generation("v6e", 1, int(31.25 * GiB), 918e12, 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p"}

# Chip grids of the standard slices (Cloud TPU's accelerator types), by number of chips.
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice (or several, over the data-center network) as libtpu describes it."""
  name: str
  generation: str
  grid: tuple[int, ...]
  num_slices: int = 1

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.grid) * self.num_slices

  @property
  def accelerator_type(self) -> str:
    """Cloud TPU's name for one of the slices (v5p-8, v5litepod-8, ...)."""
    prefix = {"v5e": "v5litepod"}.get(self.generation, self.generation)
    return f"{prefix}-{math.prod(self.grid) * self.gen.cores_per_chip}"

  def topology_kwargs(self) -> dict[str, Any]:
    """`jax.experimental.topologies.get_topology_desc` arguments: one device per chip (megacore
    on v4/v5p), 4 chips per host (2x4 for a single-host v5e/v6e slice of 8), torus links on
    full-size dimensions."""
    grid3 = tuple(self.grid) + (1,) * (3 - len(self.grid))
    if self.gen.dims == 3:
      hosts, wrap = (2, 2, 1), tuple(d >= 4 for d in grid3) if min(grid3) >= 4 else (False,) * 3
    else:
      hosts = grid3 if math.prod(grid3) <= 8 else (2, 2, 1)
      wrap = (grid3[0] >= 16, grid3[1] >= 16, False)
    return dict(topology_name=f"{self.gen.libtpu}:{'x'.join(map(str, self.grid))}",
                platform="tpu", chip_config_name="megacore" if self.gen.dims == 3 else "default",
                chips_per_host_bounds=hosts, num_slices=self.num_slices, wrap=wrap)


def parse_slice(name: str, num_slices: int = 1) -> Slice:
  """`v5p-8`, `v4-32`, `v5e-8` / `v5litepod-16`, `v6e-8` (Cloud TPU accelerator types) or a
  libtpu topology such as `v5p:2x2x1`."""
  def fail(why):
    known = ", ".join(f"{g}-N" for g in GENERATIONS)
    raise ValueError(f"--topology={name!r}: {why} (accelerator types: {known}, e.g. v5p-8, "
                     "v4-32, v5e-8, v5litepod-16, v6e-8; or a libtpu topology like v5p:2x2x1)")
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be >= 1")
  text = name.strip().lower()
  if ":" in text:
    gen, _, dims = text.partition(":")
    gen = ALIASES.get(gen, gen)
    if gen not in GENERATIONS:
      fail(f"unknown TPU generation {gen!r}")
    try:
      grid = tuple(int(d) for d in dims.split("x"))
    except ValueError:
      fail(f"cannot read the chip grid {dims!r}")
    if len(grid) != GENERATIONS[gen].dims or min(grid) < 1:
      fail(f"{gen} chips form a {GENERATIONS[gen].dims}D grid")
    return Slice(name, gen, grid, num_slices)
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
  if not match:
    fail("expected GENERATION-SIZE")
  gen = ALIASES.get(match[1], match[1])
  if gen not in GENERATIONS:
    fail(f"unknown TPU generation {match[1]!r}")
  size = int(match[2])
  cores = GENERATIONS[gen].cores_per_chip
  grids = GRIDS_3D if GENERATIONS[gen].dims == 3 else GRIDS_2D
  if size % cores or size // cores not in grids:
    sizes = ", ".join(f"{gen}-{c * cores}" for c in grids)
    fail(f"no standard {gen} slice of that size ({sizes})")
  return Slice(name, gen, grids[size // cores], num_slices)


def slice_devices(tpu: Slice) -> list:
  """The slice's devices, compile-only: programs for them build here and never run."""
  # Off Cloud TPU there is no metadata server to ask what this host is; say it, or libtpu warns.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside another libtpu process
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(**tpu.topology_kwargs()).devices)
  except Exception as e:  # noqa: BLE001  (libtpu missing, unknown topology)
    raise RuntimeError(f"libtpu cannot describe {tpu.name} ({type(e).__name__}: {e}); install "
                       "it with `pip install -e .[tpu]` (jax[tpu] at the pinned jax)") from e


# ----------------------------------------------------------------------------- compiling

def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  import jax
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
             for a in jax.tree_util.tree_leaves(tree))


def _size(text: str) -> int:
  """'50.43G' -> bytes (XLA prints GiB as G)."""
  number, unit = float(text[:-1]), text[-1].upper()
  return int(number * 1024 ** "BKMGT".index(unit))


def out_of_memory(message: str) -> tuple[int | None, int | None] | None:
  """(bytes needed, bytes available) from XLA's RESOURCE_EXHAUSTED message, or None if the
  message is not an out-of-memory one."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  size = r"([\d.]+[BKMGT])"
  for pattern in (rf"required for HLO temporaries \({size}\) exceeds available HBM \({size}\)",
                  rf"Used {size} of {size} hbm"):
    if m := re.search(pattern, message):
      return _size(m[1]), _size(m[2])
  return None, None


@dataclasses.dataclass(frozen=True)
class JobStep:
  """What the job's train step is made of, from the config alone."""
  task_name: str
  task: Any
  head: str
  model_config: Any  # model.AlbertConfig
  example: dict  # one training row's ShapeDtypeStructs


def step_of(config) -> JobStep:
  """The job's step without data, vocabulary or checkpoint: config.model's architecture, its
  vocab_size -1 read as config.data.vocab_size (pretraining) or 30000, ALBERT's."""
  from albert_jax import init_from, tasks
  task = tasks.get(config.task)
  vocab = config.model.vocab_size if config.model.vocab_size > 0 else config.data.get(
      "vocab_size", 30000)
  cfg = init_from.model_config(config, task, vocab)
  return JobStep(config.task, task, task.head(config.data), cfg, task.example_spec(config.data))


def _batch(spec, batch_size: int, mesh) -> dict:
  import jax
  from albert_jax import sharding
  return {k: jax.ShapeDtypeStruct((batch_size, *s.shape), s.dtype,
                                  sharding=sharding.batch_sharding(mesh, 1 + len(s.shape)))
          for k, s in spec.example.items()}


def lower(config, spec, devices, scan_layers: bool = True):
  """(lowered train step, abstract state, mesh) of `config`'s job on `devices`."""
  import flax.linen as nn
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from albert_jax import optimizer, sharding, train

  mesh = sharding.make_mesh(dict(config.mesh), devices)
  rules = sharding.rules(config.sharding)
  train.check_batch(config, mesh)
  module = train.make_module(config, spec.model_config, spec.head).clone(scan_layers=scan_layers)
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)
  # State shapes outside jax.set_mesh: eval_shape there would trace eager PRNG keys on the mesh.
  layout = train.state_layout(module, tx, mesh, rules)
  abstract, state_shardings = layout.abstract, layout.shardings
  batch = _batch(spec, config.batch_size, mesh)
  step = train.jit_train_step(config, module, spec.task, tx, schedule, state_shardings,
                              {k: v.sharding for k, v in batch.items()}, NamedSharding(mesh, P()))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return step.lower(abstract, batch), abstract, mesh


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def _compile_cost(fn, args, mesh, rules) -> tuple[float, float]:
  """(seconds, FLOPs) of `fn(*args)` on one chip by XLA's TPU cost model."""
  import flax.linen as nn
  import jax
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = dict((cost[0] if isinstance(cost, (list, tuple)) else cost) or {})
  return cost.get("optimal_seconds", math.nan), cost.get("flops", math.nan)


def estimate_step(config, spec, mesh, abstract, scanned: tuple[float, float],
                  scan_layers: bool = True) -> tuple[float, float]:
  """(seconds, FLOPs) per step and chip by XLA's TPU cost model, for the whole depth.

  The cost model counts a loop body once: the scanned step's figure holds each group's layer
  once (and, with gradient accumulation, one micro-batch). The missing iterations are priced by
  small programs: a layer group applied twice and once, forward and backward with the step's
  remat policy on the micro-batch's shapes (their difference is one iteration), and the
  optimizer update. Checked against the unrolled program of albert-large (README).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from albert_jax import model as M, optimizer, sharding

  cfg, rules = spec.model_config, sharding.rules(config.sharding)
  micro = config.batch_size // config.grad_accum_steps
  dtype = jnp.dtype(config.dtype)
  group = M.layer_group_class(config.remat_policy)(
      config=cfg, dtype=dtype, remat_policy=config.remat_policy, attention=config.attention,
      deterministic=False)
  length = spec.example["input_ids"].shape[-1]
  rows = micro * math.prod(spec.example["input_ids"].shape[:-1])
  x = jax.ShapeDtypeStruct((rows, length, cfg.hidden_size), dtype)
  mask = jax.ShapeDtypeStruct((rows, length), jnp.bool_)
  boxed = jax.eval_shape(group.init, jax.random.key(0), x, mask)["params"]
  params = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed), sharding.logical_shardings(boxed, mesh, rules))
  batch_sharding = sharding.batch_sharding(mesh, 3)
  x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding)
  mask = jax.ShapeDtypeStruct(mask.shape, mask.dtype, sharding=sharding.batch_sharding(mesh, 2))

  def iterations(n):  # n iterations unrolled, forward and backward
    def program(params, x, mask):
      def apply(params, x):
        for i in range(n):
          x, _ = group.apply({"params": params}, x, mask,
                             rngs={"dropout": jax.random.key(i)})
        return x
      y, vjp = jax.vjp(apply, params, x)
      return vjp(y)
    return _compile_cost(program, (params, x, mask), mesh, rules)

  # The difference leaves out what a step does once however deep it is (the gradient's
  # reduction over the batch axes).
  body = [b - a for a, b in zip(iterations(1), iterations(2))]
  repeats = cfg.num_hidden_layers // cfg.num_hidden_groups if scan_layers else 1
  missing = [cfg.num_hidden_groups * (repeats - 1) * b for b in body]
  if config.grad_accum_steps == 1:
    return scanned[0] + missing[0], scanned[1] + missing[1]
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  def apply_update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  update = _compile_cost(apply_update,
                         (abstract.params, abstract.opt_state, abstract.params), mesh, rules)
  return tuple(u + config.grad_accum_steps * (s - u + m)
               for s, u, m in zip(scanned, update, missing))


def compile_report(config, tpu: Slice, devices: Sequence | None = None, estimate: bool = True,
                   scan_layers: bool = True) -> dict[str, Any]:
  """Compiles `config`'s train step for `tpu`; the report `main` prints (see the module doc).
  `scan_layers=False` compiles the layers unrolled (for comparisons; the estimate needs a scan)."""
  from albert_jax import attention, train
  devices = slice_devices(tpu) if devices is None else list(devices)
  spec = step_of(config)
  cfg = spec.model_config
  lowered, abstract, mesh = lower(config, spec, devices, scan_layers)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  report: dict[str, Any] = {
      "topology": tpu.name, "libtpu_topology": tpu.topology_kwargs()["topology_name"],
      "num_slices": tpu.num_slices, "device_kind": devices[0].device_kind,
      "chips": len(devices), "hosts": len({d.process_index for d in devices}),
      "mesh": dict(mesh.shape), "sharding": config.sharding, "task": spec.task_name,
      "model": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers",
                                             "num_attention_heads", "intermediate_size",
                                             "vocab_size")},
      "dtype": config.dtype, "remat_policy": config.remat_policy,
      "attention": attention.resolve(
          config.attention, "tpu", config.dtype, spec.example["input_ids"].shape[-1],
          cfg.attention_probs_dropout_prob > 0),
      "seq_len": spec.example["input_ids"].shape[-1],
      "batch_size": config.batch_size, "grad_accum_steps": config.grad_accum_steps,
      "batch_per_chip": config.batch_size / batch_devices,
      "micro_batch_per_chip": config.batch_size / batch_devices / config.grad_accum_steps,
      "params_bytes_per_chip": _bytes_per_device(abstract.params),
      "opt_state_bytes_per_chip": _bytes_per_device(abstract.opt_state),
      "hbm_bytes_per_chip": tpu.gen.hbm_bytes,
      "flops_per_step": 3 * config.batch_size * train.flops_per_example(config, spec.task, cfg),
  }
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (XLA raises one type for every failure)
    oom = out_of_memory(str(e))
    if oom is None:
      raise RuntimeError(f"XLA could not compile the step for {tpu.name}: "
                         f"{str(e).splitlines()[0]}") from e
    report.update(fits=False, compile_seconds=time.perf_counter() - start,
                  peak_bytes_per_chip=oom[0], error=str(e).splitlines()[0])
    if oom[1]:
      report["hbm_bytes_per_chip"] = oom[1]
    return report
  report["compile_seconds"] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # Everything the step holds at once, at most: its arguments (state and batch), temporaries,
  # and outputs not written over the donated state.
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  report.update(fits=peak <= report["hbm_bytes_per_chip"], peak_bytes_per_chip=peak,
                temp_bytes_per_chip=memory.temp_size_in_bytes,
                argument_bytes_per_chip=memory.argument_size_in_bytes,
                xla_peak_bytes_per_chip=memory.peak_memory_in_bytes)
  if estimate:
    scanned = (_cost(compiled).get("optimal_seconds", math.nan),
               _cost(compiled).get("flops", math.nan))
    seconds, flops = estimate_step(config, spec, mesh, abstract, scanned, scan_layers)
    if math.isfinite(seconds) and seconds > 0:
      report.update(estimated_step_seconds=seconds, cost_model_flops_per_chip=flops,
                    estimated_mfu=report["flops_per_step"] / len(devices) / seconds
                    / tpu.gen.peak_flops)
  return report


def _human(size: float) -> str:
  return f"{size / GiB:.2f} GiB" if size >= GiB / 10 else f"{size / 2**20:.1f} MiB"


def format_report(r: dict[str, Any]) -> str:
  gib = _human
  lines = [
      f"{r['task']} step for {r['topology']} ({r['libtpu_topology']}, {r['num_slices']} "
      f"slice(s)): {r['chips']} chips ({r['device_kind']}) on {r['hosts']} host(s), mesh "
      f"{r['mesh']}, {r['sharding']} rules",
      f"model {r['model']}, {r['dtype']}, remat {r['remat_policy']}, attention "
      f"{r['attention']}, sequence {r['seq_len']}",
      f"batch {r['batch_size']} = {r['batch_per_chip']:g} per chip"
      + (f" ({r['grad_accum_steps']} micro-batches of {r['micro_batch_per_chip']:g})"
         if r["grad_accum_steps"] > 1 else ""),
      f"per chip: parameters {gib(r['params_bytes_per_chip'])}, optimizer state "
      f"{gib(r['opt_state_bytes_per_chip'])}"
      + (f", temporaries {gib(r['temp_bytes_per_chip'])}" if "temp_bytes_per_chip" in r else ""),
      f"peak {gib(r['peak_bytes_per_chip'] or 0)} of {gib(r['hbm_bytes_per_chip'])} HBM: "
      + ("fits" if r["fits"] else "DOES NOT FIT"),
      f"compile {r['compile_seconds']:.1f} s; {r['flops_per_step'] / 1e12:.1f} TFLOP per step",
  ]
  if "error" in r:
    lines.append(f"XLA: {r['error']}")
  if "estimated_step_seconds" in r:
    lines.append(f"estimate (XLA's TPU cost model, not a measurement): "
                 f"{r['estimated_step_seconds']:.3f} s per step, MFU "
                 f"{100 * r['estimated_mfu']:.1f}%")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:large",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "Cloud TPU accelerator type (v5p-8, v4-32, v5e-8, "
                      "v5litepod-16, v6e-8, ...) or a libtpu topology (v5p:2x2x1)")
  flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-center network")
  flags.DEFINE_string("json", None, "Also write the report to this JSON file")
  flags.DEFINE_bool("estimate", True, "Estimate step time and MFU with XLA's TPU cost model "
                    "(two more small compiles)")
  flags.mark_flags_as_required(["config", "topology"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    tpu = parse_slice(FLAGS.topology, FLAGS.num_slices)
    report = compile_report(FLAGS.config, tpu, estimate=FLAGS.estimate)
  except (ValueError, RuntimeError) as e:
    sys.exit(f"error: {e}")
  print(format_report(report), flush=True)
  if FLAGS.json:
    from albert_jax import files
    files.write_json(FLAGS.json, report)


if __name__ == "__main__":
  # Compile-only: this host's own backend is the CPU whatever is installed, and TPU executables
  # for devices that are not here must not go into a persistent compilation cache.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  _define_flags()
  app.run(main)
