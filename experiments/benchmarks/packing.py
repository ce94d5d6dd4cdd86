"""Packed against padded fine-tuning steps (GLUE, SQuAD): examples/s, real tokens/s, packing
efficiency.

    python -m experiments.benchmarks.packing [--task=glue|squad] [--size=base] [--batch=32]
        [--seq=512] [--steps=2] [--examples=8192] [--tpu=v5p-8] [--gpu=h100-1]
        [--aot_size=large] [--skip_cpu] [--skip_aot] [--json=PATH]

The data: a GLUE-like mix, half SST-2-like single sentences and half MNLI-like pairs, taken word
by word from the embedded corpus's prose to lengths drawn around the published means (SST-2
about 10 words a sentence; MNLI premises about 22, hypotheses about 11: assumed, lognormal,
sigma 0.5), tokenised by `glue.convert_examples` with a SentencePiece model trained here on the
corpus (8000 pieces: ALBERT's has 30000, so these pieces are a little shorter and the rows a
little fuller than with it). `--task=squad`: SQuAD-like questions instead (a context of about
120 words of corpus prose, a question of about 10, an answer of 1-4 of the context's words:
assumed published means, lognormal, sigma 0.4 and 0.3), cut into the original run_squad's
windows by `squad_data.convert_examples` (doc stride 128, query 64), the step
`configs/finetune_squad.py:v1` (use --batch=48 --seq=384, its own). Both steps train on the same
examples: `arrays.ArrayIterator`'s
global batches, padded to `--seq` (`data.pack` off) or packed (`data/packed_batches.py`, the
rows sized from the first 1000 steps as a run sizes them).

On this CPU (measured): the jitted train step of `configs/finetune_glue.py:task=mnli` at
`--size`, float32, each timed over `--steps` steps after one warm-up, the two side by side in
this one run: examples/s, real tokens/s and their ratio. Packing efficiency: the real tokens
over the row tokens of the steps (the rows' length x the rows a step, sized over the first
1000 steps), and over the rows first fit used (how full the rows it fills are).
Compiled without the chip (estimates): the same two steps at `--aot_size` for `--tpu` (XLA's
TPU cost model, `aot.compile_report`) and `--gpu` (the kernel census's roofline), their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from albert_jax import accelerators, aot, init_from, optimizer, sharding, steps  # noqa: E402
from albert_jax import tasks  # noqa: E402
from albert_jax.data import arrays, corpus, packed_batches  # noqa: E402
from albert_jax.data.tokenizer import AlbertTokenizer  # noqa: E402
from albert_jax.data.train_tokenizer import train_spm  # noqa: E402
from albert_jax.tasks import glue, squad_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEAN_WORDS = {"sst2": 10, "premise": 22, "hypothesis": 11,  # assumed published means
              "context": 120, "question": 10}


def _corpus_words() -> list[str]:
  return [w for doc in corpus.embedded_documents("train") for s in doc for w in s.split()]


def glue_like_examples(n: int, seed: int = 0) -> list[glue.Example]:
  """n examples, alternately SST-2-like sentences and MNLI-like pairs, of corpus words."""
  words = _corpus_words()
  rs = np.random.RandomState(seed)

  def text(mean):
    k = int(np.clip(round(rs.lognormal(np.log(mean), 0.5)), 1, 200))
    start = rs.randint(0, len(words) - k)
    return " ".join(words[start:start + k])

  return [glue.Example(str(i), text(MEAN_WORDS["sst2"]), None, "neutral") if i % 2 == 0 else
          glue.Example(str(i), text(MEAN_WORDS["premise"]), text(MEAN_WORDS["hypothesis"]),
                       "entailment") for i in range(n)]


def squad_like_examples(n: int, seed: int = 0) -> list[squad_data.Example]:
  """n SQuAD-like questions on contexts of corpus words, each answered by 1-4 of its words."""
  words = _corpus_words()
  rs = np.random.RandomState(seed)

  def text(mean, sigma):
    k = int(np.clip(round(rs.lognormal(np.log(mean), sigma)), 3, 600))
    start = rs.randint(0, len(words) - k)
    return words[start:start + k]

  out = []
  for i in range(n):
    context = text(MEAN_WORDS["context"], 0.4)
    first = rs.randint(0, len(context))
    answer = context[first:first + rs.randint(1, 5)]
    out.append(squad_data.Example(
        str(i), " ".join(text(MEAN_WORDS["question"], 0.3)), " ".join(context),
        [" ".join(answer)], [len(" ".join(context[:first])) + (first > 0)]))
  return out


def make_config(size: str, batch: int, seq: int, dtype: str = "float32", task: str = "glue"):
  import sys
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import finetune_glue  # noqa: PLC0415  (configs/ is not a package)
  import finetune_squad  # noqa: PLC0415
  config = (finetune_squad.get_config(f"v1,model={size}") if task == "squad" else
            finetune_glue.get_config(f"task=mnli,model={size}"))
  config.update(batch_size=batch, dtype=dtype)
  config.data.max_seq_length = seq
  config.model.vocab_size = 30000
  return config


def packed_config(config, layout: packed_batches.Layout):
  config = config.copy_and_resolve_references()
  config.data.update(pack=True, pack_length=layout.length, pack_rows=layout.rows,
                     pack_max_examples=layout.max_examples)
  return config


def padded_config(config):
  config = config.copy_and_resolve_references()
  config.data.pack = False
  return config


def layout_for(dataset, config, row_multiple: int):
  base = arrays.ArrayIterator(dataset, global_batch_size=config.batch_size, seed=0)
  sizing = packed_batches.sizing_steps(base, 1000)
  lengths = packed_batches.lengths_of(dataset)
  layout = packed_batches.size_layout(lengths, sizing, max_seq_length=config.data.max_seq_length,
                                      processes=1, row_multiple=row_multiple,
                                      data_cfg=config.data)
  real = sum(int(lengths[s].sum()) for s in sizing)
  used = sum(packed_batches.fit(lengths[s], layout.length, layout.max_examples)[0]
             for s in sizing)
  return layout, {"steps": len(sizing), "real_tokens_per_step": real / len(sizing),
                  "efficiency": real / (len(sizing) * layout.rows * layout.length),
                  "fill": real / (used * layout.length),
                  "padded_efficiency": real / (len(sizing) * config.batch_size
                                               * config.data.max_seq_length)}


def time_steps(config, dataset, steps_n: int) -> dict:
  """The jitted train step on this host's CPU over `steps_n` steps after a warm-up."""
  task = tasks.of(config)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = sharding.rules(config.sharding)
  cfg = init_from.model_config(config, task, 30000)
  module = steps.make_module(config, cfg, task.head(config.data))
  tx = optimizer.make_optimizer(config.optim, config.total_steps)
  schedule = optimizer.learning_rate_schedule(config.optim, config.total_steps)
  layout = steps.state_layout(module, tx, mesh, rules)
  state = layout.init(0, {})
  base = arrays.ArrayIterator(dataset, global_batch_size=config.batch_size, seed=0)
  if config.data.pack:
    d = config.data
    iterator = packed_batches.PackedIterator(base, packed_batches.Packer(
        dataset, packed_batches.Layout(d.pack_rows, d.pack_length, d.pack_max_examples)))
  else:
    iterator = base
  shardings = {k: sharding.batch_sharding(mesh, 1 + len(s.shape))
               for k, s in task.example_spec(config.data).items()}
  step = steps.jit_train_step(config, module, task, tx, schedule, layout.shardings, shardings,
                              NamedSharding(mesh, P()))
  times, tokens = [], []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for i in range(steps_n + 1):
      batch = sharding.global_batch(next(iterator), mesh)
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      if i:  # the first is the compile
        times.append(time.perf_counter() - start)
        tokens.append(float(metrics["tokens"]))
      print(f"  {'packed' if config.data.pack else 'padded'} step {i}: "
            f"{time.perf_counter() - start:.1f} s", flush=True)
  seconds = statistics.median(times)
  return {"step_seconds": seconds, "examples_per_second": config.batch_size / seconds,
          "real_tokens_per_second": statistics.mean(tokens) / seconds,
          "rows": int(batch["input_ids"].shape[0]), "row_length": int(batch["input_ids"].shape[1])}


