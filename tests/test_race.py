"""RACE: reading the distribution and TFDS rows, run_race.py's features, accuracies by level."""

import json
import math
import types

import numpy as np
import pytest

from albert_jax.data import arrays
from albert_jax.tasks import race

import finetune_race  # noqa: E402  (configs/, on the path by conftest.py)

# RACE/{split}/{level}/{file}: one JSON article record per file, as the distribution has them.
RECORDS = {
    ("train", "middle", "10.txt"): {
        "id": "middle10.txt", "article": "Tom has a dog. The dog is brown.",
        "questions": ["Tom has a _.", "What color is the dog?"],
        "options": [["cat", "dog", "bird", "fish"], ["black", "white", "brown", "red"]],
        "answers": ["B", "C"]},
    ("train", "middle", "2.txt"): {
        "id": "middle2.txt", "article": "Ann reads books.",
        "questions": ["Ann reads"], "options": [["books", "songs", "maps", "cars"]],
        "answers": ["A"]},
    ("train", "high", "5.txt"): {
        "id": "high5.txt", "article": "The sun is a star.",
        "questions": ["The sun is  _  ."], "options": [["a planet", "a moon", " a star ", "a cup"]],
        "answers": ["C"]},
    ("dev", "middle", "1.txt"): {
        "id": "middle1.txt", "article": "Bob likes tea.",
        "questions": ["What does Bob like?"], "options": [["tea", "milk", "juice", "water"]],
        "answers": ["A"]},
    ("dev", "high", "3.txt"): {
        "id": "high3.txt", "article": "Rain falls from clouds.",
        "questions": ["Rain falls from _.", "Rain is"],
        "options": [["trees", "clouds", "rocks", "cars"], ["wet", "dry", "hot", "red"]],
        "answers": ["B", "A"]},
}


@pytest.fixture
def race_dir(tmp_path):
  for (split, level, name), record in RECORDS.items():
    d = tmp_path / "RACE" / split / level
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(record) + "\n", encoding="utf-8")
  (tmp_path / "RACE" / "train" / "middle" / "notes.md").write_text("not a record")
  return tmp_path


def ids(tokenizer, text):
  return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def test_read_race(race_dir):
  examples = race.read_race(race_dir, "train")
  # middle first, then high; files by name ("10.txt" < "2.txt"); notes.md skipped.
  assert [ex.id for ex in examples] == ["middle10.txt-0", "middle10.txt-1", "middle2.txt-0",
                                        "high5.txt-0"]
  assert [ex.level for ex in examples] == ["middle", "middle", "middle", "high"]
  assert [ex.label for ex in examples] == [1, 2, 0, 2]
  assert examples[1] == race.Example(
      id="middle10.txt-1", level="middle", article="Tom has a dog. The dog is brown.",
      question="What color is the dog?", options=("black", "white", "brown", "red"), label=2)
  # The RACE directory itself works too; a level alone.
  high = race.read_race(race_dir / "RACE", "dev", levels=("high",))
  assert [(ex.id, ex.label) for ex in high] == [("high3.txt-0", 1), ("high3.txt-1", 0)]
  with pytest.raises(FileNotFoundError):
    race.read_race(race_dir, "test")
  with pytest.raises(ValueError):
    race.read_race(race_dir, "dev", levels=("college",))


def test_qa_texts_fill_the_blank_or_append():
  blank, plain, spaced = (race.Example("x", "high", "art", q, ("a b", "c", " d  e ", "f"), 0)
                          for q in ("He is _ today.", "Who is he?", "It is  _  ."))
  assert race.qa_texts(blank) == ["He is a b today.", "He is c today.", "He is d e today.",
                                  "He is f today."]
  assert race.qa_texts(plain) == ["Who is he? a b", "Who is he? c", "Who is he? d e",
                                  "Who is he? f"]
  assert race.qa_texts(spaced)[2] == "It is d e ."


