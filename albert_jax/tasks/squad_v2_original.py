"""The original ALBERT SQuAD 2.0 head as its own task (`model.AlbertForSquadV2Original`): its loss,
the predictions it gives the loop, and the decoding and threshold search of the original
`squad_utils.accumulate_predictions_v2` / `write_predictions_v2` / `evaluate_v2`.

Selected by the config: `configs/finetune_squad.py:v2,head=original` sets config.task to it (and
`--config.data.head=original` on a SQuAD config names it too: `tasks.of`). Its data is
`squad_data`'s, as the span head's, with three more features; the metrics `squad_metrics`'; the
hyperparameters `squad_data.HYPERPARAMETERS[2]` (run_squad_v2.sh's, which trained this head).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from albert_jax import model as M
from albert_jax.data.arrays import Dataset
from albert_jax.tasks import common, squad_data, squad_metrics

HEAD = "squad_v2_original"
METRIC = "f1"
CONSOLE = ("loss", "accuracy")
# What this head reads from `squad_data.convert_examples`' features beyond the span head's.
FEATURES = ("p_mask", "cls_index", "is_impossible")
NO_SPAN = -1e6  # the log-probabilities of the original's nonce answer when no span is valid


_V2_ONLY = ("the original head is the SQuAD 2.0 head (its answer class predicts unanswerable "
            "questions): use it with version 2 (finetune_squad.py:v2,head=original)")


def data_config(arg: str = "v2") -> ml_collections.ConfigDict:
  """`config.data` for SQuAD 2.0 ("v2"): the span head's, with data.head "original"."""
  if arg != "v2":
    raise ValueError(f"squad_v2_original config {arg!r}: {_V2_ONLY}")
  return squad_data.data_config(arg, head="original")


def head(data_cfg) -> str:
  squad_data.check_head(data_cfg, "squad_v2_original")
  if data_cfg.version != 2:
    raise ValueError(f"data.version={data_cfg.version}: {_V2_ONLY}")
  return HEAD


def num_labels(data_cfg) -> int:
  del data_cfg
  return 2  # the head ignores it


