"""GLUE fine-tuning: the nine tasks' files (GLUE's TSVs or TFDS `glue/*`), features, the original's
hyperparameters, GLUE's metrics, and leaderboard submission files.

Labels and columns follow google-research/albert's `classifier_utils.py` processors (as Hugging
Face's `glue` processors): MNLI ["contradiction", "entailment", "neutral"], QNLI / RTE
["entailment", "not_entailment"], STS-B a regression score, the others ["0", "1"].

The hyperparameters live here, in HYPERPARAMETERS (run_glue.sh's, per task), and
configs/finetune_glue.py and `data_config` read them: nothing else states them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import files
from albert_jax.data import arrays
from albert_jax.tasks import common

HEAD = "sequence_classification"
METRIC = "score"  # `evaluate_task`'s GLUE score of the task: checkpoints are picked on it
CONSOLE = ("loss", "accuracy")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Where a task's fields are: TSV header names, TFDS feature names, and its labels."""
  dir_name: str  # the folder (and submission file) name in GLUE's download
  labels: tuple[str, ...] | None  # None: regression
  text_columns: tuple[str, ...]  # one (single sentence) or two (pair) TSV columns
  label_column: str
  tfds_text: tuple[str, ...]
  headerless: tuple[str, ...] = ()  # column names of train / dev files without a header


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", _BINARY, ("sentence",), "label", ("sentence",),
                     headerless=("source", "label", "author_label", "sentence")),
    "sst2": TaskSpec("SST-2", _BINARY, ("sentence",), "label", ("sentence",)),
    "mrpc": TaskSpec("MRPC", _BINARY, ("#1 String", "#2 String"), "Quality", _PAIR),
    "stsb": TaskSpec("STS-B", None, _PAIR, "score", _PAIR),
    "qqp": TaskSpec("QQP", _BINARY, ("question1", "question2"), "is_duplicate",
                    ("question1", "question2")),
    "mnli": TaskSpec("MNLI", ("contradiction", "entailment", "neutral"), _PAIR, "gold_label",
                     ("premise", "hypothesis")),
    "qnli": TaskSpec("QNLI", _ENTAILMENT, ("question", "sentence"), "label",
                     ("question", "sentence")),
    "rte": TaskSpec("RTE", _ENTAILMENT, _PAIR, "label", _PAIR),
    "wnli": TaskSpec("WNLI", _BINARY, _PAIR, "label", _PAIR),
}
LABELS = {task: spec.labels for task, spec in TASKS.items()}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli_matched": "mnli", "mnli-m": "mnli",
            "mnli_mismatched": "mnli", "mnli-mm": "mnli"}
_MISMATCHED = ("mnli_mismatched", "mnli-mm")

# google-research/albert `run_glue.sh` (its last version, commit 557c37b): `run_task TASK
# warmup_step learning_rate train_step save_checkpoints_steps train_batch_size`, all with
# --max_seq_length=512 --optimizer=adamw (an earlier version of the script used 128). These equal
# the ALBERT paper's Appendix A.4 table, which v2 models kept (README, "v2"). WNLI is not in the
# script: its row is the paper table's (2e-5, batch 16, 2000 steps, 250 warmup). The table's
# dropout (ALBERT 0.1 for QQP, RTE, WNLI, else 0; classifier 0.1) is the model config's business.
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    task: dict(lr=lr, train_steps=steps, warmup_steps=warmup, batch_size=batch, max_seq_length=512)
    for task, warmup, lr, steps, batch in (
        ("sst2", 1256, 1e-5, 20935, 32),
        ("mnli", 1000, 3e-5, 10000, 128),
        ("cola", 320, 1e-5, 5336, 16),
        ("qnli", 1986, 1e-5, 33112, 32),
        ("qqp", 1000, 5e-5, 14000, 128),
        ("rte", 200, 3e-5, 800, 32),
        ("stsb", 214, 2e-5, 3598, 16),
        ("mrpc", 200, 2e-5, 800, 32),
        ("wnli", 250, 2e-5, 2000, 16),
    )
}


