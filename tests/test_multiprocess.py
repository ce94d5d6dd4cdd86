"""Fault tests with several processes (../shared/RELIABILITY.md T2, T10, T12, T13): local
processes joined by jax.distributed on localhost (gloo collectives on CPU), each started as a
subprocess on a free port with a bounded timeout.

The training runs use a small text corpus (files, not the embedded corpus) and 2 CPU devices per
process, to keep each launch short; their reference is one uninterrupted process with 4 devices
on the same data/fsdp mesh. Two processes sum their parts of a loss in another order than one,
so their losses agree with it to 1e-5 (measured: ~1e-7), not bitwise; a lost, repeated or
reordered step or batch moves a loss by far more."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from albert_jax import checkpointing, metrics
from albert_jax.checkpoints import model_dir
from albert_jax.data import corpus

from conftest import REPO, cpu_flags, free_port

pytestmark = pytest.mark.slow

TIMEOUT = 300  # seconds any one launch may take before the test fails (no hang)
RUN = {
    "model.embedding_size": 16, "model.hidden_size": 32, "model.num_hidden_layers": 2,
    "model.num_attention_heads": 4, "model.intermediate_size": 64,
    "model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1,
    "data.source": "files", "data.max_seq_length": 32, "data.eval_batches": 1,
    "batch_size": 16, "total_steps": 16, "optim.name": "lamb", "optim.lr": 0.01,
    "optim.warmup_steps": 4, "log_every_steps": 1, "eval_every_steps": 0,
    "checkpoint_every_steps": 4, "keep_checkpoints": 10, "mesh.data": 2, "mesh.fsdp": 2,
    "mesh.tensor": 1, "sharding": "fsdp", "peak_tflops_per_device": 1.0, "export_hf": False,
}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, spm_model):
  root = tmp_path_factory.mktemp("corpus")
  docs = list(corpus.embedded_documents("eval"))
  for name, part in (("train.txt", docs[:-8]), ("eval.txt", docs[-8:])):
    (root / name).write_text("\n\n".join("\n".join(d) for d in part) + "\n")
  return {"data.files": str(root / "train.txt"), "data.eval_files": str(root / "eval.txt"),
          "spm_model": str(spm_model)}


def launch(workdir, n, devices, small_corpus, *, fault=None, entry=None, env=None, **changes):
  """`n` processes of the trainer (or `entry`) with `devices` CPU devices each."""
  port = free_port()
  script = entry or str(REPO / "tests" / "fault_worker.py")
  procs = []
  for i in range(n):
    args = [sys.executable, script, "--config=configs/pretrain.py:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in {**RUN, **small_corpus, **changes}.items()]]
    if n > 1:
      args += [f"--coordinator_address=localhost:{port}", f"--num_processes={n}",
               f"--process_id={i}"]
    procs.append(subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "XLA_FLAGS": cpu_flags(devices),
             "ALBERT_FAULT": fault or "none:0", **(env or {})}))
  return procs


def finish(procs, timeout=TIMEOUT):
  deadline = time.time() + timeout
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError("a process hung: " + "".join(q.communicate()[0][-2000:] for q in procs))
  return [p.returncode for p in procs], outs


def wait_for_step(workdir, step, procs):
  path = workdir / metrics.METRICS_FILE
  deadline = time.time() + TIMEOUT
  while not (path.exists() and any(f'"step": {step},' in line
                                   for line in path.read_text().splitlines())):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, finish(procs, 5)
    time.sleep(0.05)


def losses(workdir):
  return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}


def preempted_step(out):
  return int(re.search(r"Preempted: saving step (\d+)", out)[1])


@pytest.fixture(scope="module")
def single(tmp_path_factory, small_corpus):
  """The uninterrupted run: one process, 4 devices, the same 2 x 2 mesh."""
  workdir = tmp_path_factory.mktemp("single")
  codes, outs = finish(launch(workdir, 1, 4, small_corpus))
  assert codes == [0], outs[0][-3000:]
  return workdir


@pytest.mark.heavy  # eleven process launches, ~4 minutes: `make test-all`
def test_preempting_either_process_a_stuck_peer_and_a_new_process_count_lose_nothing(
    tmp_path, small_corpus, single):
  """One run of 16 steps in four launches (T2, T13, T10):
    1. SIGTERM to the worker (process 1 of 2): both save the same step and exit 0;
    2. SIGTERM to the coordinator (process 0): the same;
    3. process 1 stalls (alive, sleeping) before a step: the step watchdog makes both exit,
       with a diagnostic, within its bound, instead of waiting forever on the collective;
    4. resumed by one process with 4 devices (another process count: the data position is a
       global batch index, so the same batches follow) to the end.
  Every step's loss is the uninterrupted run's (1e-5) and logged once; the last checkpoint
  verifies against its fingerprints."""
  workdir = tmp_path / "run"
  saved = 0
  for target in (1, 0):  # the worker, then the coordinator
    procs = launch(workdir, 2, 2, small_corpus)
    wait_for_step(workdir, saved + 2, procs)
    procs[target].send_signal(signal.SIGTERM)
    codes, outs = finish(procs)
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    steps = [preempted_step(out) for out in outs]
    assert steps[0] == steps[1] > saved, steps
    assert checkpointing.make_manager(workdir, max_to_keep=None).latest_step() == steps[0]
    saved = steps[0]

  stall = saved + 3
  procs = launch(workdir, 2, 2, small_corpus, fault=f"stall:{stall}:1",
                 **{"watchdog_min_seconds": 3.0, "watchdog_factor": 10.0})
  start = time.time()
  codes, outs = finish(procs)
  assert f"FAULT stall before step {stall} on process 1" in outs[1], outs[1][-3000:]
  assert all(code != 0 for code in codes), codes
  fired = [o for o in outs if "Step watchdog: no training step finished" in o]
  assert fired and codes[outs.index(fired[0])] == 75, (codes, outs[0][-2000:])
  assert f"after step {stall - 1}" in fired[0]
  assert time.time() - start < 120  # start-up, a few steps, the 3 s limit: no hang

  codes, outs = finish(launch(workdir, 1, 4, small_corpus))
  assert codes == [0], outs[0][-3000:]
  assert "Resumed from checkpoint step" in outs[0]
  ours, ref = losses(workdir), losses(single)
  assert sorted(ours) == list(range(1, 17))  # every step once over the four launches
  np.testing.assert_allclose([ours[k] for k in ref], [ref[k] for k in ref], rtol=1e-5)
  model_dir.load_model_dir(workdir)  # the last step verifies against its fingerprints
  # Four processes of one device each restore what two processes of two wrote (T10): the same
  # parameters, checked against the fingerprints stored at save time.
  codes, outs = finish(launch(workdir, 4, 1, small_corpus,
                              entry=str(REPO / "tests" / "peer_worker.py"),
                              env={"PEER_MODE": "restore"}))
  assert codes == [0, 0, 0, 0], outs[0][-3000:]
  stored = json.loads((workdir / "checkpoints" / "16" / "fingerprints" / "metadata").read_text())
  digest = hashlib.sha256(json.dumps(stored["params"], sort_keys=True).encode()).hexdigest()
  for out in outs:
    assert f"PEER restored step 16 on 4 devices of 4 processes, params {digest}" in out, out


@pytest.mark.heavy  # two process launches after the uninterrupted run: `make test-all`
def test_every_process_takes_the_same_rollback(tmp_path, small_corpus, single):
  """A loss spike (albert_jax/spike.py) is judged by each process from the replicated global
  loss, without a collective. Resumed from step 8 at 1000x the learning rate, with the rate
  lowered 1000x after a rollback: two processes of two devices declare the same spike, roll
  back to the same step, skip the same batches and log the same event as one process of four
  devices; every loss after the rollback agrees with its (1e-5)."""
  changes = {"optim.lr": 1000 * RUN["optim.lr"], "spike.window": 8, "spike.lr_factor": 1e-3,
             "spike.lr_steps": 100}
  runs, said = {}, []
  for n, devices in ((1, 4), (2, 2)):
    runs[n] = tmp_path / f"{n}x{devices}"
    shutil.copytree(single, runs[n])
    for step in (12, 16):
      shutil.rmtree(runs[n] / "checkpoints" / str(step))
    codes, outs = finish(launch(runs[n], n, devices, small_corpus, **changes))
    assert codes == [0] * n, outs[0][-3000:]
    said += [re.findall(r"Rolled back to step \d+, skipping batches \[\d+, \d+\)", o)
             for o in outs]
  assert said[0] and all(s == said[0] for s in said), said
  rows = [[r for r in metrics.read_metrics(runs[n]) if "event" in r] for n in (1, 2)]
  pick = lambda r: (r["event"], r["spike"], r["to_step"], r["skipped_batches"])
  assert [pick(r) for r in rows[1]] == [pick(r) for r in rows[0]]
  assert rows[1][0]["to_step"] == 8 and rows[1][0]["spike"][0] <= 10
  ours, ref = losses(runs[2]), losses(runs[1])
  assert sorted(ours) == sorted(ref) == list(range(1, 17))
  np.testing.assert_allclose([ours[k] for k in ref], [ref[k] for k in ref], rtol=1e-5)


@pytest.mark.parametrize("case", ["a peer dies", "the coordinator dies", "a host never starts"])
def test_dead_peers_end_every_process_within_the_timeouts(tmp_path, small_corpus, case):
  """T12: no hang. With --heartbeat_timeout=5 --initialization_timeout=5, the surviving process
  exits non-zero within the bound (a dead coordinator is noticed at once); alone, the process
  gives up after --initialization_timeout (2 s: no peer has to start in time here)."""
  timeouts = {"--heartbeat_timeout": 5, "--initialization_timeout": 5}
  entry = str(REPO / "tests" / "peer_worker.py")
  env = {"PEER_MODE": "collectives"}
  if case == "a host never starts":
    port = free_port()
    start = time.time()
    proc = subprocess.run(
        [sys.executable, entry, "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", "--process_id=0",
         *[f"{k}={v}" for k, v in {**timeouts, "--initialization_timeout": 2}.items()]],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
        env={**os.environ, "XLA_FLAGS": cpu_flags(1), **env})
    assert proc.returncode != 0 and time.time() - start < 2 + 30, proc.stdout[-2000:]
    return
  dying = 1 if case == "a peer dies" else 0
  env["PEER_EXIT"] = f"{dying}:20"
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, entry, "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
       *[f"{k}={v}" for k, v in timeouts.items()]],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "XLA_FLAGS": cpu_flags(1), **env})
      for i in range(2)]
  codes, outs = finish([procs[dying]])
  died = time.time()
  assert codes == [1] and "PEER exiting" in outs[0], outs[0][-2000:]
  (code,), (out,) = finish([procs[1 - dying]])
  assert code != 0, out[-2000:]
  assert time.time() - died < 5 + 15, out[-2000:]  # the heartbeat timeout and some slack


@pytest.mark.heavy  # two process launches; packed pairs' own equality is tested in test_train
def test_packed_pairs_on_two_processes_equal_one_unpacked_process(tmp_path, small_corpus):
  """Each process packs its part of the batch; the processes agree on the rows every step (a
  host all-gather): with dropout off, every step's loss is a one-process unpacked run's."""
  changes = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
             "data.short_seq_prob": 1.0, "data.max_seq_length": 64, "total_steps": 8}
  codes, outs = finish(launch(tmp_path / "padded", 1, 4, small_corpus, **changes))
  assert codes == [0], outs[0][-3000:]
  codes, outs = finish(launch(tmp_path / "packed", 2, 2, small_corpus, **changes,
                              **{"data.pack": True}))
  assert codes == [0, 0], [o[-3000:] for o in outs]
  assert "Packing 16 pairs a step into" in outs[0]
  padded, packed = losses(tmp_path / "padded"), losses(tmp_path / "packed")
  assert sorted(packed) == list(range(1, 9))
  assert packed == pytest.approx(padded, rel=1e-5)


@pytest.mark.heavy  # three process launches; packed GLUE's own equality: test_finetune
def test_packed_glue_on_two_processes_equals_one_unpacked_process(tmp_path, spm_model):
  """Each process packs its part of every GLUE step and every eval batch, and the eval reads
  both processes' predictions back: the losses, the metrics and the prediction files of one
  unpacked process."""
  rows = ["sentence\tlabel"] + [
      f"{' '.join(['the film was'] * (1 + i % 4))} {'good' if i % 2 else 'bad'}\t{i % 2}"
      for i in range(40)]
  (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
  (tmp_path / "dev.tsv").write_text("\n".join(rows[:22]) + "\n")  # 21: a last batch part-full
  run = {"model.embedding_size": 16, "model.hidden_size": 32, "model.num_hidden_layers": 2,
         "model.num_attention_heads": 4, "model.intermediate_size": 64,
         "model.classifier_dropout_prob": 0.0, "model.vocab_size": -1, "dtype": "float32",
         "spm_model": spm_model, "data.data_dir": tmp_path, "data.max_seq_length": 32,
         "batch_size": 8, "total_steps": 6, "eval_every_steps": 6, "log_every_steps": 1,
         "optim.name": "adamw_optax", "optim.lr": 0.001, "optim.warmup_steps": 2,
         "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1, "export_hf": False}

  def launch_glue(workdir, n, devices, pack):
    port, procs = free_port(), []
    for i in range(n):
      args = [sys.executable, "-m", "albert_jax.main",
              "--config=configs/finetune_glue.py:task=sst2,model=base", f"--workdir={workdir}",
              *[f"--config.{k}={v}" for k, v in {**run, "data.pack": pack}.items()]]
      if n > 1:
        args += [f"--coordinator_address=localhost:{port}", f"--num_processes={n}",
                 f"--process_id={i}"]
      procs.append(subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "XLA_FLAGS": cpu_flags(devices)}))
    codes, outs = finish(procs)
    assert codes == [0] * n, [o[-3000:] for o in outs]
    return outs

  launch_glue(tmp_path / "padded", 1, 4, False)
  outs = launch_glue(tmp_path / "packed", 2, 2, True)
  assert "Packing 8 examples a step into" in outs[0]
  padded, packed = losses(tmp_path / "padded"), losses(tmp_path / "packed")
  assert sorted(packed) == list(range(1, 7)) and packed == pytest.approx(padded, rel=1e-5)
  results = [json.loads((tmp_path / w / "eval_results.json").read_text())
             for w in ("padded", "packed")]
  assert results[1] == pytest.approx(results[0], rel=1e-5)
  prediction = "predictions/step_6/eval/predictions_dev.tsv"
  assert (tmp_path / "packed" / prediction).read_text() == (
      tmp_path / "padded" / prediction).read_text()
