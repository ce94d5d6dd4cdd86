"""Runs whose every path is in a Cloud Storage bucket (gs://), against a real local Cloud Storage
server (the `gcs_bucket` fixture: gcp-storage-emulator; gcsfs and Orbax's tensorstore talk to it
over HTTP as they would to Google's): pretraining with corpus, vocabulary and workdir in the
bucket, killed and resumed with the losses of the same run on local disk; the export read back
with from_pretrained; conversion, fine-tuning and a sweep with bucket paths; and the same
all-or-nothing writes and torn-line tolerance as on local disk."""

import json
import signal
import sys
import time

import jax
import numpy as np
import pytest

from albert_jax import checkpointing, files, hf_convert, metrics, train
from albert_jax.data import corpus

from conftest import REPO, tiny_config

pytestmark = pytest.mark.slow


def _write_documents(path, docs):
  files.write_text(path, "\n\n".join("\n".join(d) for d in docs) + "\n")


@pytest.fixture(scope="module")
def bucket_data(gcs_bucket, spm_model):
  """The reference run's training and eval documents as text files in the bucket (one sentence a
  line, a blank line between documents: the same documents, in the same order, as the embedded
  corpus gives it), and its vocabulary."""
  root = f"{gcs_bucket}/data"
  train_docs = list(corpus.embedded_documents("train"))
  half = len(train_docs) // 2
  _write_documents(f"{root}/corpus/part-0.txt", train_docs[:half])
  _write_documents(f"{root}/corpus/part-1.txt", train_docs[half:])
  _write_documents(f"{root}/eval/part-0.txt", list(corpus.embedded_documents("eval")))
  files.copy(spm_model, f"{root}/spiece.model")
  return root


def _changes(data):
  return {"data.source": "files", "data.files": f"{data}/corpus/*.txt",
          "data.eval_files": f"{data}/eval/*.txt"}


def _losses(workdir):
  return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}