class Example(NamedTuple):
  """One row of a task's file; `label` is None where the file has none (test sets)."""
  guid: str
  text_a: str
  text_b: str | None
  label: str | float | None


def canonical_task(task: str) -> str:
  """"SST-2", "mnli-mm", ... -> the task's key in TASKS ("sst2", "mnli")."""
  name = str(task).strip().lower()
  name = _ALIASES.get(name, name)
  if name not in TASKS:
    raise ValueError(f"unknown GLUE task {task!r}; one of {sorted(TASKS)} (or {sorted(_ALIASES)})")
  return name


# ----------------------------------------------------------------------------- metrics

def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson's r; NaN when either side is constant (as scipy)."""
  dx, dy = x - x.mean(), y - y.mean()
  denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
  return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties given the mean of the ranks they span (scipy's `rankdata` "average")."""
  order = np.argsort(x, kind="stable")
  _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
  return ranks


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
  """sklearn's multi-class MCC from the confusion matrix; 0 where it is undefined."""
  classes, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  true, pred = index[:len(labels)], index[len(labels):]
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (true, pred), 1)
  t, p, n = confusion.sum(1), confusion.sum(0), confusion.sum()
  covariance = np.trace(confusion) * n - t @ p
  denominator = np.sqrt((n * n - p @ p) * (n * n - t @ t))
  return float(covariance / denominator) if denominator > 0 else 0.0


def _f1(predictions: np.ndarray, labels: np.ndarray) -> float:
  """F1 of class 1; 0 when there is no positive in either (sklearn's zero_division)."""
  tp = np.sum((predictions == 1) & (labels == 1))
  wrong = np.sum(predictions != labels)  # false positives + false negatives
  return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def compute_metrics(task: str, predictions, labels) -> dict[str, float]:
  """GLUE's metrics of a task as fractions: class ids (floats for STS-B) vs the gold labels."""
  task = canonical_task(task)
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or predictions.ndim != 1:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be [n]")
  if task == "stsb":
    x, y = predictions.astype(np.float64), labels.astype(np.float64)
    return {"pearson": _pearson(x, y),
            "spearmanr": _pearson(average_ranks(x), average_ranks(y))}
  predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
  out = {"accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan")}
  if task in ("mrpc", "qqp"):
    out["f1"] = _f1(predictions, labels)
  if task == "cola":
    out["matthews_corrcoef"] = _matthews(predictions, labels)
  return out


def glue_score(task: str, metrics: dict[str, float]) -> float:
  """The task's number in the GLUE average: MCC (CoLA), mean of two (STS-B, MRPC, QQP), accuracy."""
  task = canonical_task(task)
  if task == "cola":
    return metrics["matthews_corrcoef"]
  if task == "stsb":
    return (metrics["pearson"] + metrics["spearmanr"]) / 2
  if task in ("mrpc", "qqp"):
    return (metrics["accuracy"] + metrics["f1"]) / 2
  return metrics["accuracy"]


# ----------------------------------------------------------------------------- reading files

def file_split(task: str, split: str) -> str:
  """The TSV file stem of a split: MNLI's "dev" / "test" are its matched halves."""
  if canonical_task(task) == "mnli" and split in ("dev", "test"):
    return f"{split}_matched"
  return split


def _lines(path: Path) -> Iterable[tuple[int, list[str]]]:
  """(line number, tab-separated fields) of non-blank lines; quotes are plain characters."""
  with files.open_text(path, newline="\n") as f:
    for number, line in enumerate(f, 1):
      line = line.removesuffix("\n").removesuffix("\r")
      if line.strip():
        yield number, line.split("\t")


