"""GLUE task: metrics against hand-worked values, the GLUE TSV formats, features, output files."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax.data import corpus
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm
from albert_jax.tasks import glue
from albert_jax.tasks.glue import Example

import finetune_glue  # noqa: E402  (configs/, on the path by conftest.py)

HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  """A 400-piece vocabulary trained on the embedded corpus (seconds)."""
  docs = itertools.islice(corpus.embedded_documents("train"), 300)
  sentences = [s for d in docs for s in d][:5000]
  return AlbertTokenizer(train_spm(sentences, 400, tmp_path_factory.mktemp("spm")))


def write(path: Path, lines: list[list[str]] | list[str], newline: str = "\n") -> Path:
  """A TSV file: each line a list of fields (joined by tabs) or a ready string."""
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(("\t".join(x) if isinstance(x, list) else x) + newline for x in lines)
  path.write_bytes(text.encode("utf-8"))
  return path


# ----------------------------------------------------------------------------- metrics

# tp = 3 (rows 0, 3, 6), fp = 1 (row 1), fn = 1 (row 4), tn = 2 (rows 2, 5).
PRED = [1, 1, 0, 1, 0, 0, 1]
GOLD = [1, 0, 0, 1, 1, 0, 1]


def test_accuracy_and_f1_by_hand():
  m = glue.compute_metrics("mrpc", PRED, GOLD)
  assert m == pytest.approx({"accuracy": 5 / 7, "f1": 2 * 3 / (2 * 3 + 1 + 1)})
  assert m["f1"] == pytest.approx(0.75)
  assert glue.compute_metrics("qqp", np.array(PRED), np.array(GOLD))["f1"] == pytest.approx(0.75)
  assert glue.compute_metrics("sst2", PRED, GOLD) == pytest.approx({"accuracy": 5 / 7})
  # No positive anywhere: F1 is 0 (sklearn's zero_division), accuracy 1.
  assert glue.compute_metrics("mrpc", [0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0}


def test_matthews_by_hand():
  # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (6 - 1) / sqrt(4 * 4 * 3 * 3) = 5/12.
  m = glue.compute_metrics("cola", PRED, GOLD)
  assert m["matthews_corrcoef"] == pytest.approx(5 / 12)
  assert m["accuracy"] == pytest.approx(5 / 7)
  # tp=1, tn=1, fp=2, fn=0: (1 - 0) / sqrt(3 * 1 * 3 * 1) = 1/3.
  mcc = glue.compute_metrics("cola", [1, 1, 1, 0], [1, 0, 0, 0])["matthews_corrcoef"]
  assert mcc == pytest.approx(1 / 3)
  assert glue.compute_metrics("cola", [1, 0, 1], [1, 0, 1])["matthews_corrcoef"] == 1.0
  assert glue.compute_metrics("cola", [0, 1, 0], [1, 0, 1])["matthews_corrcoef"] == -1.0


def test_matthews_degenerate_is_zero():
  # One class predicted (or only one in the gold labels): the formula is 0/0; sklearn gives 0.
  assert glue.compute_metrics("cola", [1, 1, 1, 1], [1, 0, 1, 0])["matthews_corrcoef"] == 0.0
  assert glue.compute_metrics("cola", [1, 0, 1, 0], [0, 0, 0, 0])["matthews_corrcoef"] == 0.0
  assert glue.compute_metrics("cola", [0, 0, 0], [0, 0, 0])["matthews_corrcoef"] == 0.0


def test_pearson_by_hand():
  # dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: sum dx dy = 11, sum dx^2 = 5, sum dy^2 = 26.
  m = glue.compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])
  assert m["pearson"] == pytest.approx(11 / math.sqrt(5 * 26))
  assert m["spearmanr"] == pytest.approx(1.0)  # both increasing


def test_spearman_with_ties_by_hand():
  # Average ranks: [1, 2, 2, 3] -> [1, 2.5, 2.5, 4]; [10, 20, 30, 30] -> [1, 2, 3.5, 3.5].
  np.testing.assert_array_equal(glue.average_ranks(np.array([1, 2, 2, 3])), [1, 2.5, 2.5, 4])
  np.testing.assert_array_equal(glue.average_ranks(np.array([3, 1, 3, 2])), [3.5, 1, 3.5, 2])
  # Pearson of the ranks: dx = [-1.5, 0, 0, 1.5], dy = [-1.5, -.5, 1, 1]: 3.75 / sqrt(4.5 * 4.5).
  m = glue.compute_metrics("sts-b", [1, 2, 2, 3], [10, 20, 30, 30])
  assert m["spearmanr"] == pytest.approx(3.75 / 4.5)
  # Pearson of the values: dx = [-1, 0, 0, 1], dy = [-12.5, -2.5, 7.5, 7.5]: 20 / sqrt(2 * 275).
  assert m["pearson"] == pytest.approx(20 / math.sqrt(2 * 275))


def test_task_names_and_scores():
  for name in ("mnli", "MNLI", "mnli_matched", "mnli_mismatched", "mnli-m", "mnli-mm", "qnli",
               "rte", "wnli", "SST-2"):
    assert glue.compute_metrics(name, [0, 1, 1, 2], [0, 1, 2, 2]) == {"accuracy": 0.75}
  with pytest.raises(ValueError, match="unknown GLUE task"):
    glue.compute_metrics("squad", [0], [0])
  with pytest.raises(ValueError, match="must be"):
    glue.compute_metrics("sst2", [0, 1], [0])
  assert glue.glue_score("cola", {"matthews_corrcoef": 0.4, "accuracy": 0.8}) == 0.4
  assert glue.glue_score("stsb", {"pearson": 0.9, "spearmanr": 0.8}) == pytest.approx(0.85)
  assert glue.glue_score("qqp", {"accuracy": 0.9, "f1": 0.7}) == pytest.approx(0.8)
  assert glue.glue_score("mnli-mm", {"accuracy": 0.6}) == 0.6


# ----------------------------------------------------------------------------- GLUE's TSV files

MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
               "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
               "sentence2"]


def mnli_row(index, s1, s2, labels=()):
  parse = "( ( The ) ( \" quoted ) )"
  return [str(index), "31193", f"{index}n", "government", parse, parse, parse, parse, s1, s2,
          *labels]


def write_mnli(root: Path) -> Path:
  d = root / "MNLI"
  dev = MNLI_HEADER + [f"label{i}" for i in range(1, 6)] + ["gold_label"]
  write(d / "train.tsv", [MNLI_HEADER + ["label1", "gold_label"],
                          mnli_row(0, "Conceptually cream skimming has two basic dimensions.",
                                   "Product and geography are what make cream skimming work. ",
                                   ["neutral", "neutral"])])
  write(d / "dev_matched.tsv", [
      dev, mnli_row(0, "The new rights are nice enough", "Everyone likes the newest benefits ",
                    ["neutral"] * 5 + ["neutral"]),
      mnli_row(1, "This site includes a \"list of all award winners.", "The site has no list.",
               ["contradiction"] * 5 + ["contradiction"])])
  write(d / "dev_mismatched.tsv", [
      dev, mnli_row(0, "Your contribution helped make it possible.", "Your contribution helped.",
                    ["entailment"] * 5 + ["entailment"])])
  write(d / "test_matched.tsv", [MNLI_HEADER, mnli_row(0, "Hierbas, ans seco.", "A name.")])
  write(d / "test_mismatched.tsv", [MNLI_HEADER, mnli_row(0, "What have you decided?", "Decided?"),
                                    mnli_row(1, "Yes.", "No.")])
  return d


def test_read_cola_without_and_with_header(tmp_path):
  train = write(tmp_path / "CoLA" / "train.tsv", [
      ["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."],
      ["gj04", "0", "*", 'He said "that he left.'],  # an unbalanced quote stays one field
      ["gj04", "1", "", 'The "big" dog barked.']])
  assert glue.read_tsv_examples("cola", train) == [
      Example("0", "Our friends won't buy this analysis, let alone the next one we propose.", None,
              "1"),
      Example("1", 'He said "that he left.', None, "0"),
      Example("2", 'The "big" dog barked.', None, "1")]
  test = write(tmp_path / "CoLA" / "test.tsv", [["index", "sentence"], ["0", "Bill whistled."],
                                                ["1", '"Down the road.']])
  assert glue.read_tsv_examples("cola", test) == [Example("0", "Bill whistled.", None, None),
                                                  Example("1", '"Down the road.', None, None)]


def test_read_sst2_mrpc_stsb(tmp_path):
  sst = write(tmp_path / "train.tsv", [["sentence", "label"],
                                       ["hide new secretions from the parental units ", "0"],
                                       ['" the greatest musicians ', "1"]])
  assert glue.read_tsv_examples("SST-2", sst) == [
      Example("0", "hide new secretions from the parental units ", None, "0"),
      Example("1", '" the greatest musicians ', None, "1")]
  assert glue.read_tsv_examples("sst2", sst, max_examples=1) == [
      Example("0", "hide new secretions from the parental units ", None, "0")]
  mrpc = write(tmp_path / "mrpc.tsv", [
      ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
      ["1", "702876", "702977", 'He called " the witness " , of it .', 'Referring to " him " .'],
      ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]])
  assert glue.read_tsv_examples("mrpc", mrpc) == [
      Example("0", 'He called " the witness " , of it .', 'Referring to " him " .', "1"),
      Example("1", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .", "0")]
  mrpc_test = write(tmp_path / "mrpc_test.tsv", [
      ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1089874", "1089925", "A", "B"]])
  assert glue.read_tsv_examples("mrpc", mrpc_test) == [Example("0", "A", "B", None)]
  header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
            "sentence2"]
  stsb = write(tmp_path / "stsb.tsv", [
      header + ["score"],
      ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
       "An air plane is taking off.", "5.000"],
      ["7", "main-news", "MSRpar", "2012test", "0004", "none", "none", "A man.", "A woman.",
       "0.750"]])
  assert glue.read_tsv_examples("stsb", stsb) == [
      Example("0", "A plane is taking off.", "An air plane is taking off.", 5.0),
      Example("7", "A man.", "A woman.", 0.75)]
  stsb_test = write(tmp_path / "stsb_test.tsv", [header, ["3", "g", "f", "y", "o", "s", "s", "A",
                                                          "B"]])
  assert glue.read_tsv_examples("stsb", stsb_test) == [Example("3", "A", "B", None)]


def test_read_qqp_skips_short_rows(tmp_path):
  qqp = write(tmp_path / "train.tsv", [
      ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
      ["133273", "213221", "213222", "How is the life of a math student?", "Which level?", "0"],
      ["363362", "2", '"What is'],  # a question cut by a line break: the original skips it
      ["402555", "536040", "536041", "How do I control it?", 'How do "you" control it?', "1"]])
  assert glue.read_tsv_examples("qqp", qqp) == [
      Example("133273", "How is the life of a math student?", "Which level?", "0"),
      Example("402555", "How do I control it?", 'How do "you" control it?', "1")]
  test = write(tmp_path / "test.tsv", [["id", "question1", "question2"], ["0", "Why?", "How?"]])
  assert glue.read_tsv_examples("qqp", test) == [Example("0", "Why?", "How?", None)]


def test_read_mnli_matched_and_mismatched(tmp_path):
  d = write_mnli(tmp_path)
  assert glue.read_tsv_examples("mnli", d / "dev_matched.tsv") == [
      Example("0", "The new rights are nice enough", "Everyone likes the newest benefits ",
              "neutral"),
      Example("1", 'This site includes a "list of all award winners.', "The site has no list.",
              "contradiction")]
  assert glue.read_tsv_examples("mnli-mm", d / "dev_mismatched.tsv") == [
      Example("0", "Your contribution helped make it possible.", "Your contribution helped.",
              "entailment")]
  assert glue.read_tsv_examples("mnli", d / "train.tsv")[0].label == "neutral"
  assert glue.read_tsv_examples("mnli", d / "test_mismatched.tsv") == [
      Example("0", "What have you decided?", "Decided?", None), Example("1", "Yes.", "No.", None)]


def test_read_qnli_rte_wnli(tmp_path):
  qnli = write(tmp_path / "qnli.tsv", [["index", "question", "sentence", "label"],
                                       ["0", "What came into force?", "The constitution.",
                                        "entailment"],
                                       ["1", "Who?", "Nobody.", "not_entailment"]])
  assert glue.read_tsv_examples("qnli", qnli) == [
      Example("0", "What came into force?", "The constitution.", "entailment"),
      Example("1", "Who?", "Nobody.", "not_entailment")]
  pair = ["index", "sentence1", "sentence2", "label"]
  rte = write(tmp_path / "rte.tsv", [pair, ["0", 'Dana "Reeve" died.', "Reeve had an accident.",
                                            "not_entailment"]], newline="\r\n")
  assert glue.read_tsv_examples("rte", rte) == [
      Example("0", 'Dana "Reeve" died.', "Reeve had an accident.", "not_entailment")]
  wnli = write(tmp_path / "wnli.tsv", [pair, ["0", "I stuck a pin through a carrot.",
                                              "The carrot had a hole.", "1"]])
  assert glue.read_tsv_examples("wnli", wnli) == [
      Example("0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1")]
  wnli_test = write(tmp_path / "wnli_test.tsv", [pair[:3], ["0", "A", "B"]])
  assert glue.read_tsv_examples("wnli", wnli_test) == [Example("0", "A", "B", None)]


def test_read_errors(tmp_path):
  bad_label = write(tmp_path / "rte.tsv", [["index", "sentence1", "sentence2", "label"],
                                           ["0", "A", "B", "neutral"]])
  with pytest.raises(ValueError, match=r"rte.tsv:2: label 'neutral'"):
    glue.read_tsv_examples("rte", bad_label)
  with pytest.raises(ValueError, match="no column"):
    glue.read_tsv_examples("mrpc", bad_label)  # an RTE file read as MRPC
  short = write(tmp_path / "qnli.tsv", [["index", "question", "sentence", "label"], ["0", "Q"]])
  with pytest.raises(ValueError, match="too few"):
    glue.read_tsv_examples("qnli", short)


# ----------------------------------------------------------------------------- TFDS

def test_tfds_split_names():
  assert glue.tfds_split("sst2", "dev") == "validation"
  assert glue.tfds_split("mnli", "dev") == "validation_matched"
  assert glue.tfds_split("mnli", "dev_mismatched") == "validation_mismatched"
  assert glue.tfds_split("mnli", "test") == "test_matched"
  assert glue.tfds_split("qqp", "train") == "train"


def test_examples_from_tfds_records():
  # TFDS's MNLI classes are [entailment, neutral, contradiction]; ours are read back by name.
  names = ["entailment", "neutral", "contradiction"]
  records = [{"premise": b"A man sleeps.", "hypothesis": b"A person rests.", "label": 0, "idx": 7},
             {"premise": b"A", "hypothesis": b"B", "label": np.int64(2), "idx": np.int32(8)},
             {"premise": b"C", "hypothesis": b"D", "label": -1, "idx": 9}]
  assert glue.examples_from_tfds("mnli", records, names) == [
      Example("7", "A man sleeps.", "A person rests.", "entailment"),
      Example("8", "A", "B", "contradiction"), Example("9", "C", "D", None)]
  # WNLI's TFDS names are [not_entailment, entailment]: id 1 is GLUE's "1".
  wnli = [{"sentence1": b"x", "sentence2": b"y", "label": 1, "idx": 0}]
  assert glue.examples_from_tfds("wnli", wnli, ["not_entailment", "entailment"]) == [
      Example("0", "x", "y", "1")]
  cola = [{"sentence": "ok .", "label": 0, "idx": 3}]
  assert glue.examples_from_tfds("cola", cola, ["unacceptable", "acceptable"]) == [
      Example("3", "ok .", None, "0")]
  stsb = [{"sentence1": b"a", "sentence2": b"b", "label": np.float32(3.25), "idx": 1},
          {"sentence1": b"c", "sentence2": b"d", "label": np.float32(-1), "idx": 2}]
  assert glue.examples_from_tfds("stsb", stsb, None) == [Example("1", "a", "b", 3.25),
                                                         Example("2", "c", "d", None)]


@pytest.mark.skipif(HAS_TF, reason="TensorFlow is installed: TFDS registers glue")
def test_read_tfds_without_tensorflow_says_what_to_install():
  with pytest.raises(ModuleNotFoundError, match=r"albert-jax\[tf\].*TSV"):
    glue.read_tfds("sst2", "train")


@pytest.mark.skipif(not HAS_TF, reason="TFDS registers glue only with TensorFlow")
def test_read_tfds_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=5):
    examples = glue.read_tfds("mnli", "dev_mismatched")
  assert len(examples) == 5
  assert all(e.text_b is not None and e.label in glue.LABELS["mnli"] for e in examples)


# ----------------------------------------------------------------------------- features

def ids(tok, text):
  return tok.convert_tokens_to_ids(tok.tokenize(text))


def truncate_pair(a, b, budget):
  """The original's `_truncate_seq_pair`: drop the last token of the longer one (ties: b)."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    (a if len(a) > len(b) else b).pop()
  return a, b


