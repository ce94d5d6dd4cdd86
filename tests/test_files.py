"""All-or-nothing writes (files.py) where the loop uses them: prediction files appear whole or not
at all, and best/ holds its own record, so the model and the record never disagree. Outputs that
overlap their sources are refused untouched; staged directories replace theirs only when complete."""

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from albert_jax import files, hf_convert, metrics, sharding, steps, train
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
  state = steps.TrainState(step=0, params={}, opt_state=(), nonfinite_step=-1)
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


# ----------------------------------------------------------------------------- outputs that are
# their own sources

def _tree(root):
  """Every entry under `root`: file bytes, link targets, directories (links not followed)."""
  out = {}
  for directory, dirs, names in os.walk(root):
    for name in dirs + names:
      p = Path(directory) / name
      key = str(p.relative_to(root))
      out[key] = (f"-> {os.readlink(p)}" if p.is_symlink()
                  else p.read_bytes() if p.is_file() else "dir")
  return out


def _run_dir(root):
  """A directory a conversion would read: a checkpoint and a metrics file."""
  (root / "checkpoints" / "12").mkdir(parents=True)
  (root / "checkpoints" / "12" / "params").write_bytes(b"weights")
  (root / "metrics.jsonl").write_text('{"step": 12}\n')
  return root


@pytest.mark.parametrize("case", ["same", "inside", "holds", "link_to_source", "source_is_link"])
def test_an_output_that_overlaps_a_source_is_refused_before_anything_is_touched(tmp_path, case):
  """The output is the source, lies inside it, holds it, or is the same directory through a
  symbolic link (either way round): refused before the block runs, nothing created or moved."""
  src = _run_dir(tmp_path / "runs" / "a")
  source, out = src, {"same": src, "inside": src / "hf", "holds": tmp_path / "runs",
                      "link_to_source": tmp_path / "link", "source_is_link": src}[case]
  if case == "link_to_source":
    out.symlink_to(src)
  if case == "source_is_link":
    source = tmp_path / "link"
    source.symlink_to(src)
  before = _tree(tmp_path)
  ran = []
  with pytest.raises(files.OverlappingPaths) as refusal:
    with files.atomic_directory(out, overwrite=True, sources=[tmp_path / "elsewhere", source]):
      ran.append(True)
  assert not ran and _tree(tmp_path) == before
  message = str(refusal.value)
  assert str(out) in message and str(source) in message
  assert "choose another output directory" in message
  assert isinstance(refusal.value, ValueError)  # what the CLIs report as `error: ...`