def example_spec(data_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One window of `load`'s features: the span head's, and p_mask, cls_index, is_impossible."""
  if data_cfg.get("pack"):
    raise ValueError("data.pack: the original SQuAD 2.0 head does not take packed rows (its end "
                     "logits and answer class read the window's p_mask and [CLS]); set "
                     "data.pack=False, or use the span head (finetune_squad.py:v2,head=span)")
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  return common.with_weight({
      **squad_data.window_spec(data_cfg),
      "p_mask": jax.ShapeDtypeStruct((data_cfg.max_seq_length,), jnp.int32),
      "cls_index": scalar, "is_impossible": scalar})


def load(data_cfg, tokenizer, split: str) -> Dataset:
  """Features of the split; "eval" keeps the meta post-processing needs, "train" drops it."""
  return squad_data.load(data_cfg, tokenizer, split, example_spec(data_cfg))


def loss_sums(outputs: M.SquadV2Output, batch) -> dict[str, jax.Array]:
  """Summed 0.5 * (CE(start) + CE(end at the gold start)) + 0.5 * sigmoid_xent(cls,
  is_impossible) per row, as the original's model_fn, with correct-prediction counts."""
  weight = batch[common.WEIGHT].astype(jnp.float32)
  sums = {}
  per_row = 0.0
  for side in ("start", "end"):
    logits = getattr(outputs, f"{side}_logits")
    labels = batch[f"{side}_positions"].astype(jnp.int32)
    per_row += 0.5 * optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums[f"{side}_correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * weight)
  impossible = batch["is_impossible"].astype(jnp.float32)
  per_row += 0.5 * optax.sigmoid_binary_cross_entropy(outputs.cls_logits, impossible)
  sums["cls_correct"] = jnp.sum(((outputs.cls_logits > 0) == (impossible > 0.5)) * weight)
  sums["loss"] = jnp.sum(per_row * weight)
  return sums


counts = common.weight_counts


def normalise(sums, denominators) -> dict[str, jax.Array]:
  """Per-row means as the span head's (`accuracy` the mean of the start and end position
  accuracies) and `cls_accuracy`, the answer class's."""
  denominator = jnp.maximum(denominators["weight"], 1e-9)
  start, end = sums["start_correct"] / denominator, sums["end_correct"] / denominator
  return {"loss": sums["loss"] / denominator, "accuracy": (start + end) / 2,
          "start_accuracy": start, "end_accuracy": end,
          "cls_accuracy": sums["cls_correct"] / denominator}


def predictions(outputs: M.SquadV2Output, batch) -> dict[str, jax.Array]:
  """The beam and the answer-class logit of each window (inference outputs)."""
  del batch
  return {"start_top_log_probs": outputs.start_top_log_probs,
          "start_top_index": outputs.start_top_index,
          "end_top_log_probs": outputs.end_top_log_probs,
          "end_top_index": outputs.end_top_index, "cls_logits": outputs.cls_logits}


# ----------------------------------------------------------------------------- decoding

def _candidates(meta: squad_data.Meta, f: int, arrays, max_answer_length: int) -> list[tuple]:
  """(window, start, end, start log-prob, end log-prob) of window f's valid beam entries:
  start and end inside the window's context, the start at its max context, end >= start, at
  most max_answer_length tokens; in beam order (top start, then its top ends)."""
  offset, n = int(meta.context_offset[f]), len(meta.token_to_word[f])
  starts, start_lps = arrays["start_top_index"][f], arrays["start_top_log_probs"][f]
  ends, end_lps = arrays["end_top_index"][f], arrays["end_top_log_probs"][f]
  out = []
  for i, s in enumerate(starts.tolist()):
    for j, e in enumerate(ends[i].tolist()):
      if not (offset <= s < offset + n and offset <= e < offset + n):
        continue
      if not meta.max_context[f][s - offset] or e < s or e - s + 1 > max_answer_length:
        continue
      out.append((f, s, e, float(start_lps[i]), float(end_lps[i, j])))
  return out


def _text(meta: squad_data.Meta, f: int, s: int, e: int, context: str, words, starts) -> str:
  """The context from the start token's word to the end token's word (whole words)."""
  offset = int(meta.context_offset[f])
  first, last = meta.token_to_word[f][s - offset], meta.token_to_word[f][e - offset]
  return context[starts[first]:starts[last] + len(words[last])]


def decode(dataset: Dataset, arrays: Mapping[str, np.ndarray], n_best_size: int = 20,
           max_answer_length: int = 30) -> tuple[dict[str, list[dict]], dict[str, float]]:
  """(nbest qid -> entries, null_odds qid -> null score) from the windows' beams.

  Every window's valid candidates are pooled and ranked by start + end log-probability; texts
  seen already are skipped; up to n_best_size entries, or the original's nonce ("" at
  log-probability -1e6) when no candidate is valid. The null score is the smallest
  answer-class logit over the example's windows.
  """
  meta: squad_data.Meta = dataset.meta
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  by_example = collections.defaultdict(list)
  for f, e in enumerate(meta.example_index.tolist()):
    by_example[e].append(f)
  nbest, null_odds = {}, {}
  for e, ex in enumerate(meta.examples):
    feats = by_example[e]
    if not feats:
      continue  # no tokens in the context: no prediction
    prelim = [c for f in feats for c in _candidates(meta, f, arrays, max_answer_length)]
    words, starts = squad_data.split_words(ex.context)
    seen, entries = set(), []
    for f, s, e_, s_lp, e_lp in sorted(prelim, key=lambda c: c[3] + c[4], reverse=True):
      if len(entries) >= n_best_size:
        break
      text = _text(meta, f, s, e_, ex.context, words, starts)
      if text not in seen:
        seen.add(text)
        entries.append((text, s_lp, e_lp))
    entries = entries or [("", NO_SPAN, NO_SPAN)]
    probs = squad_data.softmax([s + e for _, s, e in entries])
    nbest[ex.qid] = [{"text": t, "probability": p, "start_log_prob": s, "end_log_prob": e}
                     for (t, s, e), p in zip(entries, probs)]
    null_odds[ex.qid] = min(float(arrays["cls_logits"][f]) for f in feats)
  return nbest, null_odds


def evaluate_task(predictions, dataset: Dataset, data_cfg, output_dir) -> dict[str, float]:
  """run_squad_v2.py's evaluation: decode, find the null threshold that maximises F1 on this
  eval set (the official `find_best_thresh` over the null scores, every question answered),
  predict "" where the null score is above it, and score those predictions officially.

  Writes predictions.json (at that threshold), null_odds.json (the null scores) and
  nbest_predictions.json. `exact`/`f1` (and the HasAns/NoAns splits) are the official v2.0
  metrics of predictions.json; `best_*` are the search's; `null_score_diff_threshold` the
  threshold used. The original predicts "" when the null score is >= the threshold; the
  official script (and this) when it is >, so f1 equals best_f1.
  """
  nbest, null_odds = decode(dataset, predictions, data_cfg.n_best_size,
                            data_cfg.max_answer_length)
  gold = squad_data.to_squad_json(dataset.meta.examples, version_2=True)
  answered = {qid: entries[0]["text"] for qid, entries in nbest.items()}
  search = squad_metrics.evaluate(gold, answered, na_probs=null_odds)
  threshold = search["best_f1_thresh"]
  final = {qid: "" if null_odds[qid] > threshold else text for qid, text in answered.items()}
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  squad_data.write_json(out / "predictions.json", final)
  squad_data.write_json(out / "null_odds.json", null_odds)
  squad_data.write_json(out / "nbest_predictions.json", nbest)
  metrics = squad_metrics.evaluate(gold, final)
  metrics.update({k: search[k] for k in ("best_exact", "best_exact_thresh", "best_f1",
                                          "best_f1_thresh")})
  metrics["null_score_diff_threshold"] = threshold
  return {k: float(v) for k, v in metrics.items()}


tokenizer, data, score = common.interface(load, evaluate_task)
