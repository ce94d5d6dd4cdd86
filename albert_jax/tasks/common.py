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

from albert_jax import files, init_from
from albert_jax.data import arrays
from albert_jax.data.tokenizer import VOCAB_FILE, AlbertTokenizer

IGNORE = -100  # label of positions without a loss (as Hugging Face)
WEIGHT = arrays.WEIGHT


@dataclasses.dataclass
class EvalSet:
  """One eval set: this host's part of each global batch, and what `evaluate` needs besides."""
  name: str  # its metrics are logged as NAME/metric, its prediction files go to .../NAME
  batches: list[dict[str, np.ndarray]]
  data: Any = None  # the task's own: the dataset whose rows the batches hold, for fine-tuning


def input_spec(*shape: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The model inputs of one row (`input_ids`, `attention_mask`, `token_type_ids`), int32
  `shape`."""
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
          for k in ("input_ids", "attention_mask", "token_type_ids")}


def with_weight(spec: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.ShapeDtypeStruct]:
  """A row's features plus its `weight` (0 for the padding rows of eval batches)."""
  return {**spec, WEIGHT: jax.ShapeDtypeStruct((), jnp.float32)}


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


def data(load: Callable, config, tok) -> tuple[arrays.ArrayIterator, list[EvalSet]]:
  """A fine-tuning task's batches from its `load(data_cfg, tokenizer, split) -> Dataset` (each
  split tokenised once into arrays): shuffled training epochs, and every eval split, each its
  own eval set."""
  data_cfg = config.data
  train_set = load(data_cfg, tok, "train")
  logging.info("%s: %d training rows", config.task, len(train_set))
  train = arrays.ArrayIterator(train_set, global_batch_size=config.batch_size, seed=config.seed,
                               settings=stream_settings(config),
                               allow_change=config.get("allow_data_change", False))
  size = config.eval_batch_size or config.batch_size

  def eval_set(name, split):
    dataset = load(data_cfg, tok, split)
    return EvalSet(name, arrays.eval_batches(dataset, global_batch_size=size), dataset)

  evals = [eval_set("eval", "eval")]
  evals += [eval_set(f"eval_{s}", s) for s in data_cfg.get("extra_eval_splits", ()) or ()]
  if data_cfg.get("predict_split"):  # unlabelled (e.g. GLUE test): prediction files only
    evals.append(eval_set("predict", "predict"))
  return train, evals


def stream_settings(config) -> dict:
  """The task's data settings that shape its training arrays, as stream fields: not where the
  files are (their content is fingerprinted with the arrays) nor what only the evals use."""
  eval_only = ("eval", "extra_eval", "predict", "n_best", "max_answer", "null_score")
  return {f"data.{k}": v for k, v in config.data.to_dict().items()
          if not k.endswith(("_dir", "_file", "files")) and not k.startswith(eval_only)}


def gathered(predictions: list[dict[str, np.ndarray]], eval_set: EvalSet) -> dict[str, np.ndarray]:
  """Per-row prediction arrays of an eval set's batches, in dataset order, padding rows dropped."""
  n = len(eval_set.data)
  return {k: np.concatenate([p[k] for p in predictions])[:n] for k in predictions[0]}


def evaluate_rows(evaluate_task: Callable, predictions, eval_set: EvalSet, data_cfg,
                  out_dir: Path) -> dict[str, float]:
  """`evaluate_task(rows, dataset, data_cfg, out_dir)`'s scalar metrics."""
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = evaluate_task(gathered(predictions, eval_set), eval_set.data, data_cfg, out_dir)
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def interface(load: Callable, evaluate_task: Callable) -> tuple[Callable, Callable, Callable]:
  """The task interface's `tokenizer`, `data` and `score`, alike in every fine-tuning task, from its
  `load(data_cfg, tokenizer, split) -> Dataset` and `evaluate_task(rows, dataset, data_cfg,
  out_dir) -> metrics` (rows: an eval set's predictions gathered in dataset order)."""
  return tokenizer, functools.partial(data, load), functools.partial(evaluate_rows, evaluate_task)


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
