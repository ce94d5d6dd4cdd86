"""SQuAD v1.1 and v2.0: the official metrics, reading (JSON files or TFDS), the sliding-window
features and `write_predictions` post-processing of the original BERT/ALBERT run_squad, and the
fine-tuning task (the interface in `albert_jax.tasks`).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import json
import logging
import math
import os
import re
import string
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from albert_jax import model as M
from albert_jax import files
from albert_jax.data import arrays
from albert_jax.tasks import common

log = logging.getLogger(__name__)

HEAD = "question_answering"  # the span head; data.head="original" picks squad_v2_original
METRIC = "f1"
CONSOLE = ("loss", "accuracy")

# ----------------------------------------------------------------------------- official metrics
# evaluate-v1.1.py and evaluate-v2.0.py, operation for operation, so the floats match theirs.

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower case, ASCII punctuation removed, articles removed, whitespace squeezed (both scripts)."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", s).split())


def _overlap_f1(pred_toks: list[str], gold_toks: list[str]) -> float:
  """Token-bag F1 (0 without a common token), as both scripts compute it."""
  num_same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(pred_toks)
  recall = 1.0 * num_same / len(gold_toks)
  return (2 * precision * recall) / (precision + recall)


def f1_v1(prediction: str, gold: str) -> float:
  """v1.1's `f1_score`: an empty answer scores 0, even against an empty gold."""
  return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def f1_v2(gold: str, prediction: str) -> float:
  """v2.0's `compute_f1`: if either side is empty (no answer), 1 when both are, else 0."""
  gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(prediction).split()
  if not gold_toks or not pred_toks:
    return int(gold_toks == pred_toks)
  return _overlap_f1(pred_toks, gold_toks)


def exact(gold: str, prediction: str) -> int:
  return int(normalize_answer(gold) == normalize_answer(prediction))


def _questions(articles):
  for article in articles:
    for paragraph in article["paragraphs"]:
      yield from paragraph["qas"]


def _evaluate_v1(articles, predictions: Mapping[str, str]) -> dict[str, float]:
  f1 = exact_match = total = 0
  for qa in _questions(articles):
    total += 1
    if qa["id"] not in predictions:
      print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
      continue
    golds = [a["text"] for a in qa["answers"]]
    prediction = predictions[qa["id"]]
    exact_match += max(exact(g, prediction) for g in golds)
    f1 += max(f1_v1(prediction, g) for g in golds)
  return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def _eval_dict(exact_scores, f1_scores, qids) -> dict[str, float]:
  total = len(qids)
  return {"exact": 100.0 * sum(exact_scores[k] for k in qids) / total,
          "f1": 100.0 * sum(f1_scores[k] for k in qids) / total, "total": total}


def _best_thresh(preds, scores, na_probs, has_ans) -> tuple[float, float]:
  """`find_best_thresh`: start from "no answer for all", add questions by rising na_prob."""
  cur = best = sum(1 for k, v in has_ans.items() if not v and k in preds)
  best_thresh = 0.0
  for qid in sorted(na_probs, key=lambda k: na_probs[k]):
    if qid not in scores or qid not in preds:
      continue
    cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
    if cur > best:
      best, best_thresh = cur, na_probs[qid]
  return 100.0 * best / len(scores), best_thresh


def _evaluate_v2(articles, predictions, na_probs, na_prob_thresh) -> dict[str, float]:
  """evaluate-v2.0.py's `main`. A question without a prediction scores 0 and counts in every
  total, as in v1.1 (the v2.0 script drops it from `total`, then fails on the HasAns split)."""
  has_ans, exact_raw, f1_raw, answered = {}, {}, {}, []
  for qa in _questions(articles):
    qid = qa["id"]
    has_ans[qid] = bool(qa["answers"])
    golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
    if qid not in predictions:
      print(f"Missing prediction for {qid}", file=sys.stderr)
      exact_raw[qid] = f1_raw[qid] = 0
      continue
    answered.append(qid)
    exact_raw[qid] = max(exact(g, predictions[qid]) for g in golds)
    f1_raw[qid] = max(f1_v2(g, predictions[qid]) for g in golds)
  probs = {k: 0.0 for k in predictions} if na_probs is None else na_probs
  if missing := [k for k in answered if k not in probs]:
    raise KeyError(f"na_probs has no value for {len(missing)} questions, e.g. {missing[0]!r}")
  thresholded = []
  for raw in (exact_raw, f1_raw):
    thresholded.append({k: (float(not has_ans[k]) if k in predictions and probs[k] > na_prob_thresh
                            else s) for k, s in raw.items()})
  out = _eval_dict(*thresholded, list(has_ans))
  for prefix, qids in (("HasAns", [k for k, v in has_ans.items() if v]),
                       ("NoAns", [k for k, v in has_ans.items() if not v])):
    if qids:
      out.update({f"{prefix}_{k}": v for k, v in _eval_dict(*thresholded, qids).items()})
  if na_probs is not None:
    out["best_exact"], out["best_exact_thresh"] = _best_thresh(predictions, exact_raw, probs,
                                                               has_ans)
    out["best_f1"], out["best_f1_thresh"] = _best_thresh(predictions, f1_raw, probs, has_ans)
  return out


