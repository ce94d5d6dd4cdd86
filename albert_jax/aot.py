r"""Compile a job's real train step for a Cloud TPU slice or NVIDIA GPUs on any host: does it
fit, how fast could it be.

    python -m albert_jax.aot --config=configs/pretrain.py:large --topology=v5p-128 \
        [--num_slices=N] [--config.x=...] [--json=PATH] [--noestimate]
    python -m albert_jax.aot --config=configs/pretrain.py:large --topology=h100-8 \
        [--config.x=...] [--json=PATH] [--hlo=PATH] [--ceilings=PATH]

MaxText's `train_compile` for albert-jax. libtpu (`pip install -e .[tpu]`) describes a TPU
slice's chips without owning them, jax's compile-only CUDA plugin (`pip install -e .[gpu-aot]`)
describes GPUs from the target descriptions in `accelerators.py`, and XLA's compiler for that
platform builds the very program `main` would run there: the config's mesh and sharding rules,
model, optimizer, layer loop, remat policy, attention and batch. Shapes come from the config
alone (no data, vocabulary or checkpoint). The report gives the bytes each device needs against
its memory and the compile time; a TPU program too big for the chip does not compile, which is
reported as not fitting (exit 0) with the bytes it needed. For a TPU the step time and MFU are
estimates of XLA's TPU cost model (`estimate_step`); for GPUs the report is a kernel census of the
optimized program (`census.py`) with a roofline lower bound. Neither is a measurement.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
  # Compile-only: this host's own backend is the CPU whatever is installed (jax reads this when
  # it is imported, below), and programs for devices that are not here must not go into a
  # persistent compilation cache.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import dataclasses  # noqa: E402  (the environment above comes first)
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from albert_jax import accelerators, attention, census, encoder, files, init_from  # noqa: E402
from albert_jax import optimizer, overrides, sharding, steps, tasks, train  # noqa: E402

GiB = 2**30

# ----------------------------------------------------------------------------- compiling

def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
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
  task = tasks.of(config)
  vocab = config.model.vocab_size if config.model.vocab_size > 0 else config.data.get(
      "vocab_size", 30000)
  cfg = init_from.model_config(config, task, vocab)
  return JobStep(config.task, task, task.head(config.data), cfg, task.example_spec(config.data))


def batch_rows(config) -> int:
  """The rows of the step's batch: config.batch_size examples, or data.pack_rows packed rows
  (`data/packed_batches.py`; unset, a packed batch is compiled at batch_size rows: its
  widest)."""
  data = config.data
  return int(data.pack_rows) if data.get("pack") and data.get("pack_rows") else config.batch_size


def _batch(spec, batch_size: int, mesh) -> dict:
  return {k: jax.ShapeDtypeStruct((batch_size, *s.shape), s.dtype,
                                  sharding=sharding.batch_sharding(mesh, 1 + len(s.shape)))
          for k, s in spec.example.items()}


def lower(config, spec, devices):
  """(lowered train step, abstract state, mesh) of `config`'s job on `devices`."""

  mesh = sharding.make_mesh(dict(config.mesh), devices)
  rules = sharding.rules(config.sharding)
  steps.check_batch(config, mesh)
  module = steps.make_module(config, spec.model_config, spec.head)
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)
  # State shapes outside jax.set_mesh: eval_shape there would trace eager PRNG keys on the mesh.
  layout = steps.state_layout(module, tx, mesh, rules)
  abstract, state_shardings = layout.abstract, layout.shardings
  rows = batch_rows(config)
  divisor = mesh.shape["data"] * mesh.shape["fsdp"] * config.grad_accum_steps
  if rows % divisor:
    raise ValueError(f"config.data.pack_rows={rows} must be a multiple of data x fsdp x "
                     f"grad_accum_steps = {divisor}")
  batch = _batch(spec, rows, mesh)
  step = steps.jit_train_step(config, module, spec.task, tx, schedule, state_shardings,
                              {k: v.sharding for k, v in batch.items()}, NamedSharding(mesh, P()))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return step.lower(abstract, batch), abstract, mesh


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def _compile_cost(fn, args, mesh, rules) -> tuple[float, float]:
  """(seconds, FLOPs) of `fn(*args)` on one chip by XLA's TPU cost model."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = dict((cost[0] if isinstance(cost, (list, tuple)) else cost) or {})
  return cost.get("optimal_seconds", math.nan), cost.get("flops", math.nan)


@jax.custom_vjp
def _read_in_loop(copy, weight):
  """`copy` (a weight cast to the compute dtype before the loop), as an iteration of the scanned
  loop reads it; its gradient goes to `weight`, converted to the weight's dtype each iteration."""
  del weight
  return copy


