"""NER: CoNLL reading, first-subword labels, seqeval-style entity scores worked out by hand."""

import math
import types

import numpy as np
import pytest

from albert_jax.data import arrays
from albert_jax.tasks import common, ner

IGNORE = common.IGNORE

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O"""  # no newline at the end: the last sentence still counts

TWO_COLUMNS = "Paris\tB-LOC\nis\tO\n\n\nHe\tO\nwins\tO\n"

LABELS = ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER")


@pytest.fixture
def files(tmp_path):
  (tmp_path / "train.txt").write_text(CONLL, encoding="utf-8")
  (tmp_path / "eval.txt").write_text(TWO_COLUMNS, encoding="utf-8")
  return tmp_path


def test_read_conll(files):
  assert ner.read_conll(files / "train.txt") == [
      ner.Sentence(("EU", "rejects", "German", "call", "."), ("B-ORG", "O", "B-MISC", "O", "O")),
      ner.Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
      ner.Sentence(("BRUSSELS", "1996-08-22"), ("B-LOC", "O"))]
  assert ner.read_conll(files / "eval.txt") == [
      ner.Sentence(("Paris", "is"), ("B-LOC", "O")), ner.Sentence(("He", "wins"), ("O", "O"))]
  assert ner.label_list(ner.read_conll(files / "train.txt")) == LABELS
  (files / "bad.txt").write_text("Paris B-LOC\nalone\n")
  with pytest.raises(ValueError, match="bad.txt:2"):
    ner.read_conll(files / "bad.txt")


def pieces(tokenizer, word):
  return tokenizer.tokenize(word)


def test_first_subword_labels(files, tokenizer):
  sentences = ner.read_conll(files / "train.txt")
  f, positions = ner.convert_sentences(sentences, LABELS, tokenizer, max_seq_length=32)
  assert {k: (v.shape, v.dtype) for k, v in f.items()} == {
      k: ((3, 32), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
  assert max(len(pieces(tokenizer, w)) for s in sentences for w in s.words) > 1  # a real test
  for i, sentence in enumerate(sentences):
    expected_ids, expected_labels, expected_positions = [2], [IGNORE], []
    for word, tag in zip(sentence.words, sentence.tags):
      word_pieces = pieces(tokenizer, word)
      expected_positions.append(len(expected_ids))
      expected_ids += tokenizer.convert_tokens_to_ids(word_pieces)
      expected_labels += [LABELS.index(tag)] + [IGNORE] * (len(word_pieces) - 1)
    n = len(expected_ids) + 1
    assert f["input_ids"][i].tolist() == expected_ids + [3] + [0] * (32 - n)
    assert f["labels"][i].tolist() == expected_labels + [IGNORE] * (32 - n + 1)
    assert f["attention_mask"][i].tolist() == [1] * n + [0] * (32 - n)
    assert not f["token_type_ids"][i].any()
    assert positions[i].tolist() == expected_positions
    # Each labelled position holds the first piece of its word.
    for word, p in zip(sentence.words, positions[i]):
      assert f["input_ids"][i, p] == tokenizer.convert_tokens_to_ids(pieces(tokenizer, word)[0])
  # EU: 2 labelled words' worth of checks by hand: [CLS] then EU's first piece labelled B-ORG (3).
  assert f["labels"][0, 1] == 3 and positions[0][0] == 1


def test_word_without_pieces_is_unk(tokenizer):
  assert pieces(tokenizer, "\u200b") == []
  sentence = ner.Sentence(("call", "\u200b", "call"), ("O", "B-PER", "O"))
  f, positions = ner.convert_sentences([sentence], ("O", "B-PER"), tokenizer, max_seq_length=8)
  call = tokenizer.convert_tokens_to_ids(pieces(tokenizer, "call"))
  assert len(call) == 1
  assert f["input_ids"][0].tolist() == [2, *call, 1, *call, 3, 0, 0, 0]
  assert f["labels"][0].tolist() == [IGNORE, 0, 1, 0, IGNORE, IGNORE, IGNORE, IGNORE]
  assert positions[0].tolist() == [1, 2, 3]


def test_truncation_drops_words_and_evaluate_predicts_them_o(tokenizer, tmp_path):
  n_call, n_rejects = len(pieces(tokenizer, "call")), len(pieces(tokenizer, "rejects"))
  assert n_call == 1 and n_rejects > 2
  sentence = ner.Sentence(("call", "rejects", "Paris"), ("O", "O", "B-LOC"))
  labels = ("O", "B-LOC")
  # Room for [CLS] call rejects [SEP]: Paris's first piece does not fit.
  length = 2 + n_call + n_rejects
  f, positions = ner.convert_sentences([sentence], labels, tokenizer, max_seq_length=length)
  assert positions[0].tolist() == [1, 2]
  assert f["input_ids"][0, -1] == 3 and f["attention_mask"][0].all()
  assert (f["labels"][0] != IGNORE).sum() == 2
  # Two pieces of "rejects" only: it keeps its label, Paris is gone.
  f2, positions2 = ner.convert_sentences([sentence], labels, tokenizer, max_seq_length=5)
  rejects = tokenizer.convert_tokens_to_ids(pieces(tokenizer, "rejects"))
  call = tokenizer.convert_tokens_to_ids(pieces(tokenizer, "call"))
  assert f2["input_ids"][0].tolist() == [2, *call, *rejects[:2], 3]
  assert f2["labels"][0].tolist() == [IGNORE, 0, 0, IGNORE, IGNORE]
  assert positions2[0].tolist() == [1, 2]
  # Every kept word predicted right; the cut entity is missed: no entity found, one lost.
  data = arrays.Dataset(f, meta={"sentences": [sentence], "positions": positions,
                                 "labels": labels})
  metrics = ner.evaluate_task({"predictions": np.zeros((1, length), np.int32)}, data, None, tmp_path)
  assert metrics == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "accuracy": 2 / 3, "f1_LOC": 0.0})
  assert (tmp_path / "predictions.txt").read_text() == (
      "call O O\nrejects O O\nParis B-LOC O\n\n")


def test_get_entities_iob2_iob1_and_types():
  assert ner.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
  # IOB1: I- opens an entity, B- only separates two of the same type.
  assert ner.get_entities(["I-PER", "I-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 2, 3)]
  assert ner.get_entities(["O", "I-LOC", "I-LOC", "O"]) == [("LOC", 1, 2)]
  assert ner.get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
  # A type change ends one entity and starts another, B- or not.
  assert ner.get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]
  assert ner.get_entities(["I-ORG", "I-MISC"]) == [("ORG", 0, 0), ("MISC", 1, 1)]
  # An entity running to the end of the sentence is closed there.
  assert ner.get_entities(["O", "B-ORG", "I-ORG"]) == [("ORG", 1, 2)]
  assert ner.get_entities(["O", "O"]) == []
  # IOBES as seqeval reads it.
  assert ner.get_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]
  assert ner.get_entities(["B-PER", "E-PER", "I-PER", "E-PER"]) == [("PER", 0, 1), ("PER", 2, 3)]
  # Tags without a type are of type "_"; an I after O still starts a chunk.
  assert ner.get_entities(["O", "I", "I", "O", "B"]) == [("_", 1, 2), ("_", 4, 4)]


def test_entity_scores_by_hand():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
  # gold: PER(0-1) LOC(3) | ORG(0-1); predicted: PER(0-1) ORG(3) | ORG(0); only PER matches.
  # Tokens: 3 of 4 and 2 of 3 right.
  assert ner.entity_scores(gold, pred) == pytest.approx({
      "precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "accuracy": 5 / 7,
      "f1_PER": 1.0, "f1_LOC": 0.0, "f1_ORG": 0.0})
  # IOB1 gold with two entities vs one IOB2 span over both: nothing matches.
  assert ner.entity_scores([["I-PER", "I-PER", "B-PER"]], [["B-PER", "I-PER", "I-PER"]]) == (
      pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1 / 3,
                     "f1_PER": 0.0}))
  # The same entities written in IOB1 and IOB2 score perfectly.
  assert ner.entity_scores([["I-PER", "I-PER", "O", "I-LOC"]],
                           [["B-PER", "I-PER", "O", "B-LOC"]])["f1"] == 1.0
  # Sentences are apart: an entity at the end of one does not run into the next.
  gold = [["O", "B-PER"], ["I-PER", "O"]]
  pred = [["O", "B-PER"], ["B-PER", "O"]]
  assert ner.entity_scores(gold, pred)["f1"] == 1.0
  # 2 gold, 3 predicted, 2 right: P 2/3, R 1, F1 0.8.
  scores = ner.entity_scores([["B-LOC", "O", "B-PER", "O"]], [["B-LOC", "B-MISC", "B-PER", "O"]])
  assert scores == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "accuracy": 0.75,
                                  "f1_LOC": 1.0, "f1_MISC": 0.0, "f1_PER": 1.0})


def test_loss_sums_over_labelled_tokens():
  logits = np.array([[[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]],
                     [[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], np.float32)
  labels = np.array([[IGNORE, 0, IGNORE], [0, 0, IGNORE]], np.int32)
  batch = {"labels": labels, "weight": np.array([1.0, 0.5], np.float32)}
  sums = ner.loss_sums(types.SimpleNamespace(logits=logits), batch)
  xent = lambda row, label: math.log(sum(math.exp(x) for x in row)) - row[label]
  loss = xent([3, 0], 0) + 0.5 * (xent([2, 0], 0) + xent([0, 1], 0))
  assert float(sums["loss"]) == pytest.approx(loss, rel=1e-5)
  assert float(ner.counts(batch)["weight"]) == 2.0  # 1 token + 0.5 * 2 tokens
  assert float(sums["correct"]) == 1.5  # [3, 0] right; [2, 0] right, [0, 1] wrong at weight 0.5
  norm = ner.normalise(sums, ner.counts(batch))
  assert float(norm["loss"]) == pytest.approx(loss / 2, rel=1e-5)
  assert float(norm["accuracy"]) == 0.75
  out = ner.predictions(types.SimpleNamespace(logits=logits), batch)
  assert np.asarray(out["predictions"]).tolist() == [[1, 0, 0], [0, 1, 0]]


def test_load_and_evaluate(files, tokenizer, tmp_path):
  cfg = ner.data_config("")
  cfg.train_file, cfg.eval_file = str(files / "train.txt"), str(files / "eval.txt")
  cfg.max_seq_length = 16
  assert ner.num_labels(cfg) == 6
  data = ner.load(cfg, tokenizer, "eval")
  assert data.features["labels"].shape == (2, 16)
  assert data.meta["labels"] == LABELS
  assert [s.words for s in data.meta["sentences"]] == [("Paris", "is"), ("He", "wins")]
  # Predict "B-LOC" everywhere: Paris right, the three O words wrong.
  predicted = np.full((2, 16), LABELS.index("B-LOC"), np.int32)
  metrics = ner.evaluate_task({"predictions": predicted}, data, cfg, tmp_path / "out")
  # gold: LOC(Paris); predicted: LOC at every word, 4 entities, 1 right.
  assert metrics == pytest.approx({"precision": 1 / 4, "recall": 1.0, "f1": 0.4,
                                   "accuracy": 1 / 4, "f1_LOC": 0.4})
  assert (tmp_path / "out" / "predictions.txt").read_text() == (
      "Paris B-LOC B-LOC\nis O B-LOC\n\nHe O B-LOC\nwins O B-LOC\n\n")
  # Logits work as well as ids.
  logits = np.eye(6, dtype=np.float32)[predicted]
  assert ner.evaluate_task({"logits": logits}, data, cfg, None) == metrics
  cfg.max_examples = 1
  assert len(ner.load(cfg, tokenizer, "train")) == 1
  # Given labels win over the train file; a tag outside them is an error.
  cfg.labels = ("O", "B-LOC")
  assert ner.num_labels(cfg) == 2
  assert len(ner.load(cfg, tokenizer, "eval")) == 1
  with pytest.raises(ValueError, match="B-ORG"):
    ner.load(cfg, tokenizer, "train")


def test_data_config():
  cfg = ner.data_config("")
  assert (cfg.train_file, cfg.eval_file, tuple(cfg.labels), cfg.max_seq_length,
          cfg.max_examples) == ("", "", (), 128, 0)
  assert (ner.HEAD, ner.METRIC) == ("token_classification", "f1")
  with pytest.raises(ValueError):
    ner.data_config("conll2003")
  with pytest.raises(ValueError):
    ner.num_labels(cfg)

