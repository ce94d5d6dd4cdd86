"""SQuAD's data as both SQuAD tasks read it (`squad`, the span head; `squad_v2_original`, the
original ALBERT SQuAD 2.0 head): the examples (official JSON files or TFDS), the original
run_squad's sliding-window features and the meta post-processing reads, `config.data`, and the
original scripts' hyperparameters.

The hyperparameters live here, in HYPERPARAMETERS, one row per SQuAD version for both heads (the
original's run_squad_v2.sh trained its SQuAD 2.0 head with the v2 row); configs/finetune_squad.py
reads them, and nothing else states them.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import files
from albert_jax.data import arrays
from albert_jax.tasks import common

log = logging.getLogger(__name__)

# The original ALBERT run_squad_v1.sh / run_squad_v2.sh: lr 5e-5 (v1) / 3e-5 (v2), batch 48,
# 3649 / 8144 steps, 10% warmup, sequence 384 / 512 (the paper's table A.4; no dropout in the
# encoder, 0.1 on the output layer: the v2 presets'). Doc stride 128 and query 64 are both
# versions' `data_config` defaults.
HYPERPARAMETERS: dict[int, dict[str, Any]] = {
    1: dict(lr=5e-5, total_steps=3649, warmup_steps=365, batch_size=48, max_seq_length=384),
    2: dict(lr=3e-5, total_steps=8144, warmup_steps=814, batch_size=48, max_seq_length=512),
}

# The task (`albert_jax.tasks.TASKS`) each `data.head` trains: "span", start/end logits with
# [CLS] as the null answer (HF's AlbertForQuestionAnswering); "original", google-research/albert's
# SQuAD 2.0 head (start, end given the start, an answer class), version 2 only.
TASK_OF_HEAD = {"span": "squad", "original": "squad_v2_original"}


def task_name(head: str) -> str:
  """The task `data.head` (or finetune_squad.py's head=) names."""
  if head not in TASK_OF_HEAD:
    raise ValueError(f"data.head={head!r}: use one of {sorted(TASK_OF_HEAD)}")
  return TASK_OF_HEAD[head]


def check_head(data_cfg, task: str) -> None:
  """Refuses a `data.head` that names another task than `task` (the one that runs)."""
  named = task_name(data_cfg.get("head", "span"))
  if named != task:
    raise ValueError(f"data.head={data_cfg.head!r} is the {named} task, but config.task={task!r}: "
                     "select the head with configs/finetune_squad.py:v2,head=... (which sets "
                     "both), or set both")


def version(arg: str) -> int:
  """"v1" -> 1 (SQuAD 1.1), "v2" -> 2 (SQuAD 2.0)."""
  if arg not in ("v1", "v2"):
    raise ValueError(f"squad config {arg!r}: use 'v1' or 'v2'")
  return int(arg[1])


def data_config(arg: str, head: str) -> ml_collections.ConfigDict:
  """`config.data` for SQuAD "v1" (1.1) or "v2" (2.0) and `head` ("span" or "original"), with the
  original run_squad's settings."""
  tag = "1.1" if version(arg) == 1 else "2.0"
  return ml_collections.ConfigDict(dict(
      version=version(arg),
      source="files",  # "files": the official JSON files below | "tfds": tfds_name
      train_file=f"train-v{tag}.json", eval_file=f"dev-v{tag}.json",
      tfds_name=f"squad/v{tag}", tfds_data_dir="",
      max_seq_length=384, doc_stride=128, max_query_length=64,
      n_best_size=20, max_answer_length=30,
      null_score_diff_threshold=0.0,  # v2: predict "" where null score - best span > this
      max_examples=0,  # 0: all; else the first N examples (quick runs)
      head=head,  # "span" | "original": which SQuAD task this is (TASK_OF_HEAD)
      # Packed windows (the span head only): off by default, as the loss is not the unpacked
      # one (its softmax leaves out the padding positions the unpacked one spreads over;
      # docs/finetuning.md "Packed rows").
      **{**common.PACK_SETTINGS, "pack": False},
  ))


# ----------------------------------------------------------------------------- examples

@dataclasses.dataclass
class Example:
  """One question: its answers' texts and char offsets into `context` (none if impossible)."""
  qid: str
  question: str
  context: str
  answers: list[str]
  answer_starts: list[int]
  is_impossible: bool = False


def read_squad_json(path_or_dict: str | os.PathLike | Mapping) -> list[Example]:
  """Examples of an official SQuAD JSON file (v1.1 or v2.0), or of its parsed dict."""
  data = path_or_dict
  if not isinstance(data, Mapping):
    with files.open_text(data) as f:
      data = json.load(f)
  examples = []
  for article in data["data"]:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        answers = qa.get("answers", [])
        examples.append(Example(
            qid=str(qa["id"]), question=qa["question"], context=paragraph["context"],
            answers=[a["text"] for a in answers],
            answer_starts=[int(a["answer_start"]) for a in answers],
            is_impossible=bool(qa.get("is_impossible", False))))
  return examples


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_from_tfds(record: Mapping[str, Any]) -> Example:
  """An Example from a TFDS `squad/v1.1` or `squad/v2.0` record (v2.0 adds `is_impossible` and
  `plausible_answers`; impossible questions have no `answers`, and plausible ones are not used)."""
  answers = record["answers"]
  pairs = list(zip([_text(t) for t in answers["text"]], [int(s) for s in answers["answer_start"]]))
  return Example(qid=_text(record["id"]), question=_text(record["question"]),
                 context=_text(record["context"]), answers=[t for t, _ in pairs],
                 answer_starts=[s for _, s in pairs],
                 is_impossible=bool(record.get("is_impossible", False)))


def read_tfds(name: str, split: str, data_dir: str | None = None, *,
              download: bool = False) -> list[Example]:
  """Examples of a prepared TFDS dataset ("squad/v1.1" or "squad/v2.0"; split "train" or
  "validation") through `tfds.data_source`, which needs no TensorFlow for SQuAD."""
  import tensorflow_datasets as tfds  # only this reader needs it
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  return [example_from_tfds(source[i]) for i in range(len(source))]


def to_squad_json(examples: Sequence[Example], version_2: bool = False) -> dict:
  """The official JSON layout of `examples`, for `evaluate` (one paragraph per question)."""
  paragraphs = []
  for ex in examples:
    qa = {"id": ex.qid, "question": ex.question,
          "answers": [{"text": t, "answer_start": s} for t, s in zip(ex.answers, ex.answer_starts)]}
    if version_2:
      qa["is_impossible"] = ex.is_impossible
    paragraphs.append({"context": ex.context, "qas": [qa]})
  return {"version": "v2.0" if version_2 else "v1.1",
          "data": [{"title": "", "paragraphs": paragraphs}]}


# ----------------------------------------------------------------------------- features

@dataclasses.dataclass
class Meta:
  """What post-processing needs to read a feature's logits back into the text of its example."""
  examples: list[Example]
  example_index: np.ndarray  # [features]
  context_offset: np.ndarray  # [features]: position of the window's first token (query + 2)
  token_to_word: list[np.ndarray]  # per feature, [window tokens]: the context word of each
  max_context: list[np.ndarray]  # per feature, [window tokens]: this window is the token's best


def split_words(context: str) -> tuple[list[str], list[int]]:
  """Whitespace-separated words of `context` and their char offsets (the original's doc_tokens;
  every Unicode space separates, where the original knew five)."""
  matches = list(re.finditer(r"\S+", context))
  return [m.group() for m in matches], [m.start() for m in matches]


def _answer_words(ex: Example, words: list[str], starts: list[int]) -> tuple[int, int] | None:
  """Word span of the first answer; None if impossible or not at its `answer_start`."""
  if ex.is_impossible or not ex.answers or not ex.answers[0].strip():
    return None
  text = ex.answers[0]
  first = ex.answer_starts[0] + len(text) - len(text.lstrip())  # spaces around never count
  last = first + len(text.strip()) - 1
  if first < 0 or last >= len(ex.context):
    return None
  span = bisect.bisect_right(starts, first) - 1, bisect.bisect_right(starts, last) - 1
  if span[0] < 0 or " ".join(text.split()) not in " ".join(words[span[0]:span[1] + 1]):
    return None
  return span


def _improve_answer_span(pieces, start, end, answer_pieces) -> tuple[int, int]:
  """The original's `_improve_answer_span`: the first sub-span whose pieces are the answer's."""
  target = " ".join(answer_pieces)
  for new_start in range(start, end + 1):
    for new_end in range(end, new_start - 1, -1):
      if " ".join(pieces[new_start:new_end + 1]) == target:
        return new_start, new_end
  return start, end


def _windows(n_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
  """(start, length) of the original's doc spans: `max_tokens` long, `stride` apart."""
  spans, start = [], 0
  while start < n_tokens:
    length = min(n_tokens - start, max_tokens)
    spans.append((start, length))
    if start + length == n_tokens:
      break
    start += min(length, stride)
  return spans


def _max_context_owner(windows, n_tokens: int) -> np.ndarray:
  """Per document token, the window giving it the most context (`_check_is_max_context`: score
  min(left, right) + 0.01 * length, the first window wins ties)."""
  best, owner = np.full(n_tokens, -np.inf), np.full(n_tokens, -1)
  for i, (start, length) in enumerate(windows):
    pos = np.arange(start, start + length)
    score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
    better = pos[score > best[pos]]
    best[better], owner[better] = score[better - start], i
  return owner


class _Pieces:
  """Pieces and ids of words, cached: contexts repeat their words, and SQuAD its contexts."""

  def __init__(self, tokenizer):
    # tokenize_raw: "[SEP]" written in a context is text, not a special token.
    self.tokenize: Callable[[str], list[str]] = getattr(tokenizer, "tokenize_raw",
                                                        tokenizer.tokenize)
    self.to_ids = tokenizer.convert_tokens_to_ids
    self.words: dict[str, list[str]] = {}
    self.context = None

  def word(self, word: str) -> list[str]:
    if word not in self.words:
      self.words[word] = self.tokenize(word)
    return self.words[word]

  def document(self, context: str):
    """(words, word offsets, pieces, ids, piece -> word, word -> first piece) of a context."""
    if self.context is None or self.context[0] != context:
      words, starts = split_words(context)
      pieces, tok_to_word, word_to_tok = [], [], []
      for i, w in enumerate(words):
        word_to_tok.append(len(pieces))
        sub = self.word(w)
        pieces.extend(sub)
        tok_to_word.extend([i] * len(sub))
      self.context = (context, (words, starts, pieces, self.to_ids(pieces),
                                np.asarray(tok_to_word, np.int32), word_to_tok))
    return self.context[1]


def convert_examples(examples: Sequence[Example], tokenizer, max_seq_length: int = 384,
                     doc_stride: int = 128, max_query_length: int = 64,
                     is_training: bool = True) -> arrays.Dataset:
  """The original's `convert_examples_to_features`: `[CLS] query [SEP] window [SEP]` per window.

  Start/end positions are the first answer's tokens in the window, 0 ([CLS]) when the question is
  impossible or the answer is not wholly inside. Training drops examples whose answer text is not
  at its `answer_start`, as the original does. With them, the original v2 head's features:
  `p_mask`, `cls_index` (0) and `is_impossible` (the window has no answer).
  """
  cache, rows, metas, kept = _Pieces(tokenizer), [], [], []
  cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
  for ex in examples:
    words, starts, pieces, ids, tok_to_word, word_to_tok = cache.document(ex.context)
    query = cache.to_ids(cache.tokenize(ex.question)[:max_query_length])
    answer = _answer_words(ex, words, starts)
    if is_training and answer is None and not ex.is_impossible:
      log.warning("Skipping %s: answer %r not found at its offset", ex.qid, ex.answers[:1])
      continue
    tok_answer = None
    if answer is not None:
      first = word_to_tok[answer[0]]
      last = word_to_tok[answer[1] + 1] - 1 if answer[1] + 1 < len(words) else len(pieces) - 1
      if last >= first:  # else the answer's words have no pieces (zero-width characters)
        tok_answer = _improve_answer_span(pieces, first, last, cache.tokenize(ex.answers[0]))
    max_tokens = max_seq_length - len(query) - 3
    if max_tokens <= 0:
      raise ValueError(f"max_seq_length={max_seq_length} leaves no room after a query of "
                       f"{len(query)} tokens (max_query_length={max_query_length})")
    windows = _windows(len(pieces), max_tokens, doc_stride)
    owner = _max_context_owner(windows, len(pieces))
    kept.append(ex)
    offset = len(query) + 2
    for w, (start, length) in enumerate(windows):
      row = np.full(max_seq_length, pad_id, np.int32)
      row[:offset + length + 1] = [cls_id, *query, sep_id, *ids[start:start + length], sep_id]
      positions = (0, 0)
      if tok_answer and start <= tok_answer[0] and tok_answer[1] < start + length:
        positions = (tok_answer[0] - start + offset, tok_answer[1] - start + offset)
      rows.append((row, offset + length + 1, offset, positions))
      metas.append((len(kept) - 1, tok_to_word[start:start + length],
                    owner[start:start + length] == w))
  return _as_dataset(rows, metas, kept, max_seq_length)


def _as_dataset(rows, metas, examples, max_seq_length: int) -> arrays.Dataset:
  """Stacks the rows (ids, length, context offset, positions) into the features arrays."""
  n = len(rows)
  lengths = np.asarray([r[1] for r in rows], np.int32).reshape(n)
  offsets = np.asarray([r[2] for r in rows], np.int32).reshape(n)
  cols = np.arange(max_seq_length)
  attention = (cols < lengths[:, None]).astype(np.int32)
  token_types = ((cols >= offsets[:, None]) & (cols < lengths[:, None])).astype(np.int32)
  positions = np.asarray([r[3] for r in rows], np.int32).reshape(n, 2)
  # The original v2 features: p_mask is 1 on the question, both [SEP]s and padding, 0 on [CLS]
  # and the window's context; a window is impossible when its answer is not wholly in it.
  context = (cols >= offsets[:, None]) & (cols < lengths[:, None] - 1)
  features = {
      "input_ids": np.stack([r[0] for r in rows]) if rows else np.zeros((0, max_seq_length),
                                                                        np.int32),
      "attention_mask": attention, "token_type_ids": token_types,
      "start_positions": positions[:, 0].copy(), "end_positions": positions[:, 1].copy(),
      "p_mask": (~(context | (cols == 0))).astype(np.int32),
      "cls_index": np.zeros(n, np.int32),
      "is_impossible": (positions[:, 0] == 0).astype(np.int32)}
  meta = Meta(examples=list(examples),
              example_index=np.asarray([m[0] for m in metas], np.int32).reshape(n),
              context_offset=offsets, token_to_word=[m[1] for m in metas],
              max_context=[m[2] for m in metas])
  return arrays.Dataset(features, meta)


# ----------------------------------------------------------------------------- a split's rows

def window_spec(data_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One window's inputs and its answer's token span: the features both heads train on."""
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  return {**common.input_spec(data_cfg.max_seq_length),
          "start_positions": scalar, "end_positions": scalar}


def read_examples(data_cfg, split: str) -> list[Example]:
  """The split's examples ("train" or "eval") from the configured source."""
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'")
  if data_cfg.source == "files":
    examples = read_squad_json(data_cfg.train_file if split == "train" else data_cfg.eval_file)
  elif data_cfg.source == "tfds":
    examples = read_tfds(data_cfg.tfds_name, "train" if split == "train" else "validation",
                         data_cfg.tfds_data_dir or None)
  else:
    raise ValueError(f"data.source={data_cfg.source!r}: use 'files' or 'tfds'")
  return examples[:data_cfg.max_examples] if data_cfg.max_examples else examples


def load(data_cfg, tokenizer, split: str, names) -> arrays.Dataset:
  """The split's features that `names` names (a head's example spec); "eval" keeps the meta
  post-processing needs, "train" drops it."""
  data = convert_examples(read_examples(data_cfg, split), tokenizer, data_cfg.max_seq_length,
                          data_cfg.doc_stride, data_cfg.max_query_length,
                          is_training=split == "train")
  features = {k: v for k, v in data.features.items() if k in names}
  return arrays.Dataset(features, data.meta if split == "eval" else None)


# ----------------------------------------------------------------------------- prediction files

def softmax(scores: list[float]) -> list[float]:
  """The n-best entries' probabilities, as the original's `_compute_softmax`."""
  if not scores:
    return []
  top = max(scores)
  exps = [math.exp(s - top) for s in scores]
  total = sum(exps)
  return [e / total for e in exps]


def write_json(path: Path, obj) -> None:
  """JSON as the official evaluation scripts read it (UTF-8, not escaped), written atomically."""
  files.write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
