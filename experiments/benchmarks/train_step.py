"""Train-step time on CPU: our jitted `steps.train_step` vs transformers' PyTorch and Flax ALBERT.

    python -m experiments.benchmarks.train_step [--sizes=base,large] [--seqs=128,512]
        [--batch=128:2,512:1] [--steps=3] [--optimizer=adamw_optax]

Three peers run the same float32 training step on the same batch from the same weights, side by
side in this one process run, their timed steps alternating (the order rotates every round):
  ours     `steps.train_step` (MLM head at the `max_predictions` masked positions only, as the
           original: 20 at 128, 77 at 512; global-norm clipping + optax AdamW, or LAMB), jitted
           with the state donated;
  torch    `transformers.AlbertForPreTraining` (its default SDPA attention, full-vocabulary MLM
           logits, loss = its CE over the masked positions + SOP CE), clipping + torch.optim.AdamW,
           in a worker process with torch threads = the CPU count;
  hf_flax  transformers 4.x `FlaxAlbertForPreTraining` (layers unrolled, full-vocabulary logits,
           CE over the masked positions + SOP CE), jitted value_and_grad + clipping + optax.adamw.
Per (size, seq): median step time of `--steps` after one warm-up, tokens/s, the ratios, MFU, the
compile time of each JAX step, and memory. Then our remat modes at one setting, our compile time
and temporary memory for the large step at 12/24/48 layers, and a Markdown table with the goals.

MFU = 3 x `model.pretraining_flops_per_example` (the FLOPs of the task with the MLM head at the
masked positions; the same numerator for every peer) x batch / step time / peak, where peak is
the best float32 FLOP/s of a jitted 2048x2048 matmul measured at the start and end of the run.
Memory: for JAX, the compiled executable's `memory_analysis()` (temp = buffers live during the
step, gradients and activations included; args = params + optimizer state + batch). For torch,
the growth of the worker's peak RSS (VmHWM, reset through /proc/self/clear_refs) over its first
step, less the AdamW moments that step creates: activations, gradients and workspace.
With 2 shared cores, a full run of the defaults takes about 15 minutes; absolute times are noise,
the ratios of peers measured side by side are the result.
"""

import argparse
import functools
import math
import multiprocessing as mp
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from albert_jax import encoder, hf_convert, optimizer, steps
from albert_jax.tasks import pretraining
from albert_jax import model as M

LR = 1e-4
MB = 2**20
PEERS = ("ours", "torch", "hf_flax")


# ----------------------------------------------------------------------------- inputs

def max_predictions(seq: int) -> int:
  return math.ceil(0.15 * seq)  # the original's default: 20 at 128, 77 at 512


