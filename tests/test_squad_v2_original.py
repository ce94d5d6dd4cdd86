"""The original ALBERT SQuAD 2.0 head (`squad_v2_original`): its numerics against transformers'
XLNet-style SQuAD head with copied weights, its decoding on hand-built windows and against a
transcription of the original's loops, the null threshold search, the task wiring and the
conversion rules (HF export refused, HF/Orbax checkpoints loaded into it)."""

import json
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.xlm.modeling_xlm import XLMSQuADHead

from albert_jax import hf_convert, tasks
from albert_jax.checkpoints import model_dir
from albert_jax import model as M
from albert_jax.data.arrays import Dataset
from albert_jax.tasks import squad, squad_data, squad_metrics
from albert_jax.tasks import squad_v2_original as original
from helpers import random_params

CFG = M.AlbertConfig(vocab_size=60, embedding_size=8, hidden_size=24, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=32, classifier_dropout_prob=0.1)


# ----------------------------------------------------------------------------- numerics

def _windows(batch=4, length=24, seed=0):
  """Model inputs laid out as the window builder lays them out ([CLS] question [SEP] context
  [SEP] padding), with its p_mask, and gold spans; rows 0 and 3 are impossible ([CLS])."""
  rs = np.random.RandomState(seed)
  ids = rs.randint(5, CFG.vocab_size, (batch, length)).astype(np.int32)
  mask, types_, p_mask = (np.zeros((batch, length), np.int32) for _ in range(3))
  starts, ends = np.zeros(batch, np.int32), np.zeros(batch, np.int32)
  for b in range(batch):
    query, context = 2 + b % 3, 9 + 3 * b  # at least start_n_top context tokens
    offset, used = query + 2, query + 2 + context + 1
    ids[b, 0], ids[b, offset - 1], ids[b, used - 1], ids[b, used:] = 2, 3, 3, 0
    mask[b, :used] = 1
    types_[b, offset:used] = 1
    p_mask[b] = 1
    p_mask[b, 0] = p_mask[b, offset:used - 1] = 0
    if b not in (0, 3):
      starts[b] = offset + rs.randint(0, context - 3)
      ends[b] = starts[b] + rs.randint(0, 3)
  return dict(input_ids=ids, attention_mask=mask, token_type_ids=types_, p_mask=p_mask,
              cls_index=np.zeros(batch, np.int32), start_positions=starts, end_positions=ends,
              is_impossible=(starts == 0).astype(np.int32), weight=np.ones(batch, np.float32))


@pytest.fixture(scope="module")
def copied():
  """(module, params, batch, HF backbone, HF SQuAD head) with the same random weights."""
  module = M.make_model(CFG, "squad_v2_original")
  params = random_params(CFG, "squad_v2_original", 0, scale=0.3)
  tensors = hf_convert.to_hf_state_dict(CFG, params, "squad_v2_original")
  torch_tensors = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
  backbone = transformers.AlbertModel(transformers.AlbertConfig(**CFG.to_hf_dict()),
                                      add_pooling_layer=False).eval()
  backbone.load_state_dict({k.removeprefix("albert."): v for k, v in torch_tensors.items()
                            if k.startswith("albert.")})
  # transformers 4.57 keeps the XLNet-style SQuADHead (once modeling_utils.SQuADHead) as
  # XLMSQuADHead; it reads hidden_size, layer_norm_eps, start_n_top and end_n_top.
  head = XLMSQuADHead(types.SimpleNamespace(hidden_size=CFG.hidden_size,
                                            layer_norm_eps=CFG.layer_norm_eps,
                                            start_n_top=5, end_n_top=5)).eval()
  # strict: our table's head keys are exactly the modules' state-dict keys.
  head.load_state_dict({k: v for k, v in torch_tensors.items() if not k.startswith("albert.")})
  return module, params, _windows(), backbone, head


def _torch(batch):
  return {k: torch.from_numpy(v) for k, v in batch.items()}


def _hidden(backbone, t):
  with torch.no_grad():
    return backbone(input_ids=t["input_ids"].long(), attention_mask=t["attention_mask"],
                    token_type_ids=t["token_type_ids"].long()).last_hidden_state


