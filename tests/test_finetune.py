"""Fine-tuning end to end through `train.train_and_evaluate`, on tiny data in each benchmark's
published format, with tiny models: GLUE (learns a separable task), SQuAD, RACE, CoNLL NER,
and starting from an HF directory and from an Orbax pretraining checkpoint."""

import importlib.util
import inspect
import json
import random
from pathlib import Path

import jax
import numpy as np
import pytest

from albert_jax import hf_convert, init_from, metrics, tasks, train
from albert_jax import model as M
from albert_jax.data import corpus
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm
from albert_jax.tasks import squad, squad_metrics

from conftest import once_per_session, stop_after

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, vocab_size=-1)
POSITIVE = ["good", "great", "lovely", "excellent", "superb", "fine", "wonderful", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dreadful", "ugly", "horrible", "nasty"]


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="session")
def vocab(tmp_path_factory):
  """A vocabulary that knows the sentiment words of the GLUE-format task (a quarter of the
  embedded corpus: seconds; made once for both test workers)."""
  def make(directory):
    sentences = [s for doc in corpus.embedded_documents("train") for s in doc][::4]
    sentences += [f"the film was {w} and the plot {v}" for w in POSITIVE + NEGATIVE
                  for v in ("moved", "dragged")]
    return str(train_spm(sentences, 600, directory))
  return Path(once_per_session(tmp_path_factory, "finetune_vocab", make))


def tiny(config, vocab, **changes):
  config.model.update(TINY_MODEL)
  config.spm_model = str(vocab)
  config.dtype = "float32"
  config.optim.update(name="adamw_optax", lr=2e-3, warmup_steps=10)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.update(batch_size=16, log_every_steps=10, checkpoint_every_steps=1000,
                export_hf=False)
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


# ----------------------------------------------------------------------------- the interface

def test_every_task_implements_the_interface():
  """Each of tasks.TASKS has every name of the `tasks.Task` protocol, and calls its config
  argument `data_cfg`."""
  for name, task in tasks.TASKS.items():
    assert isinstance(task, tasks.Task), name
    for fn in (task.head, task.num_labels, task.example_spec):
      assert list(inspect.signature(fn).parameters) == ["data_cfg"], (name, fn)
    assert list(inspect.signature(task.score).parameters)[2] == "data_cfg", name
  assert not isinstance(json, tasks.Task)


# ----------------------------------------------------------------------------- GLUE

def write_sst2(directory: Path, n_train: int, n_dev: int, seed: int = 0):
  """SST-2 as GLUE distributes it: a header, `sentence<TAB>label`."""
  rng = random.Random(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for name, n in (("train", n_train), ("dev", n_dev)):
    lines = ["sentence\tlabel"]
    for _ in range(n):
      label = rng.randint(0, 1)
      word = rng.choice(POSITIVE if label else NEGATIVE)
      filler = " ".join(rng.choice(["the", "film", "plot", "was", "and", "it", "quite", "a"])
                        for _ in range(rng.randint(1, 3)))
      lines.append(f"{filler} {word} {filler}\t{label}")
    (directory / f"{name}.tsv").write_text("\n".join(lines) + "\n")
  test = ["index\tsentence"] + [f"{i}\tthe plot was {w}" for i, w in enumerate(POSITIVE + NEGATIVE)]
  (directory / "test.tsv").write_text("\n".join(test) + "\n")
  return directory


def test_glue_learns_a_separable_task_and_keeps_the_best(tmp_path, vocab):
  data = write_sst2(tmp_path / "SST-2", 512, 96)
  # From scratch at this learning rate the model finds the words in 40-80 steps (1.0 accuracy
  # by step 80 for four seeds tried; at 1e-3 it sat ~100 steps on the 50% plateau).
  config = tiny(load_config("finetune_glue", "task=sst2,model=base"), vocab,
                **{"data.data_dir": str(data), "data.max_seq_length": 16, "total_steps": 120,
                   "eval_every_steps": 40, "optim.lr": 3e-3, "data.predict_split": "test"})
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results == summary["eval_results"]
  assert results["accuracy"] >= 0.95, results
  assert results["best_step"] in (40, 80, 120)
  # The kept best model is an HF directory whose eval row matches eval_results.json.
  best = json.loads((workdir / "best.json").read_text())
  assert best["step"] == results["best_step"]
  assert (workdir / "best" / "config.json").is_file()
  cfg, params, head = hf_convert.load(workdir / "best")
  assert head == "sequence_classification" and cfg.num_labels == 2
  preds = (workdir / "predictions" / f"step_{results['best_step']}" / "eval")
  assert any(preds.iterdir())
  # The GLUE leaderboard file for the unlabelled test split: index, predicted label.
  rows = (workdir / "predictions" / "step_120" / "predict" / "SST-2.tsv").read_text().split("\n")
  assert rows[0] == "index\tprediction"
  predicted = dict(r.split("\t") for r in rows[1:] if r)
  expected = {str(i): "1" if i < len(POSITIVE) else "0" for i in range(16)}
  assert sum(predicted[k] == v for k, v in expected.items()) >= 14, predicted


@pytest.mark.heavy  # resume is tested in make test by the pretraining chains
def test_glue_resumes_without_losing_the_best(tmp_path, vocab):
  data = write_sst2(tmp_path / "SST-2", 128, 32)
  changes = {"data.data_dir": str(data), "data.max_seq_length": 24, "total_steps": 20,
             "eval_every_steps": 10, "checkpoint_every_steps": 10}
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny(load_config("finetune_glue", "sst2"), vocab, **changes),
                           str(workdir))
  first = json.loads((workdir / "eval_results.json").read_text())
  changes["total_steps"] = 30
  summary = train.train_and_evaluate(
      tiny(load_config("finetune_glue", "sst2"), vocab, **changes), str(workdir))
  assert summary["step"] == 30
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r]
  assert steps == [1, 10, 20, 30]  # resumed at 20, not restarted
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["last_step"] == 30
  assert results["accuracy"] >= first["accuracy"]


