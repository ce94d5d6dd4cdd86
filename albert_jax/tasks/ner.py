"""Named-entity recognition on CoNLL-style files: first-subword token classification and
seqeval's entity-level precision / recall / F1 (its default, conlleval-compatible mode)."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from albert_jax import files
from albert_jax.data import arrays
from albert_jax.tasks import common

HEAD = "token_classification"
METRIC = "f1"
CONSOLE = ("loss", "accuracy")
DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentence:
  words: tuple[str, ...]
  tags: tuple[str, ...]


# ----------------------------------------------------------------------------- reading

def read_conll(path: str | os.PathLike) -> list[Sentence]:
  """Sentences of a CoNLL file: a token per line, its word first and its tag last (columns split
  on whitespace), blank lines between sentences, `-DOCSTART-` lines skipped."""
  sentences, words, tags = [], [], []

  def flush():
    if words:
      sentences.append(Sentence(tuple(words), tuple(tags)))
      words.clear()
      tags.clear()

  with files.open_text(path) as f:
    for n, line in enumerate(f, 1):
      columns = line.split()
      if not columns or columns[0] == DOCSTART:
        flush()
        continue
      if len(columns) < 2:
        raise ValueError(f"{path}:{n}: expected a word and a tag, got {line.strip()!r}")
      words.append(columns[0])
      tags.append(columns[-1])
  flush()
  return sentences


def label_list(sentences: Sequence[Sentence]) -> tuple[str, ...]:
  """The tags that occur, sorted, with "O" first."""
  tags = {t for s in sentences for t in s.tags}
  return (("O",) if "O" in tags else ()) + tuple(sorted(tags - {"O"}))


# ----------------------------------------------------------------------------- features

def _word_ids(tokenizer, word: str, cache: dict[str, list[int]]) -> list[int]:
  """A word's piece ids; <unk> if it has none (a zero-width space), so every word gets a label."""
  if word not in cache:
    cache[word] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word) or
                                                  [tokenizer.unk_token])
  return cache[word]


def _row(words, tag_ids, tokenizer, max_seq_length, cache):
  """(input ids, labels, first-piece positions) of one sentence, `[CLS] pieces [SEP]`, truncated.

  A word whose first piece does not fit is dropped (with the rest); a word cut after its first
  piece keeps its label there.
  """
  ids, labels, positions = [tokenizer.cls_token_id], [common.IGNORE], []
  room = max_seq_length - 1  # ids may reach this length before [SEP]
  for word, tag_id in zip(words, tag_ids):
    if len(ids) >= room:
      break
    pieces = _word_ids(tokenizer, word, cache)[:room - len(ids)]
    positions.append(len(ids))
    ids.extend(pieces)
    labels.extend([tag_id] + [common.IGNORE] * (len(pieces) - 1))
  return ids + [tokenizer.sep_token_id], labels + [common.IGNORE], positions