def test_pair_layout(tok):
  assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == (2, 3, 0)
  a, b = "The module returns a list.", "It is empty."
  data = glue.convert_examples([Example("0", a, b, "entailment")], tok, "rte", 40, split="dev")
  ia, ib = ids(tok, a), ids(tok, b)
  n = len(ia) + len(ib) + 3
  assert n < 40
  expected = [2] + ia + [3] + ib + [3] + [0] * (40 - n)
  np.testing.assert_array_equal(data.features["input_ids"], [expected])
  np.testing.assert_array_equal(data.features["token_type_ids"],
                                [[0] * (len(ia) + 2) + [1] * (len(ib) + 1) + [0] * (40 - n)])
  np.testing.assert_array_equal(data.features["attention_mask"], [[1] * n + [0] * (40 - n)])
  for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
    assert data.features[k].dtype == np.int32
  np.testing.assert_array_equal(data.features["labels"], [0])  # entailment is RTE's class 0
  assert list(data.meta["guid"]) == ["0"] and list(data.meta["split"]) == ["dev"]
  assert data.meta["labelled"].tolist() == [True]


def test_longest_first_truncation(tok):
  a = "This function returns the number of items in the list, or raises an error if it is closed."
  b = "It is fast."
  ia, ib = ids(tok, a), ids(tok, b)
  # The pieces a trained vocabulary makes vary by machine; the two cases only need a long
  # enough for 24 to cut it alone (len(ib) <= 10) and b long enough for 12 to cut both.
  assert len(ia) > 20 and 4 < len(ib) <= 10
  for length in (24, 12):  # a alone cut, then both cut down to equal lengths
    ta, tb = truncate_pair(ia, ib, length - 3)
    data = glue.convert_examples([Example("0", a, b, "1")], tok, "mrpc", length)
    np.testing.assert_array_equal(data.features["input_ids"][0], [2] + ta + [3] + tb + [3])
    np.testing.assert_array_equal(data.features["token_type_ids"][0],
                                  [0] * (len(ta) + 2) + [1] * (len(tb) + 1))
  single = glue.convert_examples([Example("0", a, None, "1")], tok, "sst2", 10)
  np.testing.assert_array_equal(single.features["input_ids"], [[2] + ia[:8] + [3]])
  np.testing.assert_array_equal(single.features["token_type_ids"], [[0] * 10])