def evaluate(dataset, predictions, na_probs=None, na_prob_thresh=1.0) -> dict:
  """The official SQuAD metrics of `predictions` (question id -> answer text) on `dataset` (the
  parsed official JSON, or its "data" list).

  v1.1's `exact_match` and `f1`; for v2.0 (a question has `is_impossible`, or `na_probs` is given)
  v2.0's dict (`exact`, `f1`, `total`, HasAns_/NoAns_ splits, best thresholds with na_probs) with
  `exact_match` = `exact`. (The training loop's hook is `evaluate_task`.)
  """
  articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
  if na_probs is None and not any("is_impossible" in qa for qa in _questions(articles)):
    return _evaluate_v1(articles, predictions)
  out = _evaluate_v2(articles, predictions, na_probs, na_prob_thresh)
  return {**out, "exact_match": out["exact"]}


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


# ----------------------------------------------------------------------------- predictions

def _best_indexes(logits: np.ndarray, n: int) -> list[int]:
  """The n highest logits' positions, ties in position order (the original's stable sort)."""
  return np.argsort(-np.asarray(logits, np.float64), kind="stable")[:n].tolist()


def softmax(scores: list[float]) -> list[float]:
  """The n-best entries' probabilities, as the original's `_compute_softmax`."""
  if not scores:
    return []
  top = max(scores)
  exps = [math.exp(s - top) for s in scores]
  total = sum(exps)
  return [e / total for e in exps]


def _candidates(meta: Meta, f: int, start_logits, end_logits, n_best_size: int,
                max_answer_length: int) -> list[tuple]:
  """(feature, start, end, start logit, end logit) of the valid spans among the top logits:
  inside the window, start <= end, not too long, and the start token has its max context here."""
  offset, n = int(meta.context_offset[f]), len(meta.token_to_word[f])
  out, ends = [], _best_indexes(end_logits, n_best_size)
  for s in _best_indexes(start_logits, n_best_size):
    for e in ends:
      if not (offset <= s < offset + n and offset <= e < offset + n):
        continue
      if not meta.max_context[f][s - offset] or e < s or e - s + 1 > max_answer_length:
        continue
      out.append((f, s, e, float(start_logits[s]), float(end_logits[e])))
  return out


def _nbest(meta: Meta, feats: list[int], start_logits, end_logits, n_best_size: int,
           max_answer_length: int, version_2: bool) -> tuple[list[dict], float]:
  """The original's n-best list of one example and its null score (min over windows)."""
  prelim, null = [], (math.inf, 0, 0.0, 0.0)  # score, feature, start logit, end logit
  for f in feats:
    if version_2 and (score := float(start_logits[f][0]) + float(end_logits[f][0])) < null[0]:
      null = (score, f, float(start_logits[f][0]), float(end_logits[f][0]))
    prelim += _candidates(meta, f, start_logits[f], end_logits[f], n_best_size, max_answer_length)
  if version_2:
    prelim.append((null[1], 0, 0, null[2], null[3]))
  context = meta.examples[meta.example_index[feats[0]]].context
  words = list(re.finditer(r"\S+", context))
  seen, entries = set(), []
  for f, s, e, s_logit, e_logit in sorted(prelim, key=lambda c: c[3] + c[4], reverse=True):
    if len(entries) >= n_best_size:
      break
    text = ""
    if s > 0:  # non-null: the exact context text from the first to the last word
      offset = meta.context_offset[f]
      first, last = meta.token_to_word[f][s - offset], meta.token_to_word[f][e - offset]
      text = context[words[first].start():words[last].end()]
      if text in seen:
        continue
    seen.add(text)
    entries.append((text, s_logit, e_logit))
  if version_2 and "" not in seen:
    entries.append(("", null[2], null[3]))
  if not entries:
    entries.append(("empty", 0.0, 0.0))  # the original's nonce for no valid span
  probs = softmax([s + e for _, s, e in entries])
  return [{"text": t, "probability": p, "start_logit": s, "end_logit": e}
          for (t, s, e), p in zip(entries, probs)], null[0]