def _ours(module, params, batch, training):
  extra = {k: jnp.asarray(batch[k]) for k in module.batch_inputs(training)}
  return module.apply({"params": params}, jnp.asarray(batch["input_ids"]),
                      attention_mask=jnp.asarray(batch["attention_mask"]),
                      token_type_ids=jnp.asarray(batch["token_type_ids"]), **extra)


def test_training_outputs_and_loss_match_transformers(copied):
  module, params, batch, backbone, head = copied
  ours = _ours(module, params, batch, training=True)
  t = _torch(batch)
  p_mask = t["p_mask"].float()
  with torch.no_grad():
    hidden = _hidden(backbone, t)
    start = head.start_logits(hidden, p_mask=p_mask)
    end = head.end_logits(hidden, start_positions=t["start_positions"].long(), p_mask=p_mask)
    # The original's answer class reads the softmax-weighted start state in training too;
    # HF's SQuADHead reads the gold start's state there, so its modules are called directly.
    start_states = torch.einsum("blh,bl->bh", hidden, torch.softmax(start, -1))
    cls = head.answer_class(hidden, start_states=start_states, cls_index=t["cls_index"].long())
    span_loss = head(hidden, start_positions=t["start_positions"].long(),
                     end_positions=t["end_positions"].long(), p_mask=p_mask)[0]
    loss = span_loss + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(
        cls, t["is_impossible"].float())
    hf_full = head(hidden, start_positions=t["start_positions"].long(),
                   end_positions=t["end_positions"].long(), cls_index=t["cls_index"].long(),
                   is_impossible=t["is_impossible"].float(), p_mask=p_mask)[0]
    cls_at_gold = head.answer_class(hidden, start_positions=t["start_positions"].long(),
                                    cls_index=t["cls_index"].long())
  assert ours.start_top_index is None and ours.end_logits.shape == batch["p_mask"].shape
  masked = batch["p_mask"] == 1
  assert np.all(np.asarray(ours.start_logits)[masked] == -1e30)
  assert np.all(np.asarray(ours.end_logits)[masked] == -1e30)
  np.testing.assert_allclose(ours.start_logits, start.numpy(), atol=2e-6, rtol=0)
  np.testing.assert_allclose(ours.end_logits, end.numpy(), atol=2e-6, rtol=0)
  np.testing.assert_allclose(ours.cls_logits, cls.numpy(), atol=2e-6, rtol=0)
  rows = jax.tree_util.tree_map(jnp.asarray, batch)
  sums = original.loss_sums(ours, rows)
  ours_loss = float(original.normalise(sums, original.counts(rows))["loss"])
  assert ours_loss == pytest.approx(float(loss), abs=2e-6)
  # HF's own total reads the answer class at the gold start: a different quantity.
  assert float(hf_full) == pytest.approx(float(span_loss + 0.5 * (
      torch.nn.functional.binary_cross_entropy_with_logits(cls_at_gold,
                                                           t["is_impossible"].float()))), abs=1e-6)
  assert np.abs(cls_at_gold.numpy() - np.asarray(ours.cls_logits)).max() > 1e-3  # vs 2e-6


def test_inference_beam_and_answer_class_match_transformers(copied):
  module, params, batch, backbone, head = copied
  ours = _ours(module, params, batch, training=False)
  t = _torch(batch)
  with torch.no_grad():
    hidden = _hidden(backbone, t)
    s_probs, s_index, e_probs, e_index, cls = head(
        hidden, p_mask=t["p_mask"].float(), cls_index=t["cls_index"].long())
  assert ours.end_logits is None
  b = len(batch["input_ids"])
  np.testing.assert_array_equal(ours.start_top_index, s_index.numpy())
  # HF returns softmax probabilities under the name *_log_probs, and flattens its ends
  # end-major ([batch, end_n_top * start_n_top]); the original's are log-probabilities, start-major.
  np.testing.assert_allclose(np.exp(ours.start_top_log_probs), s_probs.numpy(), atol=1e-6)
  np.testing.assert_allclose(ours.start_top_log_probs, np.log(s_probs.numpy()), atol=2e-6)
  hf_ends = e_index.numpy().reshape(b, 5, 5).transpose(0, 2, 1)
  hf_end_probs = e_probs.numpy().reshape(b, 5, 5).transpose(0, 2, 1)
  np.testing.assert_array_equal(ours.end_top_index, hf_ends)
  np.testing.assert_allclose(ours.end_top_log_probs, np.log(hf_end_probs), atol=2e-6)
  np.testing.assert_allclose(ours.cls_logits, cls.numpy(), atol=2e-6, rtol=0)
  # Every top start and end is [CLS] or context: p_mask keeps the question and padding out.
  for row, p in enumerate(batch["p_mask"]):
    assert not p[np.asarray(ours.start_top_index[row])].any()
    assert not p[np.asarray(ours.end_top_index[row]).ravel()].any()