def _read_in_loop_fwd(copy, weight):
  return copy, jnp.zeros((0,), weight.dtype)


def _read_in_loop_bwd(kind, g):
  return jnp.zeros_like(g), g.astype(kind.dtype)


_read_in_loop.defvjp(_read_in_loop_fwd, _read_in_loop_bwd)


def _loop_weights(params, dtype):
  """A function giving the layer group's weights as the scanned step's loop holds them: XLA
  hoists the loop-invariant cast of the float32 weights out of the loop, which then carries them
  in the compute dtype (bf16) and sums their gradients in float32 accumulators, iteration by
  iteration (the v5p-8 program's loops, docs/accelerators.md). LayerNorm parameters (`scale`,
  `bias`) stay as they are: the layer normalises in float32."""
  def cast(tree):
    if isinstance(tree, dict):
      return tree if "scale" in tree else {k: cast(v) for k, v in tree.items()}
    return jax.lax.stop_gradient(tree.astype(dtype))
  # Once, before the iterations, and kept in HBM: unbarriered, XLA would fuse the cast into
  # each iteration's matmuls (reading float32), which the loop's hoisted cast does not.
  copies = jax.lax.optimization_barrier(cast(params))
  return lambda params: jax.tree_util.tree_map(_read_in_loop, copies, params)


def layer_iteration(config, spec, mesh) -> tuple[float, float]:
  """(seconds, FLOPs) of one iteration of the scanned layer loop on one chip by XLA's TPU cost
  model: a layer group applied twice minus once, forward and backward with the step's remat
  policy on the micro-batch's shapes, the weights read as the loop reads them (`_loop_weights`).
  The difference leaves out what a step does once however deep it is (the gradient's reduction
  over the batch axes)."""
  cfg, rules = spec.model_config, sharding.rules(config.sharding)
  micro = batch_rows(config) // config.grad_accum_steps
  dtype = jnp.dtype(config.dtype)
  group = encoder.layer_group_class(config.remat_policy, "tpu")(
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
  x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, 3))
  mask = jax.ShapeDtypeStruct(mask.shape, mask.dtype, sharding=sharding.batch_sharding(mesh, 2))

  def iterations(n):  # n iterations unrolled, forward and backward
    def program(params, x, mask):
      weights = _loop_weights(params, dtype)
      def apply(params, x):
        for i in range(n):
          x, _ = group.apply({"params": weights(params)}, x, mask,
                             rngs={"dropout": jax.random.key(i)})
        return x
      y, vjp = jax.vjp(apply, params, x)
      return vjp(y)
    return _compile_cost(program, (params, x, mask), mesh, rules)

  one, two = iterations(1), iterations(2)
  return two[0] - one[0], two[1] - one[1]


