"""Where a small packed step's TPU time goes, by XLA's TPU cost model (estimates; no TPU here).

    python -m experiments.benchmarks.tpu_step_parts [--topology=v5p-8] [--rows=4,8,16,32]
        [--size=large] [--seq=512]

The fine-tuning step of `configs/finetune_glue.py:task=mnli` (bf16) on packed rows of `--seq`
(`data.pack_rows`): the whole step's estimate (`aot.compile_report`) at each row count; the
one-layer step at the fewest and most rows (no missing iterations to price: what a step pays
outside its layers, and one layer); and one layer's forward and backward at the fewest rows as
`aot.estimate_step` prices an iteration (a group applied twice minus once), with its FLOPs and
their time at the chip's peak. Used for docs/finetuning.md's "Against the goals".
"""

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from albert_jax import accelerators, aot  # noqa: E402
from albert_jax.data import packed_batches  # noqa: E402
from experiments.benchmarks import packing  # noqa: E402


def config_for(size: str, rows: int, seq: int, layers: int | None = None):
  config = packing.make_config(size, rows, seq, dtype="bfloat16")
  if layers:
    config.model.num_hidden_layers = layers
  return packing.packed_config(config, packed_batches.Layout(rows, seq, 18))


def layer_cost(config, target) -> tuple[float, float]:
  """(seconds, FLOPs) of one more layer iteration, as estimate_step prices it."""
  spec = aot.step_of(config)
  _, _, mesh = aot.lower(config, spec, target.compile_devices())
  return aot.layer_iteration(config, spec, mesh)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5p-8")
  parser.add_argument("--rows", default="4,8,16,32")
  parser.add_argument("--size", default="large")
  parser.add_argument("--seq", type=int, default=512)
  args = parser.parse_args()
  target = accelerators.parse_target(args.topology)
  chips = len(target.compile_devices())
  rows = [int(r) for r in args.rows.split(",")]
  print(f"{args.size}, bf16, packed rows of {args.seq}, {args.topology} ({chips} devices)")
  for r in rows:
    report = aot.compile_report(config_for(args.size, r, args.seq), target)
    seconds = report["estimated_step_seconds"]
    print(f"step, {r} rows ({r / chips:g} a device): {1e3 * seconds:.2f} ms", flush=True)
  for r in sorted({rows[0], rows[-1]}):
    report = aot.compile_report(config_for(args.size, r, args.seq, layers=1), target)
    print(f"one-layer step, {r} rows: {1e3 * report['estimated_step_seconds']:.2f} ms",
          flush=True)
  seconds, flops = layer_cost(config_for(args.size, rows[0], args.seq), target)
  print(f"one layer iteration, {rows[0]} rows: {1e3 * seconds:.3f} ms, {flops / 1e9:.1f} GFLOP a "
        f"device = {1e3 * flops / target.peak_flops:.3f} ms at the chip's peak")


if __name__ == "__main__":
  main()