def make_batch(cfg: M.AlbertConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A pretraining batch with the pipeline's features: two segments, P sorted masked positions."""
  rs = np.random.RandomState(seed)
  preds = max_predictions(seq)
  positions = np.sort(np.stack([rs.choice(np.arange(1, seq), preds, replace=False)
                                for _ in range(batch)]), axis=1)
  token_type_ids = (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0)
  return dict(
      input_ids=rs.randint(5, cfg.vocab_size, (batch, seq)).astype(np.int32),
      attention_mask=np.ones((batch, seq), np.int32), token_type_ids=token_type_ids,
      masked_lm_positions=positions.astype(np.int32),
      masked_lm_ids=rs.randint(5, cfg.vocab_size, (batch, preds)).astype(np.int32),
      masked_lm_weights=np.ones((batch, preds), np.float32),
      sentence_order_label=rs.randint(0, 2, (batch,)).astype(np.int32))


def dense_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
  """[batch, seq] MLM labels as HF takes them: the id at masked positions, -100 elsewhere."""
  labels = np.full(batch["input_ids"].shape, -100, np.int64)
  np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
  return labels


def hf_pretraining_loss(out, labels, sop_labels):
  """transformers' pretraining loss, as HF's run_mlm_flax computes it: CE at every position
  weighted by the MLM label mask (labels -100 elsewhere), plus the SOP CE."""
  mask = (labels >= 0).astype(jnp.float32)
  mlm = optax.softmax_cross_entropy_with_integer_labels(out.prediction_logits,
                                                        jnp.maximum(labels, 0))
  sop = optax.softmax_cross_entropy_with_integer_labels(out.sop_logits, sop_labels)
  return jnp.sum(mlm * mask) / jnp.sum(mask) + jnp.mean(sop)


def hf_config_dict(cfg: M.AlbertConfig) -> dict:
  # No dropout on the SOP head, as the original and ours (HF's default is 0.1).
  return {**cfg.to_hf_dict(), "classifier_dropout_prob": 0.0}


# ----------------------------------------------------------------------------- the peers

def measure_peak(seconds: float = 2.0) -> float:
  """float32 FLOP/s of a jitted 2048x2048 matmul on this host."""
  x = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    matmul(x).block_until_ready()
    n += 1
  return 2 * 2048**3 * n / (time.perf_counter() - start)


def memory(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  return {"temp_mb": m.temp_size_in_bytes / MB, "args_mb": m.argument_size_in_bytes / MB}


class JittedPeer:
  """A jitted (state, batch) -> (state, metrics) step, state donated: compile time, memory, steps."""

  def compile(self, step_fn):
    start = time.perf_counter()
    self.compiled = jax.jit(step_fn, donate_argnums=0).lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.memory = memory(self.compiled)

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start, float(metrics["loss"])


class Ours(JittedPeer):
  """The real `steps.train_step`, jitted with the state donated."""

  def __init__(self, cfg, params, batch, optim="adamw_optax", remat_policy=encoder.DEFAULT_REMAT):
    module = M.AlbertForPreTraining(cfg, remat_policy=remat_policy)
    optim_cfg = optimizer.default_optim_config()
    optim_cfg.update(name=optim, lr=LR, warmup_steps=0)
    tx = optimizer.make_optimizer(optim_cfg, total_steps=10_000)
    schedule = optimizer.learning_rate_schedule(optim_cfg, total_steps=10_000)
    params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the state is donated
    self.state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params),
                                  nonfinite_step=jnp.full((), -1, jnp.int32))
    self.batch = jax.tree_util.tree_map(jnp.asarray, batch)
    self.compile(functools.partial(steps.train_step, module=module, task=pretraining, tx=tx,
                                   schedule=schedule, accum_steps=1, seed=0))


def hf_flax_params(abstract, state_dict: dict[str, np.ndarray]):
  """HF Flax params from an HF state dict: kernels are transposed weights; scale, embedding."""
  flat = {}
  for path, leaf in flatten_dict(abstract).items():
    *scope, name = path
    key = ".".join(scope + ["bias" if name == "bias" else "weight"])
    value = state_dict[key].T if name == "kernel" else state_dict[key]
    assert value.shape == leaf.shape, (path, value.shape, leaf.shape)
    flat[path] = jnp.asarray(value)
  return unflatten_dict(flat)


class HFFlax(JittedPeer):
  """transformers' FlaxAlbertForPreTraining: jitted value_and_grad + clipping + optax.adamw."""

  def __init__(self, cfg, state_dict, batch):
    import transformers  # the peer we compare against; never imported by the package
    model = transformers.FlaxAlbertForPreTraining(
        transformers.AlbertConfig(**hf_config_dict(cfg)), _do_init=False)
    abstract = jax.eval_shape(lambda: model.init_weights(jax.random.key(0), (1, 8)))
    params = hf_flax_params(abstract, state_dict)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01))

    def loss_fn(p, b):
      out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], params=p, train=False)
      return hf_pretraining_loss(out, b["labels"], b["sentence_order_label"])

    def step(state, b):
      p, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(p, b)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), {"loss": loss}

    self.state = (params, tx.init(params))
    self.batch = {k: jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids",
                                                     "sentence_order_label")}
    self.batch["labels"] = jnp.asarray(dense_labels(batch).astype(np.int32))
    self.compile(step)