def estimate_step(config, spec, mesh, abstract, scanned: tuple[float, float],
                  scan: bool = True) -> tuple[float, float]:
  """(seconds, FLOPs) per step and chip by XLA's TPU cost model, for the whole depth.

  The cost model counts a loop body once: the scanned step's figure holds each group's layer
  once (and, with gradient accumulation, one micro-batch). The missing iterations are priced by
  `layer_iteration`, and with gradient accumulation the optimizer update.
  """
  cfg = spec.model_config
  body = layer_iteration(config, spec, mesh)
  repeats = cfg.num_hidden_layers // cfg.num_hidden_groups if scan else 1
  missing = [cfg.num_hidden_groups * (repeats - 1) * b for b in body]
  if config.grad_accum_steps == 1:
    return scanned[0] + missing[0], scanned[1] + missing[1]
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  def apply_update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  update = _compile_cost(apply_update, (abstract.params, abstract.opt_state, abstract.params),
                         mesh, sharding.rules(config.sharding))
  return tuple(u + config.grad_accum_steps * (s - u + m)
               for s, u, m in zip(scanned, update, missing))


def _resolved(config, spec, target) -> tuple[str, str, str]:
  """(attention implementation, layer loop, remat policy) `config`'s `auto`s stand for on
  `target` (an unrolled stack is not rematerialised: `encoder.AlbertTransformer`)."""
  cfg = spec.model_config
  loop = encoder.resolve_layer_loop(config.get("layer_loop", "auto"), target.platform)
  return (attention.resolve(config.attention, target.platform, config.dtype,
                            spec.example["input_ids"].shape[-1],
                            cfg.attention_probs_dropout_prob > 0), loop,
          encoder.resolve_remat_policy(config.remat_policy, target.platform) if loop == "scan"
          else "none")


def compile_report(config, target: accelerators.Target, devices: Sequence | None = None,
                   estimate: bool = True,
                   ceilings: census.Ceilings | None = None) -> dict[str, Any]:
  """Compiles `config`'s train step for `target`; the report `main` prints (see the module doc).
  `ceilings` prices a GPU program's roofline (default: the GPU's datasheet)."""
  devices = target.compile_devices() if devices is None else list(devices)
  spec = step_of(config)
  cfg = spec.model_config
  if config.batch_size < 1:
    raise ValueError(f"config.batch_size={config.batch_size} must be at least 1")
  attention_impl, layer_loop, remat = _resolved(config, spec, target)
  lowered, abstract, mesh = lower(config, spec, devices)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  report: dict[str, Any] = {
      "platform": target.platform, "topology": target.name,
      "target": target.topology_name, "num_slices": target.num_slices,
      "device_kind": devices[0].device_kind, "devices": len(devices), "chips": target.chips,
      "hosts": len({d.process_index for d in devices}),
      "mesh": dict(mesh.shape), "sharding": config.sharding, "task": spec.task_name,
      "model": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers",
                                             "num_attention_heads", "intermediate_size",
                                             "vocab_size")},
      "dtype": config.dtype, "layer_loop": layer_loop, "remat_policy": remat,
      "attention": attention_impl, "seq_len": spec.example["input_ids"].shape[-1],
      "batch_size": config.batch_size, "grad_accum_steps": config.grad_accum_steps,
      "batch_per_device": config.batch_size / batch_devices,
      "micro_batch_per_device": config.batch_size / batch_devices / config.grad_accum_steps,
      "params_bytes_per_device": _bytes_per_device(abstract.params),
      "opt_state_bytes_per_device": _bytes_per_device(abstract.opt_state),
      "hbm_bytes_per_device": target.hbm_bytes,
      "peak_flops_per_device": target.peak_flops,
      "rows": batch_rows(config),
      "flops_per_step": 3 * batch_rows(config) * train.flops_per_example(config, spec.task, cfg),
  }
  if target.platform == "gpu":
    report["compiler_options"] = accelerators.compiler_options(devices) or {}
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (XLA raises one type for every failure)
    oom = out_of_memory(str(e))
    if oom is None:
      raise RuntimeError(f"XLA could not compile the step for {target.name}: "
                         f"{str(e).splitlines()[0]}") from e
    report.update(fits=False, compile_seconds=time.perf_counter() - start,
                  peak_bytes_per_device=oom[0], error=str(e).splitlines()[0])
    if oom[1]:
      report["hbm_bytes_per_device"] = oom[1]
    return report
  report["compile_seconds"] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # Everything the step holds at once, at most: its arguments (state and batch), temporaries,
  # and outputs not written over the donated state.
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  report.update(fits=peak <= report["hbm_bytes_per_device"], peak_bytes_per_device=peak,
                temp_bytes_per_device=memory.temp_size_in_bytes,
                argument_bytes_per_device=memory.argument_size_in_bytes,
                xla_peak_bytes_per_device=memory.peak_memory_in_bytes)
  if target.platform == "gpu":
    report["hlo"] = compiled.as_text()
    report.update(gpu_census(report, target, ceilings))
  elif estimate:
    scanned = (_cost(compiled).get("optimal_seconds", math.nan),
               _cost(compiled).get("flops", math.nan))
    seconds, flops = estimate_step(config, spec, mesh, abstract, scanned, layer_loop == "scan")
    if math.isfinite(seconds) and seconds > 0:
      report.update(estimated_step_seconds=seconds, cost_model_flops_per_device=flops,
                    estimated_mfu=report["flops_per_step"] / len(devices) / seconds
                    / target.peak_flops)
  return report


