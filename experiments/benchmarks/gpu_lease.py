"""What one lease of a GPU measures, in one call: where the train step's time goes.

    python -m experiments.benchmarks.gpu_lease [--out=$OUT] [--budget_s=330]
    python -m experiments.benchmarks.gpu_lease --smoke         # tiny model on the CPU (a check)

Phases, most telling first; each appends its results to OUT/lease.json as it finishes (a phase
that fails or runs out of the time budget loses only itself):
  ceilings   the chip's rates: an 8192^3 bf16 GEMM, albert-large's own GEMM shapes, a copy's
             bandwidth, cuDNN attention forward and forward+backward at 32 x 16 x 512 x 64;
             written as OUT/ceilings.json, the file `python -m albert_jax.aot --ceilings=` reads
  default    the real train step of `configs/pretrain.py:large` at 32 x 512 (its defaults on a
             GPU: unrolled layers, cuDNN attention, cuBLAS with epilogues): compile time, memory,
             step time, tokens/s, MFU; its optimized program (OUT/default_step.hlo.gz) and the
             census of it at the measured ceilings, beside the measured step
  trace      2 steps of the default under jax.profiler, kernels summed by kind, phase and model
             part (the census's attribution of each kernel's HLO op), the device's idle time
  variants   the same step with XLA's defaults (Triton GEMMs), scanned with the default remat
             and with the old default (`dots_with_no_batch_dims`), batch 8 / 16 / 64, seq 128
And the real GPU's target description (OUT/target_config.txtpb), so the census compiled here
without a GPU (`aot --topology=h100-1`) can be set beside the autotuned program's.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import census, model as M
from experiments.benchmarks.gpu_attention import SMOKE_MODEL, padded_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "configs"))
import pretrain  # noqa: E402  (configs/ is not a package)

GIB = 2**30


class Lease:
  """OUT/lease.json, rewritten after every phase; phases stop starting once the budget is spent."""

  def __init__(self, out: str, budget_s: float):
    self.out, self.deadline = out, time.monotonic() + budget_s
    self.results: dict = {"phases": {}, "skipped": [], "failed": {}}
    os.makedirs(out, exist_ok=True)

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def phase(self, name: str, fn, *, needs_s: float = 20.0):
    if self.left() < needs_s:
      print(f"== {name}: skipped ({self.left():.0f} s left, needs ~{needs_s:.0f})", flush=True)
      self.results["skipped"].append(name)
      return None
    print(f"== {name}", flush=True)
    start = time.monotonic()
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001  (one phase's failure must not lose the others)
      traceback.print_exc()
      self.results["failed"][name] = f"{type(e).__name__}: {e}"[:2000]
      result = None
    else:
      self.results["phases"][name] = result
    print(f"   ({time.monotonic() - start:.0f} s)", flush=True)
    self.save()
    return result

  def save(self):
    path = os.path.join(self.out, "lease.json")
    with open(path + ".tmp", "w") as f:
      json.dump(self.results, f, indent=2, default=float)
    os.replace(path + ".tmp", path)

  def write(self, name: str, text: str):
    with open(os.path.join(self.out, name), "w") as f:
      f.write(text)


def timed(fn, *args, reps: int = 10, rounds: int = 3) -> float:
  """Best over `rounds` of the mean seconds per call of `reps` calls (after one warm-up)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / reps)
  return min(times)


# ----------------------------------------------------------------------------- ceilings

