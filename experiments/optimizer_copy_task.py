"""Which optimizers learn a small ALBERT at batch 32: the experiment behind the demo's AdamW.

    python -m experiments.optimizer_copy_task [--steps=600]
        [--runs=adamw_optax:1e-3,adamw:1e-3,lamb:1e-3,lamb:1e-2,torch:1e-3]

The task needs attention and nothing else: each row is 16 random tokens followed by the same 16
tokens, 8 positions of the copy are masked ([MASK] = id 4) and the MLM head must predict them.
Unigram statistics give 1/95 accuracy; a model that learns to copy gets 1.0. Every run trains
the same tiny ALBERT (hidden 128, embedding 64, 2 layers, 2 heads, FFN 512, no dropout) on the
same batches (seed 0) for `--steps` on the MLM loss alone (the task has no sentence order to
predict) with clipping at 1.0, weight decay 0.01, eps 1e-6 and a linear warmup (30 steps) then
linear decay to 0:
  adamw_optax / adamw / lamb   our `steps.train_step` with `optimizer.make_optimizer` (optax's
                               bias-corrected AdamW; the original's AdamW and LAMB, which have
                               no bias correction);
  torch                        transformers' PyTorch `AlbertForMaskedLM` + `torch.optim.AdamW`
                               (bias-corrected), the reference that the task is learnable.
Prints the MLM loss and accuracy every 100 steps, then one table. About 1 minute per run on two
CPU cores.
"""

import argparse
import functools
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import model as M
from albert_jax import optimizer, steps
from albert_jax.tasks import pretraining

BATCH, LENGTH, VOCAB, MASKED, WARMUP = 32, 32, 100, 8, 30
MASK_ID = 4


def copy_batch(rs: np.random.RandomState) -> dict[str, np.ndarray]:
  """16 random tokens, the same 16 again; 8 sorted positions of the copy masked."""
  half = rs.randint(5, VOCAB, (BATCH, LENGTH // 2))
  ids = np.concatenate([half, half], 1)
  positions = np.sort(np.stack([rs.choice(np.arange(LENGTH // 2, LENGTH), MASKED, replace=False)
                                for _ in range(BATCH)]), 1)
  labels = np.take_along_axis(ids, positions, 1)
  np.put_along_axis(ids, positions, MASK_ID, 1)
  return dict(input_ids=ids.astype(np.int32), attention_mask=np.ones((BATCH, LENGTH), np.int32),
              token_type_ids=np.zeros((BATCH, LENGTH), np.int32),
              masked_lm_positions=positions.astype(np.int32),
              masked_lm_ids=labels.astype(np.int32),
              masked_lm_weights=np.ones((BATCH, MASKED), np.float32),
              sentence_order_label=np.zeros(BATCH, np.int32))


def model_config() -> M.AlbertConfig:
  return M.AlbertConfig(vocab_size=VOCAB, embedding_size=64, hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=512)


def run_ours(name: str, lr: float, num_steps: int, log) -> tuple[float, float]:
  module = M.AlbertForPreTraining(model_config())
  optim_cfg = optimizer.default_optim_config()
  optim_cfg.update(name=name, lr=lr, warmup_steps=WARMUP, weight_decay=0.01, clip_norm=1.0,
                   eps=1e-6)
  tx = optimizer.make_optimizer(optim_cfg, num_steps)
  params = M.init_params(module, 0)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))
  mlm_only = types.SimpleNamespace(  # the pretraining task without its SOP term in the loss
      loss_sums=pretraining.loss_sums, counts=pretraining.counts,
      normalise=lambda sums, d: {**pretraining.normalise(sums, d),
                                 "loss": pretraining.normalise(sums, d)["mlm_loss"]})
  step = jax.jit(functools.partial(
      steps.train_step, module=module, task=mlm_only, tx=tx, accum_steps=1, seed=0,
      schedule=optimizer.learning_rate_schedule(optim_cfg, num_steps)))
  rs = np.random.RandomState(0)
  for i in range(num_steps):
    state, metrics = step(state, copy_batch(rs))
    if (i + 1) % 100 == 0 or i + 1 == num_steps:
      log(i + 1, float(metrics["mlm_loss"]), float(metrics["mlm_accuracy"]))
  return float(metrics["mlm_loss"]), float(metrics["mlm_accuracy"])


def run_torch(lr: float, steps: int, log) -> tuple[float, float]:
  import torch  # the peer; the package never imports it
  import transformers
  torch.manual_seed(0)
  cfg = model_config()
  model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(
      **{**cfg.to_hf_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
  opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-6, weight_decay=0.01)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(1.0, s / WARMUP) if s < WARMUP else max(0.0, 1 - s / steps))
  rs = np.random.RandomState(0)
  for i in range(steps):
    b = copy_batch(rs)
    labels = np.full((BATCH, LENGTH), -100)
    np.put_along_axis(labels, b["masked_lm_positions"], b["masked_lm_ids"], 1)
    labels = torch.from_numpy(labels)
    out = model(input_ids=torch.from_numpy(b["input_ids"]).long(), labels=labels)
    opt.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    if (i + 1) % 100 == 0 or i + 1 == steps:
      hit = (out.logits.argmax(-1) == labels) & (labels >= 0)
      log(i + 1, out.loss.item(), (hit.sum() / (labels >= 0).sum()).item())
  return out.loss.item(), (hit.sum() / (labels >= 0).sum()).item()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--runs", default="adamw_optax:1e-3,adamw:1e-3,lamb:1e-3,lamb:1e-2,torch:1e-3",
                      help="NAME:LR,... with NAME one of adamw_optax, adamw, lamb, torch")
  args = parser.parse_args()

  results = []
  for run in args.runs.split(","):
    name, lr = run.split(":")
    start = time.perf_counter()

    def log(step, loss, acc, run=run):
      print(f"{run:18s} step {step:4d}  mlm loss {loss:.3f}  accuracy {acc:.3f}  "
            f"({time.perf_counter() - start:.0f} s)", flush=True)

    if name == "torch":
      loss, acc = run_torch(float(lr), args.steps, log)
    else:
      loss, acc = run_ours(name, float(lr), args.steps, log)
    results.append((run, loss, acc))

  print(f"\n| run (optimizer:lr) | MLM loss @{args.steps} | MLM accuracy @{args.steps} |")
  print("|---|---|---|")
  for run, loss, acc in results:
    print(f"| {run} | {loss:.3f} | {acc:.3f} |")
  print(f"\nChance: accuracy {1 / (VOCAB - 5):.3f}, loss {np.log(VOCAB - 5):.3f}.")


if __name__ == "__main__":
  main()