def test_outputs_beside_their_sources_are_written(tmp_path):
  """A shared name prefix is no overlap (runs/a vs runs/ab), nor is a source in another place."""
  src = _run_dir(tmp_path / "runs" / "a")
  for out in (tmp_path / "runs" / "ab", tmp_path / "run"):
    with files.atomic_directory(out, sources=[src, src / "metrics.jsonl"]) as tmp:
      (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new"
  assert (src / "metrics.jsonl").read_text() == '{"step": 12}\n'


@pytest.mark.parametrize("out,source", [
    ("gs://bucket/runs/a", "gs://bucket/runs/a/"),
    ("gs://bucket/runs/a/", "gs://bucket//runs/./a"),
    ("gs://bucket/runs/a/hf", "gs://bucket/runs/a"),
    ("gs://bucket/runs", "gs://bucket/runs/x/../a/checkpoints/12"),
    ("GS://Bucket/runs/a", "gs://bucket/runs/a"),  # bucket names are lower-case anyway
])
def test_bucket_outputs_are_compared_with_their_sources_as_normalised_urls(out, source):
  """Refused before any request (no bucket is reachable here)."""
  with pytest.raises(files.OverlappingPaths, match="choose another output directory"):
    with files.atomic_directory(out, overwrite=True, sources=[source]):
      pass


def test_urls_that_only_share_a_prefix_do_not_overlap(tmp_path):
  files.check_apart("gs://bucket/runs/ab", ["gs://bucket/runs/a", "gs://other/runs/ab",
                                            "s3://bucket/runs/ab", tmp_path, None])
  files.check_apart(tmp_path / "out", ["gs://bucket" + str(tmp_path / "out")])


def test_a_staged_directory_replaces_its_destination_only_when_complete(tmp_path):
  """staged_directory: the place other processes write into (Beam's workers) lies beside the
  destination; a failure leaves the old content byte for byte and no staging behind."""
  out = _run_dir(tmp_path / "out")
  before = _tree(tmp_path)
  with pytest.raises(RuntimeError, match="planted"):
    with files.staged_directory(out, overwrite=True) as staging:
      assert os.path.dirname(staging) == str(tmp_path) and staging != str(out)
      Path(staging, "metrics.jsonl").write_text("half")
      raise RuntimeError("planted")
  assert _tree(tmp_path) == before
  with files.staged_directory(out, overwrite=True) as staging:
    Path(staging, "new").write_text("whole")
  assert _tree(tmp_path) == {"out": "dir", "out/new": b"whole"}
  with pytest.raises(FileExistsError, match="overwrite"):
    with files.staged_directory(out):
      pass
  with pytest.raises(files.OverlappingPaths):
    with files.staged_directory(out, overwrite=True, sources=[out / "new"]):
      pass
  assert _tree(tmp_path) == {"out": "dir", "out/new": b"whole"}


@pytest.mark.slow  # a local Cloud Storage server
def test_a_staged_directory_in_a_bucket_replaces_its_destination_only_when_complete(gcs_bucket):
  """Beam's workers write a gs:// output's shards under a temporary prefix in the same bucket."""
  root = f"{gcs_bucket}/staged"
  out = f"{root}/out"
  files.write_text(f"{out}/old.txt", "old")
  with pytest.raises(RuntimeError, match="planted"):
    with files.staged_directory(out, overwrite=True) as staging:
      assert staging.startswith(f"{root}/.out.tmp-")
      files.write_text(f"{staging}/new.txt", "half")
      raise RuntimeError("planted")
  assert files.files_below(root) == [f"{out}/old.txt"]
  with pytest.raises(files.OverlappingPaths):
    with files.staged_directory(out, overwrite=True, sources=[f"{out}/old.txt"]):
      pass
  with files.staged_directory(out, overwrite=True) as staging:
    files.write_text(f"{staging}/new.txt", "whole")
  assert files.files_below(root) == [f"{out}/new.txt"]
  assert files.path(f"{out}/new.txt").read_text() == "whole"


# ----------------------------------------------------------------------------- what killed writes
# leave behind (issue 21, item 10)

RELEASE = Path(__file__).parent / "data" / "tf1_release"

_KILLED_CONVERSION = """import os, sys
import safetensors.numpy
from albert_jax import hf_convert
def killed(tensors, path, **kwargs):
  open(path, "wb").write(b"half a file")
  os._exit(9)
safetensors.numpy.save_file = killed
hf_convert.main(sys.argv[1:])
"""

_LIVE_WRITER = """import sys, time
from albert_jax import files
with files.atomic_directory(sys.argv[1], overwrite=True) as tmp:
  (tmp / "part").write_text("still writing")
  print("ready", flush=True)
  time.sleep(120)
"""


def _temporaries(out):
  return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-"))


def test_the_next_write_removes_what_a_killed_conversion_left(tmp_path, caplog):
  """A conversion killed while writing left `.OUT.tmp-*` beside OUT for ever. The next write of
  OUT removes it (its writer's lock is free once the process died) and keeps a live writer's;
  temporaries without a lock go once untouched for files.STALE_SECONDS."""
  out = tmp_path / "hf"
  live = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(out)], stdout=subprocess.PIPE,
                          text=True)
  try:
    assert live.stdout.readline() == "ready\n"
    alive = _temporaries(out)
    killed = subprocess.run([sys.executable, "-c", _KILLED_CONVERSION, "tf-to-hf", str(RELEASE),
                             str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    left = [n for n in _temporaries(out) if n not in alive]
    assert len(alive) == len(left) == 2 and left[1] == f"{left[0]}.lock"  # directory and lock
    old, recent = out.parent / f".{out.name}.tmp-old", out.parent / f".{out.name}.tmp-recent"
    for d in (old, recent):
      d.mkdir()
      (d / "model.safetensors").write_bytes(b"half")
    hours_ago = time.time() - 2 * 3600
    for f in (old / "model.safetensors", old):
      os.utime(f, (hours_ago, hours_ago))
    with caplog.at_level(logging.WARNING, logger="albert_jax"):
      assert hf_convert.main(["tf-to-hf", str(RELEASE), str(out)]) == 0
    assert _temporaries(out) == sorted(alive + [recent.name])
    assert f"Removed {out.parent / left[0]}, which a killed write of {out} left (its writer " \
        "has ended)" in caplog.text
    assert f"Removed {old}" in caplog.text and "(untouched for 120 minutes)" in caplog.text
    assert (out / "config.json").is_file()
  finally:
    live.kill()
    live.wait()


# ----------------------------------------------------------------------------- a write interrupted
# midway (issue 21: no test interrupted one, so writing straight to the destination passed)

_INTERRUPTED = """import json, resource, signal, sys
from pathlib import Path
from albert_jax import files
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
root, big = Path(sys.argv[1]), "x" * (1 << 20)

def model_dir(p):
  with files.atomic_directory(p, overwrite=True) as tmp:
    (tmp / "config.json").write_text("{}")
    (tmp / "model.bin").write_text(big)

writes = {"write_bytes": lambda p: files.write_bytes(p, big.encode()),
          "write_text": lambda p: files.write_text(p, big),
          "write_json": lambda p: files.write_json(p, {"weights": big}),
          "atomic_directory": model_dir}
out = {}
for name, write in writes.items():
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))  # the disk fills at 64 KiB
  try:
    write(root / name)
    out[name] = "written"
  except OSError as e:
    out[name] = f"OSError {e.errno}"
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print(json.dumps(out))
"""


def test_a_write_that_fails_midway_leaves_the_old_content(tmp_path):
  """Each all-or-nothing write, its disk full 64 KiB into 1 MiB (RLIMIT_FSIZE: the write fails
  with EFBIG midway, as on a full disk): the destination keeps its old bytes, whole, and no
  temporary is left. Writing straight to the destination would leave 64 KiB of the new."""
  for name in ("write_bytes", "write_text", "write_json"):
    (tmp_path / name).write_text("the old content\n")
  (tmp_path / "atomic_directory").mkdir()
  (tmp_path / "atomic_directory" / "model.bin").write_text("the old model\n")
  before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*")
            if p.is_file()}
  proc = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(tmp_path)], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout) == dict.fromkeys(
      ["write_bytes", "write_text", "write_json", "atomic_directory"], f"OSError {errno.EFBIG}")
  after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*")
           if p.is_file()}
  assert after == before  # the old bytes, and nothing else (no temporary left)