def aot_pair(config, dataset, target_name: str) -> dict:
  """Padded and packed steps compiled for `target_name` (no chip): TPU cost-model seconds or the
  GPU census's roofline seconds."""
  target = accelerators.parse_target(target_name)
  multiple = 1
  if target.platform == "tpu":
    multiple = len(target.compile_devices())
  layout, _ = layout_for(dataset, config, multiple)
  out = {"layout": layout.__dict__}
  for name, c in (("padded", padded_config(config)), ("packed", packed_config(config, layout))):
    start = time.perf_counter()
    report = aot.compile_report(c, target)
    key = "estimated_step_seconds" if target.platform == "tpu" else "roofline_seconds"
    out[name] = {"seconds": report.get(key), "fits": report["fits"],
                 "peak_gib": report["peak_bytes_per_device"] / 2**30,
                 "compile_and_estimate_seconds": time.perf_counter() - start}
    print(f"  {target_name} {name}: {out[name]}", flush=True)
  out["ratio"] = out["padded"]["seconds"] / out["packed"]["seconds"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", default="glue", choices=["glue", "squad"])
  parser.add_argument("--size", default="base")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--examples", type=int, default=8192)
  parser.add_argument("--tpu", default="v5p-8", help="a TPU slice; empty: none")
  parser.add_argument("--gpu", default="h100-1", help="GPUs; empty: none")
  parser.add_argument("--aot_size", default="large")
  parser.add_argument("--skip_cpu", action="store_true")
  parser.add_argument("--skip_aot", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    sentences = [s for doc in corpus.embedded_documents("train") for s in doc]
    tokenizer = AlbertTokenizer(str(train_spm(sentences, 8000, tmp)))
    if args.task == "squad":
      examples = squad_like_examples(args.examples)
      windows = squad_data.convert_examples(examples, tokenizer, args.seq)
      keep = tasks.get("squad").example_spec(squad_data.data_config("v1", "span"))
      dataset = arrays.Dataset({k: v for k, v in windows.features.items() if k in keep})
    else:
      examples = glue_like_examples(args.examples)
      dataset = glue.convert_examples(examples, tokenizer, "mnli", args.seq)
  lengths = packed_batches.lengths_of(dataset)
  result = {"args": vars(args), "examples": len(examples), "rows": len(dataset),
            "tokens_per_example": {"mean": float(lengths.mean()),
                                   "p50": float(np.median(lengths)),
                                   "max": int(lengths.max())}}
  print(f"{args.task}-like: {len(examples)} examples, {len(dataset)} rows, tokens a row mean "
        f"{lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}", flush=True)

  config = make_config(args.size, args.batch, args.seq, task=args.task)
  layout, efficiency = layout_for(dataset, config, 1)
  result.update(layout=layout.__dict__, efficiency=efficiency)
  print(f"Layout (1 device): {layout}; efficiency {efficiency}", flush=True)
  if not args.skip_cpu:
    padded = time_steps(padded_config(config), dataset, args.steps)
    packed = time_steps(packed_config(config, layout), dataset, args.steps)
    result["cpu"] = {"padded": padded, "packed": packed,
                     "examples_per_second_ratio": packed["examples_per_second"]
                     / padded["examples_per_second"]}
  if not args.skip_aot:
    aot_config = make_config(args.aot_size, args.batch, args.seq, dtype="bfloat16",
                             task=args.task)
    for name in ("tpu", "gpu"):
      if getattr(args, name):  # --tpu= or --gpu= (empty) leaves it out
        result[name] = aot_pair(aot_config, dataset, getattr(args, name))

  print("\n| | padded | packed | ratio |\n|---|---|---|---|")
  print(f"| rows x length a step | {args.batch} x {args.seq} | {layout.rows} x {layout.length} | "
        f"{args.batch * args.seq / (layout.rows * layout.length):.2f}x fewer tokens |")
  print(f"| real tokens / row tokens | {efficiency['padded_efficiency']:.3f} | "
        f"{efficiency['efficiency']:.3f} (rows filled: {efficiency['fill']:.3f}) | |")
  if "cpu" in result:
    c = result["cpu"]
    print(f"| CPU examples/s, {args.size} (measured) | {c['padded']['examples_per_second']:.3f} | "
          f"{c['packed']['examples_per_second']:.3f} | {c['examples_per_second_ratio']:.2f}x |")
    print(f"| CPU real tokens/s (measured) | {c['padded']['real_tokens_per_second']:.0f} | "
          f"{c['packed']['real_tokens_per_second']:.0f} | |")
  for name in ("tpu", "gpu"):
    if name in result:
      r = result[name]
      what = "cost model" if name == "tpu" else "census roofline"
      target = args.tpu if name == "tpu" else args.gpu
      print(f"| {target} step, {args.aot_size} ({what}, estimate) | {r['padded']['seconds']:.4f} s"
            f" | {r['packed']['seconds']:.4f} s ({r['layout']['rows']} x "
            f"{r['layout']['length']}) | {r['ratio']:.2f}x |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