# ----------------------------------------------------------------------------- packed rows

def _losses(workdir: Path) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}


def _files(directory: Path) -> dict[str, str]:
  return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*.tsv"))}


def test_packed_glue_run_equals_the_unpacked_one_and_resumes(tmp_path, vocab, monkeypatch):
  """data.pack changes the rows only: every step's loss, the evals and the prediction files of
  a GLUE run (and of an unlabelled split's submission) are the unpacked run's; a packed run
  stopped in the middle and rerun is the uninterrupted one."""
  # 37 dev rows: the last eval batch (16) is mostly padding, which packing leaves out.
  data = write_sst2(tmp_path / "SST-2", 96, 37)
  changes = {"data.data_dir": str(data), "data.max_seq_length": 24, "total_steps": 8,
             "eval_every_steps": 4, "checkpoint_every_steps": 4, "log_every_steps": 1,
             "data.predict_split": "test"}
  runs = {}
  for name, pack in (("padded", False), ("packed", True)):
    config = tiny(load_config("finetune_glue", "sst2"), vocab, **changes, **{"data.pack": pack})
    runs[name] = train.train_and_evaluate(config, str(tmp_path / name))
  padded, packed = _losses(tmp_path / "padded"), _losses(tmp_path / "packed")
  assert sorted(packed) == list(range(1, 9))
  for step in padded:
    assert packed[step] == pytest.approx(padded[step], rel=1e-5), step
  assert runs["packed"]["eval"] == pytest.approx(runs["padded"]["eval"], rel=1e-5)
  for step in (4, 8):
    assert _files(tmp_path / "packed" / "predictions" / f"step_{step}") == _files(
        tmp_path / "padded" / "predictions" / f"step_{step}")

  # Stopped after step 5 (saved there), then rerun: the uninterrupted packed run, step by step.
  config = tiny(load_config("finetune_glue", "sst2"), vocab, **changes)
  with monkeypatch.context() as patch:
    patch.setattr(train, "_StopFlag", stop_after(5))
    stopped = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert stopped["preempted"] and stopped["step"] == 5
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  resumed = _losses(tmp_path / "resumed")
  assert sorted(resumed) == list(range(1, 9))
  for step in packed:
    assert resumed[step] == pytest.approx(packed[step], rel=1e-6), step


