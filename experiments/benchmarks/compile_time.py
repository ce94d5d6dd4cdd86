"""Compile time of the train-step gradient vs depth: our nn.scan encoder vs an unrolled one.

    python -m experiments.benchmarks.compile_time [--size=large] [--layers=12,24,48]

Peers, measured side by side in this run: transformers 4.x `FlaxAlbertForPreTraining` (the only
other JAX ALBERT; it unrolls the layers in Python) and our own model with `layer_loop="unroll"`.
Prints seconds to lower+compile `jit(grad(loss))` at batch 8 x 128 and the ratios.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from albert_jax import model as M


def compile_seconds(loss, params, ids):
  start = time.perf_counter()
  jax.jit(jax.grad(loss)).lower(params, ids).compile()
  return time.perf_counter() - start


def ours(config, layer_loop):
  module = M.AlbertForPreTraining(config, layer_loop=layer_loop)
  params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                  nn.unbox(M.abstract_params(module)))
  loss = lambda p, x: jnp.sum(module.apply({"params": p}, x).prediction_logits)
  return loss, params


def hf_flax(config):
  import transformers  # test-only dependency: the peer we compare against
  model = transformers.FlaxAlbertForPreTraining(
      transformers.AlbertConfig(**config.to_hf_dict()), _do_init=False)
  params = jax.eval_shape(lambda: model.init_weights(jax.random.key(0), (1, 8)))
  loss = lambda p, x: jnp.sum(model(x, params=p).prediction_logits)
  return loss, params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="large")
  parser.add_argument("--layers", default="12,24,48")
  args = parser.parse_args()
  ids = jax.ShapeDtypeStruct((8, 128), jnp.int32)
  print(f"{'layers':>6} {'scan (s)':>9} {'unrolled (s)':>13} {'HF Flax (s)':>12} "
        f"{'unrolled/scan':>14} {'HF/scan':>8}")
  for layers in map(int, args.layers.split(",")):
    config = M.preset(args.size, num_hidden_layers=layers)
    runs = {name: [] for name in ("scan", "unrolled", "hf")}
    for _ in range(2):  # alternate, keep the best of two
      runs["scan"].append(compile_seconds(*ours(config, "scan"), ids))
      runs["unrolled"].append(compile_seconds(*ours(config, "unroll"), ids))
      runs["hf"].append(compile_seconds(*hf_flax(config), ids))
    best = {k: min(v) for k, v in runs.items()}
    print(f"{layers:>6} {best['scan']:>9.2f} {best['unrolled']:>13.2f} {best['hf']:>12.2f} "
          f"{best['unrolled'] / best['scan']:>14.2f} {best['hf'] / best['scan']:>8.2f}")


if __name__ == "__main__":
  main()
