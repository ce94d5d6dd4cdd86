"""RACE reading comprehension as 4-way multiple choice, as google-research/albert's run_race.py:
reading the distribution (or TFDS), `[CLS] article [SEP] question+option [SEP]` features, accuracy.

The hyperparameters live here, in HYPERPARAMETERS (run_race.py's; beside them, what of the
original's is elsewhere and why), and configs/finetune_race.py reads them: nothing else states them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import files
from albert_jax.data import arrays
from albert_jax.tasks import common

HEAD = "multiple_choice"
METRIC = "accuracy"
CONSOLE = ("loss", "accuracy")
LEVELS = ("middle", "high")
LETTERS = "ABCD"
NUM_CHOICES = len(LETTERS)

# The original's fine-tuning settings, which configs/finetune_race.py reads (their one home):
# run_race.py's flag defaults (learning_rate 1e-5, train_batch_size 32, train_step 12000,
# warmup_step 1000). The rest of the original's are not repeated here: optimization.py's AdamW
# (weight decay 0.01, linear warmup then linear decay to 0, clipping 1.0) is every fine-tuning
# config's optimizer (configs/common.py); max_seq_length 512 and max_qa_length 128 are
# `data_config`'s; dropout 0.1 on the classifier and none inside ALBERT are the v2 presets' (the
# README: v2 models fine-tune RACE with lr 1e-5 and "ALBERT DR" 0, the v1 settings of the paper's
# appendix make them diverge). run_race.py's eval_batch_size 8 is not taken: an eval batch's size
# changes no metric, and 8 rows do not split over the 16 or 32 data-parallel devices the training
# batch of 32 does (the loop's default eval batch is the training batch).
HYPERPARAMETERS = dict(lr=1e-5, batch_size=32, total_steps=12_000, warmup_steps=1_000)


@dataclasses.dataclass(frozen=True)
class Example:
  """One question: its article, the four options and the answer's index (0..3)."""
  id: str  # "<file id>-<question index>": a RACE file's `id` names the article, not the question
  level: str  # "middle" or "high"
  article: str
  question: str
  options: tuple[str, ...]
  label: int


# ----------------------------------------------------------------------------- reading

def _examples(record: dict[str, Any], level: str) -> list[Example]:
  """The questions of one RACE record (`article`, `questions`, `options`, `answers`, `id`)."""
  questions, options, answers = record["questions"], record["options"], record["answers"]
  if not len(questions) == len(options) == len(answers):
    raise ValueError(f"RACE record {record['id']!r} has {len(questions)} questions, "
                     f"{len(options)} option lists and {len(answers)} answers")
  out = []
  for i, (question, opts, answer) in enumerate(zip(questions, options, answers)):
    if len(opts) != NUM_CHOICES or answer not in LETTERS:
      raise ValueError(f"RACE record {record['id']!r}, question {i}: expected {NUM_CHOICES} "
                       f"options and an answer in {LETTERS}, got {len(opts)} and {answer!r}")
    out.append(Example(id=f"{record['id']}-{i}", level=level, article=record["article"],
                       question=question, options=tuple(opts), label=LETTERS.index(answer)))
  return out


def _check_levels(levels: Sequence[str]) -> tuple[str, ...]:
  levels = tuple(levels)
  if not levels or any(level not in LEVELS for level in levels):
    raise ValueError(f"levels={levels!r}: use a non-empty subset of {LEVELS}")
  return levels


def read_race(data_dir: str | os.PathLike, split: str,
              levels: Sequence[str] = LEVELS) -> list[Example]:
  """Questions of the RACE distribution: data_dir/RACE/{split}/{level}/*.txt (or data_dir/{split}).

  Each file holds one JSON article record (the original reads one per line). Levels in the order
  given, files sorted by name, so the order is the same on every host.
  """
  root = files.path(data_dir)
  if (root / "RACE").is_dir():
    root = root / "RACE"
  examples = []
  for level in _check_levels(levels):
    level_dir = root / split / level
    if not level_dir.is_dir():
      raise FileNotFoundError(f"No RACE directory {level_dir} (expected "
                              f"DATA_DIR/RACE/{{train,dev,test}}/{{middle,high}}/*.txt)")
    for path in sorted(level_dir.glob("*.txt")):
      for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
          examples.extend(_examples(json.loads(line), level))
  return examples