def convert_sentences(sentences: Sequence[Sentence], labels: Sequence[str], tokenizer,
                      max_seq_length: int = 128) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
  """int32 [N, max_seq_length] inputs and labels (IGNORE but on each word's first piece), and
  each row's first-piece positions (one per word that fits)."""
  if max_seq_length < 3:
    raise ValueError(f"max_seq_length={max_seq_length}: need room for [CLS], a word and [SEP]")
  label_ids = {label: i for i, label in enumerate(labels)}
  shape = (len(sentences), max_seq_length)
  out = {k: np.zeros(shape, np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  out["labels"] = np.full(shape, common.IGNORE, np.int32)
  positions, cache = [], {}
  for i, sentence in enumerate(sentences):
    unknown = set(sentence.tags) - label_ids.keys()
    if unknown:
      raise ValueError(f"tags {sorted(unknown)} are not among the labels {tuple(labels)}; "
                       "list them all in task.labels")
    ids, row_labels, row_positions = _row(sentence.words, [label_ids[t] for t in sentence.tags],
                                          tokenizer, max_seq_length, cache)
    out["input_ids"][i, :len(ids)] = ids
    out["attention_mask"][i, :len(ids)] = 1
    out["labels"][i, :len(ids)] = row_labels
    positions.append(np.asarray(row_positions, np.int32))
  return out, positions


# ----------------------------------------------------------------------------- metrics

def _split_tag(tag: str) -> tuple[str, str]:
  """(prefix, type) as seqeval's default mode reads a tag: "B-PER" -> (B, PER), "O" -> (O, _)."""
  return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag, tag, prev_type, type_) -> bool:
  """Whether the chunk before this token ends here (seqeval's `end_of_chunk`)."""
  return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
          or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag, tag, prev_type, type_) -> bool:
  """Whether a chunk starts at this token (seqeval's `start_of_chunk`): an I- after O or after
  another type starts one, which is how IOB1 and IOB2 both read."""
  return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
          or (tag not in ("O", ".") and prev_type != type_))


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) of each chunk of one sentence's tags (IOB1, IOB2 or IOBES)."""
  chunks, begin, prev_tag, prev_type = [], 0, "O", ""
  for i, tag in enumerate([*tags, "O"]):  # the trailing "O" closes a chunk at the end
    prefix, type_ = _split_tag(tag)
    if _ends(prev_tag, prefix, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _starts(prev_tag, prefix, prev_type, type_):
      begin = i
    prev_tag, prev_type = prefix, type_
  return chunks


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
  precision = correct / predicted if predicted else 0.0
  recall = correct / gold if gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return precision, recall, f1


def entity_scores(gold: Sequence[Sequence[str]],
                  predicted: Sequence[Sequence[str]]) -> dict[str, float]:
  """seqeval's micro precision / recall / F1 over entities, `f1_<TYPE>` for every type in gold or
  predicted, and token `accuracy`; sentences are scored apart (no chunk spans two)."""
  if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
    raise ValueError("gold and predicted tags differ in shape")
  gold_set = {(i, *e) for i, tags in enumerate(gold) for e in get_entities(tags)}
  pred_set = {(i, *e) for i, tags in enumerate(predicted) for e in get_entities(tags)}
  hit_set = gold_set & pred_set
  precision, recall, f1 = _prf(len(hit_set), len(pred_set), len(gold_set))
  tokens = sum(len(g) for g in gold)
  same = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
  out = {"precision": precision, "recall": recall, "f1": f1,
         "accuracy": same / tokens if tokens else 0.0}
  by_type = [Counter(e[1] for e in s) for s in (hit_set, pred_set, gold_set)]
  for type_ in sorted(by_type[1].keys() | by_type[2].keys()):
    out[f"f1_{type_}"] = _prf(*(c[type_] for c in by_type))[2]
  return out


# ----------------------------------------------------------------------------- task interface

def data_config(arg: str = "") -> ml_collections.ConfigDict:
  """`config.data` for NER on CoNLL-style files (arg: no presets, "")."""
  if arg:
    raise ValueError(f"ner has no preset {arg!r}; set data.train_file and data.eval_file")
  return ml_collections.ConfigDict(dict(
      train_file="",  # CoNLL-style: word first, tag last, blank lines between sentences
      eval_file="",
      labels=(),  # empty: the train file's tags, sorted with "O" first
      max_seq_length=128,
      max_examples=0,  # the first N sentences of a file; 0 = all
      **common.PACK_SETTINGS,
  ))


def labels_of(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """data_cfg.labels, or the train file's tags when it is empty."""
  if data_cfg.labels:
    return tuple(data_cfg.labels)
  if not data_cfg.train_file:
    raise ValueError("ner needs data.labels or data.train_file to know its labels")
  return label_list(read_conll(data_cfg.train_file))


def head(data_cfg) -> str:
  del data_cfg
  return HEAD


def num_labels(data_cfg: ml_collections.ConfigDict) -> int:
  return len(labels_of(data_cfg))


def example_spec(data_cfg: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """One row of the batches: the inputs and a label per token, packed or not."""
  return common.row_spec(data_cfg, jnp.int32, per_token=True)


def load(data_cfg: ml_collections.ConfigDict, tokenizer, split: str) -> arrays.Dataset:
  """One row per sentence; meta: `sentences`, each row's first-piece `positions`, `labels`."""
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'")
  path = data_cfg.train_file if split == "train" else data_cfg.eval_file
  if not path:
    raise ValueError(f"ner needs data.{split}_file")
  sentences = read_conll(path)
  if data_cfg.max_examples:
    sentences = sentences[:data_cfg.max_examples]
  labels = labels_of(data_cfg)
  features, positions = convert_sentences(sentences, labels, tokenizer, data_cfg.max_seq_length)
  return arrays.Dataset(features, meta={"sentences": sentences, "positions": positions,
                                        "labels": labels})


def _labelled(batch) -> jax.Array:
  """[b, L]: 1 where a token has a label (its word's first piece), times its example's weight."""
  return (batch["labels"] != common.IGNORE).astype(jnp.float32) * common.token_weights(batch)


def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """Cross-entropy and correct predictions summed over the labelled tokens."""
  logits, labels = outputs.logits, batch["labels"]  # [b, L, num_labels], [b, L]
  mask = _labelled(batch)
  safe = jnp.where(labels == common.IGNORE, 0, labels).astype(jnp.int32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  correct = (jnp.argmax(logits, -1) == safe).astype(jnp.float32)
  return {"loss": jnp.sum(xent * mask), "correct": jnp.sum(correct * mask)}


def counts(batch) -> dict[str, jax.Array]:
  """The labelled tokens: the loss and the accuracy are per token."""
  return {"weight": jnp.sum(_labelled(batch))}


normalise = common.classification_normalise


def predictions(outputs, batch) -> dict[str, jax.Array]:
  """Argmax label ids [b, L], not logits: num_labels times less to gather."""
  del batch
  return {"predictions": jnp.argmax(outputs.logits, -1).astype(jnp.int32)}


def word_tags(predicted: np.ndarray, dataset: arrays.Dataset) -> list[list[str]]:
  """Each sentence's predicted tag per word, read at its first piece; words cut off get "O"."""
  labels = dataset.meta["labels"]
  out = []
  for row, sentence, positions in zip(predicted, dataset.meta["sentences"],
                                      dataset.meta["positions"]):
    tags = [labels[i] for i in row[positions].tolist()]
    out.append(tags + ["O"] * (len(sentence.words) - len(tags)))
  return out


def evaluate_task(predictions: dict[str, np.ndarray], dataset: arrays.Dataset,
                  data_cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike | None
                  ) -> dict[str, float]:
  """Entity precision / recall / F1, per-type F1, token accuracy; writes output_dir/predictions.txt
  (CoNLL: "word gold predicted" per line, a blank line after each sentence)."""
  del data_cfg
  predicted = predictions.get("predictions")
  if predicted is None:
    predicted = np.argmax(predictions["logits"], -1)
  predicted = np.asarray(predicted)
  if len(predicted) != len(dataset):
    raise ValueError(f"{len(predicted)} predictions for {len(dataset)} sentences")
  sentences = dataset.meta["sentences"]
  pred_tags = word_tags(predicted, dataset)
  metrics = entity_scores([s.tags for s in sentences], pred_tags)
  if output_dir:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    lines = []
    for sentence, tags in zip(sentences, pred_tags):
      lines.extend(f"{w} {g} {p}" for w, g, p in zip(sentence.words, sentence.tags, tags))
      lines.append("")
    files.write_text(Path(output_dir) / "predictions.txt", "\n".join(lines) + "\n" if lines else "")
  return metrics


tokenizer, data, score = common.interface(load, evaluate_task, token_predictions=True)
