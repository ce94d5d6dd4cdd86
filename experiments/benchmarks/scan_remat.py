"""The scan's cost, per remat policy: CPU step time against the same weights in a Python loop, and
TPU HBM per chip (compiled here for a v5p slice), the figures behind the model's default.

    python -m experiments.benchmarks.scan_remat [--part=cpu,equal_math,tpu]
        [--cpu_settings=base:128:8,base:128:16,base:512:8] [--steps=5]
        [--tpu_sizes=large,xlarge,xxlarge] [--tpu_loop=large] [--topology=v5p-8]

cpu         our real `steps.train_step` (float32, adamw_optax, MLM head at the masked positions)
            with the layers scanned under each remat policy, against `layer_loop="unroll"` (a
            Python loop over the same shared weights, no remat), their timed steps alternating
            in this one run; median step time, the ratio to the loop, XLA temporaries.
equal_math  forward + backward of the pretraining loss with full-vocabulary MLM logits at every
            token (what transformers' `AlbertForPreTraining(labels=...)` computes): our module
            with its defaults, the loop, and transformers' PyTorch (worker process, SDPA).
tpu         `albert_jax.aot` on `--topology` at seq 512 and 32 sequences per chip, bf16, LAMB,
            `fsdp_tensor` rules: temporaries and peak per chip for each size and policy, and the
            unrolled loop for `--tpu_loop` sizes (its compile takes minutes).
Absolute CPU times on a shared machine are noise; the ratios measured side by side hold.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this host's backend; TPUs are compile-only

import argparse
import statistics
import functools

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import hf_convert, optimizer, steps
from albert_jax.tasks import pretraining
from albert_jax import model as M
from experiments.benchmarks.train_step import (JittedPeer, Torch, dense_labels,
                                               hf_pretraining_loss, make_batch)

POLICIES = ("none", "matmul_outputs", "lean", "dots_with_no_batch_dims", "layer_norm_inputs",
            "ffn_residual", "full")
MB, GiB = 2**20, 2**30


def timed(peer) -> tuple[float, float, float]:
  """(wall seconds, CPU seconds of every thread, loss) of one step of a JAX peer."""
  wall, cpu = time.perf_counter(), time.process_time()
  peer.state, metrics = peer.compiled(peer.state, peer.batch)
  jax.block_until_ready((peer.state, metrics))
  return time.perf_counter() - wall, time.process_time() - cpu, float(metrics["loss"])


def alternate(peers: dict, steps: int) -> dict[str, dict]:
  """One warm-up step each, then `steps` rounds of one step per peer, the order rotating.
  Medians of wall time and of CPU time: on a shared machine the CPU time a step takes moves
  less than its wall time when other work competes for the cores."""
  runs = {name: [] for name in peers}
  first = {name: peer.step_with_cpu()[2] for name, peer in peers.items()}
  names = list(peers)
  for r in range(steps):
    for name in names[r % len(names):] + names[:r % len(names)]:
      runs[name].append(peers[name].step_with_cpu())
  return {name: dict(wall_s=statistics.median(x[0] for x in runs[name]),
                     cpu_s=statistics.median(x[1] for x in runs[name]), first_loss=first[name],
                     walls=[x[0] for x in runs[name]])
          for name in peers}


class Step(JittedPeer):
  """`steps.train_step` of a module built with `runtime` (remat_policy, scan_layers)."""

  def __init__(self, cfg, params, batch, **runtime):
    module = M.AlbertForPreTraining(cfg, **runtime)
    optim_cfg = optimizer.default_optim_config()
    optim_cfg.update(name="adamw_optax", lr=1e-4, warmup_steps=0)
    tx = optimizer.make_optimizer(optim_cfg, total_steps=10_000)
    params = jax.tree_util.tree_map(jnp.array, params)
    self.state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params),
                                  nonfinite_step=jnp.full((), -1, jnp.int32))
    self.batch = jax.tree_util.tree_map(jnp.asarray, batch)
    self.compile(functools.partial(
        steps.train_step, module=module, task=pretraining, tx=tx, accum_steps=1, seed=0,
        schedule=optimizer.learning_rate_schedule(optim_cfg, total_steps=10_000)))

  def step_with_cpu(self):
    return timed(self)


def cpu(settings, steps):
  rows = []
  for setting in settings:
    size, seq, batch_size = setting.split(":")
    seq, batch_size = int(seq), int(batch_size)
    cfg = M.preset(size)
    params = jax.device_get(M.init_params(M.AlbertForPreTraining(cfg)))
    batch = make_batch(cfg, batch_size, seq)
    peers = {"loop": Step(cfg, params, batch, layer_loop="unroll", remat_policy="none")}
    for policy in POLICIES:
      peers[policy] = Step(cfg, params, batch, remat_policy=policy)
    res = alternate(peers, steps)
    loop = res["loop"]
    print(f"\n### CPU train step, {size} seq {seq} x batch {batch_size} (median of {steps} "
          "alternating steps)\n")
    print("| layers | step s (wall) | vs loop | CPU s | vs loop | XLA temp MiB | first loss |")
    print("|---|---|---|---|---|---|---|")
    for name, peer in peers.items():
      r = res[name]
      label = 'Python loop (layer_loop="unroll")' if name == "loop" else f"scan, remat {name}"
      print(f"| {label} | {r['wall_s']:.2f} | {r['wall_s'] / loop['wall_s']:.3f} | "
            f"{r['cpu_s']:.2f} | {r['cpu_s'] / loop['cpu_s']:.3f} | "
            f"{peer.memory['temp_mb']:.0f} | {r['first_loss']:.5f} |", flush=True)
      rows.append(dict(setting=setting, peer=name, wall_s=r["wall_s"], cpu_s=r["cpu_s"],
                       temp_mb=peer.memory["temp_mb"]))
  return rows


# ----------------------------------------------------------------------------- equal math

class FullVocabGrad(JittedPeer):
  """Forward + backward of HF's pretraining loss (MLM logits at every token), no update."""

  def __init__(self, cfg, params, batch, **runtime):
    module = M.AlbertForPreTraining(cfg, **runtime)
    labels = jnp.asarray(dense_labels(batch).astype(np.int32))

    def loss(p, b):
      out = module.apply({"params": p}, b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b["token_type_ids"], deterministic=True)
      return hf_pretraining_loss(out, labels, b["sentence_order_label"])

    def step(p, b):  # keeps the JittedPeer (state, batch) -> (state, metrics) shape
      value, grads = jax.value_and_grad(loss)(p, b)
      return p, {"loss": value, "grad_sum": jax.tree_util.tree_reduce(
          lambda a, g: a + jnp.sum(g), grads, 0.0)}

    self.state = jax.tree_util.tree_map(jnp.asarray, params)
    self.batch = jax.tree_util.tree_map(jnp.asarray, batch)
    self.compiled = jax.jit(step).lower(self.state, self.batch).compile()

  def step_with_cpu(self):
    return timed(self)


