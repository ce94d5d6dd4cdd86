"""SQuAD: the official metrics on hand-worked cases and against a transcription of the official
scripts, sliding windows that map every answer back to its exact text, post-processing, TFDS
reading and the task interface."""

import collections
import json
import math
import random
import re
import string

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from albert_jax import model as M
from albert_jax.data import corpus
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm
from albert_jax.data import arrays
from albert_jax.tasks import squad, squad_data, squad_metrics, squad_v2_original

import finetune_squad  # noqa: E402  (configs/, on the path by conftest.py)


def dataset_json(*qas, v2=False):
  """Official-format data; each qa is (id, [gold texts], is_impossible)."""
  rows = []
  for qid, golds, impossible in qas:
    qa = {"id": qid, "question": "q?", "answers": [{"text": g, "answer_start": 0} for g in golds]}
    if v2:
      qa["is_impossible"] = impossible
    rows.append(qa)
  return {"version": "v2.0" if v2 else "v1.1",
          "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": rows}]}]}


def v1_scores(prediction, gold):
  out = squad_metrics.evaluate(dataset_json(("q", [gold], False)), {"q": prediction})
  return out["exact_match"], out["f1"]


# ----------------------------------------------------------------------------- metrics, v1.1

@pytest.mark.parametrize("prediction, gold, em, f1", [
    ("The Cat's  hat!", "cats hat", 100, 100),  # case, punctuation, an article, spaces
    ("an apple", "Apple", 100, 100),
    ("another apple", "other apple", 0, 50),  # articles are whole words only: P = R = 1/2
    ("theater", "ater", 0, 0),
    ("the-end", "theend", 100, 100),  # punctuation goes before articles: no "the" is left
    ("A.B.C.", "abc", 100, 100),
    ("New\tYork\n", " new  york ", 100, 100),
    ("ÉCOLE", "école", 100, 100),  # Unicode lower case
    ("über a", "über", 100, 100),
    ("café au lait", "cafe au lait", 0, 100 * 2 * (2 / 3) * (2 / 3) / (4 / 3)),  # no accent folding
    ("“quoted”", "quoted", 0, 0),  # only ASCII punctuation is removed
])
def test_v1_normalisation(prediction, gold, em, f1):
  assert v1_scores(prediction, gold) == pytest.approx((em, f1), rel=1e-12)


def test_v1_empty_after_normalisation_is_exact_but_scores_no_f1():
  # Both normalise to "": v1.1's exact match is 1, its F1 has no common token, so 0.
  assert v1_scores("an", "The") == (100.0, 0.0)


def test_v1_f1_max_over_golds_and_missing_predictions(capsys):
  data = dataset_json(
      ("q1", ["red dog barked"], False),  # [big, red, dog] vs [red, dog, barked]: P = R = 2/3
      ("q2", ["blue", "red dog"], False),  # best gold "red dog": P = 2/3, R = 1, F1 = 0.8
      ("q3", ["x", "Red  Dog."], False),  # exact on the second gold
      ("q4", ["cat dog dog"], False),  # bags: cat min(2,1) + dog min(1,2) = 2 of 3 each
      ("q5", ["anything"], False))  # no prediction: 0, still counted
  preds = {"q1": "the big red dog", "q2": "red dog barked", "q3": "the red dog",
           "q4": "cat cat dog"}
  out = squad_metrics.evaluate(data, preds)
  assert set(out) == {"exact_match", "f1"}
  assert out["exact_match"] == pytest.approx(100.0 * 1 / 5, rel=1e-12)
  assert out["f1"] == pytest.approx(100.0 * (2 / 3 + 0.8 + 1 + 2 / 3 + 0) / 5, rel=1e-12)
  assert "Unanswered question q5 will receive score 0." in capsys.readouterr().err


# ----------------------------------------------------------------------------- metrics, v2.0

V2_DATA = dataset_json(
    ("q1", ["Denver Broncos"], False),
    ("q2", ["blue whale", "the blue whale"], False),  # "whale": P = 1, R = 1/2, F1 = 2/3
    ("q3", [], True),
    ("q4", [], True),
    ("q5", ["The"], False),  # has an answer, but it normalises to "": gold becomes [""]
    v2=True)