def test_answer_class_dropout_only_when_training(copied):
  module, params, batch, _, _ = copied
  inputs = dict(attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
                p_mask=batch["p_mask"], start_positions=batch["start_positions"])
  run = lambda **kw: module.apply({"params": params}, batch["input_ids"], **inputs, **kw)
  fixed = run(deterministic=True)
  dropped = run(deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(fixed.start_logits, dropped.start_logits)  # no dropout there
  np.testing.assert_array_equal(fixed.end_logits, dropped.end_logits)
  assert not np.allclose(fixed.cls_logits, dropped.cls_logits)


def test_the_loop_feeds_the_head_its_features(copied):
  """apply_to_batch passes p_mask and cls_index (and the gold start in training) from the
  batch."""
  module, params, batch, _, _ = copied
  module = module.clone(config=CFG.replace(classifier_dropout_prob=0.0))
  rows = jax.tree_util.tree_map(jnp.asarray, batch)
  outputs = M.apply_to_batch(module, params, rows, jax.random.key(0))
  sums = original.loss_sums(outputs, rows)
  expected = original.loss_sums(_ours(module, params, batch, training=True), rows)
  assert float(sums["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-6)
  preds = original.predictions(M.apply_to_batch(module, params, rows), rows)
  ours = _ours(module, params, batch, training=False)
  for key, value in preds.items():
    np.testing.assert_array_equal(value, getattr(ours, key))


# ----------------------------------------------------------------------------- decoding

WORDS = [f"w{i}" for i in range(10)]
CONTEXT = " ".join(WORDS)


def _two_windows(cls_logits=(0.5, -1.5)):
  """One question, context w0..w9 (a token per word) in two windows of 6 tokens after a
  one-token question (offset 3): words 0-5 and 4-9; words 4 and 5 have their max context in the
  second window."""
  ex = squad_data.Example("q", "which?", CONTEXT, [], [], True)
  meta = squad_data.Meta([ex], np.zeros(2, np.int32), np.full(2, 3, np.int32),
                         [np.arange(0, 6), np.arange(4, 10)],
                         [np.array([1, 1, 1, 1, 0, 0], bool), np.ones(6, bool)])
  k1, k2 = 3, 2
  arrays = {"start_top_index": np.zeros((2, k1), np.int32),
            "start_top_log_probs": np.full((2, k1), -50.0, np.float32),
            "end_top_index": np.zeros((2, k1, k2), np.int32),
            "end_top_log_probs": np.full((2, k1, k2), -50.0, np.float32),
            "cls_logits": np.asarray(cls_logits, np.float32)}

  def beam(f, i, start, start_lp, ends):
    arrays["start_top_index"][f, i], arrays["start_top_log_probs"][f, i] = start, start_lp
    for j, (end, end_lp) in enumerate(ends):
      arrays["end_top_index"][f, i, j], arrays["end_top_log_probs"][f, i, j] = end, end_lp

  # Window 0. w4 is not at its max context here: (w4, w5) scores best but is dropped.
  beam(0, 0, 3 + 4, -0.1, [(3 + 5, -0.1), (3 + 4, -0.2)])
  # w1: (w1, w0) ends before it starts; (w1, w2) is kept.
  beam(0, 1, 3 + 1, -1.0, [(3 + 0, -0.1), (3 + 2, -0.5)])
  # A question token: never a candidate.
  beam(0, 2, 1, -0.05, [(1, -0.05), (3 + 3, -0.05)])
  # Window 1 (w4 is position 3). (w4, w5) is kept; the last [SEP] (3 + 6) is not context.
  beam(1, 0, 3 + 0, -0.2, [(3 + 1, -0.3), (3 + 6, -0.01)])
  # w6: (w6, w9) is 4 tokens (> max_answer_length 3); padding (11) is not context.
  beam(1, 1, 3 + 2, -0.4, [(3 + 5, -0.01), (11, -0.01)])
  # [CLS] (0) is not context either: the null answer is the answer class's business.
  beam(1, 2, 0, -0.02, [(0, -0.02), (3 + 2, -0.1)])
  return Dataset({"input_ids": np.zeros((2, 12), np.int32)}, meta), arrays


def test_decoding_rules_on_hand_built_windows():
  data, arrays = _two_windows()
  nbest, null_odds = original.decode(data, arrays, n_best_size=20, max_answer_length=3)
  texts = [(x["text"], x["start_log_prob"] + x["end_log_prob"]) for x in nbest["q"]]
  assert texts == [("w4 w5", pytest.approx(-0.5)), ("w1 w2", pytest.approx(-1.5))]
  probs = np.exp([-0.5, -1.5]) / np.exp([-0.5, -1.5]).sum()
  np.testing.assert_allclose([x["probability"] for x in nbest["q"]], probs)
  assert null_odds == {"q": -1.5}  # the smaller answer-class logit of the two windows
  # Longer answers allowed: (w6, w9) joins; n_best_size cuts the list.
  nbest, _ = original.decode(data, arrays, n_best_size=2, max_answer_length=4)
  assert [x["text"] for x in nbest["q"]] == ["w6 w7 w8 w9", "w4 w5"]
  # With the max-context rule the best window-0 span is gone; marking w4 as max context in
  # window 0 brings it back (and the text is not repeated from window 1).
  data.meta.max_context[0][4] = True
  nbest, _ = original.decode(data, arrays, max_answer_length=3)
  assert [x["text"] for x in nbest["q"]] == ["w4 w5", "w4", "w1 w2"]
  assert nbest["q"][0]["start_log_prob"] == pytest.approx(-0.1)  # window 0's, the better one


def test_no_valid_span_gives_the_original_nonce():
  data, arrays = _two_windows()
  arrays["start_top_index"][:] = 1  # all in the question
  nbest, null_odds = original.decode(data, arrays)
  assert nbest == {"q": [{"text": "", "probability": 1.0, "start_log_prob": -1e6,
                          "end_log_prob": -1e6}]}
  assert null_odds == {"q": -1.5}


def _reference_decode(meta, arrays, n_best_size, max_answer_length):
  """squad_utils.accumulate_predictions_v2 + write_predictions_v2 transcribed (their loops,
  the flat start-major end index, text from whole words as squad.postprocess takes it)."""
  start_n_top = arrays["start_top_index"].shape[1]
  end_n_top = arrays["end_top_index"].shape[2]
  nbest_all, null_all = {}, {}
  for example_index, example in enumerate(meta.examples):
    features = [f for f in range(len(meta.example_index))
                if meta.example_index[f] == example_index]
    result_dict, score_null = {}, 1000000
    for f in features:
      result_dict[f] = {}
      score_null = min(score_null, float(arrays["cls_logits"][f]))
      doc_offset = int(meta.context_offset[f])
      end_top_log_probs = arrays["end_top_log_probs"][f].reshape(-1)
      end_top_index = arrays["end_top_index"][f].reshape(-1)
      for i in range(start_n_top):
        for j in range(end_n_top):
          start_log_prob = float(arrays["start_top_log_probs"][f][i])
          start_index = int(arrays["start_top_index"][f][i])
          j_index = i * end_n_top + j
          end_log_prob = float(end_top_log_probs[j_index])
          end_index = int(end_top_index[j_index])
          if start_index - doc_offset >= len(meta.token_to_word[f]):
            continue
          if start_index - doc_offset < 0:
            continue
          if end_index - doc_offset >= len(meta.token_to_word[f]):
            continue
          if not meta.max_context[f][start_index - doc_offset]:
            continue
          if end_index < start_index:
            continue
          if end_index - start_index + 1 > max_answer_length:
            continue
          key = (start_index - doc_offset, end_index - doc_offset)
          result_dict[f].setdefault(key, []).append((start_log_prob, end_log_prob))
    prelim = []
    for f in features:
      for (s, e), logprobs in result_dict[f].items():
        prelim.append((f, s, e, sum(x[0] for x in logprobs) / len(logprobs),
                       sum(x[1] for x in logprobs) / len(logprobs)))
    prelim = sorted(prelim, key=lambda x: x[3] + x[4], reverse=True)
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", example.context)]
    seen, nbest = {}, []
    for f, s, e, s_lp, e_lp in prelim:
      if len(nbest) >= n_best_size:
        break
      first, last = meta.token_to_word[f][s], meta.token_to_word[f][e]
      text = example.context[spans[first][0]:spans[last][1]]
      if text in seen:
        continue
      seen[text] = True
      nbest.append((text, s_lp, e_lp))
    if not nbest:
      nbest.append(("", -1e6, -1e6))
    nbest_all[example.qid] = nbest
    null_all[example.qid] = score_null
  return nbest_all, null_all


@pytest.fixture(scope="module")
def windows(tokenizer):
  """Real windows: eight questions over long contexts of the embedded corpus, cut small."""
  from albert_jax.data import corpus
  words = " ".join(s for doc in corpus.embedded_documents("eval") for s in doc).split()
  examples = [squad_data.Example(f"q{k}", " ".join(words[k:k + 3]),
                                 " ".join(words[40 * k:40 * k + 60]), [], [], True)
              for k in range(8)]
  return squad_data.convert_examples(examples, tokenizer, 40, 8, 8, is_training=False)


def _random_beams(data, rs, k1=5, k2=5):
  n, length = data.features["input_ids"].shape
  starts = np.stack([rs.permutation(length)[:k1] for _ in range(n)]).astype(np.int32)
  start_lp = -np.sort(rs.exponential(1.0, (n, k1)), axis=1).astype(np.float32)
  # Distinct ends (as top_k's) near their start, often before it or too far; ties in score.
  shifts = np.stack([[rs.permutation(np.arange(-3, 12))[:k2] for _ in range(k1)]
                     for _ in range(n)])
  ends = (starts[:, :, None] + shifts) % length
  end_lp = -np.round(np.sort(rs.exponential(1.0, (n, k1, k2)), axis=2), 1).astype(np.float32)
  return {"start_top_index": starts, "start_top_log_probs": start_lp,
          "end_top_index": ends.astype(np.int32), "end_top_log_probs": end_lp,
          "cls_logits": rs.normal(size=n).astype(np.float32)}


def test_decoding_equals_a_transcription_of_the_original(windows):
  assert len(windows) > 2 * len(windows.meta.examples)  # several windows per question
  rs = np.random.RandomState(0)
  for trial in range(5):
    arrays = _random_beams(windows, rs)
    n_best, max_len = (20, 30) if trial % 2 else (4, 5)
    nbest, null_odds = original.decode(windows, arrays, n_best, max_len)
    ref_nbest, ref_null = _reference_decode(windows.meta, arrays, n_best, max_len)
    assert null_odds == ref_null
    assert {q: [(x["text"], x["start_log_prob"], x["end_log_prob"]) for x in v]
            for q, v in nbest.items()} == ref_nbest


def test_threshold_is_the_best_f1_one_and_metrics_are_the_official(tmp_path):
  """Four questions, one window each, each window's beam one span; the null threshold found is
  the one no other threshold beats, and the metrics are those of the predictions file."""
  contexts = ["alpha beta gamma delta", "one two three four", "red green blue gray",
              "north south east west"]
  golds = [["beta"], [], ["blue gray"], []]  # q1 and q3 are impossible
  spans = [(1, 1), (0, 0), (2, 3), (3, 3)]  # word spans: right for q0 and q2
  cls = [-2.0, 1.0, 0.5, 0.75]  # null scores: only the search's threshold (0.5) gets all four
  examples = [squad_data.Example(f"q{i}", "?", c, g, [c.index(x) for x in g], not g)
              for i, (c, g) in enumerate(zip(contexts, golds))]
  meta = squad_data.Meta(examples, np.arange(4, dtype=np.int32), np.full(4, 3, np.int32),
                         [np.arange(4) for _ in range(4)], [np.ones(4, bool) for _ in range(4)])
  data = Dataset({"input_ids": np.zeros((4, 8), np.int32)}, meta)
  arrays = {"start_top_index": np.asarray([[3 + s] for s, _ in spans], np.int32),
            "start_top_log_probs": np.full((4, 1), -0.1, np.float32),
            "end_top_index": np.asarray([[[3 + e]] for _, e in spans], np.int32),
            "end_top_log_probs": np.full((4, 1, 1), -0.2, np.float32),
            "cls_logits": np.asarray(cls, np.float32)}
  cfg = original.data_config("v2")
  assert cfg.null_score_diff_threshold == 0.0  # would null q2: not what this head uses
  out = original.evaluate_task(arrays, data, cfg, tmp_path)  # through the task's entry point
  preds = json.loads((tmp_path / "predictions.json").read_text())
  null_odds = json.loads((tmp_path / "null_odds.json").read_text())
  nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())
  assert null_odds == {f"q{i}": c for i, c in enumerate(cls)}
  assert [nbest[f"q{i}"][0]["text"] for i in range(4)] == ["beta", "one", "blue gray", "west"]
  # Brute force over the thresholds: "" where the null score is above t.
  gold = squad_data.to_squad_json(examples, version_2=True)
  answers = {f"q{i}": nbest[f"q{i}"][0]["text"] for i in range(4)}
  f1_at = {t: squad_metrics.evaluate(gold, {q: "" if null_odds[q] > t else a
                                            for q, a in answers.items()})["f1"]
           for t in [-math.inf, *cls]}
  assert f1_at == {-math.inf: 50.0, -2.0: 75.0, 0.5: 100.0, 0.75: 75.0, 1.0: 50.0}
  assert out["null_score_diff_threshold"] == out["best_f1_thresh"] == 0.5
  assert preds == {"q0": "beta", "q1": "", "q2": "blue gray", "q3": ""}
  assert out["f1"] == out["best_f1"] == out["exact"] == 100.0
  official = squad_metrics.evaluate(gold, preds)
  assert {k: out[k] for k in official} == {k: float(v) for k, v in official.items()}


# ----------------------------------------------------------------------------- the task

def _config(arg="v2,head=original"):
  import importlib.util
  from pathlib import Path
  path = Path(__file__).resolve().parents[1] / "configs" / "finetune_squad.py"
  spec = importlib.util.spec_from_file_location("finetune_squad", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_config_selects_the_head_and_its_features(tokenizer, windows):
  cfg = _config()
  assert (cfg.task, cfg.data.head) == ("squad_v2_original", "original")
  assert tasks.of(cfg) is original and original.head(cfg.data) == "squad_v2_original"
  assert tasks.of(_config("v2")) is squad and squad.head(_config("v2").data) == "question_answering"
  # The override the docs give selects the task too; a task never runs the other head's data.
  overridden = _config("v2")
  overridden.data.head = "original"
  assert tasks.of(overridden) is original
  with pytest.raises(ValueError, match="squad_v2_original"):
    squad.head(cfg.data)
  with pytest.raises(ValueError, match="data.head='span'"):
    original.head(_config("v2").data)
  with pytest.raises(ValueError, match="version 2"):
    _config("v1,head=original")
  with pytest.raises(ValueError, match="data.head"):
    _config("v2,head=xlnet")
  spec = original.example_spec(cfg.data)
  assert set(spec) == {"input_ids", "attention_mask", "token_type_ids", "start_positions",
                       "end_positions", "p_mask", "cls_index", "is_impossible", "weight"}
  assert spec["p_mask"].shape == (cfg.data.max_seq_length,) and spec["cls_index"].shape == ()
  # The span head's batches are as before.
  assert set(squad.example_spec(_config("v2").data)) == set(spec) - set(original.FEATURES)
  # The window builder's p_mask: 0 exactly on [CLS] and the window's context tokens.
  f, meta = windows.features, windows.meta
  for row in range(len(windows)):
    context = np.zeros(f["p_mask"].shape[1], bool)
    context[meta.context_offset[row]:meta.context_offset[row] + len(meta.token_to_word[row])] = 1
    context[0] = True
    np.testing.assert_array_equal(f["p_mask"][row], ~context)
  assert not f["cls_index"].any()
  np.testing.assert_array_equal(f["is_impossible"], f["start_positions"] == 0)


def test_the_train_step_builds_from_the_config_alone():
  """What aot compiles for a TPU slice: the step lowers from the config, no data or checkpoint."""
  from albert_jax import aot
  config = _config("v2,head=original,model=base")
  config.model.update(vocab_size=100, embedding_size=8, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=32)
  config.data.max_seq_length = 32
  config.update(batch_size=8, dtype="float32")
  spec = aot.step_of(config)
  assert spec.head == "squad_v2_original"
  assert spec.example["p_mask"].shape == (32,)
  lowered, _, _ = aot.lower(config, spec, jax.devices())
  assert "p_mask" in str(lowered.args_info)


def test_loss_sums_by_hand():
  start = np.log(np.asarray([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], np.float32))
  end = np.log(np.asarray([[0.1, 0.1, 0.8], [0.7, 0.2, 0.1]], np.float32))
  outputs = M.SquadV2Output(start_logits=jnp.asarray(start), end_logits=jnp.asarray(end),
                            cls_logits=jnp.asarray([2.0, -1.0]))
  batch = {"start_positions": np.asarray([0, 2]), "end_positions": np.asarray([2, 0]),
           "is_impossible": np.asarray([1, 1]), "weight": np.asarray([1.0, 0.0], np.float32)}
  sums = original.loss_sums(outputs, batch)
  expected = 0.5 * (-math.log(0.5) - math.log(0.8)) + 0.5 * math.log1p(math.exp(-2.0))
  assert float(sums["loss"]) == pytest.approx(expected, rel=1e-6)  # row 2 has weight 0
  metrics = original.normalise(sums, original.counts(batch))
  assert (float(metrics["cls_accuracy"]), float(metrics["accuracy"])) == (1.0, 1.0)


# ----------------------------------------------------------------------------- conversion

def test_hf_export_is_refused_and_orbax_keeps_it(tmp_path, capsys):
  params = random_params(CFG, "squad_v2_original", 1)
  with pytest.raises(ValueError, match="no ALBERT class"):
    hf_convert.save(CFG, params, tmp_path / "hf", head="squad_v2_original")
  assert not (tmp_path / "hf").exists()
  assert hf_convert.infer_head(params) == "squad_v2_original"
  assert hf_convert.save_model(CFG, params, tmp_path / "orbax", "squad_v2_original") == "albert-jax"
  config, back, head = hf_convert.load_any(tmp_path / "orbax")
  assert (config, head) == (CFG, "squad_v2_original")
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back), strict=True):
    np.testing.assert_array_equal(a, b)
  assert hf_convert.main(["orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf")]) == 1
  assert "cannot be exported to Hugging Face" in capsys.readouterr().err
  assert not (tmp_path / "hf").exists()


