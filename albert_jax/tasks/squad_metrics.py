"""The official SQuAD metrics: evaluate-v1.1.py and evaluate-v2.0.py, operation for operation, so
the floats match theirs. Both SQuAD tasks score their prediction files with `evaluate`."""

from __future__ import annotations

import collections
import re
import string
import sys
from typing import Mapping

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
  `exact_match` = `exact`. (The training loop's hook is each SQuAD task's `evaluate_task`.)
  """
  articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
  if na_probs is None and not any("is_impossible" in qa for qa in _questions(articles)):
    return _evaluate_v1(articles, predictions)
  out = _evaluate_v2(articles, predictions, na_probs, na_prob_thresh)
  return {**out, "exact_match": out["exact"]}