def test_labels_and_unlabelled_rows(tok):
  examples = [Example("0", "A.", "B.", 4.75), Example("1", "C.", "D.", None)]
  data = glue.convert_examples(examples, tok, "stsb", 16, split="test")
  assert data.features["labels"].dtype == np.float32
  np.testing.assert_array_equal(data.features["labels"], [4.75, 0.0])
  assert data.meta["labelled"].tolist() == [True, False]
  mnli = [Example(str(i), "x", "y", label) for i, label in
          enumerate(["neutral", "contradiction", "entailment", None])]
  data = glue.convert_examples(mnli, tok, "mnli", 8)
  np.testing.assert_array_equal(data.features["labels"], [2, 0, 1, 0])
  assert data.meta["labelled"].tolist() == [True, True, True, False]
  empty = glue.convert_examples([], tok, "sst2", 8)
  assert len(empty) == 0 and empty.features["input_ids"].shape == (0, 8)


# ----------------------------------------------------------------------------- output files

def test_submission_files(tok, tmp_path):
  test = glue.convert_examples([Example(str(i), "x", None, None) for i in range(3)], tok, "sst2",
                               8, split="test")
  path = glue.write_submission("sst2", np.array([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0]]), test,
                               tmp_path)
  assert path == tmp_path / "SST-2.tsv"
  assert path.read_text() == "index\tprediction\n0\t1\n1\t0\n2\t1\n"
  stsb = glue.convert_examples([Example("5", "a", "b", None), Example("6", "c", "d", None)], tok,
                               "stsb", 8, split="test")
  glue.write_submission("sts-b", np.array([3.14159, 0.5]), stsb, tmp_path)
  assert (tmp_path / "STS-B.tsv").read_text() == "index\tprediction\n5\t3.142\n6\t0.500\n"
  mm = glue.convert_examples([Example("0", "a", "b", None), Example("1", "c", "d", None)], tok,
                             "mnli", 8, split="test_mismatched")
  glue.write_submission("mnli", [0, 2], mm, tmp_path)
  assert (tmp_path / "MNLI-mm.tsv").read_text() == (
      "index\tprediction\n0\tcontradiction\n1\tneutral\n")
  glue.write_submission("qnli", [1, 0], mm, tmp_path / "mine.tsv")
  assert (tmp_path / "mine.tsv").read_text() == (
      "index\tprediction\n0\tnot_entailment\n1\tentailment\n")
  assert sorted(os.listdir(tmp_path)) == ["MNLI-mm.tsv", "SST-2.tsv", "STS-B.tsv", "mine.tsv"]
  assert glue.submission_name("mnli") == "MNLI-m.tsv"
  assert glue.submission_name("mnli-mm") == "MNLI-mm.tsv"
  assert glue.submission_name("cola") == "CoLA.tsv"