def _label(spec: TaskSpec, value: str, where: str) -> str | float:
  """A label as the file writes it, checked against the task's list (STS-B: a float)."""
  if spec.labels is None:
    return float(value)
  if value not in spec.labels:
    raise ValueError(f"{where}: label {value!r} is not one of {spec.labels}")
  return value


def read_tsv_examples(task: str, path: str | os.PathLike, *,
                      max_examples: int = 0) -> list[Example]:
  """Examples of one of GLUE's TSV files (train, dev, test), found by their header's names.

  CoLA's train and dev files have no header (source, label, author label, sentence). The guid is
  the file's "index" / "id" column where it has one (test sets: the submission's index), else the
  row's number from 0. QQP rows with missing fields are skipped, as the original did.
  """
  task = canonical_task(task)
  spec, path = TASKS[task], files.path(path)
  examples: list[Example] = []
  columns: dict[str, int] = {}
  for number, fields in _lines(path):
    if not columns:
      has_header = not spec.headerless or fields[0] == "index"
      columns = _columns(spec, fields if has_header else spec.headerless, path)
      if has_header:
        continue
    if len(fields) <= max(columns.values()):
      if task == "qqp":
        continue
      raise ValueError(f"{path}:{number}: {len(fields)} fields, too few for {list(columns)}")
    texts = [fields[columns[c]] for c in spec.text_columns]
    guid = fields[columns["guid"]] if "guid" in columns else str(len(examples))
    label = (_label(spec, fields[columns["label"]], f"{path}:{number}")
             if "label" in columns else None)
    examples.append(Example(guid, texts[0], texts[1] if len(texts) > 1 else None, label))
    if max_examples and len(examples) >= max_examples:
      break
  return examples


def _columns(spec: TaskSpec, header: Sequence[str], path: Path) -> dict[str, int]:
  """Positions of the text columns, plus "guid" (index / id) and "label" where the file has them."""
  names = list(header)
  missing = [c for c in spec.text_columns if c not in names]
  if missing:
    raise ValueError(f"{path}: no column {missing} in its header {names} (not a GLUE file?)")
  columns = {c: names.index(c) for c in spec.text_columns}
  if spec.label_column in names:
    columns["label"] = names.index(spec.label_column)
  if guid := next((c for c in ("index", "id") if c in names), None):
    columns["guid"] = names.index(guid)
  return columns


