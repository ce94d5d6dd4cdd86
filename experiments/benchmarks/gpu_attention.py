"""bf16 MFU of the pretraining train step on one GPU with `xla` and `cudnn` attention, side by side.

    python -m experiments.benchmarks.gpu_attention            # albert-large, 32 x 512, H200 peak
        [--batch=32] [--attention=xla,cudnn] [--remat_policy=NAME] [--rounds=4] [--steps=5]
    python -m experiments.benchmarks.gpu_attention --smoke    # tiny model, xla only: runs on CPU

One run of a few minutes (the compiles dominate it). First the numerics: each implementation in
bf16 against `xla` in float32 (albert-`--check`, 8 right-padded rows: outputs at real tokens and
gradients, relative errors), and the chip's measured bf16 matrix rate. Then, for each attention
implementation, the real
`steps.train_step` (LAMB, MLM at the masked positions + SOP, bf16 compute, float32 state donated)
is compiled, its first step's loss taken from the same state and batch (the implementations must
agree), then `--rounds` rounds of `--steps` steps each, the implementations alternating and the
order rotating. Prints the median step time over rounds, tokens/s, MFU = 3 x
`model.pretraining_flops_per_example` x batch / step time / peak (H200 dense bf16: 989 TFLOP/s),
the same over the measured matrix rate, compile time, the executable's temporary memory and the
cudnn/xla step-time ratio; writes the same
as JSON to `--json`, by default $OUT/gpu_attention.json when $OUT is set. Needs only jax[cuda] and
this repository (run from its root).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import model as M
from albert_jax import optimizer, steps
from albert_jax.tasks import pretraining
from experiments.benchmarks.train_step import make_batch, max_predictions

GIB = 2**30
SMOKE_MODEL = dict(vocab_size=1000, embedding_size=32, hidden_size=128, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=256)


def padded_batch(cfg: M.AlbertConfig, batch: int, seq: int) -> dict[str, jax.Array]:
  """The benchmark's pretraining batch with a quarter of the rows right padded (as the pipeline
  pads short documents), so the cudnn path gets real key_value_seq_lengths."""
  host = make_batch(cfg, batch, seq)
  lengths = np.random.RandomState(1).randint(seq // 2, seq, batch // 4)
  for row, length in enumerate(lengths):
    host["attention_mask"][row, length:] = 0
  return {k: jnp.asarray(v) for k, v in host.items()}


def relative_error(a, ref) -> float:
  """||a - ref|| / ||ref|| over every leaf, in float64 on the host."""
  a, ref = (np.concatenate([np.asarray(x, np.float64).ravel()
                            for x in jax.tree_util.tree_leaves(t)]) for t in (a, ref))
  return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def check_numerics(size: str, batch: int, seq: int, attentions: list[str]) -> dict[str, dict]:
  """Each attention in bf16 against `xla` in float32 (the reference): the backbone's outputs at
  real tokens and the gradients of a random projection of them, on a right-padded batch.
  `cudnn` is right when its error is of the size bf16 `xla`'s is."""
  cfg = M.preset(size) if size != "smoke" else M.AlbertConfig(**SMOKE_MODEL)
  host = padded_batch(cfg, batch, seq)
  mask = host["attention_mask"].astype(jnp.float32)[..., None]
  probe = jax.random.normal(jax.random.key(2), (batch, seq, cfg.hidden_size)) * mask
  params = M.init_params(M.AlbertModel(cfg), 0)

  def run(dtype, attention):
    module = M.AlbertModel(cfg, dtype=dtype, attention=attention)

    def loss(p):
      out = module.apply({"params": p}, host["input_ids"], host["attention_mask"],
                         host["token_type_ids"]).last_hidden_state.astype(jnp.float32) * mask
      return jnp.sum(out * probe), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads

  ref_out, ref_grads = run(jnp.float32, "xla")
  errors = {}
  for name in attentions:
    out, grads = run(jnp.bfloat16, name)
    errors[name] = dict(output=relative_error(out, ref_out), grads=relative_error(grads, ref_grads))
    print(f"{name} bf16 vs xla float32 (albert-{size}, {batch} x {seq}, padded): outputs "
          f"{errors[name]['output']:.2e}, gradients {errors[name]['grads']:.2e} (relative)",
          flush=True)
  return errors


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
  """The chip's measured bf16 matrix rate: n x n x n products of random matrices, after warm-up
  (the ceiling MFU is also quoted against)."""
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in (3, 4))
  product = jax.jit(lambda a, b: a @ b)
  product(a, b).block_until_ready()
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = product(a, b)
    out.block_until_ready()
    times.append((time.perf_counter() - start) / reps)
  return 2 * n**3 / min(times) / 1e12


