"""Input pipeline throughput against what albert-large's train step consumes.

    python -m experiments.benchmarks.input_pipeline [--seconds=20] [--vocab_size=8000]

Prints examples/s of `input_pipeline.train_iterator` (dynamic masking, embedded corpus, global batch 256)
at sequence length 128 and 512 with `num_workers` 0 (batches made by one prefetch thread of this
process) and 2 (two Grain worker processes), and beside it the examples/s that a jitted
forward+backward of `AlbertForPreTraining(preset("large"))` (MLM at the masked positions + SOP
loss) consumes on this same machine, and the ratio of the two. (The embedded corpus allows ~9.6k
pieces, hence the vocabulary of 8000; its size only changes which ids masking draws.)

What one TPU v4 host must feed. A v4-8 is 4 chips on 1 host. Forward FLOPs of one albert-large
example (H=1024, I=4096, E=128, V=30000, 24 applications of the one shared layer, MLM head at the
masked positions only), as `model.pretraining_flops_per_example` counts them:
  layer    2T(4H^2 + 2HI) + 4T^2 H        = 13.96 GFLOP at T=512 (3.29 at T=128)
  encoder  2TEH + 24 layers               = 335.1 GFLOP          (79.0)
  heads    pooler, SOP, P=77 (20) x (2HE + 2EV) = 0.61 GFLOP     (0.16)
  train step (forward + backward) = 3 x 335.8 = 1.007 TFLOP per example at 512 (3 x 79.1 =
  0.237 TFLOP at 128).
Four chips at 275 TFLOP/s bf16 and 40-50% MFU give 440-550 TFLOP/s: 437-546 examples/s at 512
(a 4096-example step every 7.5-9.4 s), 1850-2320 examples/s at 128. That rate per host is what
the pipeline must sustain; the printed "v4 host" columns compare the measured rate with it.
"""

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import model as M
from albert_jax.data import input_pipeline

BATCH = 256
V4_CHIP_FLOPS = 275e12  # bf16 peak per chip
V4_CHIPS_PER_HOST = 4
MFU = (0.40, 0.50)


def pipeline_rate(data_cfg, tokenizer, seconds: float) -> tuple[float, float, dict]:
  """(seconds to build the iterator and yield its first batch, examples/s after that, batch)."""
  start = time.perf_counter()
  it = input_pipeline.train_iterator(data_cfg, tokenizer, global_batch_size=BATCH, seed=0,
                               process_index=0, process_count=1)
  batch = {k: np.array(v) for k, v in next(it).items()}
  first = time.perf_counter() - start
  try:
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
      next(it)
      n += 1
    return first, n * BATCH / (time.perf_counter() - start), batch
  finally:
    it.close()


def train_step_rate(batch: dict, size: int, repeats: int = 3) -> float:
  """Examples/s of a jitted forward+backward (MLM + SOP loss) of albert-large on `size` rows."""
  module = M.AlbertForPreTraining(M.preset("large"))
  params = M.init_params(module)
  batch = {k: jnp.asarray(v[:size]) for k, v in batch.items()}

  def loss(params, b):
    out = module.apply({"params": params}, b["input_ids"], b["attention_mask"], b["token_type_ids"],
                       masked_lm_positions=b["masked_lm_positions"])
    mlm = -jnp.take_along_axis(jax.nn.log_softmax(out.prediction_logits),
                               b["masked_lm_ids"][..., None], -1)[..., 0]
    w = b["masked_lm_weights"]
    sop = -jnp.take_along_axis(jax.nn.log_softmax(out.sop_logits),
                               b["sentence_order_label"][:, None], -1)
    return (mlm * w).sum() / jnp.maximum(w.sum(), 1) + sop.mean()

  step = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(step(params, batch))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, batch))
    times.append(time.perf_counter() - start)
  return size / float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=20.0, help="Timed span per pipeline run.")
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "albert_bench"))
  parser.add_argument("--train_rows", default="128:2,512:1", help="seq:batch of the train step.")
  args = parser.parse_args()
  data_cfg = input_pipeline.default_data_config()
  data_cfg.vocab_size = args.vocab_size
  tokenizer = input_pipeline.build_tokenizer(data_cfg, os.path.join(args.workdir, str(args.vocab_size)))
  train_rows = dict(map(int, item.split(":")) for item in args.train_rows.split(","))
  print(f"{os.cpu_count()} CPUs, JAX on {jax.devices()[0].platform}, global batch {BATCH}, "
        f"{args.seconds:.0f} s per pipeline run")
  print(f"{'seq':>4} {'workers':>7} {'first batch s':>13} {'pipeline ex/s':>13} "
        f"{'step ex/s':>9} {'pipe/step':>9} {'v4 host ex/s':>13} {'pipe/v4 host':>12}")
  for seq in (128, 512):
    data_cfg.max_seq_length = seq
    step_rate = None
    config = input_pipeline.example_config(data_cfg)
    need = [V4_CHIPS_PER_HOST * V4_CHIP_FLOPS * mfu
            / (3 * M.pretraining_flops_per_example(M.preset("large"), seq, config.max_predictions))
            for mfu in MFU]
    for workers in (0, 2):
      data_cfg.num_workers = workers
      first, rate, batch = pipeline_rate(data_cfg, tokenizer, args.seconds)
      if step_rate is None:
        step_rate = train_step_rate(batch, train_rows[seq])
      print(f"{seq:>4} {workers:>7} {first:>13.1f} {rate:>13,.0f} {step_rate:>9.2f} "
            f"{rate / step_rate:>9,.0f} {need[0]:>6,.0f}-{need[1]:<6,.0f} "
            f"{rate / need[1]:>5.1f}-{rate / need[0]:<5.1f}")


if __name__ == "__main__":
  main()