V2_PREDS = {"q1": "denver broncos", "q2": "whale", "q3": "", "q4": "something", "q5": ""}


def test_v2_no_answer_scores_and_splits():
  out = squad_metrics.evaluate(V2_DATA, V2_PREDS)
  # raw exact: 1 0 1 0 1; raw F1: 1 2/3 1 0 1 (empty vs empty is 1 in v2.0)
  expected = {
      "exact": 100.0 * 3 / 5, "f1": 100.0 * (1 + 2 / 3 + 1 + 0 + 1) / 5, "total": 5,
      "HasAns_exact": 100.0 * 2 / 3, "HasAns_f1": 100.0 * (1 + 2 / 3 + 1) / 3, "HasAns_total": 3,
      "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
  assert set(out) == set(expected) | {"exact_match"}
  assert out == pytest.approx({**expected, "exact_match": expected["exact"]}, rel=1e-12)


def test_v2_na_prob_threshold_and_best_threshold_search():
  na_probs = {"q1": 0.1, "q2": 0.8, "q3": 0.9, "q4": 0.95, "q5": 0.3}
  out = squad_metrics.evaluate(V2_DATA, V2_PREDS, na_probs=na_probs, na_prob_thresh=0.5)
  # Above 0.5 (q2, q3, q4) the answer is "no answer": q2 (has one) 0, q3 and q4 1.
  assert out["exact"] == out["f1"] == pytest.approx(100.0 * 4 / 5)
  assert out["HasAns_exact"] == out["HasAns_f1"] == pytest.approx(100.0 * 2 / 3)
  assert out["NoAns_exact"] == out["NoAns_f1"] == 100.0
  # Best threshold: start from "no answer for all" = 2 (q3, q4), then by rising na_prob
  # q1 +1 -> 3 @0.1, q5 +1 -> 4 @0.3, q2 +0 / +2/3 -> 4 / 4.67 @0.8, q3 +0, q4 -1.
  assert out["best_exact"] == pytest.approx(100.0 * 4 / 5) and out["best_exact_thresh"] == 0.3
  assert out["best_f1"] == pytest.approx(100.0 * (4 + 2 / 3) / 5)
  assert out["best_f1_thresh"] == 0.8


def test_v2_chosen_by_na_probs_alone_and_missing_predictions_count_zero(capsys):
  out = squad_metrics.evaluate(dataset_json(("q1", ["x"], False)), {"q1": "x"},
                               na_probs={"q1": 0.0})
  assert (out["exact"], out["best_exact"], out["best_exact_thresh"]) == (100.0, 100.0, 0.0)
  out = squad_metrics.evaluate(dataset_json(("q1", ["x"], False), ("q2", [], True), v2=True),
                               {"q1": "x"})
  assert (out["exact"], out["total"], out["NoAns_exact"], out["NoAns_total"]) == (50.0, 2, 0.0, 1)
  assert "Missing prediction for q2" in capsys.readouterr().err
  with pytest.raises(KeyError, match="na_probs"):
    squad_metrics.evaluate(V2_DATA, V2_PREDS, na_probs={"q1": 0.5})


# A transcription of evaluate-v1.1.py and evaluate-v2.0.py, written out separately.

def _ref_norm(s):
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _ref_f1(pred, gold, v2):
  p, g = (_ref_norm(pred).split() if pred else []), (_ref_norm(gold).split() if gold else [])
  if v2 and (not p or not g):
    return int(p == g)
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if same == 0:
    return 0
  precision, recall = 1.0 * same / len(p), 1.0 * same / len(g)
  return (2 * precision * recall) / (precision + recall)


def _ref_v1(qas, preds):
  em = f1 = 0
  for qid, golds, _ in qas:
    em += max(_ref_norm(preds[qid]) == _ref_norm(g) for g in golds)
    f1 += max(_ref_f1(preds[qid], g, False) for g in golds)
  return {"exact_match": 100.0 * em / len(qas), "f1": 100.0 * f1 / len(qas)}


def _ref_v2(qas, preds, na_probs, thresh):
  has = {qid: bool(golds) for qid, golds, _ in qas}
  em, f1 = {}, {}
  for qid, golds, _ in qas:
    golds = [g for g in golds if _ref_norm(g)] or [""]
    em[qid] = max(int(_ref_norm(g) == _ref_norm(preds[qid])) for g in golds)
    f1[qid] = max(_ref_f1(preds[qid], g, True) for g in golds)
  cut = lambda s: {k: float(not has[k]) if na_probs[k] > thresh else v for k, v in s.items()}
  em_t, f1_t = cut(em), cut(f1)
  out = {}
  for prefix, ids in (("", list(has)), ("HasAns_", [k for k in has if has[k]]),
                      ("NoAns_", [k for k in has if not has[k]])):
    if ids:
      out.update({prefix + "exact": 100.0 * sum(em_t[k] for k in ids) / len(ids),
                  prefix + "f1": 100.0 * sum(f1_t[k] for k in ids) / len(ids),
                  prefix + "total": len(ids)})
  for name, raw in (("exact", em), ("f1", f1)):
    score = best = sum(not v for v in has.values())
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
      score += raw[qid] if has[qid] else (-1 if preds[qid] else 0)
      if score > best:
        best, best_thresh = score, na_probs[qid]
    out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(raw), best_thresh
  return out


def test_metrics_equal_the_official_scripts_bit_for_bit():
  rng = random.Random(0)
  vocab = ["the", "a", "an", "Cat", "cat,", "dog!", "red", "café", "東京", "x-y", "...", "New"]
  phrase = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 4)))
  for v2 in (False, True):
    qas = []
    for i in range(200):
      impossible = v2 and rng.random() < 0.4
      qas.append((f"q{i}", [] if impossible else [phrase() for _ in range(rng.randint(1, 3))],
                  impossible))
    preds = {qid: (rng.choice(golds) if golds and rng.random() < 0.3 else phrase())
             for qid, golds, _ in qas}
    if not v2:
      assert squad_metrics.evaluate(dataset_json(*qas), preds) == _ref_v1(qas, preds)
      continue
    na_probs = {qid: rng.choice([0.1, 0.2, 0.5, rng.random()]) for qid in preds}  # with ties
    out = squad_metrics.evaluate(dataset_json(*qas, v2=True), preds, na_probs, 0.4)
    assert out == {**_ref_v2(qas, preds, na_probs, 0.4), "exact_match": out["exact"]}


