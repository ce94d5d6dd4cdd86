"""Loss spikes (albert_jax/spike.py, issue 22): the detector alone, then spikes injected from
outside the code into the tiny pretraining run: a poisoned stretch of batches (rolled back, its
batches skipped), a resume at 1000x the config's learning rate (stopped after max_rollbacks, or,
heavy, cured by a lower learning rate), a preemption inside a spike and (heavy) a kill during a
rollback. Several processes taking the same rollback: test_multiprocess (heavy)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from albert_jax import checkpointing, metrics, spike, train
from albert_jax.checkpoints import model_dir

import fault_worker
from conftest import (OVERRIDES, REPO, once_per_session, stop_after, tensorboard_scalars,
                      tiny_config)
from experiments import spike_noise

# The poisoned batches (global indices): steps 17-20 train on them, so the save of step 18 would
# hold parameters trained on two of them. Their loss is 11-12% above the steps before (the tiny
# model is near its unigram plateau: no target can cost it much more), so the detector is set
# tighter than its defaults, which still no run here trips (the false-alarm test below).
POISON = (16, 4)
TIGHT = {"spike.z": 3.0, "spike.margin": 0.08}


def losses(workdir):
  return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}


def events(workdir):
  return [r for r in metrics.read_metrics(workdir) if "event" in r]


def feed(cfg, losses_, state=None, first_step=1):
  """The detector over a series; the spikes it declares (each then forgotten, as a rollback
  would replace the state)."""
  state, found = state or spike.fresh(), []
  for step, loss in enumerate(losses_, first_step):
    state, spiked = spike.observe(cfg, state, step, float(loss))
    if spiked:
      found.append(spiked)
      state = {**state, "run": []}
  return state, found


# ----------------------------------------------------------------------------- the detector

def test_noise_is_not_a_spike_and_a_held_jump_is():
  cfg = spike.default_config()
  rng = np.random.default_rng(0)
  # 20,000 steps with 3% noise (the suite's tiny runs have 3.2%, the demo 1.9%): no alarm.
  state, found = feed(cfg, 6.0 * (1 + 0.03 * rng.standard_normal(20_000)))
  assert not found and len(state["recent"]) == cfg.window
  # A jump of 30% for hold - 1 steps is noise: accepted into the window.
  state, found = feed(cfg, [7.8] * (cfg.hold - 1) + [6.0], state, 20_001)
  assert not found and state["recent"][-cfg.hold:] == [7.8] * (cfg.hold - 1) + [6.0]
  # Held for `hold` steps it is a spike, declared at its hold-th step; NaN is suspect too. (The
  # noise just accepted widened the window's spread: the threshold is now 6 sigma, 31% up.)
  state, found = feed(cfg, [6.0, 8.4, float("nan"), 8.4, 8.4], state, 30_000)
  (one,) = found
  assert (one.first_step, one.last_step) == (30_001, 30_004)
  assert one.losses[0] == 8.4 and math.isnan(one.losses[1])
  assert one.reference == pytest.approx(6.0, rel=0.02) and one.threshold > one.reference * 1.15


def test_the_state_round_trips_through_json_and_judges_checkpoints():
  cfg = spike.default_config()
  cfg.window = 4
  series = [6.0, 5.9, 6.1, 5.95, 6.0, 7.5, 7.6]
  state, _ = feed(cfg, series[:5])
  assert spike.judged_through(state) == 4  # step 5's loss seen: step 4's parameters judged
  again = json.loads(json.dumps(state))
  assert again == state and feed(cfg, series[5:], again, 6)[0] == feed(cfg, series[5:], state, 6)[0]
  state, _ = feed(cfg, series[5:], state, 6)  # a run from step 6: checkpoint 5 may be inside
  assert state["run"] == [[6, 7.5], [7, 7.6]] and spike.judged_through(state) == 4


def test_learning_rate_factors_and_the_rollback_count():
  records = [{"to_step": 10, "lr_steps": 5, "lr_factor": 0.1, "spike": [14, 17]},
             {"to_step": 12, "lr_steps": 5, "lr_factor": 0.1, "spike": [20, 23]}]
  assert [spike.lr_scale(records, s) for s in (10, 11, 12, 13, 15, 16, 17, 18)] == pytest.approx(
      [1, 0.1, 0.1, 0.01, 0.01, 0.1, 0.1, 1])
  assert spike.rollbacks_within(records, 30, 20) == 2
  assert spike.rollbacks_within(records, 30, 12) == 1


@pytest.mark.slow
def test_no_false_alarm_in_the_suite_runs(reference):
  """The reference run is judged from step 9 with the default thresholds, and with the tight
  ones the poisoned run uses; neither raises an alarm on it."""
  workdir, _ = reference
  assert not events(workdir)
  for changes in ({}, TIGHT):
    cfg = tiny_config("", **changes).spike
    assert spike_noise.replay(losses(workdir), cfg)["alarms"] == []


# ----------------------------------------------------------------------------- injected spikes

def _recording_saves(records):
  """checkpointing.save_train_state that also records (step, data state) of each save."""
  save = checkpointing.save_train_state

  def recorded(manager, step, params, rest, data_state, model_info):
    records.append([step, json.loads(json.dumps(data_state))])
    return save(manager, step, params, rest, data_state, model_info)
  return recorded


@pytest.fixture(scope="session")
def spiked(tmp_path_factory, spm_model):
  """The tiny run with POISON: (workdir, [[step, data state] of every save it wrote])."""
  def make(workdir):
    saves = []
    patched = (checkpointing, "save_train_state", checkpointing.save_train_state)
    draw = fault_worker.poison(*POISON)
    checkpointing.save_train_state = _recording_saves(saves)
    try:
      train.train_and_evaluate(tiny_config(spm_model, **TIGHT), str(workdir))
    finally:
      setattr(*patched)
      fault_worker.unpoison(draw)
    return str(workdir), saves
  workdir, saves = once_per_session(tmp_path_factory, "spiked", make)
  return Path(workdir), saves


def _trained_on(data_state) -> set[int]:
  """The global batches the state saved with this data state was trained on."""
  skipped = [r["skipped_batches"] for r in data_state.get("spike", {}).get("rollbacks", [])]
  return {g for g in range(data_state["next_batch"]) if not any(a <= g < b for a, b in skipped)}


@pytest.mark.slow
def test_a_poisoned_stretch_is_rolled_back_past_its_batches(spiked, reference):
  """Steps 17-20 train on poisoned batches. The spike is declared at step 20 and rolled back
  to step 12 (the newest checkpoint step 17's loss does not reach), the batches drawn since
  (12-20) skipped; the held save of step 18 (trained on two poisoned batches) is never
  written; the run ends within 5% of the unspiked run's final eval loss."""
  workdir, saves = spiked
  (event,) = events(workdir)
  assert event["event"] == "rollback" and event["step"] == 12
  assert event["spike"] == [17, 20] and event["to_step"] == 12
  assert event["skipped_batches"] == [12, 21]  # the data position moved past them
  assert event["spike"][1] + 1 - event["spike"][0] <= 20  # rolled back within 20 steps
  ours, ref = losses(workdir), losses(reference[0])
  assert sorted(ours) == list(range(1, 25))  # the spike's rows went with the rollback
  assert [ours[s] for s in range(1, 13)] == [ref[s] for s in range(1, 13)]
  assert min(event["losses"]) > 1.08 * max(ref[s] for s in range(9, 17))
  last = {w: [r["eval/loss"] for r in metrics.read_metrics(w) if "eval/loss" in r][-1]
          for w in (workdir, reference[0])}
  assert abs(last[workdir] / last[reference[0]] - 1) < 0.05, last
  # Nothing from inside the spike was ever saved: every save's state was trained on no
  # poisoned batch, and each step was written once.
  poisoned = set(range(POISON[0], sum(POISON)))
  assert [step for step, _ in saves] == [6, 12, 18, 24]
  for step, data in saves:
    assert not _trained_on(data) & poisoned, step
  assert saves[2][1]["next_batch"] == 27  # 18 steps: batches 0-11 and 21-26
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12, 18, 24]
  scalars = tensorboard_scalars(workdir / "tensorboard")
  assert scalars["rollback/to_step"] == {12: 12.0}