# ----------------------------------------------------------------------------- task interface

def test_hyperparameters_from_run_glue_sh():
  assert set(glue.HYPERPARAMETERS) == set(glue.TASKS)
  # google-research/albert run_glue.sh: `run_task MNLI 1000 3e-5 10000 100 128`,
  # `run_task CoLA 320 1e-5 5336 100 16`, `run_task STS-B 214 2e-5 3598 100 16`, all at 512.
  assert glue.HYPERPARAMETERS["mnli"] == dict(lr=3e-5, train_steps=10000, warmup_steps=1000,
                                              batch_size=128, max_seq_length=512)
  assert glue.HYPERPARAMETERS["cola"] == dict(lr=1e-5, train_steps=5336, warmup_steps=320,
                                              batch_size=16, max_seq_length=512)
  assert glue.HYPERPARAMETERS["stsb"] == dict(lr=2e-5, train_steps=3598, warmup_steps=214,
                                              batch_size=16, max_seq_length=512)


def test_the_config_reads_the_hyperparameters():
  for arg, task in (("task=mnli", "mnli"), ("task=CoLA,model=base", "cola"), ("rte", "rte")):
    hp, config = glue.HYPERPARAMETERS[task], finetune_glue.get_config(arg)
    assert (config.optim.lr, config.batch_size, config.total_steps, config.optim.warmup_steps,
            config.data.max_seq_length) == (hp["lr"], hp["batch_size"], hp["train_steps"],
                                            hp["warmup_steps"], hp["max_seq_length"])