def ceilings(smoke: bool) -> dict:
  """Measured rates: GEMMs (the large square one and albert-large's own shapes at 32 x 512),
  a copy, cuDNN attention."""
  n, tokens, hidden, inter = (512, 512, 128, 512) if smoke else (8192, 16384, 1024, 4096)
  dt = jnp.bfloat16
  key = iter(jax.random.split(jax.random.key(0), 16))
  rand = lambda *shape: jax.random.normal(next(key), shape, dt)
  matmul = jax.jit(lambda a, b: a @ b)
  gemms = {"square": (n, n, n), "qkv/dense": (tokens, hidden, hidden),
           "ffn": (tokens, hidden, inter), "ffn_output": (tokens, inter, hidden),
           "weight_grad": (hidden, tokens, inter)}
  rates = {}
  for name, (m, k, nn_) in gemms.items():
    rates[name] = 2 * m * k * nn_ / timed(matmul, rand(m, k), rand(k, nn_))
  x = rand(256 * 2**20 // 2) if not smoke else rand(2**20)
  copy = x.size * 2 * 2 / timed(jax.jit(lambda a: a + 1), x)  # read + write
  out = {"gemm_flops": rates, "copy_bytes_per_s": copy}
  if jax.default_backend() == "gpu":
    b, h, s, d = 32, 16, 512, 64
    q = rand(b, s, h, d)
    attend = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
    fwd = timed(jax.jit(attend), q, q, q)
    grad = jax.jit(jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(),
                            argnums=(0, 1, 2)))
    fwd_bwd = timed(grad, q, q, q)
    one = 2 * b * h * s * s * d  # one of the two forward products
    out["attention_flops"] = {"forward": 2 * one / fwd, "forward_backward": 7 * one / fwd_bwd}
  layer = [rates[k] for k in ("qkv/dense", "ffn", "ffn_output", "weight_grad")]
  attention = out.get("attention_flops", {}).get("forward_backward", min(layer))
  out["for_aot"] = {"matmul_flops": statistics.harmonic_mean(layer),
                    "attention_flops": attention, "memory_bytes": copy,
                    "source": f"measured on {jax.devices()[0].device_kind} (gpu_lease)"}
  for name, rate in rates.items():
    print(f"   GEMM {name:12s} {rate / 1e12:8.1f} TFLOP/s", flush=True)
  print(f"   copy {copy / 1e12:.2f} TB/s; attention {out.get('attention_flops')}", flush=True)
  return out


# ----------------------------------------------------------------------------- the train step

def make_config(smoke: bool, **overrides):
  config = pretrain.get_config("large")
  config.model.vocab_size = 30000
  config.data.max_seq_length = 512
  config.batch_size = 32
  if smoke:
    config.model.update(**SMOKE_MODEL)
    config.data.max_seq_length, config.batch_size = 128, 4
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


@dataclasses.dataclass
class Step:
  """The real jitted train step (`steps.jit_train_step`) for a config on this host's devices,
  compiled, with its own state and a padded batch."""
  config: object
  options: dict | None = None  # XLA options instead of the platform's (None: ours)

  def __post_init__(self):
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    from albert_jax import aot, optimizer, sharding, steps, train
    config = self.config
    spec = aot.step_of(config)
    self.mesh = sharding.make_mesh(dict(config.mesh), jax.devices())
    self.rules = sharding.rules(config.sharding)
    module = steps.make_module(config, spec.model_config, spec.head)
    tx = optimizer.make_optimizer(config.optim, config.total_steps)
    schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)
    layout = steps.state_layout(module, tx, self.mesh, self.rules)
    self.state = layout.init(0, {})
    host = padded_batch(spec.model_config, config.batch_size, config.data.max_seq_length)
    host = {k: np.asarray(v) for k, v in host.items() if k in spec.example}
    self.batch = {k: jax.device_put(v, sharding.batch_sharding(self.mesh, v.ndim))
                  for k, v in host.items()}
    step = steps.jit_train_step(config, module, spec.task, tx, schedule, layout.shardings,
                                {k: v.sharding for k, v in self.batch.items()},
                                NamedSharding(self.mesh, P()), compiler_options=self.options)
    start = time.perf_counter()
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = 3 * config.batch_size * train.flops_per_example(config, spec.task,
                                                                 spec.model_config)

  def run(self, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batch)
    loss = float(metrics["loss"])
    return (time.perf_counter() - start) / steps, loss

  def measure(self, rounds: int = 3, steps: int = 5) -> dict:
    _, first_loss = self.run(1)
    self.run(2)
    times = [self.run(steps)[0] for _ in range(rounds)]
    step_s = statistics.median(times)
    memory = self.compiled.memory_analysis()
    peak = jax.devices()[0].device_kind
    from albert_jax import accelerators
    peak_flops = accelerators.peak_flops(peak) or float("nan")
    tokens = self.config.batch_size * self.config.data.max_seq_length
    return dict(step_ms=1000 * step_s, rounds_ms=[1000 * t for t in times],
                tokens_per_s=tokens / step_s, mfu=self.flops / step_s / peak_flops,
                compile_s=self.compile_s, temp_gib=memory.temp_size_in_bytes / GIB,
                first_loss=first_loss)


