"""Where our CPU train step stands against PyTorch, piece by piece (the README's "why" list).

    python -m experiments.benchmarks.cpu_breakdown [--size=large] [--seq=512] [--batch=1]

Three measurements, each side by side in this one run (float32, torch threads = CPU count):
  matmul     GFLOP/s of the layer's weight matmuls ([batch*seq, hidden] x [hidden, 4*hidden] and
             back, and a 2048^3 square): jitted XLA vs torch;
  attention  forward + backward of one layer's attention core (scores, mask bias, softmax, the
             weighted sum of values) at [batch, seq, heads, head_dim]: ours as `model.py` writes
             it vs torch's scaled_dot_product_attention and vs torch written out with matmuls;
  compile    our large train step split into tracing, lowering and XLA compilation, and the
             same for the loss gradient alone (what the optimizer update adds);
  profile    two steps of our large step (seq 128 x batch 2) under `jax.profiler`: the time in
             XLA ops that are matmuls (a `dot` on its own or inside a fusion) against the rest,
             next to one torch step at the same shapes.
About three minutes on two cores.
"""

import argparse
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import hf_convert
from albert_jax.tasks import pretraining
from albert_jax import model as M
from experiments.benchmarks.train_step import Ours, Torch, abstract_step, make_batch


def _rate(fn, seconds: float = 1.0) -> float:
  """Calls per second of fn() after one warm-up call."""
  fn()
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    fn()
    n += 1
  return n / (time.perf_counter() - start)


def matmuls(rows: int, hidden: int, torch) -> None:
  print("\n| matmul (m x k x n) | XLA GFLOP/s | torch GFLOP/s | XLA time / torch time |")
  print("|---|---|---|---|")
  matmul = jax.jit(lambda a, b: a @ b)
  for m, k, n in [(2048, 2048, 2048), (rows, hidden, 4 * hidden), (rows, 4 * hidden, hidden)]:
    a, b = np.random.randn(m, k).astype(np.float32), np.random.randn(k, n).astype(np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    xla = 2 * m * k * n * _rate(lambda: matmul(ja, jb).block_until_ready()) / 1e9
    tor = 2 * m * k * n * _rate(lambda: ta @ tb) / 1e9
    print(f"| {m} x {k} x {n} | {xla:.1f} | {tor:.1f} | {tor / xla:.2f} |")


def attention(cfg: M.AlbertConfig, batch: int, seq: int, torch) -> None:
  heads, head_dim = cfg.num_attention_heads, cfg.head_dim
  rs = np.random.RandomState(0)
  q, k, v, g = (rs.randn(batch, seq, heads, head_dim).astype(np.float32) for _ in range(4))
  mask = np.ones((batch, seq), bool)

  def core(q, k, v):  # AlbertAttention's core, as model.py computes it
    q = q * (1 / math.sqrt(head_dim))
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

  ours = jax.jit(lambda q, k, v, g: jax.vjp(core, q, k, v)[1](g))
  ours_ms = 1e3 / _rate(lambda: jax.block_until_ready(ours(q, k, v, g)))
  tq, tk, tv = (torch.tensor(x.transpose(0, 2, 1, 3)).requires_grad_() for x in (q, k, v))
  tg = torch.tensor(g.transpose(0, 2, 1, 3))

  def sdpa():
    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).backward(tg)

  def written_out():
    probs = ((tq * (1 / math.sqrt(head_dim))) @ tk.transpose(-1, -2)).softmax(-1)
    (probs @ tv).backward(tg)

  sdpa_ms, plain_ms = 1e3 / _rate(sdpa), 1e3 / _rate(written_out)
  print(f"\n| attention core fwd+bwd, {batch} x {seq} x {heads} heads x {head_dim} | ms | "
        f"ours / it |")
  print("|---|---|---|")
  print(f"| ours (XLA) | {ours_ms:.1f} | 1.00 |")
  print(f"| torch scaled_dot_product_attention | {sdpa_ms:.1f} | {ours_ms / sdpa_ms:.2f} |")
  print(f"| torch matmuls + softmax | {plain_ms:.1f} | {ours_ms / plain_ms:.2f} |")
  print(f"(x {cfg.num_hidden_layers} layers: ours {cfg.num_hidden_layers * ours_ms / 1e3:.2f} s, "
        f"torch SDPA {cfg.num_hidden_layers * sdpa_ms / 1e3:.2f} s per step)")


