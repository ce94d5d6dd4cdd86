"""Does each preset's default pretraining config fit, per TPU generation and remat policy?

    python -m experiments.benchmarks.tpu_fit [--sizes=base,large,xlarge,xxlarge]
        [--slices=v4-128,v5e-64,v5p-128,v6e-64,tpu7x-128] [--remat=none,auto,full]

Compiles `configs/pretrain.py:SIZE` as it is (the paper's 4096 x 512, bf16, LAMB, its sharding
rules and attention) for each slice with `albert_jax.aot`, changing only `remat_policy`, and prints
the peak HBM per device and whether XLA fits it (a program too big for the chip does not compile).
The default slices have 64 chips each (64 sequences per chip; Ironwood's two devices a chip hold
32 each), so the generations compare at the same per-chip batch. Then each size on the slice its
config recommends (`pretrain.SLICES`).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this host's backend; TPUs are compile-only

import argparse
import sys
import time

from albert_jax import accelerators, aot

GiB = 2**30


def fit(size, slice_name, remat):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
  import pretrain  # noqa: E402  (configs/ is not a package)
  config = pretrain.get_config(size)
  if remat:
    config.remat_policy = remat
  return aot.compile_report(config, accelerators.parse_target(slice_name), estimate=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="base,large,xlarge,xxlarge")
  parser.add_argument("--slices", default="v4-128,v5e-64,v5p-128,v6e-64,tpu7x-128")
  parser.add_argument("--remat", default="none,auto,full")
  parser.add_argument("--recommended", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()
  start = time.perf_counter()
  print("\n| size | slice | devices | per device | remat | peak GiB/device | HBM GiB | fits | "
        "compile s |")
  print("|---|---|---|---|---|---|---|---|---|")

  def row(size, slice_name, remat):
    r = fit(size, slice_name, remat)
    print(f"| {size} | {slice_name} | {r['devices']} | {r['batch_per_device']:g} | "
          f"{r['remat_policy']} | {r['peak_bytes_per_device'] / GiB:.1f} | "
          f"{r['hbm_bytes_per_device'] / GiB:.2f} | {'yes' if r['fits'] else '**no**'} | "
          f"{r['compile_seconds']:.0f} |", flush=True)

  for size in args.sizes.split(","):
    for slice_name in args.slices.split(","):
      for remat in args.remat.split(","):
        row(size, slice_name, remat)
  if args.recommended:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
    import pretrain  # noqa: E402
    for size in args.sizes.split(","):
      row(size, pretrain.SLICES[size], "")
  print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