def _rss_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field))


def _torch_worker(conn, hf_config: dict, state_dict, batch, threads: int):
  """Serves "step" requests: (seconds, loss, peak RSS growth in MiB) per step."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  model = transformers.AlbertForPreTraining(transformers.AlbertConfig(**hf_config))
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, strict=False)
  assert not unexpected and set(missing) <= {"predictions.decoder.weight",
                                             "predictions.decoder.bias"}, (missing, unexpected)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-6,
                          weight_decay=0.01)
  inputs = dict(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                token_type_ids=torch.from_numpy(batch["token_type_ids"]).long(),
                labels=torch.from_numpy(dense_labels(batch)),
                sentence_order_label=torch.from_numpy(batch["sentence_order_label"]).long())
  moments_mb = 2 * sum(p.numel() * 4 for p in model.parameters()) / MB
  conn.send(("ready", model.config._attn_implementation, torch.get_num_threads()))
  first = True
  while conn.recv() == "step":
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS
    rss = _rss_kb("VmRSS")
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    seconds = time.perf_counter() - start
    grown = (_rss_kb("VmHWM") - rss) / 1024 - (moments_mb if first else 0.0)
    first = False
    conn.send((seconds, loss.detach().item(), grown))


class Torch:
  """transformers.AlbertForPreTraining stepping in a fresh worker process (clean RSS);
  `worker` serves its "step" requests (default: a training step, `_torch_worker`)."""

  def __init__(self, cfg, state_dict, batch, threads, worker=None):
    ctx = mp.get_context("spawn")
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=worker or _torch_worker,
                            args=(child, hf_config_dict(cfg), state_dict, batch, threads))
    self.proc.start()
    _, self.attention, self.threads = self.conn.recv()
    self.memory = None

  def step(self) -> tuple[float, float]:
    self.conn.send("step")
    seconds, loss, grown = self.conn.recv()
    if self.memory is None:  # the first step: allocator caches hide growth after it
      self.memory = {"peak_mb": grown}
    return seconds, loss

  def close(self):
    self.conn.send("stop")
    self.proc.join()


# ----------------------------------------------------------------------------- the runs

def alternate(peers: dict, steps: int, warmup: int = 1) -> dict[str, dict]:
  """Warm-up, then `steps` rounds, one step of each peer per round, the order rotating."""
  out = {name: {"times": [], "first_loss": None} for name in peers}
  for name, peer in peers.items():
    for _ in range(warmup):
      _, loss = peer.step()
      out[name]["first_loss"] = out[name]["first_loss"] or loss
  names = list(peers)
  for r in range(steps):
    for name in names[r % len(names):] + names[:r % len(names)]:
      out[name]["times"].append(peers[name].step()[0])
  for row in out.values():
    row["median_s"] = statistics.median(row["times"])
  return out


def compare(size, seq, batch_size, params, args, peak):
  """One (size, seq) row: the three peers side by side."""
  cfg = M.preset(size)
  batch = make_batch(cfg, batch_size, seq)
  state_dict = hf_convert.to_hf_state_dict(cfg, params, "pretraining")
  peers = {"torch": Torch(cfg, state_dict, batch, args.torch_threads)}  # first: it spawns
  peers["ours"] = Ours(cfg, params, batch, optim=args.optimizer)
  peers["hf_flax"] = HFFlax(cfg, state_dict, batch)
  res = alternate(peers, args.steps)
  peers["torch"].close()
  flops = 3 * batch_size * M.pretraining_flops_per_example(cfg, seq, max_predictions(seq))
  row = dict(size=size, seq=seq, batch=batch_size, attention=peers["torch"].attention)
  for name in PEERS:
    s = res[name]["median_s"]
    row[name] = dict(step_s=s, tokens_s=batch_size * seq / s, mfu=flops / s / peak,
                     first_loss=res[name]["first_loss"], times=res[name]["times"],
                     memory=peers[name].memory,
                     compile_s=getattr(peers[name], "compile_s", None))
  print(f"\n{size} seq {seq} batch {batch_size}: " + "; ".join(
      f"{n} {row[n]['step_s']:.2f}s (runs {', '.join(f'{t:.2f}' for t in row[n]['times'])}; "
      f"first loss {row[n]['first_loss']:.5f})" for n in PEERS), flush=True)
  return row


def remat_modes(size, seq, batch_size, params, args):
  """Our step under each remat policy at one setting: step time and temp memory."""
  cfg = M.preset(size)
  batch = make_batch(cfg, batch_size, seq)
  peers = {mode: Ours(cfg, params, batch, optim=args.optimizer, remat_policy=mode)
           for mode in args.remat_modes.split(",")}
  res = alternate(peers, args.steps)
  rows = {mode: dict(step_s=res[mode]["median_s"], compile_s=peer.compile_s, **peer.memory)
          for mode, peer in peers.items()}
  print(f"\nremat at {size} seq {seq} batch {batch_size}: " + "; ".join(
      f"{m} {r['step_s']:.2f}s temp {r['temp_mb']:.0f} MiB" for m, r in rows.items()), flush=True)
  return rows


def abstract_step(module, optim: str):
  """(`steps.train_step` bound to module and optimizer, its state as shapes only): to compile."""
  optim_cfg = optimizer.default_optim_config()
  optim_cfg.update(name=optim, warmup_steps=0)
  tx = optimizer.make_optimizer(optim_cfg, 10_000)
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                    nn.unbox(M.abstract_params(module)))
  state = jax.eval_shape(lambda p: steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
      nonfinite_step=jnp.zeros((), jnp.int32)), abstract)
  step = functools.partial(steps.train_step, module=module, task=pretraining, tx=tx,
                           accum_steps=1, seed=0,
                           schedule=optimizer.learning_rate_schedule(optim_cfg, 10_000))
  return step, state


def depth_sweep(size, seq, batch_size, args):
  """Our large step's compile time and temp memory at each depth, per remat mode (no run)."""
  rows = {}
  for layers in map(int, args.compile_layers.split(",")):
    cfg = M.preset(size, num_hidden_layers=layers)
    batch = make_batch(cfg, batch_size, seq)
    for mode in args.remat_modes.split(","):
      step, state = abstract_step(M.AlbertForPreTraining(cfg, remat_policy=mode), args.optimizer)
      start = time.perf_counter()
      compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
      rows[layers, mode] = dict(compile_s=time.perf_counter() - start, **memory(compiled))
      print(f"  {size} {layers} layers, remat {mode}: compile {rows[layers, mode]['compile_s']:.1f}s"
            f" temp {rows[layers, mode]['temp_mb']:.0f} MiB", flush=True)
  return rows