@pytest.mark.slow
def test_a_resume_after_the_rollback_is_exact(tmp_path, spm_model, spiked):
  """Resumed from step 18 (after the rollback), the run continues the spiked run's batches and
  losses bit for bit: the skip is in the data state, the rollback event logged once."""
  workdir = tmp_path / "run"
  shutil.copytree(spiked[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "24")
  draw = fault_worker.poison(*POISON)
  try:
    train.train_and_evaluate(tiny_config(spm_model, export_hf=False, **TIGHT), str(workdir))
  finally:
    fault_worker.unpoison(draw)
  assert losses(workdir) == losses(spiked[0])
  assert events(workdir) == events(spiked[0])


def _preempted_inside_the_spike(workdir, reference, config, monkeypatch):
  """The poisoned run resumed from the reference's step 12 and preempted at step 18, inside the
  spike but before it is declared: the preemption's save cannot wait for its judgment, and
  holds parameters trained on two poisoned batches and the detector's pending run."""
  shutil.copytree(reference[0], workdir)
  for step in (18, 24):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  with monkeypatch.context() as patch:
    patch.setattr(train, "_StopFlag", stop_after(6))
    summary = train.train_and_evaluate(config, str(workdir))
  assert summary["preempted"] and summary["step"] == 18
  state = json.loads((workdir / "checkpoints" / "18" / "data" / "metadata").read_text())
  assert [s for s, _ in state["spike"]["detector"]["run"]] == [17, 18]  # pending judgment


def _ends_as_the_spiked_run(workdir, config, spiked, monkeypatch):
  """The rerun: it ends as the uninterrupted poisoned run did, every loss, the event and the
  last checkpoint bit for bit, step 18 saved again from clean batches."""
  saves = []
  monkeypatch.setattr(checkpointing, "save_train_state", _recording_saves(saves))
  train.train_and_evaluate(config, str(workdir))
  assert losses(workdir) == losses(spiked[0])
  assert events(workdir) == events(spiked[0])
  assert [s for s, _ in saves] == [18, 24] and saves[0][1]["next_batch"] == 27
  _, params, _ = model_dir.load_model_dir(workdir / "checkpoints" / "24")
  _, expected, _ = model_dir.load_model_dir(spiked[0] / "checkpoints" / "24")
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_preemption_inside_a_spike_is_judged_by_the_rerun(tmp_path, spm_model, reference,
                                                           spiked, monkeypatch):
  """Preempted at step 18, inside the spike: the rerun judges on from the detector state saved
  with step 18, declares the spike at the same step, deletes step 18 and rolls back as the
  uninterrupted run did."""
  config = tiny_config(spm_model, export_hf=False, **TIGHT)
  draw = fault_worker.poison(*POISON)
  try:
    _preempted_inside_the_spike(tmp_path / "run", reference, config, monkeypatch)
    _ends_as_the_spiked_run(tmp_path / "run", config, spiked, monkeypatch)
  finally:
    fault_worker.unpoison(draw)


@pytest.mark.heavy  # a third run, in a subprocess: `make test-all`
def test_a_kill_during_a_rollback_resumes_cleanly(tmp_path, spm_model, reference, spiked,
                                                  monkeypatch):
  """Preempted at step 18 inside the spike, as above; then `python -m albert_jax.main` resumes
  from step 18, declares the spike, deletes step 18 and is killed (os._exit) in the rollback,
  before step 12 is restored; the rerun resumes from step 12, meets the same spike, rolls back
  alike and ends as the uninterrupted run did."""
  workdir = tmp_path / "run"
  config = tiny_config(spm_model, export_hf=False, **TIGHT)
  draw = fault_worker.poison(*POISON)
  try:
    _preempted_inside_the_spike(workdir, reference, config, monkeypatch)
    args = [f"--config.{k}={v}"
            for k, v in {**OVERRIDES, **TIGHT, "spm_model": spm_model, "export_hf": False}.items()]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fault_worker.py"),
         "--config=configs/pretrain.py:tiny", f"--workdir={workdir}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ALBERT_FAULT": "kill_in_rollback:1",
             "ALBERT_POISON": ":".join(map(str, POISON))})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 137 and "FAULT kill_in_rollback" in out, out[-3000:]
    assert "Resumed from checkpoint step 18" in out and "Loss spike at steps 17-20" in out
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12]
    _ends_as_the_spiked_run(workdir, config, spiked, monkeypatch)
  finally:
    fault_worker.unpoison(draw)