def test_data_config():
  cfg = glue.data_config("task=SST-2")
  assert (cfg.task, cfg.source, cfg.train_split, cfg.eval_split) == (
      "sst2", "files", "train", "dev")
  assert (cfg.data_dir, cfg.max_seq_length, cfg.max_examples, cfg.predict_split) == (
      "glue_data/SST-2", 512, 0, "")
  assert tuple(cfg.extra_eval_splits) == ()
  mnli = glue.data_config("mnli")
  assert (mnli.eval_split, tuple(mnli.extra_eval_splits)) == ("dev_matched", ("dev_mismatched",))
  mm = glue.data_config("mnli-mm")
  assert (mm.task, mm.eval_split) == ("mnli", "dev_mismatched")
  assert [glue.num_labels(glue.data_config(t)) for t in ("stsb", "mnli", "cola")] == [1, 3, 2]
  assert tuple(mnli.label_names) == ("contradiction", "entailment", "neutral")
  assert tuple(glue.data_config("stsb").label_names) == ()
  assert (glue.HEAD, glue.METRIC) == ("sequence_classification", "score")
  with pytest.raises(ValueError, match="name a GLUE task"):
    glue.data_config("")


def test_load_and_evaluate_mnli(tok, tmp_path):
  cfg = glue.data_config("task=mnli")
  cfg.data_dir = str(write_mnli(tmp_path / "glue"))
  cfg.max_seq_length = 32
  train = glue.load(cfg, tok, "train")
  assert len(train) == 1 and train.features["labels"].tolist() == [2]
  matched = glue.load(cfg, tok, "eval")  # the loop loads each of extra_eval_splits by name
  assert list(matched.meta["split"]) == ["dev_matched", "dev_matched"]
  mismatched = glue.load(cfg, tok, "dev_mismatched")
  assert list(mismatched.meta["split"]) == ["dev_mismatched"]
  data = glue.concatenate([matched, mismatched])
  np.testing.assert_array_equal(data.features["labels"], [2, 0, 1])
  # Matched: row 0 right (neutral), row 1 wrong; mismatched: right.
  logits = np.array([[0.0, 0.1, 2.0], [0.0, 3.0, 1.0], [0.0, 1.0, 0.5]], np.float32)
  out = tmp_path / "out"
  results = glue.evaluate_task({"logits": logits}, data, cfg, out)
  assert results == {"accuracy": 0.5, "score": 0.5, "mnli_mm/accuracy": 1.0, "mnli_mm/score": 1.0}
  assert (out / "predictions_dev_matched.tsv").read_text() == (
      "index\tprediction\tlabel\n0\tneutral\tneutral\n1\tentailment\tcontradiction\n")
  assert (out / "predictions_dev_mismatched.tsv").read_text() == (
      "index\tprediction\tlabel\n0\tentailment\tentailment\n")
  cfg.max_examples = 1
  assert len(glue.load(cfg, tok, "eval")) == 1
  cfg.max_examples = 0
  with pytest.raises(ValueError, match="predict_split"):
    glue.load(cfg, tok, "predict")
  cfg.predict_split = "test_matched,test_mismatched"
  test = glue.load(cfg, tok, "predict")
  assert test.meta["labelled"].tolist() == [False] * 3
  assert glue.evaluate_task({"logits": np.eye(3, dtype=np.float32)}, test, cfg, out) == {}
  assert (out / "MNLI-m.tsv").read_text() == "index\tprediction\n0\tcontradiction\n"
  assert (out / "MNLI-mm.tsv").read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n"