def compile_split(cfg: M.AlbertConfig, batch: int, seq: int) -> None:
  module = M.AlbertForPreTraining(cfg)
  step, state = abstract_step(module, "adamw_optax")
  data = make_batch(cfg, batch, seq)
  def grads(params, b):  # what train_step differentiates
    def objective(p):
      sums = pretraining.loss_sums(M.apply_to_batch(module, p, b), b)
      return pretraining.normalise(sums, pretraining.counts(b))["loss"]
    return jax.grad(objective)(params)

  print(f"\n| compile, {cfg.num_hidden_layers} layers, seq {seq} x batch {batch} | trace s | "
        f"lower s | XLA compile s | total s |")
  print("|---|---|---|---|---|")
  for name, fn, args in [("train step", step, (state, data)), ("loss gradient only", grads,
                                                                (state.params, data))]:
    t0 = time.perf_counter()
    traced = jax.jit(fn).trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    print(f"| {name} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t3 - t2:.2f} | {t3 - t0:.2f} |")


def _dot_ops(hlo: str) -> set[str]:
  """Names of the HLO instructions that are matmuls: dots, and fusions whose body holds one."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%(\S+) \(.*?\{\n(.*?)^\}", hlo,
                                                        re.M | re.S)}
  names = set()
  for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = .*?(?: dot\(|calls=%(\S+?),)", hlo, re.M):
    if m.group(2) is None or " dot(" in bodies.get(m.group(2), ""):
      names.add(m.group(1))
  return names


def profile(cfg: M.AlbertConfig, batch: int, seq: int) -> None:
  params = jax.device_get(M.init_params(M.AlbertForPreTraining(cfg)))
  data = make_batch(cfg, batch, seq)
  ours = Ours(cfg, params, data)
  ours.step()
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    wall = sum(ours.step()[0] for _ in range(2)) / 2
    jax.profiler.stop_trace()
    (trace,) = glob.glob(f"{tmp}/plugins/profile/*/*.trace.json.gz")
    events = json.load(gzip.open(trace))["traceEvents"]
  hlo = ours.compiled.as_text()
  dots, hlo_ops = _dot_ops(hlo), set(re.findall(r"^\s*(?:ROOT )?%(\S+) = ", hlo, re.M))
  in_dots = sum(e["dur"] for e in events if e.get("ph") == "X" and e["name"] in dots) / 2e6
  in_ops = sum(e["dur"] for e in events if e.get("ph") == "X" and e["name"] in hlo_ops) / 2e6
  peer = Torch(cfg, hf_convert.to_hf_state_dict(cfg, params, "pretraining"), data, os.cpu_count())
  torch_s = min(peer.step()[0] for _ in range(3))
  peer.close()
  print(f"\n| profile, {cfg.num_hidden_layers} layers, seq {seq} x batch {batch} | s |")
  print("|---|---|")
  print(f"| our step (mean of 2, profiled) | {wall:.2f} |")
  print(f"| ... in XLA matmuls | {in_dots:.2f} |")
  print(f"| ... in other XLA ops | {in_ops - in_dots:.2f} |")
  print(f"| torch step (best of 3) | {torch_s:.2f} |")
  print(f"(with every non-matmul op free, ours / torch would be {in_dots / torch_s:.2f})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="large")
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--compile_seq", type=int, default=128)
  parser.add_argument("--compile_batch", type=int, default=2)
  args = parser.parse_args()
  import torch  # the peer; the package never imports it
  torch.set_num_threads(os.cpu_count())
  cfg = M.preset(args.size)
  print(f"{args.size}, float32, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"torch {torch.__version__}")
  matmuls(args.batch * args.seq, cfg.hidden_size, torch)
  attention(cfg, args.batch, args.seq, torch)
  compile_split(cfg, args.compile_batch, args.compile_seq)
  profile(cfg, args.compile_batch, args.compile_seq)


if __name__ == "__main__":
  main()