_TFDS_SPLITS = {"dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}


def tfds_split(task: str, split: str) -> str:
  """Our split name ("dev", "dev_mismatched", "test") -> TFDS's ("validation", ...)."""
  split = file_split(task, split)
  return _TFDS_SPLITS.get(split, split)


def examples_from_tfds(task: str, records: Iterable[dict], label_names: Sequence[str] | None,
                       max_examples: int = 0) -> list[Example]:
  """Examples of TFDS `glue/<task>` records; label -1 (test sets) becomes None.

  TFDS numbers classes its own way (MNLI: entailment, neutral, contradiction): a label is read back
  by its TFDS name where that is one of ours, else as the class id ("0" / "1").
  """
  task = canonical_task(task)
  spec = TASKS[task]
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  examples = []
  for record in records:
    texts = [text(record[f]) for f in spec.tfds_text]
    value = np.asarray(record["label"]).item()
    if spec.labels is None:
      label = None if value == -1 else float(value)
    elif value < 0:
      label = None
    else:
      name = label_names[value] if label_names is not None else None
      label = name if name in spec.labels else str(value)
    guid = str(np.asarray(record["idx"]).item())
    examples.append(Example(guid, texts[0], texts[1] if len(texts) > 1 else None, label))
    if max_examples and len(examples) >= max_examples:
      break
  return examples


def read_tfds(task: str, split: str, data_dir: str | None = None, *, download: bool = False,
              max_examples: int = 0) -> list[Example]:
  """Examples of TFDS `glue/<task>` (needs TensorFlow: TFDS registers glue only with it)."""
  import tensorflow_datasets as tfds  # only this reader needs it
  task = canonical_task(task)
  name = f"glue/{task}"
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    if importlib.util.find_spec("tensorflow") is None:
      raise ModuleNotFoundError(
          f"TFDS cannot load {name!r}: without TensorFlow installed TFDS does not register glue. "
          "Install it with `pip install 'albert-jax[tf]'` (tensorflow-cpu), or use GLUE's TSV "
          "files (task source='files', data_dir=<GLUE>/<TASK>).") from e
    raise
  if download:
    builder.download_and_prepare()
  label_names = None if task == "stsb" else builder.info.features["label"].names
  split = tfds_split(task, split)
  if str(getattr(builder.info.file_format, "value", "")) == "array_record":
    source = builder.as_data_source(split=split)
    records = (source[i] for i in range(len(source)))
  else:
    records = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return examples_from_tfds(task, records, label_names, max_examples)


# ----------------------------------------------------------------------------- features

_CHUNK = 1024  # examples tokenised at a time: padded Python lists of 512 ids are large


def _label_value(spec: TaskSpec, label) -> tuple[float | int, bool]:
  """(label id or score, labelled?); unlabelled rows get 0."""
  if label is None:
    return 0, False
  return (float(label), True) if spec.labels is None else (spec.labels.index(label), True)


def convert_examples(examples: Sequence[Example], tokenizer, task: str, max_seq_length: int, *,
                     split: str = "") -> arrays.Dataset:
  """`[CLS] a [SEP] (b [SEP])` ids, masks and types [N, max_seq_length] int32 (longest-first
  truncation), `labels` [N] (int32, float32 for STS-B), and `meta` (guids, split, labelled)."""
  task = canonical_task(task)
  spec, n = TASKS[task], len(examples)
  names = ("input_ids", "attention_mask", "token_type_ids")
  features = {k: np.zeros((n, max_seq_length), np.int32) for k in names}
  pair = len(spec.text_columns) > 1
  for start in range(0, n, _CHUNK):
    chunk = examples[start:start + _CHUNK]
    texts_b = [e.text_b or "" for e in chunk] if pair else None
    encoded = tokenizer([e.text_a for e in chunk], texts_b, padding="max_length", truncation=True,
                        max_length=max_seq_length, return_tensors="np")
    for k in names:
      features[k][start:start + len(chunk)] = encoded[k]
  values = [_label_value(spec, e.label) for e in examples]
  features["labels"] = np.asarray([v for v, _ in values],
                                  np.float32 if spec.labels is None else np.int32).reshape(n)
  meta = {"task": task, "guid": np.asarray([e.guid for e in examples], object).reshape(n),
          "split": np.full(n, split, object),
          "labelled": np.asarray([ok for _, ok in values], bool).reshape(n)}
  return arrays.Dataset(features, meta)


def concatenate(datasets: Sequence[arrays.Dataset]) -> arrays.Dataset:
  """One dataset of several (e.g. MNLI matched + mismatched), rows in order."""
  features = {k: np.concatenate([d.features[k] for d in datasets]) for k in datasets[0].features}
  meta = {"task": datasets[0].meta["task"]}
  meta.update({k: np.concatenate([d.meta[k] for d in datasets])
               for k in ("guid", "split", "labelled")})
  return arrays.Dataset(features, meta)


# ----------------------------------------------------------------------------- output files

def predicted_values(task: str, predictions) -> np.ndarray:
  """Class ids (argmax of [N, labels] logits) or STS-B scores; 1-D predictions pass through."""
  predictions = np.asarray(predictions)
  if predictions.ndim == 2:
    return predictions[:, 0] if canonical_task(task) == "stsb" else predictions.argmax(-1)
  return predictions


def _label_strings(task: str, values: np.ndarray) -> list[str]:
  """Class ids -> the task's label names; STS-B scores with 3 decimals (as HF's run_glue)."""
  labels = TASKS[canonical_task(task)].labels
  if labels is None:
    return [f"{float(v):.3f}" for v in values]
  return [labels[int(v)] for v in values]


def submission_name(task: str, split: str = "test") -> str:
  """The leaderboard's file name: "SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", ..."""
  name = canonical_task(task)
  if name != "mnli":
    return f"{TASKS[name].dir_name}.tsv"
  mismatched = str(task).lower() in _MISMATCHED or "mismatched" in split
  return "MNLI-mm.tsv" if mismatched else "MNLI-m.tsv"


def write_submission(task: str, predictions, dataset: arrays.Dataset,
                     path: str | os.PathLike) -> Path:
  """`index\\tprediction` rows (label strings; STS-B scores) for GLUE's server; returns the file.

  `path` is the file (".tsv") or its directory, where it gets `submission_name`. `predictions` are
  class ids, scores or logits in `dataset` order; the index is the test file's (the guid).
  """
  values = predicted_values(task, predictions)
  splits = sorted(set(dataset.meta["split"]))
  if len(splits) > 1:
    raise ValueError(f"one split per submission file, not {splits}")
  path = Path(path)
  if path.suffix != ".tsv":
    path = path / submission_name(task, splits[0] if splits else "test")
  rows = zip(dataset.meta["guid"], _label_strings(task, values))
  files.write_text(path, "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in rows))
  return path


def _write_predictions(task: str, values, dataset: arrays.Dataset, path: Path) -> None:
  """`index\\tprediction\\tlabel` for reading the errors."""
  rows = zip(dataset.meta["guid"], _label_strings(task, values),
             _label_strings(task, dataset.features["labels"]))
  text = "".join(f"{i}\t{p}\t{g}\n" for i, p, g in rows)
  files.write_text(path, "index\tprediction\tlabel\n" + text)


# ----------------------------------------------------------------------------- the task interface

def data_config(arg: str = "") -> ml_collections.ConfigDict:
  """`config.data` for "sst2" or "task=sst2" (also "mnli-mm": mismatched dev set first)."""
  name = arg.split("=", 1)[1] if arg.startswith("task=") else arg
  if not name:
    raise ValueError(f"name a GLUE task, e.g. 'task=sst2': one of {sorted(TASKS)}")
  task = canonical_task(name)
  mismatched = name.strip().lower() in _MISMATCHED
  eval_split, extra = "dev", ()
  if task == "mnli":
    eval_split = "dev_mismatched" if mismatched else "dev_matched"
    extra = ("dev_matched",) if mismatched else ("dev_mismatched",)
  return ml_collections.ConfigDict(dict(
      task=task, label_names=TASKS[task].labels or (),  # the model's id2label
      source="files",  # "files": GLUE's TSVs in data_dir; "tfds": glue/<task> (needs [tf])
      data_dir=f"glue_data/{TASKS[task].dir_name}", tfds_data_dir="",
      train_split="train", eval_split=eval_split,
      extra_eval_splits=extra,  # the loop loads and scores each as eval set "eval_<split>"
      predict_split="",  # e.g. "test" (MNLI: "test_matched,test_mismatched"): submission files
      max_seq_length=HYPERPARAMETERS[task]["max_seq_length"],
      max_examples=0,  # 0: all; else the first N of each split (smoke tests)
      **common.PACK_SETTINGS,
  ))


def head(data_cfg) -> str:
  del data_cfg
  return HEAD


def num_labels(data_cfg) -> int:
  """The classifier's width: the number of classes, 1 for STS-B (regression)."""
  labels = TASKS[canonical_task(data_cfg.task)].labels
  return 1 if labels is None else len(labels)


def example_spec(data_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One row of the batches: the inputs and `labels` (float32 for STS-B), packed or not."""
  regression = TASKS[canonical_task(data_cfg.task)].labels is None
  return common.row_spec(data_cfg, jnp.float32 if regression else jnp.int32)


def _splits(data_cfg, split: str) -> list[str]:
  """"train" / "eval" / "predict" -> the file splits they stand for; other names as they are."""
  task = canonical_task(data_cfg.task)
  if split == "train":
    names = [data_cfg.train_split]
  elif split == "eval":
    names = [data_cfg.eval_split]  # extra_eval_splits are loaded by name, one eval set each
  elif split == "predict":
    if not data_cfg.predict_split:
      raise ValueError("data.predict_split is empty: set it (e.g. 'test') to write submissions")
    names = [s.strip() for s in data_cfg.predict_split.split(",") if s.strip()]
  else:
    names = [split]
  return [file_split(task, s) for s in names]


def read_examples(data_cfg, split: str) -> list[Example]:
  """Examples of one file split from the configured source."""
  if data_cfg.source == "files":
    return read_tsv_examples(data_cfg.task, files.path(data_cfg.data_dir) / f"{split}.tsv",
                             max_examples=data_cfg.max_examples)
  if data_cfg.source == "tfds":
    return read_tfds(data_cfg.task, split, data_cfg.tfds_data_dir or None,
                     max_examples=data_cfg.max_examples)
  raise ValueError(f"data.source={data_cfg.source!r}: use 'files' or 'tfds'")


def load(data_cfg, tokenizer, split: str) -> arrays.Dataset:
  """Features of "train", "eval", "predict" (comma list: one dataset) or a file split by name."""
  return concatenate([convert_examples(read_examples(data_cfg, s), tokenizer, data_cfg.task,
                                       data_cfg.max_seq_length, split=s)
                      for s in _splits(data_cfg, split)])


def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """Summed cross-entropy (STS-B: squared error) and correct rows, weighted by batch["weight"]."""
  return common.classification_sums(outputs.logits, batch["labels"], batch["weight"])


counts = common.weight_counts
normalise = common.classification_normalise


def predictions(outputs, batch) -> dict[str, jax.Array]:
  """What `evaluate_task` reads: the logits [b, num_labels]."""
  return {"logits": outputs.logits}


def split_prefix(split: str) -> str:
  """The metric-name prefix of an extra eval split: "mnli_mm/" for dev_mismatched."""
  return {"dev_mismatched": "mnli_mm/", "dev_matched": "mnli_m/"}.get(split, f"{split}/")


def _subset(dataset: arrays.Dataset, rows: np.ndarray) -> arrays.Dataset:
  """The rows `rows` of a dataset, features and meta alike."""
  meta = {k: v if k == "task" else v[rows] for k, v in dataset.meta.items()}
  return arrays.Dataset({k: v[rows] for k, v in dataset.features.items()}, meta)


def evaluate_task(predictions, dataset: arrays.Dataset, data_cfg, output_dir) -> dict[str, float]:
  """Metrics and "score" per labelled split (the first unprefixed, the others `split_prefix`ed);
  writes output_dir/predictions_<split>.tsv, or the submission file of an unlabelled split."""
  task, output_dir = canonical_task(data_cfg.task), Path(output_dir)
  values = predicted_values(task, predictions["logits"])
  results: dict[str, float] = {}
  first = True
  for split in dict.fromkeys(dataset.meta["split"]):  # splits in row order
    rows = np.flatnonzero(dataset.meta["split"] == split)
    part = _subset(dataset, rows)
    if not part.meta["labelled"].all():
      write_submission(data_cfg.task, values[rows], part, output_dir)
      continue
    metrics = compute_metrics(task, values[rows], part.features["labels"])
    metrics["score"] = glue_score(task, metrics)
    prefix = "" if first else split_prefix(split)
    results.update({prefix + k: v for k, v in metrics.items()})
    first = False
    _write_predictions(task, values[rows], part, output_dir / f"predictions_{split}.tsv")
  return results


tokenizer, data, score = common.interface(load, evaluate_task)