@pytest.mark.heavy  # packed token classification: test_packing (model, eval read-back)
def test_packed_ner_run_equals_the_unpacked_one(tmp_path, vocab):
  """Token classification packed: the same losses, entity scores and predictions file."""
  lines, rng = [], random.Random(1)
  for _ in range(24):
    name = rng.choice(["Paris", "London", "Berlin"])
    words = rng.sample(["The", "film", "opened", "quietly", "in", "old"], rng.randint(1, 5))
    lines += [f"{w} NN O" for w in words] + [f"{name} NNP B-LOC", ". . O", ""]
  path = tmp_path / "train.txt"
  path.write_text("\n".join(lines))
  results = {}
  for name, pack in (("padded", False), ("packed", True)):
    config = tiny(load_config("finetune_ner", "model=base"), vocab,
                  **{"data.train_file": str(path), "data.eval_file": str(path),
                     "data.max_seq_length": 24, "total_steps": 4, "eval_every_steps": 4,
                     "log_every_steps": 1, "data.pack": pack, "eval_batch_size": 8})
    results[name] = train.train_and_evaluate(config, str(tmp_path / name))["eval_results"]
  padded, packed = _losses(tmp_path / "padded"), _losses(tmp_path / "packed")
  assert packed == pytest.approx(padded, rel=1e-5) and len(packed) == 4
  assert results["packed"] == pytest.approx(results["padded"], rel=1e-5)
  prediction = Path("predictions") / "step_4" / "eval" / "predictions.txt"
  assert (tmp_path / "packed" / prediction).read_text() == (
      tmp_path / "padded" / prediction).read_text()


# ----------------------------------------------------------------------------- init_from

@pytest.mark.heavy  # init_from an Orbax run stays in make test; HF re-heading in test_hf_convert
def test_init_from_an_hf_directory_keeps_the_backbone(tmp_path, vocab):
  data = write_sst2(tmp_path / "SST-2", 64, 16)
  config = tiny(load_config("finetune_glue", "sst2"), vocab,
                **{"data.data_dir": str(data), "data.max_seq_length": 24, "total_steps": 1,
                   "optim.lr": 0.0, "optim.warmup_steps": 0, "export_hf": True})
  cfg = init_from.model_config(config, tasks.get(config.task), 600)
  source = M.init_params(M.AlbertForPreTraining(cfg), 3)
  hf_convert.save(cfg, source, tmp_path / "hf_in", head="pretraining", tokenizer=vocab)
  config.init_from = str(tmp_path / "hf_in")
  config.spm_model = ""  # the init_from directory's
  train.train_and_evaluate(config, str(tmp_path / "run"))
  _, params, head = hf_convert.load(tmp_path / "run" / "hf")
  assert head == "sequence_classification"
  for a, b in zip(jax.tree_util.tree_leaves(params["albert"]),
                  jax.tree_util.tree_leaves(source["albert"])):
    np.testing.assert_array_equal(a, b)  # lr 0: the backbone is the checkpoint's


def test_init_from_an_orbax_pretraining_checkpoint(tmp_path, vocab, reference):
  """From step 24 of conftest's tiny pretraining run; its vocabulary is found in its workdir."""
  data = write_sst2(tmp_path / "SST-2", 64, 16)
  config = tiny(load_config("finetune_glue", "sst2"), vocab,
                **{"data.data_dir": str(data), "data.max_seq_length": 24, "total_steps": 2,
                   "init_from": str(reference[0] / "checkpoints" / "24")})
  config.spm_model = ""
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["step"] == 2 and "accuracy" in summary["eval_results"]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["init_from"].endswith("24")


# ----------------------------------------------------------------------------- SQuAD

CONTEXTS = [
    "The Eiffel Tower was finished in 1889 in Paris. It is made of iron and is 330 metres tall.",
    "Python was created by Guido van Rossum. Its first release came in 1991, in the Netherlands.",
]


def write_squad(path: Path, version: int):
  """A SQuAD-format JSON file; for v2 one unanswerable question per paragraph."""
  qas = [
      [("When was the tower finished?", "1889"), ("What is it made of?", "iron")],
      [("Who created Python?", "Guido van Rossum"), ("When was the first release?", "1991")],
  ]
  paragraphs = []
  for i, (context, pairs) in enumerate(zip(CONTEXTS, qas)):
    items = [{"id": f"q{i}{j}", "question": q,
              "answers": [{"text": a, "answer_start": context.index(a)}],
              **({"is_impossible": False} if version == 2 else {})}
             for j, (q, a) in enumerate(pairs)]
    if version == 2:
      items.append({"id": f"q{i}x", "question": "Who painted the moon?", "answers": [],
                    "plausible_answers": [], "is_impossible": True})
    paragraphs.append({"context": context, "qas": items})
  path.write_text(json.dumps({"version": f"{version}.0", "data": [
      {"title": "t", "paragraphs": paragraphs}]}))
  return path


