"""Serving throughput on this CPU: the ONNX export on onnxruntime vs our jitted inference vs
transformers' PyTorch model, albert-base with random weights, float32.

    python -m experiments.benchmarks.export_serving [--head=sequence-classification]
        [--batch=8] [--seq=128] [--rounds=5] [--calls=2] [--json=PATH]

One HF directory of random albert-base weights; every peer serves the same batch (no padding)
from it, side by side in this one process run, their timed calls alternating (the order rotates
every round):
  onnxruntime         `python -m albert_jax.export --format=onnx`'s model.onnx (int64 ids), the
                      CPU provider, all graph optimizations, its default threads (the cores);
  onnxruntime einsum  the same graph as jax2onnx writes it (dense layers as Einsum, before the
                      exporter's MatMul rewrite): what the rewrite is worth;
  stablehlo           the export's model.stablehlo, deserialized and called by jax;
  ours                `albert_jax.from_pretrained` jitted (the default program: scanned layers);
  torch               transformers' `AlbertFor...` (SDPA attention), torch.inference_mode, torch
                      threads = the CPU count.
Sequences/s is batch x calls / the median round's time; the ratios are onnxruntime's over each
other peer's. About 5 minutes on 2 shared cores; absolute figures are noise there, the ratios of
peers measured side by side are the result (docs/serving.md).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from albert_jax import export, hf_convert
from albert_jax import model as M


def _peers(directory: Path, head: str, ids: np.ndarray) -> dict:
  """name -> a call that serves `ids` (all real tokens, one segment) once and waits for it."""
  import onnx
  import onnxruntime as ort
  import torch
  import transformers
  mask, types = np.ones_like(ids), np.zeros_like(ids)
  out = directory / "onnx"
  export.export(directory / "hf", out, "onnx")
  export.export(directory / "hf", directory / "stablehlo", "stablehlo", platforms=("cpu",))
  einsum = directory / "einsum.onnx"
  onnx.save_model(export.with_int64_inputs(
      export.to_onnx(export.load(directory / "hf"), matmuls=False)), einsum)

  def onnxruntime(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = dict(zip(export.INPUTS, (ids.astype(np.int64), mask.astype(np.int64),
                                    types.astype(np.int64))))
    return lambda: session.run(None, feed)

  exported = jax.export.deserialize(bytearray((directory / "stablehlo" / "model.stablehlo")
                                              .read_bytes()))
  module, params = hf_convert.from_pretrained(directory / "hf")
  apply = jax.jit(module.apply)
  hf = getattr(transformers, M.HEADS[head.replace("-", "_")][1]).from_pretrained(
      directory / "hf").eval()
  torch.set_num_threads(os.cpu_count())
  tensors = {k: torch.from_numpy(v).long() for k, v in zip(export.INPUTS, (ids, mask, types))}

  def torch_call():
    with torch.inference_mode():
      hf(**tensors)

  return {
      "onnxruntime": onnxruntime(out / "model.onnx"),
      "onnxruntime einsum": onnxruntime(einsum),
      "stablehlo": lambda: jax.block_until_ready(exported.call(ids, mask, types)),
      "ours": lambda: jax.block_until_ready(apply({"params": params}, ids, attention_mask=mask,
                                                  token_type_ids=types)),
      "torch": torch_call,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--head", default="sequence-classification", choices=list(export.OUTPUTS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=2, help="timed calls per peer per round")
  parser.add_argument("--json", default=None, help="also write the figures here")
  args = parser.parse_args()

  head = args.head.replace("-", "_")
  config = M.preset("base")
  ids = np.random.RandomState(0).randint(5, config.vocab_size, (args.batch, args.seq))
  ids = ids.astype(np.int32)
  with tempfile.TemporaryDirectory() as tmp:
    directory = Path(tmp)
    start = time.perf_counter()
    params = M.init_params(M.make_model(config, head), 0)
    hf_convert.save(config, params, directory / "hf", head=head)
    peers = _peers(directory, args.head, ids)
    print(f"albert-base {args.head}, batch {args.batch} x {args.seq}, {os.cpu_count()} CPUs; "
          f"weights, exports and sessions in {time.perf_counter() - start:.0f} s")
    for call in peers.values():  # compile, optimize, allocate
      call()
    times = {name: [] for name in peers}
    names = list(peers)
    for r in range(args.rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        start = time.perf_counter()
        for _ in range(args.calls):
          peers[name]()
        times[name].append((time.perf_counter() - start) / args.calls)
  rates = {name: args.batch / statistics.median(t) for name, t in times.items()}
  print("\n| peer | sequences/s | onnxruntime / peer |\n|---|---|---|")
  for name, rate in rates.items():
    print(f"| {name} | {rate:.2f} | {rates['onnxruntime'] / rate:.2f} |")
  if args.json:
    Path(args.json).write_text(json.dumps(
        {"head": args.head, "batch": args.batch, "seq": args.seq, "cpus": os.cpu_count(),
         "sequences_per_s": rates, "seconds_per_call": times}, indent=2) + "\n")


if __name__ == "__main__":
  main()