def _text(value: Any) -> str:
  """A TFDS text value (str, bytes or a NumPy scalar) as str."""
  value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_source(level: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # here: a second to import, and only this reader needs it
  name = f"race/{level}"
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          tfds.core.registered.DatasetNotFoundError) as e:
    raise FileNotFoundError(
        f"TFDS could not open {name} split {split!r} (data_dir={data_dir}): it must be prepared "
        "once in ArrayRecord format, and TFDS needs TensorFlow to write RACE's nested `options`: "
        f"`pip install 'albert-jax[tf]'` then `tfds build {name} --file_format=array_record`. "
        "Or read the RACE distribution itself with task.source='files'.") from e


def read_tfds(split: str, level: str, data_dir: str | None = None) -> list[Example]:
  """Questions of TFDS's prepared `race/{level}` (features article, questions, options, answers,
  example_id), read through `tfds.data_source` without TensorFlow."""
  _check_levels([level])
  source = _tfds_source(level, split, data_dir)
  examples = []
  for i in range(len(source)):
    row = source[i]
    record = {"id": _text(row["example_id"]), "article": _text(row["article"]),
              "questions": [_text(q) for q in row["questions"]],
              "options": [[_text(o) for o in opts] for opts in row["options"]],
              "answers": [_text(a) for a in row["answers"]]}
    examples.extend(_examples(record, level))
  return examples


# ----------------------------------------------------------------------------- features

def _squeeze(text: str) -> str:
  return " ".join(text.split())


def qa_texts(example: Example) -> list[str]:
  """The second segment for each option: the question with "_" filled in, else question + option.

  Spaces are squeezed first, as the original's `preprocess_text` did before filling the blank.
  """
  question = _squeeze(example.question)
  return [question.replace("_", _squeeze(option)) if "_" in question
          else f"{question} {_squeeze(option)}" for option in example.options]