# Heavy: its parts apart in `make test`: test_squad (reading the files, windows, loss, the task's
# evaluate writing the predictions files with the official metrics, as the loop calls it), the
# fine-tuning loop itself (the GLUE runs above).
@pytest.mark.heavy
@pytest.mark.parametrize("version", [1, 2])
def test_squad_run_writes_predictions_and_official_metrics(tmp_path, vocab, version):
  data = write_squad(tmp_path / "train.json", version)
  config = tiny(load_config("finetune_squad", f"v{version}"), vocab,
                **{"data.train_file": str(data), "data.eval_file": str(data),
                   "data.max_seq_length": 48, "data.doc_stride": 16, "data.max_query_length": 16,
                   "total_steps": 4, "batch_size": 8})
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  results = summary["eval_results"]
  predictions_file = workdir / "predictions" / "step_4" / "eval" / "predictions.json"
  predictions = json.loads(predictions_file.read_text())
  ids = {qa["id"] for p in json.loads(data.read_text())["data"][0]["paragraphs"]
         for qa in p["qas"]}
  assert set(predictions) == ids
  # The run's metrics are the official definitions applied to its predictions file.
  dataset = json.loads(data.read_text())
  expected = squad_metrics.evaluate(dataset, predictions)
  if version == 1:
    assert results["exact_match"] == pytest.approx(expected["exact_match"])
    assert results["f1"] == pytest.approx(expected["f1"])
  else:
    for key in ("HasAns_total", "NoAns_total"):
      assert key in results, results


# Heavy: its parts in `make test` are test_packing's (the span head and its loss on packed
# windows, packed eval read back with -inf past each window) and the packed GLUE run above.
@pytest.mark.heavy
def test_packed_squad_run_predicts_what_its_model_does_unpacked(tmp_path, vocab):
  """A packed SQuAD 2.0 run (span head, windows packed in training and eval): its prediction
  files are the post-processing of its final model's logits on the windows unpacked, each
  window's padding positions left out (-inf: no packed row has them), and its metrics the
  official ones of its predictions."""
  data = write_squad(tmp_path / "train.json", 2)
  config = tiny(load_config("finetune_squad", "v2"), vocab,
                **{"data.train_file": str(data), "data.eval_file": str(data),
                   "data.max_seq_length": 48, "data.doc_stride": 16, "data.max_query_length": 16,
                   "total_steps": 4, "batch_size": 8, "data.pack": True, "export_hf": True})
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  cfg, params, head = hf_convert.load_any(summary["hf_dir"])
  windows = squad.load(config.data, AlbertTokenizer(str(vocab)), "eval")
  f = windows.features
  out = M.make_model(cfg, head).apply({"params": params}, f["input_ids"], f["attention_mask"],
                                      f["token_type_ids"])
  real = f["attention_mask"] > 0
  preds, null_odds, nbest = squad.postprocess(
      windows, np.where(real, out.start_logits, -np.inf), np.where(real, out.end_logits, -np.inf),
      config.data.n_best_size, config.data.max_answer_length, True,
      config.data.null_score_diff_threshold)
  written = workdir / "predictions" / "step_4" / "eval"
  assert json.loads((written / "predictions.json").read_text()) == preds
  odds = json.loads((written / "null_odds.json").read_text())
  assert odds.keys() == null_odds.keys()
  np.testing.assert_allclose([odds[k] for k in odds], [null_odds[k] for k in odds], rtol=1e-4,
                             atol=1e-5)
  assert [[e["text"] for e in v] for v in json.loads(
      (written / "nbest_predictions.json").read_text()).values()] == [
          [e["text"] for e in v] for v in nbest.values()]
  official = squad_metrics.evaluate(json.loads(data.read_text()), preds)
  for key in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
    assert summary["eval_results"][key] == pytest.approx(official[key]), key