# ----------------------------------------------------------------------------- windows

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  sentences = [s for doc in corpus.embedded_documents("train") for s in doc][:6000]
  return AlbertTokenizer(train_spm(sentences, 400, tmp_path_factory.mktemp("spm")))


SPECIAL_WORDS = ["Café", "naïve", "東京", "São", "ÜNÏCÖDÉ", "ﬁne", "(1895).", "mid-1990s", "[SEP]",
                 "1,000,000", "\u200b", "«guillemets»", "ὈΔΥΣΣΕΎΣ"]
SEPARATORS = [" ", "  ", "\t", "\n", " \t\n ", "\u00a0", "\u3000", "\r\n", " "]
MAX_SEQ, STRIDE, MAX_QUERY = 40, 8, 8


def ref_words(text):
  """(start, end) char offsets of whitespace-separated words, by a plain character loop."""
  spans, start = [], None
  for i, c in enumerate(text + " "):
    if c.isspace() and start is not None:
      spans.append((start, i))
      start = None
    elif not c.isspace() and start is None:
      start = i
  return spans


@pytest.fixture(scope="module")
def qa_set(tokenizer):
  """(examples, answer word spans): every 1-3 word span of four irregular, partly Unicode contexts
  as an answer, plus impossible questions."""
  words = " ".join(s for doc in corpus.embedded_documents("eval") for s in doc).split()
  examples, spans = [], {}
  for k in range(4):
    parts = [SPECIAL_WORDS[(i // 3 + k) % len(SPECIAL_WORDS)] if i % 3 == 0
             else words[40 * k + i] for i in range(36)]
    context = "  \n" * (k % 2) + "".join(
        w + SEPARATORS[(i * (k + 1)) % len(SEPARATORS)] for i, w in enumerate(parts))
    offsets = ref_words(context)
    assert [context[a:b] for a, b in offsets] == parts
    for i in range(len(parts)):
      j = min(i + i % 3, len(parts) - 1)
      if not (tokenizer.tokenize_raw(parts[i]) and tokenizer.tokenize_raw(parts[j])):
        continue  # an answer starting or ending in a word without pieces has no token span
      qid = f"c{k}w{i}"
      text = context[offsets[i][0]:offsets[j][1]]
      question = " ".join(words[i:i + i % 12])  # 0-11 words: some truncated to MAX_QUERY
      examples.append(squad_data.Example(qid, question, context, [text], [offsets[i][0]]))
      spans[qid] = (i, j)
    examples.append(squad_data.Example(f"c{k}none", "Is there no answer?", context, [], [], True))
  return examples, spans


@pytest.fixture(scope="module")
def features(tokenizer, qa_set):
  return squad_data.convert_examples(qa_set[0], tokenizer, MAX_SEQ, STRIDE, MAX_QUERY)


def test_windows_map_every_answer_back_exactly(tokenizer, qa_set, features):
  examples, spans = qa_set
  f, meta = features.features, features.meta
  assert {k: (v.dtype, v.shape) for k, v in f.items()} == {
      **{k: (np.int32, (len(features), MAX_SEQ))
         for k in ("input_ids", "attention_mask", "token_type_ids", "p_mask")},
      **{k: (np.int32, (len(features),))
         for k in ("start_positions", "end_positions", "cls_index", "is_impossible")}}
  by_example = collections.defaultdict(list)
  for row, e in enumerate(meta.example_index):
    by_example[int(e)].append(row)
  assert sorted(by_example) == list(range(len(examples)))
  edges = collections.Counter()
  for e, ex in enumerate(examples):
    offsets = ref_words(ex.context)
    pieces = [tokenizer.tokenize_raw(ex.context[a:b]) for a, b in offsets]
    ids = tokenizer.convert_tokens_to_ids([p for w in pieces for p in w])
    tok_word = [i for i, w in enumerate(pieces) for _ in w]
    first_tok = np.cumsum([0] + [len(w) for w in pieces])  # first piece of each word
    query = tokenizer.convert_tokens_to_ids(tokenizer.tokenize_raw(ex.question)[:MAX_QUERY])
    offset, room = len(query) + 2, MAX_SEQ - len(query) - 3
    rows = by_example[e]
    starts = [k * STRIDE for k in range(len(rows))]
    assert starts[-1] + room >= len(ids) and (len(rows) == 1 or starts[-2] + room < len(ids))
    for k, (row, start) in enumerate(zip(rows, starts)):
      n = min(room, len(ids) - start)
      assert f["input_ids"][row].tolist() == (
          [2, *query, 3, *ids[start:start + n], 3] + [0] * (MAX_SEQ - offset - n - 1))
      assert f["token_type_ids"][row].tolist() == [0] * offset + [1] * (n + 1) + [0] * (
          MAX_SEQ - offset - n - 1)
      assert f["attention_mask"][row].tolist() == [1] * (offset + n + 1) + [0] * (
          MAX_SEQ - offset - n - 1)
      # The original v2 head's mask: only [CLS] and the window's context can be answers.
      assert f["p_mask"][row].tolist() == [0] + [1] * (offset - 1) + [0] * n + [1] * (
          MAX_SEQ - offset - n)
      assert f["cls_index"][row] == 0
      assert meta.context_offset[row] == offset
      assert meta.token_to_word[row].tolist() == tok_word[start:start + n]
      for t in range(n):  # the original's rule: most context min(left, right) + 0.01 length
        score = lambda s: min(start + t - s, min(s + room, len(ids)) - 1 - start - t) + 0.01 * min(
            room, len(ids) - s)
        best = max((s for s in starts if s <= start + t < s + room), key=score)
        assert meta.max_context[row][t] == (best == start), (ex.qid, k, t)
      s_pos, e_pos = int(f["start_positions"][row]), int(f["end_positions"][row])
      assert f["is_impossible"][row] == (s_pos == 0)
      if ex.is_impossible:
        assert (s_pos, e_pos) == (0, 0)
        continue
      a, b = spans[ex.qid]
      first, last = first_tok[a], first_tok[b + 1] - 1
      if not (start <= first and last < start + n):
        assert (s_pos, e_pos) == (0, 0), ex.qid
        edges["split"] += start <= last and first < start + n
        continue
      assert (s_pos, e_pos) == (first - start + offset, last - start + offset), ex.qid
      # Back to text: the window's words give exactly the gold text; the ids are its pieces.
      w0, w1 = meta.token_to_word[row][s_pos - offset], meta.token_to_word[row][e_pos - offset]
      assert ex.context[offsets[w0][0]:offsets[w1][1]] == ex.answers[0]
      assert f["input_ids"][row][s_pos:e_pos + 1].tolist() == tokenizer.convert_tokens_to_ids(
          tokenizer.tokenize_raw(ex.answers[0]))
      edges["first"] += s_pos == offset
      edges["last"] += e_pos == offset + n - 1
      edges["inside"] += 1
  # Answers at both window edges and answers cut by a window edge did occur.
  assert min(edges["first"], edges["last"], edges["split"]) > 0 and edges["inside"] > 100, edges


def peaked_logits(features, null_elsewhere):
  """Logits 10 at the gold start / end; where a window has no answer, 10 at [CLS] or all 0."""
  starts, ends = features.features["start_positions"], features.features["end_positions"]
  s_log, e_log = (np.zeros(features.features["input_ids"].shape, np.float32) for _ in range(2))
  rows = np.arange(len(features))
  has = starts > 0
  s_log[rows[has], starts[has]] = e_log[rows[has], ends[has]] = 10.0
  if null_elsewhere:
    s_log[~has, 0] = e_log[~has, 0] = 10.0
  return s_log, e_log


def recoverable(features, example):
  """Whether a window holds the answer with its start token at its max context."""
  meta, pos = features.meta, features.features["start_positions"]
  return any(pos[r] > 0 and meta.max_context[r][pos[r] - meta.context_offset[r]]
             for r in np.flatnonzero(meta.example_index == example))


@pytest.fixture(scope="module")
def kept(features, qa_set):
  """Indices of the examples post-processing can answer exactly: the impossible ones, and those
  with a window where the answer's start token has its max context. Long answers with small
  windows may have none: the original never predicts a span from a token's lesser window."""
  examples = qa_set[0]
  keep = [e for e, ex in enumerate(examples) if ex.is_impossible or recoverable(features, e)]
  assert len(examples) - len(keep) < 0.1 * len(examples)
  return keep


def test_postprocess_recovers_gold_text_v1(features, qa_set, kept):
  examples = qa_set[0]
  preds, null_odds, nbest = squad.postprocess(features, *peaked_logits(features, False))
  assert null_odds == {} and set(preds) == {ex.qid for ex in examples}
  for e, ex in enumerate(examples):
    if ex.is_impossible:
      continue
    # Unrecoverable answers are missed: the max-context rule is applied.
    assert (preds[ex.qid] == ex.answers[0]) == (e in kept), ex.qid
    assert nbest[ex.qid][0]["probability"] == max(x["probability"] for x in nbest[ex.qid])
  answerable = [examples[e] for e in kept if not examples[e].is_impossible]
  assert squad_metrics.evaluate(squad_data.to_squad_json(answerable), preds) == {
      "exact_match": 100.0, "f1": 100.0}


def test_postprocess_v2_null_scores(features, qa_set, kept):
  examples = [qa_set[0][e] for e in kept]
  preds, null_odds, nbest = squad.postprocess(features, *peaked_logits(features, True),
                                              version_2=True)
  for ex in examples:
    # Null score = min over windows of [CLS] logits: 0 where a window holds the answer, else 20;
    # the best span scores 20 with the answer, 0 without.
    assert null_odds[ex.qid] == (20.0 if ex.is_impossible else -20.0), ex.qid
    assert preds[ex.qid] == ("" if ex.is_impossible else ex.answers[0])
    assert "" in [x["text"] for x in nbest[ex.qid]]
  out = squad_metrics.evaluate(squad_data.to_squad_json(examples, version_2=True), preds, null_odds)
  assert (out["exact"], out["f1"], out["best_f1"], out["NoAns_total"]) == (100.0, 100.0, 100.0, 4)
  # A threshold above 20 keeps a span even for impossible questions.
  preds, _, _ = squad.postprocess(features, *peaked_logits(features, True), version_2=True,
                                  null_score_diff_threshold=25.0)
  assert all(preds[ex.qid] for ex in examples)


def test_postprocess_span_rules(tokenizer):
  words = [w for w in ("the", "of", "and", "is", "to", "in", "for", "be")
           if len(tokenizer.tokenize_raw(w)) == 1][:5]
  assert len(words) == 5
  context = "\t".join(words)
  data = squad_data.convert_examples([squad_data.Example("q", "which?", context, [], [])],
                                     tokenizer, 32, 8, 8, is_training=False)
  assert len(data) == 1
  off = int(data.meta.context_offset[0])
  s_log, e_log = np.full((2, 1, 32), -10.0, np.float32)
  # [CLS] and a padding position score highest, but are never inside the window.
  s_log[0, [0, 31]] = e_log[0, [0, 31]] = 100.0
  s_log[0, off + 3], s_log[0, off + 1] = 10.0, 8.0
  e_log[0, off + 0], e_log[0, off + 1], e_log[0, off + 4] = 9.0, 7.0, 6.0
  preds, _, nbest = squad.postprocess(data, s_log, e_log)
  # (w3, w0) has end < start; (w3, w4) = 16 beats (w1, w1) = 15 and (w1, w4) = 14.
  assert preds["q"] == f"{words[3]}\t{words[4]}"
  texts = [x["text"] for x in nbest["q"]]
  assert texts[:3] == [preds["q"], words[1], "\t".join(words[1:5])]
  assert len(texts) == len(set(texts)) == 15  # every span of the 5 words
  scores = [x["start_logit"] + x["end_logit"] for x in nbest["q"]]
  probs = np.exp(np.asarray(scores) - max(scores))
  np.testing.assert_allclose([x["probability"] for x in nbest["q"]], probs / probs.sum())
  assert squad.postprocess(data, s_log, e_log, max_answer_length=1)[0]["q"] == words[1]
  # With one start candidate ([CLS]) nothing is valid: the original's "empty".
  assert squad.postprocess(data, s_log, e_log, n_best_size=1)[0]["q"] == "empty"


def test_training_drops_misplaced_answers_and_strips_spaces(tokenizer):
  context = "\n alpha  beta gamma"
  examples = [squad_data.Example("ok", "q", context, [" beta "], [8]),
              squad_data.Example("bad", "q", context, ["beta"], [2]),
              squad_data.Example("first", "q", context, ["\n alpha"], [0])]  # spaces before word 0
  train = squad_data.convert_examples(examples, tokenizer, 32, 8, 8, is_training=True)
  assert train.meta.example_index.tolist() == [0, 1]
  assert train.meta.examples == [examples[0], examples[2]]
  for row, word in ((0, 1), (1, 0)):
    start, end = int(train.features["start_positions"][row]), int(
        train.features["end_positions"][row])
    off = train.meta.context_offset[row]
    assert set(train.meta.token_to_word[row][start - off:end - off + 1].tolist()) == {word}
  evals = squad_data.convert_examples(examples, tokenizer, 32, 8, 8, is_training=False)
  assert len(evals) == 3 and evals.features["start_positions"][1] == 0


# ----------------------------------------------------------------------------- reading

def test_json_round_trip(tmp_path, qa_set):
  examples = qa_set[0][:20]
  path = tmp_path / "dev.json"
  path.write_text(json.dumps(squad_data.to_squad_json(examples, version_2=True)), encoding="utf-8")
  assert squad_data.read_squad_json(path) == examples
  assert squad_data.read_squad_json(json.loads(path.read_text(encoding="utf-8"))) == examples


def test_read_tfds_v2_records():
  records = [
      {"id": b"a1", "title": "T", "context": "Caf\u00e9 in Paris.".encode(), "question": "Where?",
       "answers": {"text": np.asarray([b"Paris", b"in Paris"]),
                   "answer_start": np.asarray([8, 5], np.int32)},
       "plausible_answers": {"text": np.asarray([], object),
                             "answer_start": np.asarray([], np.int32)},
       "is_impossible": np.False_},
      {"id": "a2", "title": "T", "context": "Nothing here.", "question": "Who?",
       "answers": {"text": np.asarray([], object), "answer_start": np.asarray([], np.int32)},
       "plausible_answers": {"text": np.asarray(["Nothing"]),
                             "answer_start": np.asarray([0], np.int32)},
       "is_impossible": np.True_}]

  def data_source(builder, split, **kwargs):
    del kwargs
    assert (builder.name, builder.builder_config.name, split) == ("squad", "v2.0", "validation")
    return records

  with tfds.testing.mock_data(as_data_source_fn=data_source):
    examples = squad_data.read_tfds("squad/v2.0", "validation")
  assert examples == [
      squad_data.Example("a1", "Where?", "Café in Paris.", ["Paris", "in Paris"], [8, 5], False),
      squad_data.Example("a2", "Who?", "Nothing here.", [], [], True)]


@pytest.mark.parametrize("name", ["squad/v1.1", "squad/v2.0"])
def test_read_tfds_random_mock_data(name):
  with tfds.testing.mock_data(num_examples=3):
    examples = squad_data.read_tfds(name, "train")
  assert len(examples) == 3
  for ex in examples:
    assert all(isinstance(x, str) for x in (ex.qid, ex.question, ex.context, *ex.answers))
    assert len(ex.answers) == len(ex.answer_starts) and isinstance(ex.is_impossible, bool)


# ----------------------------------------------------------------------------- the task

def test_config_and_num_labels():
  for arg, version, tag in (("v1", 1, "1.1"), ("v2", 2, "2.0")):
    cfg = squad.data_config(arg)
    assert (cfg.version, cfg.tfds_name) == (version, f"squad/v{tag}")
    assert (cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length, cfg.n_best_size,
            cfg.max_answer_length, cfg.max_examples) == (384, 128, 64, 20, 30, 0)
    assert cfg.source in ("files", "tfds") and squad.num_labels(cfg) == 2
    assert cfg.pack is False  # packed windows change the loss (docs/finetuning.md)
  assert (squad.HEAD, squad.METRIC) == ("question_answering", "f1")
  assert "question_answering" in M.HEADS
  with pytest.raises(ValueError):
    squad.data_config("v3")


def test_the_config_reads_the_hyperparameters():
  """Both heads train with their version's row of squad_data.HYPERPARAMETERS."""
  for arg, version in (("v1", 1), ("v2", 2), ("v2,head=original,model=base", 2)):
    hp, config = squad_data.HYPERPARAMETERS[version], finetune_squad.get_config(arg)
    assert (config.optim.lr, config.batch_size, config.total_steps, config.optim.warmup_steps,
            config.data.max_seq_length) == (hp["lr"], hp["batch_size"], hp["total_steps"],
                                            hp["warmup_steps"], hp["max_seq_length"])
  # The original ALBERT run_squad_v1.sh / run_squad_v2.sh.
  assert [(hp["lr"], hp["total_steps"], hp["max_seq_length"])
          for hp in squad_data.HYPERPARAMETERS.values()] == [(5e-5, 3649, 384), (3e-5, 8144, 512)]


def small_config(arg, **changes):
  cfg = squad.data_config(arg)
  cfg.update(dict(max_seq_length=MAX_SEQ, doc_stride=STRIDE, max_query_length=MAX_QUERY, **changes))
  return cfg


def test_load_from_files_and_tfds(tmp_path, tokenizer, qa_set):
  examples = qa_set[0]
  path = tmp_path / "squad.json"
  path.write_text(json.dumps(squad_data.to_squad_json(examples, True)), encoding="utf-8")
  cfg = small_config("v2", train_file=str(path), eval_file=str(path), max_examples=30)
  train, evals = squad.load(cfg, tokenizer, "train"), squad.load(cfg, tokenizer, "eval")
  assert train.meta is None and evals.meta.examples == examples[:30]
  expected = squad_data.convert_examples(examples[:30], tokenizer, MAX_SEQ, STRIDE, MAX_QUERY)
  # The span head's rows: the features its example_spec names (the original head adds three).
  assert set(train.features) == set(evals.features) == set(squad.example_spec(cfg)) - {"weight"} == {
      "input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
  for k, v in train.features.items():
    np.testing.assert_array_equal(v, expected.features[k])
    np.testing.assert_array_equal(evals.features[k], expected.features[k])
  cfg.head = "original"
  assert set(squad_v2_original.load(cfg, tokenizer, "eval").features) == set(expected.features)
  records = [{"id": ex.qid, "question": ex.question, "context": ex.context,
              "is_impossible": ex.is_impossible,
              "answers": {"text": np.asarray(ex.answers, object),
                          "answer_start": np.asarray(ex.answer_starts, np.int32)}}
             for ex in examples]
  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kw: records):
    from_tfds = squad.load(small_config("v2", source="tfds", max_examples=30), tokenizer, "eval")
  assert from_tfds.meta.examples == examples[:30]
  np.testing.assert_array_equal(from_tfds.features["input_ids"], expected.features["input_ids"])


def test_loss_sums_and_normalise():
  rng = np.random.RandomState(0)
  start, end = rng.normal(size=(2, 3, 6)).astype(np.float32)
  batch = {"start_positions": np.asarray([1, 0, 5], np.int32),
           "end_positions": np.asarray([2, 0, 3], np.int32),
           "weight": np.asarray([1.0, 1.0, 0.0], np.float32)}
  outputs = M.QuestionAnsweringOutput(start_logits=jnp.asarray(start), end_logits=jnp.asarray(end))
  sums = squad.loss_sums(outputs, batch)
  ce = lambda z, y: math.log(np.exp(z.astype(np.float64)).sum()) - z[y]
  rows = [(ce(start[i], batch["start_positions"][i]) + ce(end[i], batch["end_positions"][i])) / 2
          for i in range(2)]
  assert float(sums["loss"]) == pytest.approx(sum(rows), rel=1e-5)
  assert float(squad.counts(batch)["weight"]) == 2.0
  assert float(sums["start_correct"]) == sum(np.argmax(start[i]) == batch["start_positions"][i]
                                             for i in range(2))
  means = squad.normalise(sums, squad.counts(batch))
  assert float(means["loss"]) == pytest.approx(sum(rows) / 2, rel=1e-5)
  assert float(means["end_accuracy"]) == float(sums["end_correct"]) / 2
  assert float(means["accuracy"]) == pytest.approx(
      (float(sums["start_correct"]) + float(sums["end_correct"])) / 4)
  arrays = squad.predictions({"start_logits": start, "end_logits": end}, batch)
  np.testing.assert_array_equal(arrays["start_logits"], start)


@pytest.mark.parametrize("arg", ["v1", "v2"])
def test_task_evaluate_writes_predictions(tmp_path, features, qa_set, kept, arg):
  examples = qa_set[0]
  s_log, e_log = peaked_logits(features, arg == "v2")
  keep = [e for e in kept if arg == "v2" or not examples[e].is_impossible]
  rows = np.flatnonzero(np.isin(features.meta.example_index, keep))
  meta = features.meta
  data = arrays.Dataset(
      {k: v[rows] for k, v in features.features.items()},
      squad_data.Meta([examples[e] for e in keep],
                      np.searchsorted(keep, meta.example_index[rows]).astype(np.int32),
                      meta.context_offset[rows], [meta.token_to_word[r] for r in rows],
                      [meta.max_context[r] for r in rows]))
  # Called the way the training loop calls every task's evaluate_task.
  out = squad.evaluate_task({"start_logits": s_log[rows], "end_logits": e_log[rows]}, data,
                       small_config(arg), tmp_path)
  assert all(isinstance(v, float) for v in out.values())
  assert (out["exact_match"], out["f1"]) == (100.0, 100.0)
  written = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
  assert written == {examples[e].qid: ("" if examples[e].is_impossible else examples[e].answers[0])
                     for e in keep}
  assert (tmp_path / "nbest_predictions.json").is_file()
  assert (tmp_path / "null_odds.json").is_file() == (arg == "v2")
  if arg == "v2":
    assert (out["best_f1"], out["exact_at_best_thresh"], out["f1_at_best_thresh"]) == (100.0,) * 3