def default_step(lease: Lease, smoke: bool, measured: dict | None) -> dict:
  step = Step(make_config(smoke))
  result = step.measure()
  hlo = step.compiled.as_text()
  with gzip.open(os.path.join(lease.out, "default_step.hlo.gz"), "wt") as f:
    f.write(hlo)
  ceil = measured and measured.get("for_aot")
  rates = census.Ceilings(ceil["matmul_flops"], ceil["attention_flops"], ceil["memory_bytes"],
                          ceil["source"]) if ceil else None
  summary = census.summarize(census.census(hlo), rates)
  result["census"] = summary
  if rates is not None:
    result["measured_over_roofline"] = result["step_ms"] / 1000 / summary["roofline_seconds"]
  print(f"   step {result['step_ms']:.1f} ms, {result['tokens_per_s']:,.0f} tokens/s, MFU "
        f"{100 * result['mfu']:.1f}%, compile {result['compile_s']:.1f} s, temp "
        f"{result['temp_gib']:.2f} GiB", flush=True)
  print(census.format_summary(summary), flush=True)
  lease.default = step
  return result


# ----------------------------------------------------------------------------- the trace

def device_events(trace: dict) -> list[dict]:
  """The complete ('X') events of the accelerator's processes; on CPU, of XLA's worker threads."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, name in names.items() if name.startswith(("/device:GPU", "/device:TPU"))}
  if device:
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in device]
  threads = {(e["pid"], e.get("tid")) for e in events if e.get("ph") == "M"
             and e.get("name") == "thread_name" and "XLA" in e["args"].get("name", "")}
  return [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in threads
          and not e["name"].startswith("ThunkExecutor")]


def attribute(events: list[dict], kernels: list[census.Kernel], steps: int) -> dict:
  """Kernel time per step by kind, phase and model part: each event's HLO op (its `hlo_op`
  argument, else its name) looked up among the census's kernels; the device's idle time."""
  by_name = {k.name: k for k in kernels}
  by_name.update({k.name.replace(".", "_"): k for k in kernels})
  sums = {key: collections.Counter() for key in ("kind", "phase", "part", "name")}
  matched, spans = 0.0, []
  for e in events:
    dur = float(e.get("dur", 0))
    spans.append((float(e["ts"]), float(e["ts"]) + dur))
    op = (e.get("args") or {}).get("hlo_op") or e["name"]
    kernel = by_name.get(op) or by_name.get(op.split(":")[0])
    if kernel is not None:
      matched += dur
    sums["kind"][kernel.kind if kernel else "(unmatched)"] += dur
    sums["phase"][kernel.phase if kernel else "(unmatched)"] += dur
    sums["part"][kernel.part if kernel else "(unmatched)"] += dur
    sums["name"][op] += dur
  spans.sort()
  busy, end = 0.0, None
  for start, stop in spans:  # the union of the kernels' intervals (streams overlap)
    if end is None or start > end:
      busy += stop - start
      end = stop
    elif stop > end:
      busy += stop - end
      end = stop
  span = spans[-1][1] - spans[0][0] if spans else 0.0
  ms = lambda us: us / 1000 / steps
  total = sum(float(e.get("dur", 0)) for e in events) or 1.0
  return dict(kernels=len(events) / steps, span_ms=ms(span), busy_ms=ms(busy),
              idle_ms=ms(span - busy), matched_share=matched / total,
              **{f"by_{key}": {k: ms(v) for k, v in c.most_common(30)} for key, c in sums.items()})


def trace_default(lease: Lease, steps: int = 2) -> dict:
  step = lease.default
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      step.run(steps)
    found = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
      raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {tmp}")
    shutil.copyfile(found[0], os.path.join(lease.out, "trace_default.json.gz"))
    with gzip.open(found[0]) as f:
      events = device_events(json.load(f))
  result = attribute(events, census.census(step.compiled.as_text()), steps)
  print(f"   traced: {result['kernels']:.0f} kernels a step, busy {result['busy_ms']:.1f} ms of "
        f"{result['span_ms']:.1f} (idle {result['idle_ms']:.1f}; CUDA graphs are off while "
        f"profiling), {100 * result['matched_share']:.0f}% of kernel time attributed", flush=True)
  for key in ("by_kind", "by_phase", "by_part"):
    print("   " + key + ": " + ", ".join(f"{k} {v:.1f}" for k, v in
                                          list(result[key].items())[:10]), flush=True)
  return result


# ----------------------------------------------------------------------------- variants

VARIANTS = {  # name: (config overrides, XLA options or None for ours)
    "xla_defaults": ({}, {}),  # Triton GEMM fusions allowed, XLA's choice
    "scan": ({"layer_loop": "scan"}, None),
    "scan_old_remat": ({"layer_loop": "scan", "remat_policy": "dots_with_no_batch_dims"}, None),
    "batch_8": ({"batch_size": 8}, None),
    "batch_16": ({"batch_size": 16}, None),
    "batch_64": ({"batch_size": 64}, None),
    "seq_128": ({"batch_size": 128, "data.max_seq_length": 128}, None),
}


def variant(smoke: bool, overrides: dict, options) -> dict:
  if smoke and "batch_size" in overrides:
    overrides = {**overrides, "batch_size": max(2, overrides["batch_size"] // 8)}
  step = Step(make_config(smoke, **overrides), options)
  result = step.measure(rounds=2, steps=4)
  result["census"] = census.summarize(census.census(step.compiled.as_text()))
  print(f"   step {result['step_ms']:.1f} ms, MFU {100 * result['mfu']:.1f}%, compile "
        f"{result['compile_s']:.1f} s, temp {result['temp_gib']:.2f} GiB, "
        f"{result['census']['launches']} launches", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a check)")
  parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_lease"))
  parser.add_argument("--budget_s", type=float, default=330.0,
                      help="stop starting phases after this many seconds")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  args = parser.parse_args()
  lease = Lease(args.out, args.budget_s)
  device = jax.devices()[0]
  lease.results.update(device=device.device_kind, platform=device.platform,
                       jax=jax.__version__, smoke=args.smoke)
  print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  if device.platform == "gpu":
    from jax._src.lib import xla_client
    lease.write("target_config.txtpb",
                str(xla_client.get_topology_for_devices(jax.devices()).target_config))

  measured = lease.phase("ceilings", lambda: ceilings(args.smoke), needs_s=10)
  if measured:
    lease.write("ceilings.json", json.dumps(measured["for_aot"], indent=2))
  if lease.phase("default", lambda: default_step(lease, args.smoke, measured), needs_s=40):
    lease.phase("trace", lambda: trace_default(lease), needs_s=20)
  for name in args.variants.split(","):
    overrides, options = VARIANTS[name]
    lease.phase(name, functools.partial(variant, args.smoke, overrides, options), needs_s=30)
  print(f"wrote {args.out}/lease.json ({len(lease.results['phases'])} phases, skipped "
        f"{lease.results['skipped']}, failed {list(lease.results['failed'])})", flush=True)


if __name__ == "__main__":
  main()