def test_loading_a_pretraining_checkpoint_keeps_the_backbone(tmp_path, caplog):
  source = random_params(CFG, "pretraining", 2)
  hf_convert.save(CFG, source, tmp_path / "hf", head="pretraining")
  with caplog.at_level("WARNING", logger="albert_jax.init_from"):
    config, params, head = hf_convert.load_any(tmp_path / "hf", head="squad_v2_original")
  assert head == "squad_v2_original"
  new = next(r.args[1] for r in caplog.records if r.msg.startswith("Newly initialised"))
  assert sorted(new) == sorted(k for k in hf_convert.flatten(params) if not k.startswith("albert"))
  for a, b in zip(jax.tree_util.tree_leaves(params["albert"]),
                  jax.tree_util.tree_leaves({k: v for k, v in source["albert"].items()
                                             if k != "pooler"}), strict=True):
    np.testing.assert_array_equal(a, b)
  # The new head starts as the original initialises it: N(0, 0.02) cut at 2 sigma, zero biases.
  kernel = params["end_logits"]["dense_0"]["kernel"]
  assert kernel.shape == (2 * CFG.hidden_size, CFG.hidden_size) and abs(kernel).max() <= 0.04
  assert not params["start_logits"]["dense"]["bias"].any()
  assert "bias" not in params["answer_class"]["dense_1"]
  # And back into a span head from the Orbax directory: the backbone again, the head new.
  model_dir.save_model_dir(tmp_path / "orbax", config, params, head)
  _, qa, _ = hf_convert.load_any(tmp_path / "orbax", head="question_answering")
  np.testing.assert_array_equal(qa["albert"]["embeddings"]["word_embeddings"]["embedding"],
                                source["albert"]["embeddings"]["word_embeddings"]["embedding"])