def test_files_in_a_bucket_are_written_whole(gcs_bucket, tmp_path):
  root = files.path(f"{gcs_bucket}/files")
  files.write_json(root / "a.json", {"x": 1})
  assert json.loads((root / "a.json").read_text()) == {"x": 1}
  with pytest.raises(RuntimeError):
    with files.atomic_directory(root / "dir") as tmp:
      (tmp / "half").write_text("written before the failure")
      raise RuntimeError("a failure mid-write")
  assert not (root / "dir").exists() and files.glob(f"{root}/*dir*") == []
  with files.atomic_directory(root / "dir") as tmp:
    (tmp / "sub").mkdir()
    (tmp / "sub" / "f.txt").write_text("1")
  with files.atomic_directory(root / "dir", overwrite=True) as tmp:
    (tmp / "g.txt").write_text("2")
  assert files.files_below(root / "dir") == [f"{root}/dir/g.txt"]  # replaced, not merged
  # metrics.jsonl in a bucket: a torn last line (a kill mid-upload of a local copy, an edit) is
  # dropped on resume, as on disk.
  (root / "run").mkdir(parents=True, exist_ok=True)
  (root / "run" / metrics.METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  assert metrics.read_metrics(root / "run") == [{"step": 1, "loss": 2.0}]
  writer = metrics.MetricsWriter(root / "run", resume_step=5)
  writer.write(3, {"loss": 1.5})
  writer.close()
  assert metrics.read_metrics(root / "run") == [{"step": 1, "loss": 2.0},
                                               {"step": 3, "loss": 1.5}]


def _tiny_state(step):
  return {"w": jax.numpy.full((4,), float(step)), "step": jax.numpy.asarray(step)}


def test_checkpoints_a_run_and_its_exports_in_a_bucket(gcs_bucket, reference):
  """The bucket run's (heavy, below) storage apart from training, in seconds: Orbax's steps
  written to the bucket (tensorstore over HTTP) and restored with their fingerprints; a step
  without its commit marker (Orbax writes commit_success.txt last in a bucket) is not a step
  (T7); the reference run copied into the bucket restores there, and from_pretrained("gs://...")
  reads its export and the run itself (its newest verified step); orbax-to-hf from the run in
  the bucket to the bucket. (Resuming exactly: test_train's chain; the data in a bucket:
  test_prepare's corpus in a bucket.)"""
  import orbax.checkpoint as ocp
  from conftest import abstract_state
  from albert_jax import sharding
  root = f"{gcs_bucket}/checkpoint_parts"
  manager = checkpointing.make_manager(f"{root}/saved", max_to_keep=None)
  for step in (6, 12):
    state = _tiny_state(step)
    checkpointing.save_train_state(manager, step, state, {"n": state["step"]},
                                   {"next_batch": step}, {"config": {}, "head": "base"})
  checkpointing.check_written(manager)
  fresh = checkpointing.make_manager(f"{root}/saved", max_to_keep=None)
  assert sorted(fresh.all_steps()) == [6, 12]
  stored = json.loads(files.path(f"{root}/saved/checkpoints/12/fingerprints/metadata").read_text())
  restored = fresh.restore(12, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(_tiny_state(0))))["params"]
  assert checkpointing.fingerprints(restored) == stored["params"]
  assert float(restored["w"][0]) == 12
  files.path(f"{root}/saved/checkpoints/12/commit_success.txt").unlink()
  assert sorted(checkpointing.make_manager(f"{root}/saved", max_to_keep=None).all_steps()) == [6]

  local = reference[0]
  workdir = f"{root}/run"
  for path in sorted(local.rglob("*")):  # its newest step (24) only: fewer objects to upload
    if path.is_file() and not path.relative_to(local).parts[:2] in {
        ("checkpoints", "6"), ("checkpoints", "12"), ("checkpoints", "18")}:
      files.copy(path, f"{workdir}/{path.relative_to(local)}")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  step, params, rest, data = checkpointing.restore_train_state(
      checkpointing.make_manager(workdir, max_to_keep=None),
      *abstract_state(local, 24, mesh, "data_parallel"))
  assert step == 24 and int(rest["step"]) == 24 and data["next_batch"] == 24
  _, expected = hf_convert.from_pretrained(local / "hf")
  _, exported = hf_convert.from_pretrained(f"{workdir}/hf")
  _, from_run = hf_convert.from_pretrained(workdir)
  for a, b, c, d in zip(*map(jax.tree_util.tree_leaves, (exported, expected, from_run, params))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, np.asarray(d))
  assert hf_convert.main(["orbax-to-hf", workdir, f"{root}/converted"]) == 0
  _, converted = hf_convert.from_pretrained(f"{root}/converted")
  for a, b in zip(*map(jax.tree_util.tree_leaves, (converted, expected))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.heavy  # its parts in seconds: the test above, test_train's resume chain
def test_pretraining_in_a_bucket_killed_and_resumed_loses_nothing(gcs_bucket, bucket_data,
                                                                  spm_model, reference):
  """Corpus, vocabulary and workdir in the bucket; SIGKILL once step 12 is saved; the rerun
  resumes and its losses are the reference run's on local disk, bit for bit; the export loads
  with from_pretrained("gs://..."), and the run itself (its newest verified step) too."""
  from test_train import run_main
  workdir = f"{gcs_bucket}/runs/pretrain"
  changes = {**_changes(bucket_data), "spm_model": f"{bucket_data}/spiece.model"}
  proc = run_main(workdir, changes.pop("spm_model"), wait=False, **changes)
  step_12 = files.path(f"{workdir}/checkpoints/12/commit_success.txt")
  deadline = time.time() + 300
  while not step_12.exists():
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert max(_losses(workdir)) < 24, "the run finished before it could be killed"

  config = tiny_config(f"{bucket_data}/spiece.model", **_changes(bucket_data))
  summary = train.train_and_evaluate(config, workdir)
  assert summary["step"] == 24
  assert _losses(workdir) == _losses(reference[0])
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r]
  assert steps == list(range(1, 25))

  _, exported = hf_convert.from_pretrained(f"{workdir}/hf")
  _, local = hf_convert.from_pretrained(reference[0] / "hf")
  _, from_run = hf_convert.from_pretrained(workdir)
  for a, b, c in zip(*map(jax.tree_util.tree_leaves, (exported, local, from_run))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  assert files.path(f"{workdir}/hf/spiece.model").read_bytes() == spm_model.read_bytes()

  # orbax-to-hf from the run in the bucket to the bucket.
  assert hf_convert.main(["orbax-to-hf", workdir, f"{gcs_bucket}/converted"]) == 0
  _, converted = hf_convert.from_pretrained(f"{gcs_bucket}/converted")
  for a, b in zip(*map(jax.tree_util.tree_leaves, (converted, local))):
    np.testing.assert_array_equal(a, b)

  # T7 in a bucket: a step without its commit marker (commit_success.txt, which Orbax writes
  # last in a bucket) is not a step.
  manager = checkpointing.make_manager(workdir, max_to_keep=None)
  assert sorted(manager.all_steps()) == [6, 12, 18, 24]
  files.path(f"{workdir}/checkpoints/24/commit_success.txt").unlink()
  assert sorted(checkpointing.make_manager(workdir, max_to_keep=None).all_steps()) == [6, 12, 18]


@pytest.mark.heavy  # the pretraining run in a bucket stays in `make test`
def test_fine_tuning_and_a_sweep_with_bucket_paths(gcs_bucket, reference, tmp_path, monkeypatch):
  """GLUE files, init_from (an HF export) and the workdir in the bucket: the run writes its
  prediction files, best/ and eval_results.json there. A sweep's root in the bucket."""
  sys.path.insert(0, str(REPO))
  from experiments import summarize, sweep
  from test_finetune import load_config, tiny, write_sst2
  from test_sweep import CONFIG, FAKE_MAIN
  data = write_sst2(tmp_path / "SST-2", 32, 16)
  for name in ("train.tsv", "dev.tsv"):
    files.copy(data / name, f"{gcs_bucket}/glue/SST-2/{name}")
  init = f"{gcs_bucket}/models/pretrained"
  for path in sorted((reference[0] / "hf").iterdir()):
    files.copy(path, f"{init}/{path.name}")
  config = tiny(load_config("finetune_glue", "sst2"), f"{init}/spiece.model",
                **{"data.data_dir": f"{gcs_bucket}/glue/SST-2", "data.max_seq_length": 24,
                   "total_steps": 2, "eval_every_steps": 2, "init_from": init})
  workdir = f"{gcs_bucket}/runs/sst2"
  train.train_and_evaluate(config, workdir)
  results = json.loads(files.path(f"{workdir}/eval_results.json").read_text())
  assert results["best_step"] == 2 and results["last_step"] == 2
  assert files.path(f"{workdir}/predictions/step_2/eval").is_dir()
  assert json.loads(files.path(f"{workdir}/best/best.json").read_text())["step"] == 2

  (tmp_path / "fake_config.py").write_text(CONFIG)
  (tmp_path / "fake_main.py").write_text(FAKE_MAIN.replace(
      '(pathlib.Path(args["workdir"]) / "eval_results.json").write_text(json.dumps(results))',
      'from albert_jax import files\n'
      'files.write_json(args["workdir"] + "/eval_results.json", results)'))
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{REPO}")
  root = f"{gcs_bucket}/sweeps/rte"
  args = [f"--config={tmp_path / 'fake_config.py'}:rte", f"--workdir_root={root}",
          "--main_module=fake_main", "--quiet"]
  assert sweep.main(args) == 1  # lr 1e-4 "diverges"
  assert "diverged" in files.path(f"{root}/optim.lr=0.0001,seed=0/log.txt").read_text()
  assert summarize.main([root]) == 0
