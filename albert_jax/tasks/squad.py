"""SQuAD v1.1 and v2.0 with the span head (Hugging Face's AlbertForQuestionAnswering): its loss,
the original BERT/ALBERT run_squad's `write_predictions` post-processing, and the fine-tuning task
(the interface in `albert_jax.tasks`). The data is `squad_data`'s, the metrics `squad_metrics`'.

The hyperparameters live in `squad_data.HYPERPARAMETERS`, one row per SQuAD version for this head
and the original one (`squad_v2_original`); configs/finetune_squad.py reads them.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from albert_jax.data import arrays
from albert_jax.tasks import common, squad_data, squad_metrics

HEAD = "question_answering"
METRIC = "f1"
CONSOLE = ("loss", "accuracy")

# ----------------------------------------------------------------------------- predictions

def _best_indexes(logits: np.ndarray, n: int) -> list[int]:
  """The n highest logits' positions, ties in position order (the original's stable sort)."""
  return np.argsort(-np.asarray(logits, np.float64), kind="stable")[:n].tolist()


def _candidates(meta: squad_data.Meta, f: int, start_logits, end_logits, n_best_size: int,
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


def _nbest(meta: squad_data.Meta, feats: list[int], start_logits, end_logits, n_best_size: int,
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
  probs = squad_data.softmax([s + e for _, s, e in entries])
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
  meta: squad_data.Meta = dataset.meta
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
  return squad_data.data_config(arg, head="span")


def head(data_cfg) -> str:
  squad_data.check_head(data_cfg, "squad")
  return HEAD


def num_labels(data_cfg) -> int:
  del data_cfg
  return 2  # the head ignores it


def example_spec(data_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One row of the batches: a window's inputs and its answer's token span; packed
  (data.pack), a row of windows (`common.row_spec`) with each slot's span in row positions."""
  if not data_cfg.get("pack"):
    return common.with_weight(squad_data.window_spec(data_cfg))
  spec = common.row_spec(data_cfg, jnp.int32)
  slots = spec.pop("labels").shape
  return {**spec, "start_positions": jax.ShapeDtypeStruct(slots, jnp.int32),
          "end_positions": jax.ShapeDtypeStruct(slots, jnp.int32)}


def load(data_cfg, tokenizer, split: str) -> arrays.Dataset:
  """Features of the split; "eval" keeps the meta post-processing needs, "train" drops it."""
  return squad_data.load(data_cfg, tokenizer, split, example_spec(data_cfg))


def _field(outputs, name: str):
  return outputs[name] if isinstance(outputs, Mapping) else getattr(outputs, name)


def _own_tokens(logits: jax.Array, batch) -> jax.Array:
  """Packed rows: [rows, slots, length], each slot's window's logits at its own tokens (the
  float32 minimum elsewhere: no probability); unpacked: the logits as they are, padding too."""
  if "example_ids" not in batch:
    return logits
  ids = jnp.arange(1, batch[common.WEIGHT].shape[-1] + 1)
  own = batch["example_ids"][:, None, :] == ids[None, :, None]
  return jnp.where(own, logits[:, None, :], jnp.finfo(jnp.float32).min)


def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """Summed (CE(start) + CE(end)) / 2 per window, as the original, with correct-position counts.
  A packed window's softmax runs over its own tokens; unpacked, over the row, padding too (the
  original's)."""
  weight = batch[common.WEIGHT].astype(jnp.float32)
  sums = {"loss": 0.0}
  for side in ("start", "end"):
    logits = _own_tokens(_field(outputs, f"{side}_logits"), batch)
    labels = batch[f"{side}_positions"].astype(jnp.int32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    sums["loss"] += jnp.sum(xent * weight) / 2
    sums[f"{side}_correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * weight)
  return sums


counts = common.weight_counts


def normalise(sums, denominators) -> dict[str, jax.Array]:
  """Per-row means; `accuracy` is the mean of the start and end position accuracies."""
  denominator = jnp.maximum(denominators["weight"], 1e-9)
  start, end = sums["start_correct"] / denominator, sums["end_correct"] / denominator
  return {"loss": sums["loss"] / denominator, "accuracy": (start + end) / 2,
          "start_accuracy": start, "end_accuracy": end}


def predictions(outputs, batch) -> dict[str, jax.Array]:
  del batch
  return {"start_logits": _field(outputs, "start_logits").astype(jnp.float32),
          "end_logits": _field(outputs, "end_logits").astype(jnp.float32)}


def evaluate_task(predictions, dataset: arrays.Dataset, data_cfg, output_dir) -> dict[str, float]:
  """The task interface's `evaluate`: post-processes the eval set's logits, writes
  predictions.json and nbest_predictions.json (v2: null_odds.json) and scores them. v2 adds the
  scores at the official best_f1_thresh used as null_score_diff_threshold (`*_at_best_thresh`).
  """
  version_2 = data_cfg.version == 2
  preds, null_odds, nbest = postprocess(
      dataset, predictions["start_logits"], predictions["end_logits"], data_cfg.n_best_size,
      data_cfg.max_answer_length, version_2, data_cfg.null_score_diff_threshold)
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  squad_data.write_json(out / "predictions.json", preds)
  squad_data.write_json(out / "nbest_predictions.json", nbest)
  gold = squad_data.to_squad_json(dataset.meta.examples, version_2)
  if not version_2:
    return {k: float(v) for k, v in squad_metrics.evaluate(gold, preds).items()}
  squad_data.write_json(out / "null_odds.json", null_odds)
  metrics = squad_metrics.evaluate(gold, preds, na_probs=null_odds)
  at_best = squad_metrics.evaluate(
      gold, threshold_predictions(nbest, null_odds, metrics["best_f1_thresh"]))
  metrics.update({f"{k}_at_best_thresh": at_best[k] for k in ("exact", "f1")})
  return {k: float(v) for k, v in metrics.items()}


tokenizer, data, score = common.interface(load, evaluate_task, token_predictions=True)