def test_evaluate_scores(tok, tmp_path):
  # MRPC: the GLUE score is the mean of accuracy and F1 (5/7 and 3/4 from the rows above).
  examples = [Example(str(i), "a", "b", str(g)) for i, g in enumerate(GOLD)]
  data = glue.convert_examples(examples, tok, "mrpc", 8, split="dev")
  logits = np.eye(2, dtype=np.float32)[PRED]
  cfg = glue.data_config("mrpc")
  results = glue.evaluate_task({"logits": logits}, data, cfg, tmp_path)
  assert results == pytest.approx({"accuracy": 5 / 7, "f1": 0.75, "score": (5 / 7 + 0.75) / 2})
  # STS-B: one logit per row, scored against the float labels.
  examples = [Example(str(i), "a", "b", g) for i, g in enumerate([2.0, 4.0, 5.0, 9.0])]
  data = glue.convert_examples(examples, tok, "stsb", 8, split="dev")
  results = glue.evaluate_task({"logits": np.array([[1.0], [2.0], [3.0], [4.0]])}, data,
                          glue.data_config("stsb"), tmp_path)
  pearson = 11 / math.sqrt(130)
  assert results == pytest.approx({"pearson": pearson, "spearmanr": 1.0,
                                   "score": (pearson + 1.0) / 2})
  assert (tmp_path / "predictions_dev.tsv").read_text().splitlines()[1] == "0\t1.000\t2.000"


def test_losses():
  outputs = SimpleNamespace(logits=jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]))
  batch = {"labels": jnp.array([0, 1, 0]), "weight": jnp.array([1, 1, 0])}
  sums = glue.loss_sums(outputs, batch)
  xent = math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))  # row 2 has weight 0
  assert float(sums["loss"]) == pytest.approx(xent, rel=1e-6)
  assert float(glue.counts(batch)["weight"]) == 2
  means = glue.normalise(sums, glue.counts(batch))
  assert float(means["loss"]) == pytest.approx(xent / 2, rel=1e-6)
  assert float(means["accuracy"]) == 1.0
  regression = SimpleNamespace(logits=jnp.array([[1.5], [0.0]]))
  batch = {"labels": jnp.array([1.0, 2.0]), "weight": jnp.ones(2)}
  sums = glue.loss_sums(regression, batch)
  assert float(glue.normalise(sums, glue.counts(batch))["loss"]) == pytest.approx((0.25 + 4.0) / 2)
  assert glue.predictions(outputs, batch)["logits"] is outputs.logits