def test_features_short_example_is_padded(tokenizer):
  ex = race.Example("q", "middle", "Tom has a dog.", "Tom has a _.",
                   ("cat", "dog", "bird", "fish"), 1)
  f = race.convert_examples([ex], tokenizer, max_seq_length=32, max_qa_length=16)
  assert {k: (v.shape, v.dtype) for k, v in f.items()} == {
      "input_ids": ((1, 4, 32), np.int32), "attention_mask": ((1, 4, 32), np.int32),
      "token_type_ids": ((1, 4, 32), np.int32), "labels": ((1,), np.int32)}
  assert f["labels"].tolist() == [1]
  article = ids(tokenizer, "Tom has a dog.")
  for j, option in enumerate(ex.options):
    qa = ids(tokenizer, f"Tom has a {option}.")
    n = len(article) + len(qa) + 3
    assert n <= 32
    assert f["input_ids"][0, j].tolist() == [2, *article, 3, *qa, 3] + [0] * (32 - n)
    assert f["attention_mask"][0, j].tolist() == [1] * n + [0] * (32 - n)
    assert f["token_type_ids"][0, j].tolist() == ([0] * (len(article) + 2) + [1] * (len(qa) + 1)
                                                  + [0] * (32 - n))


def test_features_truncate_qa_from_the_left_and_the_article_to_fit(tokenizer):
  article = "The cat sat on the mat and looked at the birds in the garden. " * 20
  question = "Which of the following sentences about the cat in the garden is true according to"
  ex = race.Example("q", "high", article, question, ("the cat", "a dog", "the mat", "birds"), 0)
  f = race.convert_examples([ex], tokenizer, max_seq_length=64, max_qa_length=16)
  article_ids = ids(tokenizer, article)
  for j, option in enumerate(ex.options):
    qa = ids(tokenizer, f"{question} {option}")
    assert len(qa) > 16 and len(article_ids) > 64  # both must be cut
    # 16 qa tokens (its end: the option survives), 64 - 3 - 16 = 45 article tokens (its start).
    assert f["input_ids"][0, j].tolist() == [2, *article_ids[:45], 3, *qa[-16:], 3]
    assert np.flatnonzero(f["input_ids"][0, j] == 3).tolist() == [46, 63]
    assert f["attention_mask"][0, j].tolist() == [1] * 64
    assert f["token_type_ids"][0, j].tolist() == [0] * 47 + [1] * 17
  # A short article is not cut when the qa part is.
  short = race.Example("q", "high", "Cats sleep.", question, ex.options, 0)
  f = race.convert_examples([short], tokenizer, max_seq_length=64, max_qa_length=16)
  n_article = len(ids(tokenizer, "Cats sleep."))
  assert f["attention_mask"][0].sum(-1).tolist() == [n_article + 16 + 3] * 4
  with pytest.raises(ValueError):
    race.convert_examples([ex], tokenizer, max_seq_length=64, max_qa_length=62)


def test_load_files(race_dir, tokenizer):
  cfg = race.data_config("")
  cfg.data_dir = str(race_dir)
  cfg.max_seq_length, cfg.max_qa_length = 48, 16
  data = race.load(cfg, tokenizer, "eval")
  assert data.features["input_ids"].shape == (3, 4, 48)
  assert data.features["labels"].tolist() == [0, 1, 0]
  assert data.meta == {"ids": ["middle1.txt-0", "high3.txt-0", "high3.txt-1"],
                       "levels": ["middle", "high", "high"]}
  cfg.max_examples = 2
  assert len(race.load(cfg, tokenizer, "train")) == 2
  high = race.data_config("high")
  high.data_dir = str(race_dir)
  assert race.load(high, tokenizer, "train").meta["ids"] == ["high5.txt-0"]
  cfg.source = "hub"
  with pytest.raises(ValueError):
    race.load(cfg, tokenizer, "eval")


def tfds_row(record):
  """A record as TFDS's numpy decoding gives it: bytes and object arrays of bytes."""
  enc = lambda s: s.encode("utf-8")
  return {"article": enc(record["article"]), "example_id": enc(record["id"]),
          "questions": np.array([enc(q) for q in record["questions"]], dtype=object),
          "answers": np.array([enc(a) for a in record["answers"]], dtype=object),
          "options": np.array([[enc(o) for o in opts] for opts in record["options"]],
                              dtype=object)}