def threshold_predictions(nbest: Mapping[str, list[dict]], null_odds: Mapping[str, float],
                          threshold: float) -> dict[str, str]:
  """v2.0 answers at another threshold: "" where null_odds > threshold, else the best span."""
  out = {}
  for qid, entries in nbest.items():
    best = next((e["text"] for e in entries if e["text"]), "")
    out[qid] = "" if null_odds[qid] > threshold else best
  return out


def postprocess(dataset: arrays.Dataset, start_logits, end_logits, n_best_size: int = 20,
                max_answer_length: int = 30, version_2: bool = False,
                null_score_diff_threshold: float = 0.0):
  """The original's `write_predictions`: (predictions qid -> text, null_odds qid -> null score
  minus the best span's score (v2 only), nbest qid -> entries), from logits [features, length]
  in `dataset` order. v2 predicts "" where null_odds > null_score_diff_threshold.
  """
  meta: Meta = dataset.meta
  start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
  by_example = collections.defaultdict(list)
  for f, e in enumerate(meta.example_index.tolist()):
    by_example[e].append(f)
  predictions, null_odds, nbest = {}, {}, {}
  for e, ex in enumerate(meta.examples):
    if not by_example[e]:
      continue  # no tokens in the context: no prediction, as the original could make none
    entries, null_score = _nbest(meta, by_example[e], start_logits, end_logits, n_best_size,
                                 max_answer_length, version_2)
    nbest[ex.qid] = entries
    if not version_2:
      predictions[ex.qid] = entries[0]["text"]
      continue
    best = next((x for x in entries if x["text"]), None)
    null_odds[ex.qid] = null_score - (best["start_logit"] + best["end_logit"]) if best else math.inf
    predictions[ex.qid] = "" if null_odds[ex.qid] > null_score_diff_threshold else best["text"]
  return predictions, null_odds, nbest


# ----------------------------------------------------------------------------- the task

def data_config(arg: str = "v1") -> ml_collections.ConfigDict:
  """`config.data` for SQuAD "v1" (1.1) or "v2" (2.0), with the original run_squad's settings."""
  if arg not in ("v1", "v2"):
    raise ValueError(f"squad config {arg!r}: use 'v1' or 'v2'")
  tag = "1.1" if arg == "v1" else "2.0"
  return ml_collections.ConfigDict(dict(
      version=int(arg[1]),
      source="files",  # "files": the official JSON files below | "tfds": tfds_name
      train_file=f"train-v{tag}.json", eval_file=f"dev-v{tag}.json",
      tfds_name=f"squad/v{tag}", tfds_data_dir="",
      max_seq_length=384, doc_stride=128, max_query_length=64,
      n_best_size=20, max_answer_length=30,
      null_score_diff_threshold=0.0,  # v2: predict "" where null score - best span > this
      max_examples=0,  # 0: all; else the first N examples (quick runs)
      # "span": start/end logits with [CLS] as the null answer (HF's AlbertForQuestionAnswering);
      # "original": v2 only, google-research/albert's SQuAD 2.0 head (start, end given the
      # start, answer class; squad_v2_original.py), whose null threshold is the eval set's best.
      head="span",
  ))


HEADS_BY_NAME = {"span": "question_answering", "original": "squad_v2_original"}


def head(task_cfg) -> str:
  """The `model.HEADS` key `task_cfg.head` selects."""
  name = task_cfg.get("head", "span")
  if name not in HEADS_BY_NAME:
    raise ValueError(f"data.head={name!r}: use one of {sorted(HEADS_BY_NAME)}")
  if name == "original" and task_cfg.version != 2:
    raise ValueError("data.head='original' is the SQuAD 2.0 head (its answer class predicts "
                     "unanswerable questions): use it with version 2 (finetune_squad.py:v2)")
  return HEADS_BY_NAME[name]


def _original(task_cfg) -> bool:
  return head(task_cfg) == "squad_v2_original"


def num_labels(task_cfg) -> int:
  del task_cfg
  return 2