@pytest.mark.slow
def test_a_resume_at_1000x_the_learning_rate_stops_after_max_rollbacks(tmp_path, spm_model,
                                                                       reference):
  """A resume from step 12 with the learning rate 1000x the config's: every rollback meets
  the spike again (skipping batches cannot cure it). After max_rollbacks (2 here) the run stops
  (PersistentSpike, a FloatingPointError: main exits 1 with its message), its checkpoints
  intact (a rerun resumes from step 12 as any resume does)."""
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  for step in (18, 24):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  lr = tiny_config(spm_model).optim.lr
  with pytest.raises(spike.PersistentSpike, match=r"after 2 rollbacks within 2000 steps: "
                     r"stopping. The checkpoints up to step 12 are intact"):
    train.train_and_evaluate(tiny_config(spm_model, export_hf=False, **{
        "optim.lr": 1000 * lr, "spike.max_rollbacks": 2}), str(workdir))
  rows = events(workdir)
  assert [r["event"] for r in rows] == ["rollback", "rollback", "persistent_spike"]
  assert all(r["step"] == 12 and r["spike"][0] <= 14 for r in rows)  # met at once
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12]
  for step in (6, 12):  # intact: the reference's fingerprints
    assert ((workdir / "checkpoints" / str(step) / "fingerprints" / "metadata").read_text()
            == (reference[0] / "checkpoints" / str(step) / "fingerprints" / "metadata"
                ).read_text())