# ----------------------------------------------------------------------------- the report

def _verdict(ok: bool) -> str:
  return "met" if ok else "**missed**"


def report(rows, remat, sweep, sweep_setting, peaks, args):
  peak = max(peaks)
  print(f"\n## Train step, float32 on CPU ({os.cpu_count()} cores; torch threads "
        f"{args.torch_threads}; optimizer {args.optimizer}; median of {args.steps} alternating "
        f"steps after 1 warm-up)\n")
  print(f"Peak: jitted 2048x2048 float32 matmul, {' / '.join(f'{p / 1e9:.1f}' for p in peaks)} "
        f"GFLOP/s (start / end); MFU uses the best, {peak / 1e9:.1f}. torch attention: "
        f"{rows[0]['attention'] if rows else '-'}.\n")
  print("| size | seq x batch | ours s | torch s | HF Flax s | ours/torch | ours/HF Flax | "
        "tokens/s ours / torch / HF Flax | MFU ours / torch / HF Flax | compile s ours / HF Flax "
        "(ratio) | ours temp / args MiB | HF Flax temp / args MiB | torch peak MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    o, t, f = r["ours"], r["torch"], r["hf_flax"]
    print(f"| {r['size']} | {r['seq']} x {r['batch']} | {o['step_s']:.2f} | {t['step_s']:.2f} | "
          f"{f['step_s']:.2f} | {o['step_s'] / t['step_s']:.2f} | {o['step_s'] / f['step_s']:.2f} | "
          f"{o['tokens_s']:.0f} / {t['tokens_s']:.0f} / {f['tokens_s']:.0f} | "
          f"{100 * o['mfu']:.0f}% / {100 * t['mfu']:.0f}% / {100 * f['mfu']:.0f}% | "
          f"{o['compile_s']:.1f} / {f['compile_s']:.1f} ({o['compile_s'] / f['compile_s']:.2f}) | "
          f"{o['memory']['temp_mb']:.0f} / {o['memory']['args_mb']:.0f} | "
          f"{f['memory']['temp_mb']:.0f} / {f['memory']['args_mb']:.0f} | "
          f"{t['memory']['peak_mb']:.0f} |")
  print("\nFirst-step losses (same weights, same batch): " + "; ".join(
      f"{r['size']}/{r['seq']} " + " / ".join(f"{r[n]['first_loss']:.5f}" for n in PEERS)
      for r in rows) + " (ours / torch / HF Flax)")

  if remat:
    (size, seq, batch), modes = remat
    base = modes.get("none", next(iter(modes.values())))
    print(f"\n## Remat modes, ours at {size} seq {seq} x batch {batch}\n")
    print("| remat | step s | vs none | temp MiB | compile s |")
    print("|---|---|---|---|---|")
    for mode, m in modes.items():
      print(f"| {mode} | {m['step_s']:.2f} | {m['step_s'] / base['step_s']:.2f} | "
            f"{m['temp_mb']:.0f} | {m['compile_s']:.1f} |")
  layers = sorted({l for l, _ in sweep})
  modes_ = list(dict.fromkeys(m for _, m in sweep))
  if sweep:
    size, seq, batch = sweep_setting
    print(f"\n## Depth: ours, {size} step at seq {seq} x batch {batch}, compiled only\n")
    print("| remat | " + " | ".join(f"compile s @{l}" for l in layers) + " | " +
          " | ".join(f"temp MiB @{l}" for l in layers) + " | compile, temp @{0}/@{1} |".format(
              layers[-1], layers[0]))
    print("|---|" + "---|" * (2 * len(layers) + 1))
    for mode in modes_:
      c = [sweep[l, mode]["compile_s"] for l in layers]
      m = [sweep[l, mode]["temp_mb"] for l in layers]
      print(f"| {mode} | " + " | ".join(f"{x:.1f}" for x in c) + " | " +
            " | ".join(f"{x:.0f}" for x in m) + f" | {c[-1] / c[0]:.2f}, {m[-1] / m[0]:.2f} |")

  print("\n## Goals (measured side by side in this run)\n")
  print("| goal | measured | |")
  print("|---|---|---|")
  for r in rows:
    ratio_t = r["ours"]["step_s"] / r["torch"]["step_s"]
    limit = 0.90 if r["seq"] <= 128 else 1.0
    print(f"| {r['size']} seq {r['seq']}: step <= {limit:.2f}x PyTorch | {ratio_t:.2f}x | "
          f"{_verdict(ratio_t <= limit)} |")
    ratio_f = r["ours"]["step_s"] / r["hf_flax"]["step_s"]
    print(f"| {r['size']} seq {r['seq']}: step <= 1.0x HF Flax | {ratio_f:.2f}x | "
          f"{_verdict(ratio_f <= 1.0)} |")
  for r in rows:
    if r["size"] == "large":
      c = r["ours"]["compile_s"] / r["hf_flax"]["compile_s"]
      print(f"| large seq {r['seq']}: compile <= 0.6x HF Flax | {c:.2f}x | {_verdict(c <= 0.6)} |")
  if sweep and ("none" in modes_):
    growth = sweep[layers[-1], "none"]["compile_s"] / sweep[layers[0], "none"]["compile_s"] - 1
    print(f"| compile of the large step +<=20% from {layers[0]} to {layers[-1]} layers | "
          f"{100 * growth:+.0f}% | {_verdict(growth <= 0.20)} |")
  if remat and sweep:
    (_, _, _), modes = remat
    base = modes.get("none")
    for mode in modes_:
      if mode == "none" or mode not in modes or base is None:
        continue
      grow = sweep[layers[-1], mode]["temp_mb"] / sweep[layers[0], mode]["temp_mb"]
      cost = modes[mode]["step_s"] / base["step_s"] - 1
      print(f"| remat {mode}: temp near-constant in depth, <= +15% step time | temp "
            f"@{layers[-1]}/@{layers[0]} = {grow:.2f}x (none: "
            f"{sweep[layers[-1], 'none']['temp_mb'] / sweep[layers[0], 'none']['temp_mb']:.2f}x); "
            f"step {100 * cost:+.0f}% | {_verdict(grow <= 1.25 and cost <= 0.15)} |")


def _setting(text: str) -> tuple[str, int, int] | None:
  if not text:
    return None
  size, seq, batch = text.split(":")
  return size, int(seq), int(batch)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="base,large", help="empty: only remat and depth")
  parser.add_argument("--seqs", default="128,512")
  parser.add_argument("--batch", default="128:2,512:1",
                      help="batch per seq as SEQ:BATCH,..., or one number for every seq")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per peer")
  parser.add_argument("--optimizer", default="adamw_optax", choices=("adamw_optax", "lamb"))
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  parser.add_argument("--remat", default="large:128:2", help="SIZE:SEQ:BATCH, empty to skip")
  parser.add_argument("--remat_modes",
                      default="none,full,ffn_residual,layer_norm_inputs,dots_with_no_batch_dims")
  parser.add_argument("--compile_layers", default="12,24,48", help="empty to skip")
  parser.add_argument("--compile_setting", default="large:128:2")
  args = parser.parse_args()

  if ":" in args.batch:
    batches = {int(s): int(b) for s, b in (x.split(":") for x in args.batch.split(","))}
  else:
    batches = {int(s): int(args.batch) for s in args.seqs.split(",")}
  start = time.perf_counter()
  peaks = [measure_peak()]
  print(f"peak: {peaks[0] / 1e9:.1f} GFLOP/s (jitted 2048x2048 float32 matmul)", flush=True)
  rows = []
  for size in filter(None, args.sizes.split(",")):
    params = jax.device_get(M.init_params(M.AlbertForPreTraining(M.preset(size))))
    for seq in map(int, args.seqs.split(",")):
      rows.append(compare(size, seq, batches[seq], params, args, peaks[0]))
  remat = None
  if args.remat:
    size, seq, batch = _setting(args.remat)
    params = jax.device_get(M.init_params(M.AlbertForPreTraining(M.preset(size))))
    remat = ((size, seq, batch), remat_modes(size, seq, batch, params, args))
  sweep, sweep_setting = {}, _setting(args.compile_setting)
  if args.compile_layers:
    print("\ndepth sweep:", flush=True)
    sweep = depth_sweep(*sweep_setting, args)
  peaks.append(measure_peak())
  for r in rows:  # MFU against the best peak of the run
    for name in PEERS:
      r[name]["mfu"] *= peaks[0] / max(peaks)
  report(rows, remat, sweep, sweep_setting, peaks, args)
  print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