def _ids(tokenizer, text: str) -> list[int]:
  return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def convert_examples(examples: Sequence[Example], tokenizer, max_seq_length: int = 512,
                     max_qa_length: int = 128) -> dict[str, np.ndarray]:
  """`[CLS] article [SEP] qa [SEP]` for each option, int32 [N, 4, max_seq_length], and labels [N].

  As `race_utils.convert_single_example`: the qa part keeps its last max_qa_length tokens (the
  option is at the end), the article its first max_seq_length - 3 - len(qa) tokens.
  """
  if max_qa_length > max_seq_length - 3:
    raise ValueError(f"max_qa_length={max_qa_length} leaves no room for the article in "
                     f"max_seq_length={max_seq_length} (3 special tokens)")
  shape = (len(examples), NUM_CHOICES, max_seq_length)
  out = {k: np.zeros(shape, np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  out["labels"] = np.asarray([ex.label for ex in examples], np.int32).reshape(len(examples))
  cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
  article, article_ids = None, []
  for i, ex in enumerate(examples):
    if ex.article != article:  # a file's questions come together: tokenize its article once
      article, article_ids = ex.article, _ids(tokenizer, ex.article)
    for j, qa in enumerate(qa_texts(ex)):
      qa_ids = _ids(tokenizer, qa)[-max_qa_length:]
      context = article_ids[:max_seq_length - 3 - len(qa_ids)]
      ids = [cls, *context, sep, *qa_ids, sep]
      out["input_ids"][i, j, :len(ids)] = ids
      out["attention_mask"][i, j, :len(ids)] = 1
      out["token_type_ids"][i, j, len(context) + 2:len(ids)] = 1
  return out


# ----------------------------------------------------------------------------- task interface

def data_config(arg: str = "") -> ml_collections.ConfigDict:
  """`config.data` for RACE; arg "" or "all" (both levels), "middle" or "high"."""
  levels = {"": LEVELS, "all": LEVELS, "middle": ("middle",), "high": ("high",)}
  if arg not in levels:
    raise ValueError(f"race preset {arg!r}: use '', 'all', 'middle' or 'high'")
  return ml_collections.ConfigDict(dict(
      levels=levels[arg],
      source="files",  # "files": DATA_DIR/RACE/{split}/{level}/*.txt | "tfds": race/{level}
      data_dir="",  # files: the directory holding RACE/; tfds: its data_dir ("" = TFDS's default)
      train_split="train",
      eval_split="dev",
      max_seq_length=512,
      max_qa_length=128,
      max_examples=0,  # the first N questions of a split; 0 = all
  ))


def head(data_cfg) -> str:
  del data_cfg
  return HEAD


def num_labels(data_cfg: ml_collections.ConfigDict) -> int:
  del data_cfg
  return 2  # the multiple-choice head has one logit per choice and ignores num_labels


def example_spec(data_cfg: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """One question of `load`'s features: inputs [choices, length] and the answer's index."""
  return common.with_weight({**common.input_spec(NUM_CHOICES, data_cfg.max_seq_length),
                             "labels": jax.ShapeDtypeStruct((), jnp.int32)})


def read_examples(data_cfg: ml_collections.ConfigDict, split: str) -> list[Example]:
  """The questions of a split name ("train", "dev", "test") from data_cfg.source."""
  levels = _check_levels(data_cfg.levels)
  if data_cfg.source == "files":
    if not data_cfg.data_dir:
      raise ValueError("race with source='files' needs data.data_dir (the directory with RACE/)")
    examples = read_race(data_cfg.data_dir, split, levels)
  elif data_cfg.source == "tfds":
    examples = [ex for level in levels
                for ex in read_tfds(split, level, data_cfg.data_dir or None)]
  else:
    raise ValueError(f"race source={data_cfg.source!r}: use 'files' or 'tfds'")
  return examples[:data_cfg.max_examples] if data_cfg.max_examples else examples


def load(data_cfg: ml_collections.ConfigDict, tokenizer, split: str) -> arrays.Dataset:
  """The "train" or "eval" split's features; meta holds each row's question id and level."""
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'")
  examples = read_examples(data_cfg, data_cfg.train_split if split == "train"
                           else data_cfg.eval_split)
  features = convert_examples(examples, tokenizer, data_cfg.max_seq_length,
                              data_cfg.max_qa_length)
  return arrays.Dataset(features, meta={"ids": [ex.id for ex in examples],
                                        "levels": [ex.level for ex in examples]})


def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """Cross-entropy over the 4 choices' logits [b, 4], summed with the rows' weights."""
  return common.classification_sums(outputs.logits, batch["labels"], batch["weight"])


counts = common.weight_counts
normalise = common.classification_normalise


def predictions(outputs, batch) -> dict[str, jax.Array]:
  del batch
  return {"logits": outputs.logits}


def accuracies(predicted: np.ndarray, labels: np.ndarray,
               levels: Iterable[str]) -> dict[str, float]:
  """`accuracy` over all questions and `<level>_accuracy` for each level present."""
  correct = np.asarray(predicted) == np.asarray(labels)
  levels = np.asarray(list(levels))
  out = {"accuracy": float(correct.mean()) if correct.size else 0.0}
  for level in LEVELS:
    if (mask := levels == level).any():
      out[f"{level}_accuracy"] = float(correct[mask].mean())
  return out


def evaluate_task(predictions: dict[str, np.ndarray], dataset: arrays.Dataset,
                  data_cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike | None
                  ) -> dict[str, float]:
  """Accuracies; writes output_dir/predictions.json (question id -> predicted letter)."""
  del data_cfg
  predicted = np.argmax(np.asarray(predictions["logits"]), axis=-1)
  if len(predicted) != len(dataset):
    raise ValueError(f"{len(predicted)} predictions for {len(dataset)} questions")
  metrics = accuracies(predicted, dataset.features["labels"], dataset.meta["levels"])
  if output_dir:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    letters = {qid: LETTERS[p] for qid, p in zip(dataset.meta["ids"], predicted.tolist())}
    files.write_text(Path(output_dir) / "predictions.json", json.dumps(letters, indent=1) + "\n")
  return metrics


tokenizer, data, score = common.interface(load, evaluate_task)
