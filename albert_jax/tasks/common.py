"""What the fine-tuning tasks share: the eval-set container, where the vocabulary comes from,
training and eval batches of tokenised arrays and their scoring (`interface`: the part of the task
interface every fine-tuning task has alike), and the classification loss."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from albert_jax import files, init_from, sharding
from albert_jax.data import arrays, packed_batches
from albert_jax.data.tokenizer import VOCAB_FILE, AlbertTokenizer

IGNORE = arrays.IGNORE
WEIGHT = arrays.WEIGHT


@dataclasses.dataclass
class EvalSet:
  """One eval set: this host's part of each global batch, and what `evaluate` needs besides."""
  name: str  # its metrics are logged as NAME/metric, its prediction files go to .../NAME
  batches: list[dict[str, np.ndarray]]
  data: Any = None  # the task's own: the dataset whose rows the batches hold, for fine-tuning
  # Packed batches (config.data.pack): the batches' predictions -> per example, in dataset order.
  unpack: Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]] | None = None


def input_spec(*shape: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The model inputs of one row (`input_ids`, `attention_mask`, `token_type_ids`), int32
  `shape`."""
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
          for k in ("input_ids", "attention_mask", "token_type_ids")}


def with_weight(spec: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.ShapeDtypeStruct]:
  """A row's features plus its `weight` (0 for the padding rows of eval batches)."""
  return {**spec, WEIGHT: jax.ShapeDtypeStruct((), jnp.float32)}


# `config.data` of the tasks whose examples may be packed (data/packed_batches.py): 0 is sized
# from the data.
PACK_SETTINGS = dict(
    pack=True,  # several examples to a row: the same examples a step, a fraction of the tokens
    pack_length=0,  # tokens a row
    pack_rows=0,  # rows a global batch
    pack_max_examples=0,  # examples a row at most
)
PACK_SLOTS = 32  # `example_spec`'s examples a row where data.pack_max_examples is 0


def row_spec(data_cfg, label_dtype, per_token: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """One row of a classification task's batches, labels per example or `per_token`. Unpacked:
  an example, its labels and its weight. Packed (data.pack): a row of data.pack_length tokens
  (max_seq_length where 0: the data decides, up to it) with its tokens' `example_ids` and, per
  example slot (data.pack_max_examples; PACK_SLOTS where 0), the [CLS] position, the label and
  the weight."""
  if not data_cfg.get("pack"):
    label = (data_cfg.max_seq_length,) if per_token else ()
    return with_weight({**input_spec(data_cfg.max_seq_length),
                        "labels": jax.ShapeDtypeStruct(label, label_dtype)})
  length = data_cfg.pack_length or data_cfg.max_seq_length
  slots = data_cfg.pack_max_examples or PACK_SLOTS
  return {**input_spec(length), "example_ids": jax.ShapeDtypeStruct((length,), jnp.int32),
          "cls_positions": jax.ShapeDtypeStruct((slots,), jnp.int32),
          "labels": jax.ShapeDtypeStruct((length if per_token else slots,), label_dtype),
          WEIGHT: jax.ShapeDtypeStruct((slots,), jnp.float32)}


def token_weights(batch) -> jax.Array:
  """Each token's example's weight: [rows, length] for packed rows (by its example id; 0 for
  padding), else its row's, [rows, 1]."""
  weight = batch[WEIGHT].astype(jnp.float32)
  if "example_ids" not in batch:
    return weight[:, None]
  slots = jnp.concatenate([jnp.zeros_like(weight[:, :1]), weight], axis=1)  # id 0: padding
  return jnp.take_along_axis(slots, batch["example_ids"], axis=1)


# ----------------------------------------------------------------------------- vocabulary, data

def tokenizer(config, workdir) -> AlbertTokenizer:
  """config.spm_model (a spiece.model or a directory holding one), else config.init_from's; a
  copy goes into WORKDIR, so a run is self-contained."""
  found = find_vocabulary(config)
  if found is None:
    raise FileNotFoundError(
        "No vocabulary: set --config.spm_model=PATH/spiece.model, or --config.init_from to a "
        "model directory (HF, albert-jax or an original TF1 release) that has its SentencePiece "
        "model")
  return keep_copy(found, workdir)


def find_vocabulary(config) -> AlbertTokenizer | None:
  """The tokenizer of config.spm_model (a file, or what `init_from.identify` finds with a
  model) or of config.init_from, or None when neither has one."""
  if config.spm_model and not files.path(config.spm_model).exists():
    raise FileNotFoundError(f"config.spm_model={config.spm_model!r} does not exist")
  for source in (config.spm_model, config.init_from):
    if not source:
      continue
    if files.path(source).is_file():
      return AlbertTokenizer(source)
    found = init_from.identify(source).tokenizer()
    if found:
      return found
  return None


def keep_copy(tok: AlbertTokenizer, workdir) -> AlbertTokenizer:
  if jax.process_index() == 0:
    files.copy(tok.vocab_file, files.path(workdir) / VOCAB_FILE)
  return tok


def data(load: Callable, config, tok, token_predictions: bool = False
         ) -> tuple[arrays.ArrayIterator | packed_batches.PackedIterator, list[EvalSet]]:
  """A fine-tuning task's batches from its `load(data_cfg, tokenizer, split) -> Dataset` (each
  split tokenised once into arrays): shuffled training epochs, and every eval split, each its
  own eval set; packed, several examples to a row, with `config.data.pack`
  (`data/packed_batches.py`; `token_predictions`: the task predicts per token)."""
  data_cfg = config.data
  train_set = load(data_cfg, tok, "train")
  logging.info("%s: %d training rows", config.task, len(train_set))
  train = arrays.ArrayIterator(train_set, global_batch_size=config.batch_size, seed=config.seed,
                               settings=stream_settings(config),
                               allow_change=config.get("allow_data_change", False))
  size = config.eval_batch_size or config.batch_size
  data_devices, fsdp, _ = sharding.mesh_shape(dict(config.mesh), jax.device_count())
  layout = None
  if data_cfg.get("pack"):
    layout, efficiency = packed_layout(train, train_set, config, data_devices * fsdp)
    logging.info("Packing %d examples a step into %d rows of %d tokens (at most %d a row): "
                 "%.1f%% of the row tokens are real over the first %d steps (%.1f%% unpacked)",
                 config.batch_size, layout.rows, layout.length, layout.max_examples,
                 100 * efficiency["packed"], efficiency["steps"], 100 * efficiency["unpacked"])
    train = packed_batches.PackedIterator(train, packed_batches.Packer(train_set, layout))

  def eval_set(name, split):
    dataset = load(data_cfg, tok, split)
    if not len(dataset):
      raise ValueError(f"{config.task}: eval set {name!r} (split {split!r}) has no examples")
    if layout is None:
      return EvalSet(name, arrays.eval_batches(dataset, global_batch_size=size), dataset)
    batches, packed = packed_batches.eval_batches(
        dataset, global_batch_size=size, length=layout.length,
        row_multiple=data_devices * fsdp, max_examples=layout.max_examples,
        token_predictions=token_predictions)
    return EvalSet(name, batches, dataset, unpack=packed.unpack)

  evals = [eval_set("eval", "eval")]
  evals += [eval_set(f"eval_{s}", s) for s in data_cfg.get("extra_eval_splits", ()) or ()]
  if data_cfg.get("predict_split"):  # unlabelled (e.g. GLUE test): prediction files only
    evals.append(eval_set("predict", "predict"))
  return train, evals


def packed_layout(train: arrays.ArrayIterator, train_set: arrays.Dataset, config,
                  batch_devices: int) -> tuple[packed_batches.Layout, dict[str, float]]:
  """The packed rows' layout sized over the run's first steps, and the share of row tokens
  that are real there, packed and unpacked."""
  steps = packed_batches.sizing_steps(train, config.total_steps)
  lengths = packed_batches.lengths_of(train_set)
  layout = packed_batches.size_layout(
      lengths, steps, max_seq_length=config.data.max_seq_length,
      processes=jax.process_count(), row_multiple=batch_devices * config.grad_accum_steps,
      data_cfg=config.data)
  real = sum(int(lengths[s].sum()) for s in steps)
  return layout, {
      "packed": real / (len(steps) * layout.rows * layout.length),
      "unpacked": real / (len(steps) * config.batch_size * config.data.max_seq_length),
      "steps": len(steps)}


def stream_settings(config) -> dict:
  """The task's data settings that shape its training arrays, as stream fields: not where the
  files are (their content is fingerprinted with the arrays), what only the evals use, nor how
  the examples are packed into rows (each step has the same examples either way)."""
  left_out = ("eval", "extra_eval", "predict", "n_best", "max_answer", "null_score", "pack")
  return {f"data.{k}": v for k, v in config.data.to_dict().items()
          if not k.endswith(("_dir", "_file", "files")) and not k.startswith(left_out)}


def gathered(predictions: list[dict[str, np.ndarray]], eval_set: EvalSet) -> dict[str, np.ndarray]:
  """Per-row prediction arrays of an eval set's batches, in dataset order, padding rows dropped."""
  if eval_set.unpack is not None:
    return eval_set.unpack(predictions)
  n = len(eval_set.data)
  return {k: np.concatenate([p[k] for p in predictions])[:n] for k in predictions[0]}


def evaluate_rows(evaluate_task: Callable, predictions, eval_set: EvalSet, data_cfg,
                  out_dir: Path) -> dict[str, float]:
  """`evaluate_task(rows, dataset, data_cfg, out_dir)`'s scalar metrics."""
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = evaluate_task(gathered(predictions, eval_set), eval_set.data, data_cfg, out_dir)
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def interface(load: Callable, evaluate_task: Callable, token_predictions: bool = False
              ) -> tuple[Callable, Callable, Callable]:
  """The task interface's `tokenizer`, `data` and `score`, alike in every fine-tuning task, from its
  `load(data_cfg, tokenizer, split) -> Dataset` and `evaluate_task(rows, dataset, data_cfg,
  out_dir) -> metrics` (rows: an eval set's predictions gathered in dataset order; per token where
  `token_predictions`, else per example)."""
  return (tokenizer, functools.partial(data, load, token_predictions=token_predictions),
          functools.partial(evaluate_rows, evaluate_task))


# ----------------------------------------------------------------------------- classification

def weight_counts(batch) -> dict[str, jax.Array]:
  """The rows that count (weight 1; eval padding rows weigh 0)."""
  return {"weight": jnp.sum(batch[WEIGHT].astype(jnp.float32))}


def classification_sums(logits, labels, weight) -> dict[str, jax.Array]:
  """Summed cross-entropy (num_labels > 1) or squared error (one logit: regression)."""
  weight = weight.astype(jnp.float32)
  if logits.shape[-1] == 1:
    error = logits[..., 0] - labels.astype(jnp.float32)
    return {"loss": jnp.sum(jnp.square(error) * weight)}
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(xent * weight), "correct": jnp.sum(correct * weight)}


def classification_normalise(sums, denominators) -> dict[str, jax.Array]:
  """Per-row means: "loss", and "accuracy" where there are classes."""
  weight = jnp.maximum(denominators["weight"], 1e-9)
  out = {"loss": sums["loss"] / weight}
  if "correct" in sums:
    out["accuracy"] = sums["correct"] / weight
  return out