def datasheet_ceilings(target: accelerators.GpuSystem) -> census.Ceilings:
  spec = target.spec
  return census.Ceilings(spec.peak_flops, spec.peak_flops, spec.memory_bandwidth,
                         f"{spec.device_kind} datasheet")


def gpu_census(report: dict[str, Any], target: accelerators.GpuSystem,
               ceilings: census.Ceilings | None) -> dict[str, Any]:
  """The kernel census of the compiled GPU program in `report["hlo"]`, its roofline, and the MFU
  the roofline would give (an upper bound)."""
  ceilings = ceilings or datasheet_ceilings(target)
  summary = census.summarize(census.census(report["hlo"]), ceilings)
  out = {"census": summary, "kernels": summary["kernels"],
         "roofline_seconds": summary["roofline_seconds"]}
  if summary["roofline_seconds"] > 0:
    out["roofline_mfu"] = (report["flops_per_step"] / report["devices"]
                           / summary["roofline_seconds"] / target.peak_flops)
  return out


def _human(size: float) -> str:
  return f"{size / GiB:.2f} GiB" if size >= GiB / 10 else f"{size / 2**20:.1f} MiB"


def format_report(r: dict[str, Any]) -> str:
  gib = _human
  unit = "chip" if r["platform"] == "tpu" and r["devices"] == r["chips"] else "device"
  where = (f"{r['topology']} ({r['target']}, {r['num_slices']} slice(s))"
           if r["platform"] == "tpu" else f"{r['topology']} ({r['target']})")
  lines = [
      f"{r['task']} step for {where}: {r['devices']} devices ({r['device_kind']}) on "
      f"{r['hosts']} host(s), mesh {r['mesh']}, {r['sharding']} rules",
      f"model {r['model']}, {r['dtype']}, "
      f"{'scanned' if r['layer_loop'] == 'scan' else 'unrolled'} layers, remat "
      f"{r['remat_policy']}, attention {r['attention']}, sequence {r['seq_len']}",
      f"batch {r['batch_size']} = {r['batch_per_device']:g} per {unit}"
      + (f" ({r['grad_accum_steps']} micro-batches of {r['micro_batch_per_device']:g})"
         if r["grad_accum_steps"] > 1 else "")
      + (f"; packed into {r['rows']} rows of {r['seq_len']} (data.pack_rows, pack_length)"
         if r.get("rows") != r["batch_size"] else ""),
      f"per {unit}: parameters {gib(r['params_bytes_per_device'])}, optimizer state "
      f"{gib(r['opt_state_bytes_per_device'])}"
      + (f", temporaries {gib(r['temp_bytes_per_device'])}"
         if "temp_bytes_per_device" in r else ""),
      f"peak {gib(r['peak_bytes_per_device'] or 0)} of {gib(r['hbm_bytes_per_device'])} "
      + ("HBM" if r["platform"] == "tpu" else
         f"(jax's share, {accelerators.gpu_memory_fraction():g} of the GPU)")
      + (": fits" if r["fits"] else ": DOES NOT FIT"),
      f"compile {r['compile_seconds']:.1f} s; {r['flops_per_step'] / 1e12:.1f} TFLOP per step",
  ]
  if r.get("compiler_options"):
    lines.append(f"XLA options: {r['compiler_options']}")
  if "error" in r:
    lines.append(f"XLA: {r['error']}")
  if "estimated_step_seconds" in r:
    lines.append(f"estimate (XLA's TPU cost model, not a measurement): "
                 f"{r['estimated_step_seconds']:.3f} s per step, MFU "
                 f"{100 * r['estimated_mfu']:.1f}%")
  if "census" in r:
    lines.append(census.format_summary(r["census"]))
    if "roofline_mfu" in r:
      lines.append(f"MFU at the roofline (an upper bound): {100 * r['roofline_mfu']:.1f}%")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:large",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "Cloud TPU accelerator type (v5p-8, v4-32, v5e-8, "
                      "v5litepod-16, v6e-8, tpu7x-8, ...), a libtpu topology (v5p:2x2x1), or GPUs "
                      "(h100-8, h200-8, b200-8, h100-16: N GPUs, 8 to a host)")
  flags.DEFINE_integer("num_slices", 1, "TPU slices joined over the data-center network")
  flags.DEFINE_string("json", None, "Also write the report to this JSON file")
  flags.DEFINE_string("hlo", None, "GPU: also write the optimized program (HLO text) here")
  flags.DEFINE_string("ceilings", None, "GPU: price the roofline at these rates, a JSON file "
                      "with matmul_flops, attention_flops, memory_bytes (FLOP/s, bytes/s) and "
                      "source, e.g. what experiments/benchmarks/gpu_lease.sh measured; default: "
                      "the GPU's datasheet")
  flags.DEFINE_bool("estimate", True, "TPU: estimate step time and MFU with XLA's TPU cost model "
                    "(two more small compiles)")
  flags.mark_flags_as_required(["config", "topology"])


