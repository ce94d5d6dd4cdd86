"""All-or-nothing writes (files.py) where the loop uses them: prediction files appear whole or not
at all, and best/ holds its own record, so the model and the record never disagree."""

import json

import jax
import numpy as np
import pytest

from albert_jax import files, metrics, sharding, train
from albert_jax import model as M
from albert_jax.tasks import common

from helpers import random_params


class _Task:
  """Writes two prediction files, failing between them when asked."""
  fail = False

  @classmethod
  def score(cls, outputs, eval_set, data_cfg, out_dir):
    (out_dir / "predictions.json").write_text(json.dumps([int(o["x"][0]) for o in outputs]))
    if cls.fail:
      raise RuntimeError("killed while writing the prediction files")
    (out_dir / "nbest.json").write_text("{}")
    return {"score": 1.0}


def _evaluator(tmp_path, task):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  evals = [common.EvalSet("eval", [{"x": np.arange(2)}])]
  writer = metrics.MetricsWriter(tmp_path, 0)
  return train.Evaluator(lambda params, batch: {"x": batch["x"]}, evals, task, None, mesh,
                         files.path(tmp_path), writer, None)


def test_prediction_files_appear_whole_or_not_at_all(tmp_path, monkeypatch):
  state = train.TrainState(step=0, params={}, opt_state=(), nonfinite_step=-1)
  evaluate = _evaluator(tmp_path, _Task)
  monkeypatch.setattr(_Task, "fail", True)
  with pytest.raises(RuntimeError):
    evaluate(state, 5)
  assert not (tmp_path / "predictions").exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no leftovers
  monkeypatch.setattr(_Task, "fail", False)
  assert evaluate(state, 5) == {"eval/score": 1.0}
  out = tmp_path / "predictions" / "step_5" / "eval"
  assert sorted(p.name for p in out.iterdir()) == ["nbest.json", "predictions.json"]

  class Quiet:  # pretraining writes no file: no empty directory either
    score = staticmethod(lambda *args: {"score": 0.5})
  _evaluator(tmp_path, Quiet)(state, 6)
  assert not (tmp_path / "predictions" / "step_6").exists()


def test_best_model_and_its_record_are_one_directory(tmp_path):
  cfg = M.AlbertConfig(vocab_size=97, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=24, num_labels=2)
  head = "sequence_classification"
  best = train._Best(files.path(tmp_path), "eval/score", cfg, head, None)
  assert best.improves({"eval/score": 0.5})
  best.keep(10, {"eval/score": 0.5}, random_params(cfg, head, 0))
  assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 10
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 10
  # A kill between best/ and the copy beside it: the record inside best/ is the truth.
  (tmp_path / "best.json").write_text(json.dumps({"step": 3, "metrics": {"eval/score": 0.1}}))
  again = train._Best(files.path(tmp_path), "eval/score", cfg, head, None)
  assert again.record["step"] == 10 and not again.improves({"eval/score": 0.4})
