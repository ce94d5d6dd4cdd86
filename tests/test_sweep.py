"""experiments.sweep / summarize and the TPU scripts, with a fake config and a fake `main` that
writes eval_results.json from its overrides (nothing trains), and a fake gcloud that echoes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `experiments` is not an installed package

from albert_jax import files  # noqa: E402
from experiments import summarize, sweep  # noqa: E402

TPU_DIR = ROOT / "experiments" / "tpu"
SCRIPTS = ["create_tpu.sh", "install.sh", "run.sh"]

CONFIG = '''
import ml_collections

def get_config(arg="rte"):
  config = ml_collections.ConfigDict()
  config.task = arg
  config.optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10))
  config.seed = 0
  config.total_steps = 1000
  return config

def get_sweep(arg):
  return [{"optim.lr": lr, "seed": seed} for lr in (1e-5, 3e-5, 1e-4) for seed in (0, 1, 2)]
'''

# Scores by (lr, seed); lr 1e-4 "diverges" (exit 1). Medians and bests by hand below.
FAKE_MAIN = '''
import json, pathlib, sys
SCORES = {(1e-5, 0): 0.61, (1e-5, 1): 0.65, (1e-5, 2): 0.60,
          (3e-5, 0): 0.70, (3e-5, 1): 0.66, (3e-5, 2): 0.72}
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open(pathlib.Path(__file__).parent / "calls.txt", "a") as f:
  f.write(args["workdir"] + "\\n")
lr, seed = float(args["config.optim.lr"]), int(args["config.seed"])
print("training", lr, seed)
if lr == 1e-4:
  print("loss is nan: diverged")
  sys.exit(1)
score = SCORES[(lr, seed)]
results = {"score": score, "accuracy": score, "loss": 1 - score, "detail": {"f1": score / 2},
           "note": "strings are ignored"}
(pathlib.Path(args["workdir"]) / "eval_results.json").write_text(json.dumps(results))
'''


@pytest.fixture
def config_file(tmp_path) -> str:
  path = tmp_path / "fake_config.py"
  path.write_text(CONFIG)
  return f"{path}:rte"


@pytest.fixture
def fake_main(tmp_path, monkeypatch) -> str:
  (tmp_path / "fake_main.py").write_text(FAKE_MAIN)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  return "fake_main"


def test_expand_names_and_commands(config_file, tmp_path):
  runs = sweep.expand(config_file, str(tmp_path / "out"), ["--config.total_steps=100"])
  assert [r.name for r in runs[:4]] == ["optim.lr=1e-05,seed=0", "optim.lr=1e-05,seed=1",
                                        "optim.lr=1e-05,seed=2", "optim.lr=3e-05,seed=0"]
  assert runs[-1].name == "optim.lr=0.0001,seed=2" and len(runs) == 9
  assert runs[1].command == [
      sys.executable, "-m", "albert_jax.main", f"--config={config_file}",
      f"--workdir={tmp_path}/out/optim.lr=1e-05,seed=1", "--config.optim.lr=1e-05",
      "--config.seed=1", "--config.total_steps=100"]
  # gs:// roots keep their double slash (pathlib would make it gs:/).
  assert sweep.expand(config_file, "gs://b/sw/")[0].workdir == "gs://b/sw/optim.lr=1e-05,seed=0"


def test_run_names_are_deterministic_and_filesystem_safe():
  a = {"seed": 1, "data.files": "gs://b/x*.txt", "flag": True, "shape": (1, 2)}
  b = dict(reversed(list(a.items())))
  assert sweep.run_name(a) == sweep.run_name(b)
  assert sweep.run_name(a) == "data.files=gs___b_x_.txt,flag=true,seed=1,shape=_1,_2_"
  long = sweep.run_name({"data.files": "x" * 400})
  assert len(long) == sweep.MAX_NAME and long != sweep.run_name({"data.files": "x" * 401})


@pytest.mark.parametrize("sweep_src, message", [
    ('[{"optim.lrr": 1e-5}]', "unknown config key 'optim.lrr' (did you mean optim.lr?)"),
    ('[{"optimm.lr": 1e-5}]', "unknown config key 'optimm.lr'"),
    ('[{"seed": 1.5}]', "config key 'seed': 1.5 does not fit"),
    ('[{"optim": 1}]', "config key 'optim' is a group"),
])
def test_bad_override_is_an_error_before_anything_runs(tmp_path, capsys, sweep_src, message):
  path = tmp_path / "bad.py"
  path.write_text(CONFIG.replace("def get_sweep(arg):",
                                 f"def get_sweep(arg):\n  return {sweep_src}"))
  out = tmp_path / "out"
  assert sweep.main([f"--config={path}:rte", f"--workdir_root={out}"]) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_misspelled_extra_key_and_missing_get_sweep_are_errors(config_file, tmp_path, capsys):
  args = [f"--config={config_file}", f"--workdir_root={tmp_path / 'out'}"]
  assert sweep.main(args + ["--extra=--config.total_step=5"]) == 2
  assert "unknown config key 'total_step' in --extra" in capsys.readouterr().err
  no_sweep = tmp_path / "no_sweep.py"
  no_sweep.write_text(CONFIG.split("def get_sweep")[0])
  assert sweep.main([f"--config={no_sweep}:rte", f"--workdir_root={tmp_path / 'out'}"]) == 2
  assert "has no get_sweep(arg)" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_commands_and_runs_nothing(config_file, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config_file}",
                         f"--workdir_root={out}", "--dry_run"], cwd=ROOT, capture_output=True,
                        text=True, check=True)
  lines = proc.stdout.splitlines()
  assert len(lines) == 9
  assert shlex.split(lines[0])[2:] == [
      "albert_jax.main", f"--config={config_file}", f"--workdir={out}/optim.lr=1e-05,seed=0",
      "--config.optim.lr=1e-05", "--config.seed=0"]
  assert not out.exists()


def test_tpu_mode_prints_gcloud_commands(config_file, capsys):
  assert sweep.main([f"--config={config_file}", "--workdir_root=gs://bkt/rte", "--tpu=albert",
                     "--zone=us-central2-b", "--project=proj",
                     "--extra=--config.total_steps=9"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("# 9 runs") and len(lines) == 10
  words = shlex.split(lines[1])
  assert words[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "albert",
                       "--zone=us-central2-b", "--project=proj", "--worker=all"]
  assert words[9].startswith("--command=")
  assert shlex.split(words[9].removeprefix("--command=")) == [
      "cd", "albert-jax", "&&", ".venv/bin/python", "-m", "albert_jax.main",
      f"--config={config_file}", "--workdir=gs://bkt/rte/optim.lr=1e-05,seed=0",
      "--config.optim.lr=1e-05", "--config.seed=0", "--config.total_steps=9"]
  with pytest.raises(SystemExit):  # --tpu without --zone and --project
    sweep.main([f"--config={config_file}", "--workdir_root=x", "--tpu=albert"])


def _table_rows(text: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
          if line.startswith("|")]


def test_sweep_runs_resumes_and_summarizes(config_file, fake_main, tmp_path, capsys):
  out = tmp_path / "out"
  args = [f"--config={config_file}", f"--workdir_root={out}", f"--main_module={fake_main}"]
  assert sweep.main(args) == 1  # three runs failed
  calls = (tmp_path / "calls.txt").read_text().splitlines()
  assert len(calls) == 9

  failed = out / "optim.lr=0.0001,seed=1"
  status = json.loads((failed / "sweep_status.json").read_text())
  assert status["status"] == "failed" and status["returncode"] == 1
  assert status["command"][-2:] == ["--config.optim.lr=0.0001", "--config.seed=1"]
  assert isinstance(status["seconds"], float)
  assert "diverged" in (failed / "log.txt").read_text()
  ok = json.loads((out / "optim.lr=3e-05,seed=2" / "sweep_status.json").read_text())
  assert ok["status"] == "ok" and ok["returncode"] == 0
  overrides = json.loads((out / "optim.lr=3e-05,seed=2" / "sweep_overrides.json").read_text())
  assert overrides["overrides"] == {"optim.lr": 3e-5, "seed": 2}

  # Rerunning resumes: only the three failed runs run again.
  assert sweep.main(args + ["--quiet"]) == 1
  calls = (tmp_path / "calls.txt").read_text().splitlines()
  assert len(calls) == 12 and all("0.0001" in c for c in calls[9:])
  assert "skipped, eval_results.json exists" in capsys.readouterr().out

  assert summarize.main([str(out), "--metric=score"]) == 0
  text = capsys.readouterr().out
  assert f"{out}: 9 runs, 6 ok, 3 failed" in text
  assert _table_rows(text) == [
      ["setting", "seeds", "status", "score median", "score best"],
      ["---", "---", "---", "---", "---"],
      ["optim.lr=3e-05", "3", "ok", "0.7000", "0.7200"],  # median of .70 .66 .72
      ["optim.lr=1e-05", "3", "ok", "0.6100", "0.6500"],  # median of .61 .65 .60
      ["optim.lr=0.0001", "-", "failed (seed=0, returncode 1)", "-", "-"],
      ["optim.lr=0.0001", "-", "failed (seed=1, returncode 1)", "-", "-"],
      ["optim.lr=0.0001", "-", "failed (seed=2, returncode 1)", "-", "-"],
  ]

  # All metrics: score first, nested dicts flattened, strings ignored, loss best = lowest.
  assert summarize.main([str(out)]) == 0
  rows = _table_rows(capsys.readouterr().out)
  assert rows[0][3:] == ["score median", "score best", "accuracy median", "accuracy best",
                         "detail/f1 median", "detail/f1 best", "loss median", "loss best"]
  assert rows[2] == ["optim.lr=3e-05", "3", "ok", "0.7000", "0.7200", "0.7000", "0.7200",
                     "0.3500", "0.3600", "0.3000", "0.2800"]


def test_summarize_shows_unfinished_and_not_started_runs(config_file, fake_main, tmp_path,
                                                         capsys):
  out = tmp_path / "out"
  # Two runs of lr 3e-05 finish; seed 2 starts and is killed (no status); lr 1e-05 never starts.
  for seed in (0, 1, 2):
    run = sweep.expand(config_file, str(out), main_module=fake_main)[3 + seed]
    if seed < 2:
      sweep.execute(run, config_file, echo=False)
    else:
      Path(run.workdir).mkdir(parents=True)
      files.write_json(Path(run.workdir) / sweep.OVERRIDES_FILE, {"overrides": run.overrides})
  assert summarize.main([str(out), "--metric=accuracy", f"--config={config_file}"]) == 0
  text = capsys.readouterr().out
  assert "9 runs, 2 ok, 1 unfinished, 6 not started" in text
  rows = _table_rows(text)
  assert rows[2] == ["optim.lr=3e-05", "2", "ok", "0.6800", "0.7000"]  # median of .70 .66
  assert ["optim.lr=3e-05", "-", "unfinished (seed=2)", "-", "-"] in rows
  assert ["optim.lr=1e-05", "-", "not started (seed=0)", "-", "-"] in rows
  assert len(rows) == 2 + 1 + 1 + 6

  assert summarize.main([str(out), "--metric=f1"]) == 2
  assert "no run has metric 'f1'" in capsys.readouterr().err


def test_summarize_reads_runs_without_sweep_files(tmp_path, capsys):
  """Runs launched on TPU VMs leave only eval_results.json: overrides come from the name."""
  for name, score in [("optim.lr=1e-05,seed=0", 0.5), ("optim.lr=1e-05,seed=1", 0.7)]:
    (tmp_path / name).mkdir()
    (tmp_path / name / "eval_results.json").write_text(json.dumps({"score": score}))
  (tmp_path / "not_a_run").mkdir()
  assert summarize.main([str(tmp_path)]) == 0
  assert ["optim.lr=1e-05", "2", "ok", "0.6000", "0.7000"] in _table_rows(capsys.readouterr().out)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_and_parse(script):
  path = TPU_DIR / script
  assert os.access(path, os.X_OK)
  subprocess.run(["bash", "-n", str(path)], check=True)
  assert "set -euo pipefail" in path.read_text()


@pytest.mark.parametrize("script, args", [
    ("create_tpu.sh", []),
    ("create_tpu.sh", ["albert", "us-central2", "my-project", "v4-32"]),  # no zone letter
    ("create_tpu.sh", ["albert", "us-central2-b", "my-project", "v4"]),  # no chip count
    ("install.sh", ["albert", "us-central2-b", "my-project"]),
    ("run.sh", ["albert", "us-central2-b", "my-project", "bkt", "configs/pretrain.py:large",
                "stray"]),
])
def test_scripts_without_good_arguments_print_usage(script, args, tmp_path):
  proc = subprocess.run([str(TPU_DIR / script), *args], capture_output=True, text=True,
                        env={**os.environ, "GCLOUD": str(_fake_gcloud(tmp_path))})
  assert proc.returncode != 0 and "usage:" in proc.stderr and proc.stdout == ""


def test_install_usage_mentions_the_bucket_mount_as_an_alternative(tmp_path):
  env = {**os.environ, "GCLOUD": str(_fake_gcloud(tmp_path))}
  for args in ([], ["albert", "us-central2-b", "my-project", ".", "my-bucket/prefix"]):
    proc = subprocess.run([str(TPU_DIR / "install.sh"), *args], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage:" in proc.stderr and "REPO_URL_OR_PATH [BUCKET]" in proc.stderr
    assert "/gcs/BUCKET" in proc.stderr and "Cloud Storage FUSE" in proc.stderr
    assert "alternative to gs:// paths" in proc.stderr


def _fake_gcloud(tmp_path: Path) -> Path:
  path = tmp_path / "gcloud"
  path.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\"\n")
  path.chmod(0o755)
  return path


def test_create_and_run_scripts_call_gcloud(tmp_path):
  env = {**os.environ, "GCLOUD": str(_fake_gcloud(tmp_path))}
  create = subprocess.run([str(TPU_DIR / "create_tpu.sh"), "albert", "us-central2-b", "my-project",
                           "v4-32"], capture_output=True, text=True, env=env, check=True)
  assert create.stdout.splitlines() == [
      "compute", "tpus", "tpu-vm", "create", "albert", "--zone=us-central2-b",
      "--project=my-project", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
  run = subprocess.run([str(TPU_DIR / "run.sh"), "albert", "us-central2-b", "my-project",
                        "gs://bkt/", "configs/finetune_glue.py:task=mnli,model=large",
                        "--config.data.files=gs://bkt/c/*.txt"],
                       capture_output=True, text=True, env=env, check=True)
  lines = run.stdout.splitlines()
  assert lines[4:8] == ["albert", "--zone=us-central2-b", "--project=my-project", "--worker=all"]
  remote = lines[8].removeprefix("--command=")
  # The workdir is in the bucket, as gs://; gs:// flags are passed on as they are.
  assert shlex.split(remote) == [
      "cd", "albert-jax", "&&", ".venv/bin/python", "-m", "albert_jax.main",
      "--config=configs/finetune_glue.py:task=mnli,model=large",
      "--workdir=gs://bkt/finetune_glue_task_mnli_model_large",
      "--config.data.files=gs://bkt/c/*.txt"]
  assert "warning" not in run.stderr

  # A prefix in the bucket; the Cloud Storage FUSE mount as an alternative (WORKDIR=).
  prefixed = subprocess.run([str(TPU_DIR / "run.sh"), "albert", "us-central2-b", "my-project",
                             "bkt/pre", "configs/pretrain.py:large",
                             "--config.data.files=/gcs/bkt/c/*.txt"],
                            capture_output=True, text=True, env=env, check=True)
  assert shlex.split(prefixed.stdout.splitlines()[8].removeprefix("--command="))[6:] == [
      "--config=configs/pretrain.py:large", "--workdir=gs://bkt/pre/pretrain_large",
      "--config.data.files=/gcs/bkt/c/*.txt"]
  mounted = subprocess.run([str(TPU_DIR / "run.sh"), "albert", "us-central2-b", "my-project",
                            "bkt", "configs/pretrain.py:large"], capture_output=True, text=True,
                           env={**env, "WORKDIR": "/gcs/bkt/run"}, check=True)
  assert "--workdir=/gcs/bkt/run" in mounted.stdout.splitlines()[8]