class Peer:
  """The jitted train step for one attention implementation, with its own donated state."""

  def __init__(self, cfg, attention, params, batch, remat_policy, **runtime):
    runtime.update(dtype=jnp.bfloat16, attention=attention)
    if remat_policy:
      runtime["remat_policy"] = remat_policy
    module = M.AlbertForPreTraining(cfg, **runtime)
    optim_cfg = optimizer.default_optim_config()
    optim_cfg.update(warmup_steps=0)
    tx = optimizer.make_optimizer(optim_cfg, 10_000)
    params = jax.tree_util.tree_map(jnp.copy, params)  # its own: the state is donated
    self.state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params),
                                  nonfinite_step=jnp.full((), -1, jnp.int32))
    self.batch = batch
    step = functools.partial(steps.train_step, module=module, task=pretraining, tx=tx,
                             accum_steps=1, seed=0,
                             schedule=optimizer.learning_rate_schedule(optim_cfg, 10_000))
    start = time.perf_counter()
    self.compiled = jax.jit(step, donate_argnums=0).lower(self.state, batch).compile()
    self.compile_s = time.perf_counter() - start
    self.temp_gib = self.compiled.memory_analysis().temp_size_in_bytes / GIB

  def run(self, steps: int) -> tuple[float, float]:
    """(seconds per step over `steps` steps, the last step's loss)."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batch)
    loss = float(metrics["loss"])  # waits for the last step
    return (time.perf_counter() - start) / steps, loss


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
  """--size, --seq, --batch: the step measured (albert-large, 32 x 512 by default)."""
  parser.add_argument("--size", default="large")
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--batch", type=int, default=32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model, xla only (CPU check)")
  add_shape_arguments(parser)
  parser.add_argument("--attention", default="", help="'': xla,cudnn (--smoke: xla)")
  parser.add_argument("--remat_policy", default="", help="'': the model's default")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--peak_tflops", type=float, default=989.0, help="H200 dense bf16")
  parser.add_argument("--check", default="base",
                      help="size for the numerics check against float32 xla ('' skips it)")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if args.smoke:
    args.size, args.seq, args.batch, args.rounds, args.steps = "smoke", 128, 4, 2, 2
    args.attention = args.attention or "xla"
    cfg = M.AlbertConfig(**SMOKE_MODEL)
  else:
    cfg = M.preset(args.size)
    args.attention = args.attention or "xla,cudnn"
  device = jax.devices()[0]
  print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}; albert-{args.size} "
        f"batch {args.batch} x seq {args.seq}, bf16", flush=True)

  result = dict(device=device.device_kind, jax=jax.__version__, size=args.size, seq=args.seq,
                batch=args.batch, peak_tflops=args.peak_tflops, peers={})
  names = args.attention.split(",")
  if args.check:
    result["check"] = check_numerics("smoke" if args.smoke else args.check, 8, args.seq, names)
  result["matmul_tflops"] = matmul_tflops(1024 if args.smoke else 8192)
  print(f"bf16 matrix product (measured): {result['matmul_tflops']:.0f} TFLOP/s", flush=True)

  batch = padded_batch(cfg, args.batch, args.seq)
  params = M.init_params(M.AlbertForPreTraining(cfg), 0)
  peers, first_loss = {}, {}
  for name in names:
    peers[name] = Peer(cfg, name, params, batch, args.remat_policy)
    _, first_loss[name] = peers[name].run(1)  # the same state and batch for every peer
    print(f"{name}: compiled in {peers[name].compile_s:.1f} s, temp "
          f"{peers[name].temp_gib:.2f} GiB, first loss {first_loss[name]:.5f}", flush=True)
  for peer in peers.values():  # warm-up beyond the first step
    peer.run(2)

  times = {name: [] for name in peers}
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      times[name].append(peers[name].run(args.steps)[0])

  flops = 3 * args.batch * M.pretraining_flops_per_example(cfg, args.seq, max_predictions(args.seq))
  result["flops_per_step"] = flops
  for name in names:
    step_s = statistics.median(times[name])
    result["peers"][name] = dict(
        step_s=step_s, tokens_per_s=args.batch * args.seq / step_s,
        mfu=flops / step_s / (args.peak_tflops * 1e12),
        of_measured_matmul=flops / step_s / (result["matmul_tflops"] * 1e12),
        compile_s=peers[name].compile_s,
        temp_gib=peers[name].temp_gib, first_loss=first_loss[name], round_step_s=times[name])
    row = result["peers"][name]
    print(f"{name:6s} step {1000 * step_s:7.1f} ms  {row['tokens_per_s']:10,.0f} tok/s  "
          f"MFU {100 * row['mfu']:5.1f}% ({100 * row['of_measured_matmul']:.1f}% of the measured "
          f"matmul rate)  (rounds: "
          f"{', '.join(f'{1000 * t:.1f}' for t in times[name])} ms)", flush=True)
  for name in names:
    if name != "xla" and "xla" in peers:
      ratio = result["peers"][name]["step_s"] / result["peers"]["xla"]["step_s"]
      diff = abs(first_loss[name] - first_loss["xla"])
      result[f"{name}_over_xla_step_time"] = ratio
      result[f"{name}_first_loss_abs_diff"] = diff
      print(f"{name} / xla step time: {ratio:.3f}; first-step losses differ by {diff:.2e}",
            flush=True)

  path = args.json or (os.path.join(os.environ["OUT"], "gpu_attention.json")
                       if os.environ.get("OUT") else "")
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