def _check_writable(flag: str, path: str | None) -> None:
  """Refuse an output path that cannot be written before spending minutes on the compile."""
  if not path:
    return
  parent = os.path.dirname(os.path.abspath(path)) if not files.is_remote(path) else None
  if parent is not None and not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
    raise ValueError(f"--{flag}={path}: cannot write there ({parent} is not a writable "
                     "directory)")


def _read_ceilings(path: str | None) -> census.Ceilings | None:
  if not path:
    return None
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    return census.Ceilings(float(d["matmul_flops"]), float(d["attention_flops"]),
                           float(d["memory_bytes"]), str(d.get("source", path)))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"--ceilings={path}: expected a JSON object with matmul_flops, "
                     f"attention_flops and memory_bytes ({type(e).__name__}: {e})") from e


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    target = accelerators.parse_target(FLAGS.topology, FLAGS.num_slices)
    for flag in ("json", "hlo"):
      _check_writable(flag, getattr(FLAGS, flag))
    if FLAGS.hlo and target.platform != "gpu":
      raise ValueError("--hlo is for GPU targets (a TPU program's text is not what runs)")
    report = compile_report(FLAGS.config, target, estimate=FLAGS.estimate,
                            ceilings=_read_ceilings(FLAGS.ceilings))
  except (ValueError, RuntimeError) as e:
    sys.exit(f"error: {e}")
  print(format_report(report), flush=True)
  hlo = report.pop("hlo", None)
  if FLAGS.hlo:
    files.write_text(FLAGS.hlo, hlo)
  if FLAGS.json:
    files.write_json(FLAGS.json, report)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=overrides.parse_flags)