def test_read_tfds(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  calls = []

  def data_source(name, split, data_dir, download):
    calls.append((name, split, data_dir, download))
    level = name.split("/")[1]
    return [tfds_row(r) for (s, lv, _), r in RECORDS.items() if s == split and lv == level]

  monkeypatch.setattr(tfds, "data_source", data_source)
  examples = race.read_tfds("dev", "high", data_dir="/data/tfds")
  assert calls == [("race/high", "dev", "/data/tfds", False)]
  assert examples == [
      race.Example("high3.txt-0", "high", "Rain falls from clouds.", "Rain falls from _.",
                   ("trees", "clouds", "rocks", "cars"), 1),
      race.Example("high3.txt-1", "high", "Rain falls from clouds.", "Rain is",
                   ("wet", "dry", "hot", "red"), 0)]
  cfg = race.data_config("all")
  cfg.source = "tfds"
  assert [ex.id for ex in race.read_examples(cfg, "train")] == [
      "middle10.txt-0", "middle10.txt-1", "middle2.txt-0", "high5.txt-0"]
  assert calls[-2:] == [("race/middle", "train", None, False), ("race/high", "train", None, False)]


def test_read_tfds_not_prepared_says_how(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match=r"tfds build race/middle --file_format=array_record"):
    race.read_tfds("dev", "middle", data_dir=str(tmp_path))


def test_evaluate_accuracies_by_level(tmp_path):
  labels = np.array([0, 1, 2, 3, 0], np.int32)
  predicted = [0, 1, 0, 3, 1]  # right, right, wrong (middle); right, wrong (high)
  logits = np.full((5, 4), -1.0, np.float32)
  logits[np.arange(5), predicted] = 2.0
  data = arrays.Dataset({"labels": labels}, meta={
      "ids": ["a-0", "a-1", "b-0", "c-0", "c-1"],
      "levels": ["middle", "middle", "middle", "high", "high"]})
  metrics = race.evaluate_task({"logits": logits}, data, race.data_config(), tmp_path / "out")
  assert metrics == pytest.approx({"accuracy": 3 / 5, "middle_accuracy": 2 / 3,
                                   "high_accuracy": 1 / 2})
  written = json.loads((tmp_path / "out" / "predictions.json").read_text())
  assert written == {"a-0": "A", "a-1": "B", "b-0": "A", "c-0": "D", "c-1": "B"}
  middle = arrays.Dataset({"labels": labels[:3]}, meta={"ids": ["a-0", "a-1", "b-0"],
                                                        "levels": ["middle"] * 3})
  assert race.evaluate_task({"logits": logits[:3]}, middle, None, None) == pytest.approx(
      {"accuracy": 2 / 3, "middle_accuracy": 2 / 3})


def test_loss_sums_and_normalise():
  logits = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]], np.float32)
  batch = {"labels": np.array([3, 0, 1], np.int32), "weight": np.array([1.0, 1.0, 0.0])}
  sums = race.loss_sums(types.SimpleNamespace(logits=logits), batch)
  row0 = math.log(sum(math.exp(x) for x in (1, 2, 3, 4))) - 4
  row1 = math.log(3 + math.exp(5)) - 0
  assert float(sums["loss"]) == pytest.approx(row0 + row1, rel=1e-5)
  assert float(race.counts(batch)["weight"]) == 2.0
  assert float(sums["correct"]) == 1.0  # row 0 right, row 1 wrong, row 2 weightless
  norm = race.normalise(sums, race.counts(batch))
  assert float(norm["loss"]) == pytest.approx((row0 + row1) / 2, rel=1e-5)
  assert float(norm["accuracy"]) == 0.5
  out = race.predictions(types.SimpleNamespace(logits=logits), batch)
  assert np.asarray(out["logits"]).tolist() == logits.tolist()


def test_data_config_and_hyperparameters():
  assert race.data_config("").levels == ("middle", "high")
  assert race.data_config("all").levels == ("middle", "high")
  assert race.data_config("middle").levels == ("middle",)
  cfg = race.data_config("high")
  assert (cfg.levels, cfg.source, cfg.train_split, cfg.eval_split, cfg.max_seq_length,
          cfg.max_qa_length, cfg.max_examples) == (("high",), "files", "train", "dev", 512, 128, 0)
  with pytest.raises(ValueError):
    race.data_config("college")
  assert race.num_labels(cfg) == 2
  assert (race.HEAD, race.METRIC) == ("multiple_choice", "accuracy")
  hp = race.HYPERPARAMETERS  # run_race.py's flag defaults
  assert (hp["lr"], hp["batch_size"], hp["total_steps"], hp["warmup_steps"]) == (1e-5, 32,
                                                                                12000, 1000)


def test_the_config_reads_the_hyperparameters():
  hp = race.HYPERPARAMETERS
  for arg in ("all", "high,model=base"):
    config = finetune_race.get_config(arg)
    assert (config.optim.lr, config.batch_size, config.total_steps, config.optim.warmup_steps) == (
        hp["lr"], hp["batch_size"], hp["total_steps"], hp["warmup_steps"])
    assert (config.task, config.optim.name) == ("race", "adamw")
