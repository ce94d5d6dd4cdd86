"""Where the GPU train step's time goes: variants timed side by side, then one trace of each.

    python -m experiments.benchmarks.gpu_profile                 # albert-large, 32 x 512
        [--variants=scan:xla,scan:cudnn,loop:cudnn] [--rounds=3] [--steps=4] [--trace_steps=2]
    python -m experiments.benchmarks.gpu_profile --smoke         # tiny model: runs on CPU

The one H200 lease so far measured the large step at 18% MFU (README "On a GPU") and had no time
to say why; this is the next lease's script. Each variant (`scan` or `loop`: the layers in
`nn.scan` or unrolled; then the attention) is `gpu_attention.Peer`, the real train step. After
the timed rounds each is traced for `--trace_steps` steps (`jax.profiler`, Perfetto JSON), and
the device's kernels are summed by kind (matmul, attention, copies/transposes, other fusions) and
by name, per step, with the device's idle time between kernels (launch gaps). Prints the tables;
writes each trace and a JSON summary to $OUT (or --out).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import statistics
import tempfile

import jax

from albert_jax import model as M
from experiments.benchmarks.gpu_attention import (SMOKE_MODEL, Peer, add_shape_arguments,
                                                   padded_batch)

KINDS = (  # the first whose words appear in a kernel's name (lower case) names its kind
    ("attention", ("fmha", "flash", "cudnn", "softmax")),
    ("matmul", ("gemm", "cublas", "cutlass", "xmma", "matmul", "dot", "sm90", "ynn")),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset", "dynamic_update_slice",
                        "dynamic-update-slice", "concatenate")),
    ("reduction", ("reduce", "reduction")),
)


def kind_of(name: str) -> str:
  lower = name.lower()
  for kind, words in KINDS:
    if any(w in lower for w in words):
      return kind
  return "other fusion"


def device_events(trace: dict) -> list[dict]:
  """The complete ('X') events of the accelerator's processes; on CPU, of XLA's worker threads."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, name in names.items() if name.startswith(("/device:GPU", "/device:TPU"))}
  if device:
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in device]
  threads = {(e["pid"], e.get("tid")) for e in events if e.get("ph") == "M"
             and e.get("name") == "thread_name" and "XLA" in e["args"].get("name", "")
             and "Client" in e["args"]["name"]}
  return [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in threads
          and not e["name"].startswith("ThunkExecutor")]


def summarize(path: str, steps: int) -> dict:
  """Kernel time per step by kind and by name, the device's busy span and its idle gaps."""
  with gzip.open(path) as f:
    events = device_events(json.load(f))
  by_kind, by_name = collections.Counter(), collections.Counter()
  spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events)
  for e in events:
    by_kind[kind_of(e["name"])] += float(e.get("dur", 0))
    by_name[e["name"]] += float(e.get("dur", 0))
  busy, end = 0.0, None  # the union of the kernels' intervals (streams overlap)
  for start, stop in spans:
    if end is None or start > end:
      busy += stop - start
      end = stop
    elif stop > end:
      busy += stop - end
      end = stop
  span = (spans[-1][1] - spans[0][0]) if spans else 0.0
  ms = lambda us: us / 1000 / steps
  return dict(kernels=len(events) / steps, span_ms=ms(span), busy_ms=ms(busy),
              idle_ms=ms(span - busy), kinds={k: ms(v) for k, v in by_kind.most_common()},
              top={k: ms(v) for k, v in by_name.most_common(25)})


def trace(peer: Peer, steps: int, name: str, out: str) -> str:
  """Trace `steps` steps of `peer`; the Perfetto JSON copied to OUT/trace_NAME.json.gz."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      peer.run(steps)
    found = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
      raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {tmp}")
    path = os.path.join(out, f"trace_{name.replace(':', '_')}.json.gz")
    shutil.copyfile(found[0], path)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model (CPU check)")
  add_shape_arguments(parser)
  parser.add_argument("--variants", default="scan:xla,scan:cudnn,loop:cudnn")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
  parser.add_argument("--trace_steps", type=int, default=2)
  parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_profile"))
  args = parser.parse_args()
  if args.smoke:
    args.size, args.seq, args.batch, args.rounds, args.steps = "smoke", 128, 4, 2, 2
    if args.variants == parser.get_default("variants"):
      args.variants = "scan:xla,loop:xla"
    cfg = M.AlbertConfig(**SMOKE_MODEL)
  else:
    cfg = M.preset(args.size)
  os.makedirs(args.out, exist_ok=True)
  device = jax.devices()[0]
  print(f"{device.device_kind}, jax {jax.__version__}; albert-{args.size} {args.batch} x "
        f"{args.seq}, bf16", flush=True)

  batch = padded_batch(cfg, args.batch, args.seq)
  params = M.init_params(M.AlbertForPreTraining(cfg), 0)
  peers = {}
  for variant in args.variants.split(","):
    layers, _, attention = variant.partition(":")
    if layers not in ("scan", "loop") or not attention:
      raise SystemExit(f"--variants: {variant!r} is not scan:ATTENTION or loop:ATTENTION")
    peers[variant] = Peer(cfg, attention, params, batch, "", layer_loop="scan" if layers == "scan" else "unroll")
    peers[variant].run(3)  # the first step, then two more to warm up
    print(f"{variant}: compiled in {peers[variant].compile_s:.1f} s, temp "
          f"{peers[variant].temp_gib:.2f} GiB", flush=True)

  names = list(peers)
  times = {name: [] for name in names}
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      times[name].append(peers[name].run(args.steps)[0])

  result = dict(device=device.device_kind, jax=jax.__version__, size=args.size, seq=args.seq,
                batch=args.batch, variants={})
  for name in names:
    summary = summarize(trace(peers[name], args.trace_steps, name, args.out), args.trace_steps)
    step_ms = 1000 * statistics.median(times[name])
    result["variants"][name] = dict(step_ms=step_ms, compile_s=peers[name].compile_s,
                                    temp_gib=peers[name].temp_gib, **summary)
    print(f"\n== {name}: step {step_ms:.1f} ms (timed), traced: {summary['kernels']:.0f} kernels "
          f"a step, busy {summary['busy_ms']:.1f} ms of a {summary['span_ms']:.1f} ms span "
          f"(idle {summary['idle_ms']:.1f} ms)")
    for kind, value in summary["kinds"].items():
      print(f"  {kind:16s} {value:8.2f} ms")
    for kernel, value in list(summary["top"].items())[:15]:
      print(f"  {value:8.2f} ms  {kernel[:100]}")
  with open(os.path.join(args.out, "gpu_profile.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nwrote {args.out}/gpu_profile.json and the traces")


if __name__ == "__main__":
  main()