def example_spec(task_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One window of `load`'s features: the inputs and the answer's token span (the original
  head: and p_mask, cls_index, is_impossible)."""
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  spec = {**common.input_spec(task_cfg.max_seq_length),
          "start_positions": scalar, "end_positions": scalar}
  if _original(task_cfg):
    spec.update(p_mask=jax.ShapeDtypeStruct((task_cfg.max_seq_length,), jnp.int32),
                cls_index=scalar, is_impossible=scalar)
  return common.with_weight(spec)


def read_examples(task_cfg, split: str) -> list[Example]:
  """The split's examples ("train" or "eval") from the configured source."""
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'")
  if task_cfg.source == "files":
    examples = read_squad_json(task_cfg.train_file if split == "train" else task_cfg.eval_file)
  elif task_cfg.source == "tfds":
    examples = read_tfds(task_cfg.tfds_name, "train" if split == "train" else "validation",
                         task_cfg.tfds_data_dir or None)
  else:
    raise ValueError(f"data.source={task_cfg.source!r}: use 'files' or 'tfds'")
  return examples[:task_cfg.max_examples] if task_cfg.max_examples else examples


def load(task_cfg, tokenizer, split: str) -> arrays.Dataset:
  """Features of the split; "eval" keeps the meta post-processing needs, "train" drops it."""
  data = convert_examples(read_examples(task_cfg, split), tokenizer, task_cfg.max_seq_length,
                          task_cfg.doc_stride, task_cfg.max_query_length,
                          is_training=split == "train")
  features = {k: v for k, v in data.features.items() if k in example_spec(task_cfg)}
  return arrays.Dataset(features, data.meta if split == "eval" else None)


def _field(outputs, name: str):
  return outputs[name] if isinstance(outputs, Mapping) else getattr(outputs, name)


def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """Summed (CE(start) + CE(end)) / 2 per row, as the original, with correct-position counts
  (the original v2 head adds its answer-class loss: squad_v2_original.loss_sums)."""
  if isinstance(outputs, M.SquadV2Output):
    from albert_jax.tasks import squad_v2_original
    return squad_v2_original.loss_sums(outputs, batch)
  weight = batch[common.WEIGHT].astype(jnp.float32)
  sums = {"loss": 0.0}
  for side in ("start", "end"):
    logits, labels = _field(outputs, f"{side}_logits"), batch[f"{side}_positions"].astype(jnp.int32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    sums["loss"] += jnp.sum(xent * weight) / 2
    sums[f"{side}_correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * weight)
  return sums


counts = common.weight_counts


def normalise(sums, denominators) -> dict[str, jax.Array]:
  """Per-row means; `accuracy` is the mean of the start and end position accuracies."""
  denominator = jnp.maximum(denominators["weight"], 1e-9)
  start, end = sums["start_correct"] / denominator, sums["end_correct"] / denominator
  out = {"loss": sums["loss"] / denominator, "accuracy": (start + end) / 2,
         "start_accuracy": start, "end_accuracy": end}
  if "cls_correct" in sums:  # the original v2 head's answer class
    out["cls_accuracy"] = sums["cls_correct"] / denominator
  return out


def predictions(outputs, batch) -> dict[str, jax.Array]:
  if isinstance(outputs, M.SquadV2Output):
    from albert_jax.tasks import squad_v2_original
    return squad_v2_original.predictions(outputs, batch)
  del batch
  return {"start_logits": _field(outputs, "start_logits").astype(jnp.float32),
          "end_logits": _field(outputs, "end_logits").astype(jnp.float32)}


def write_json(path: Path, obj) -> None:
  """JSON as the official evaluation scripts read it (UTF-8, not escaped), written atomically."""
  files.write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def evaluate_task(predictions, dataset: arrays.Dataset, task_cfg, output_dir) -> dict[str, float]:
  """The task interface's `evaluate`: post-processes the eval set's logits, writes
  predictions.json and nbest_predictions.json (v2: null_odds.json) and scores them. v2 adds the
  scores at the official best_f1_thresh used as null_score_diff_threshold (`*_at_best_thresh`).
  """
  if _original(task_cfg):
    from albert_jax.tasks import squad_v2_original
    return squad_v2_original.evaluate_task(predictions, dataset, task_cfg, output_dir)
  version_2 = task_cfg.version == 2
  preds, null_odds, nbest = postprocess(
      dataset, predictions["start_logits"], predictions["end_logits"], task_cfg.n_best_size,
      task_cfg.max_answer_length, version_2, task_cfg.null_score_diff_threshold)
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_json(out / "predictions.json", preds)
  write_json(out / "nbest_predictions.json", nbest)
  gold = to_squad_json(dataset.meta.examples, version_2)
  if not version_2:
    return {k: float(v) for k, v in evaluate(gold, preds).items()}
  write_json(out / "null_odds.json", null_odds)
  metrics = evaluate(gold, preds, na_probs=null_odds)
  at_best = evaluate(gold, threshold_predictions(nbest, null_odds, metrics["best_f1_thresh"]))
  metrics.update({f"{k}_at_best_thresh": at_best[k] for k in ("exact", "f1")})
  return {k: float(v) for k, v in metrics.items()}


# The rest of the task interface, as every fine-tuning task has it (tasks/common.py).
tokenizer = common.tokenizer
data = functools.partial(common.data, load)  # (config, tokenizer)
score = functools.partial(common.evaluate_rows, evaluate_task)