@pytest.mark.heavy  # two more compiles (the 1000x program, the scaled one): `make test-all`
def test_a_lower_learning_rate_after_the_rollback_cures_a_1000x_resume(tmp_path, spm_model,
                                                                       reference):
  """The same resume with spike.lr_factor 1e-3 for the rest of the run (as ModernBERT's
  large model was restarted by hand at a tenth of its rate): one rollback, then the config's
  learning rate again, ending within 5% of the unspiked run's final eval loss."""
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  for step in (18, 24):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  lr = tiny_config(spm_model).optim.lr
  train.train_and_evaluate(tiny_config(spm_model, export_hf=False, **{
      "optim.lr": 1000 * lr, "spike.lr_factor": 1e-3, "spike.lr_steps": 100}), str(workdir))
  (event,) = events(workdir)
  assert event["to_step"] == 12 and event["spike"][0] <= 14
  rows = {r["step"]: r for r in metrics.read_metrics(workdir) if "loss" in r}
  assert rows[13]["learning_rate"] == pytest.approx(
      {r["step"]: r for r in metrics.read_metrics(reference[0]) if "loss" in r}[13][
          "learning_rate"], rel=1e-5)
  last = {w: [r["eval/loss"] for r in metrics.read_metrics(w) if "eval/loss" in r][-1]
          for w in (workdir, reference[0])}
  assert abs(last[workdir] / last[reference[0]] - 1) < 0.05, last