def _torch_grad_worker(conn, hf_config, state_dict, batch, threads):
  import torch
  import transformers
  torch.set_num_threads(threads)
  model = transformers.AlbertForPreTraining(transformers.AlbertConfig(**hf_config))
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
                        strict=False)
  model.train()
  inputs = dict(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                token_type_ids=torch.from_numpy(batch["token_type_ids"]).long(),
                labels=torch.from_numpy(dense_labels(batch)),
                sentence_order_label=torch.from_numpy(batch["sentence_order_label"]).long())
  conn.send(("ready", model.config._attn_implementation, threads))
  while conn.recv() == "step":
    wall, cpu = time.perf_counter(), time.process_time()
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    conn.send((time.perf_counter() - wall, time.process_time() - cpu, loss.item()))


class TorchGrad(Torch):
  """transformers' forward + backward (no update) in a worker process."""

  def __init__(self, cfg, state_dict, batch, threads):
    super().__init__(cfg, state_dict, batch, threads, worker=_torch_grad_worker)

  def step_with_cpu(self):
    self.conn.send("step")
    return self.conn.recv()


def equal_math(setting, steps):
  size, seq, batch_size = setting.split(":")
  seq, batch_size = int(seq), int(batch_size)
  cfg = M.preset(size)
  params = jax.device_get(M.init_params(M.AlbertForPreTraining(cfg)))
  batch = make_batch(cfg, batch_size, seq)
  state_dict = hf_convert.to_hf_state_dict(cfg, params, "pretraining")
  peers = {"torch": TorchGrad(cfg, state_dict, batch, os.cpu_count()),
           "ours (module defaults)": FullVocabGrad(cfg, params, batch),
           "loop": FullVocabGrad(cfg, params, batch, layer_loop="unroll", remat_policy="none")}
  res = alternate(peers, steps)
  peers["torch"].close()
  torch = res["torch"]
  print(f"\n### Equal math: fwd+bwd, full-vocabulary MLM at every token, {size} seq {seq} x "
        f"batch {batch_size}, float32 (median of {steps} alternating steps)\n")
  print("| peer | s (wall) | vs PyTorch | CPU s | vs PyTorch | loss |")
  print("|---|---|---|---|---|---|")
  for name in peers:
    r = res[name]
    print(f"| {name} | {r['wall_s']:.2f} | {r['wall_s'] / torch['wall_s']:.3f} | "
          f"{r['cpu_s']:.2f} | {r['cpu_s'] / torch['cpu_s']:.3f} | {r['first_loss']:.5f} |",
          flush=True)
  return {name: res[name]["wall_s"] / torch["wall_s"] for name in peers}