@pytest.mark.heavy  # one of a few task runs kept out of `make test` (tasks unit-tested apart)
def test_squad_v2_original_head_from_an_hf_directory(tmp_path, vocab):
  """The original SQuAD 2.0 head through the loop, started from an HF pretraining directory:
  the backbone is the checkpoint's (lr 0), the prediction files and the official metrics are
  written, and the model is kept as albert-jax model directories (no HF class has this head)."""
  data = write_squad(tmp_path / "train.json", 2)
  config = tiny(load_config("finetune_squad", "v2,head=original"), vocab,
                **{"data.train_file": str(data), "data.eval_file": str(data),
                   "data.max_seq_length": 48, "data.doc_stride": 16, "data.max_query_length": 16,
                   "total_steps": 4, "batch_size": 8, "optim.lr": 0.0, "optim.warmup_steps": 0,
                   "export_hf": True})
  cfg = init_from.model_config(config, tasks.get(config.task), 600)
  source = M.init_params(M.AlbertForPreTraining(cfg), 3)
  hf_convert.save(cfg, source, tmp_path / "hf_in", head="pretraining", tokenizer=vocab)
  config.init_from, config.spm_model = str(tmp_path / "hf_in"), ""
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  results = summary["eval_results"]
  out = workdir / "predictions" / "step_4" / "eval"
  predictions = json.loads((out / "predictions.json").read_text())
  null_odds = json.loads((out / "null_odds.json").read_text())
  nbest = json.loads((out / "nbest_predictions.json").read_text())
  dataset = json.loads(data.read_text())
  ids = {qa["id"] for p in dataset["data"][0]["paragraphs"] for qa in p["qas"]}
  assert set(predictions) == set(null_odds) == set(nbest) == ids
  # The run's metrics are the official v2.0 ones of its predictions file, at the best threshold.
  official = squad_metrics.evaluate(dataset, predictions)
  for key in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
    assert results[key] == pytest.approx(official[key]), key
  assert results["null_score_diff_threshold"] == results["best_f1_thresh"]
  assert all("cls_accuracy" in r for r in metrics.read_metrics(workdir) if "loss" in r)
  # Best and final model: albert-jax model directories holding the HF checkpoint's backbone.
  assert "hf_dir" not in summary and not (workdir / "hf").exists()
  for kept in (workdir / "best", Path(summary["model_dir"])):
    _, params, head = hf_convert.load_any(kept)
    assert head == "squad_v2_original"
    for a, b in zip(jax.tree_util.tree_leaves(params["albert"]),
                    jax.tree_util.tree_leaves({k: v for k, v in source["albert"].items()
                                               if k != "pooler"}), strict=True):
      np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- RACE, NER

def write_race(root: Path):
  rng = random.Random(0)
  for split in ("train", "dev"):
    for level in ("middle", "high"):
      d = root / split / level
      d.mkdir(parents=True)
      for i in range(4):
        answer = rng.randint(0, 3)
        options = [rng.choice(NEGATIVE) for _ in range(4)]
        options[answer] = rng.choice(POSITIVE)
        (d / f"{i}.txt").write_text(json.dumps({
            "id": f"{split}/{level}/{i}.txt", "article": "The film was shown in the town.",
            "questions": ["The film was _ ."], "options": [options],
            "answers": ["ABCD"[answer]]}))
  return root


@pytest.mark.heavy  # RACE features and metrics are unit-tested in test_race
def test_race_run_reports_accuracy_per_level(tmp_path, vocab):
  data = write_race(tmp_path / "RACE")
  config = tiny(load_config("finetune_race", "all"), vocab,
                **{"data.data_dir": str(data), "data.max_seq_length": 32,
                   "data.max_qa_length": 12, "total_steps": 3, "batch_size": 8})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  results = summary["eval_results"]
  for key in ("accuracy", "middle_accuracy", "high_accuracy"):
    assert 0.0 <= results[key] <= 1.0, results
  assert (results["middle_accuracy"] + results["high_accuracy"]) / 2 == pytest.approx(
      results["accuracy"])  # four questions per level


@pytest.mark.heavy  # NER features and metrics are unit-tested in test_ner
def test_ner_run_reports_entity_f1(tmp_path, vocab):
  lines = ["-DOCSTART- -X- -X- O", ""]
  rng = random.Random(0)
  for _ in range(40):
    name = rng.choice(["Paris", "London", "Berlin"])
    lines += ["The NN O", "film NN O", "opened VB O", "in IN O", f"{name} NNP B-LOC", ". . O", ""]
  path = tmp_path / "train.txt"
  path.write_text("\n".join(lines))
  config = tiny(load_config("finetune_ner", "model=base"), vocab,
                **{"data.train_file": str(path), "data.eval_file": str(path),
                   "data.max_seq_length": 16, "total_steps": 60, "eval_every_steps": 60})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  results = summary["eval_results"]
  assert results["f1"] >= 0.9, results  # one entity type in one position: learnt in 60 steps
  assert (tmp_path / "run" / "predictions" / "step_60" / "eval" / "predictions.txt").is_file()