# ----------------------------------------------------------------------------- TPU

def tpu(sizes, loop_sizes, topology, per_chip):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
  import pretrain  # noqa: E402  (configs/ is not a package)
  from albert_jax import accelerators, aot
  slice_ = accelerators.parse_target(topology)
  devices = slice_.compile_devices()
  print(f"\n### TPU {topology} ({len(devices)} chips, {devices[0].device_kind}): seq 512, "
        f"{per_chip} sequences per chip, bf16, LAMB, fsdp_tensor; compiled here\n")
  print("| size | layers | remat | temp GiB/chip | peak GiB/chip | fits | compile s |")
  print("|---|---|---|---|---|---|---|")
  rows = []
  for size in sizes:
    runs = [(p, True) for p in POLICIES] + ([("none", False)] if size in loop_sizes else [])
    for policy, scan in runs:
      config = pretrain.get_config(size)
      config.batch_size = per_chip * len(devices)
      config.remat_policy = policy
      config.layer_loop = "scan" if scan else "unroll"
      config.model.vocab_size = 30000
      report = aot.compile_report(config, slice_, devices, estimate=False)
      temp = report.get("temp_bytes_per_device")
      print(f"| {size} | {'scan' if scan else 'loop'} | {policy} | "
            f"{temp / GiB if temp else float('nan'):.2f} | "
            f"{report['peak_bytes_per_device'] / GiB:.2f} | {report['fits']} | "
            f"{report['compile_seconds']:.0f} |", flush=True)
      rows.append(dict(size=size, policy=policy, scan=scan, **{
          k: report.get(k) for k in ("temp_bytes_per_device", "peak_bytes_per_device", "fits",
                                     "compile_seconds")}))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", default="cpu,equal_math,tpu")
  parser.add_argument("--cpu_settings", default="base:128:8,base:128:16,base:512:8")
  parser.add_argument("--equal_math", default="base:128:8")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--tpu_sizes", default="large,xlarge,xxlarge")
  parser.add_argument("--tpu_loop", default="large", help="sizes also compiled unrolled")
  parser.add_argument("--topology", default="v5p-8")
  parser.add_argument("--per_chip", type=int, default=32)
  args = parser.parse_args()
  parts = args.part.split(",")
  start = time.perf_counter()
  if "cpu" in parts:
    cpu(args.cpu_settings.split(","), args.steps)
  if "equal_math" in parts:
    equal_math(args.equal_math, args.steps)
  if "tpu" in parts:
    tpu(args.tpu_sizes.split(","), args.tpu_loop.split(","), args.topology, args.per_chip)
  print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
