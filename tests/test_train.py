"""The pretraining job end to end: train_and_evaluate, resume, preemption, NaN, meshes, hosts."""

import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers

from albert_jax import checkpointing, hf_convert, init_from, metrics, overrides, sharding, tasks
from albert_jax import train
from albert_jax.checkpoints import model_dir
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax import model as M

# Shared with other tests:
from conftest import OVERRIDES, REPO, abstract_state, tensorboard_scalars, tiny_config

pytestmark = pytest.mark.slow


def cli_args(config_changes: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in config_changes.items()]


def run_main(workdir, spm_model, *extra, wait=True, env=None, fault=None, **changes):
  """`python -m albert_jax.main` with the tiny test config, as a user would run it; `fault`
  ("KIND:STEP[:PROCESS]") runs it through tests/fault_worker.py with that fault injected."""
  entry = ["-m", "albert_jax.main"] if fault is None else [str(REPO / "tests" / "fault_worker.py")]
  args = [sys.executable, *entry, "--config=configs/pretrain.py:tiny", f"--workdir={workdir}",
          *cli_args({**OVERRIDES, "spm_model": spm_model, **changes}), *extra]
  env = {**os.environ, **(env or {}), **({"ALBERT_FAULT": fault} if fault else {})}
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
  if wait:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out
  return proc


def losses(workdir):
  rows = [r for r in metrics.read_metrics(workdir) if "loss" in r]
  return {r["step"]: r["loss"] for r in rows}


# ----------------------------------------------------------------------------- end to end

def test_end_to_end_run_learns_and_writes_everything(reference):
  workdir, summary = reference
  rows = metrics.read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 25))  # step 1: the baseline
  for key in ("step", "loss", "mlm_loss", "sop_loss", "mlm_accuracy", "sop_accuracy",
              "learning_rate", "grad_norm", "steps_per_second", "tokens_per_second", "mfu"):
    assert key in train_rows[-1], key
  assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.3
  eval_rows = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in eval_rows] == [12, 24]
  assert eval_rows[1]["eval/loss"] < eval_rows[0]["eval/loss"]
  assert summary["step"] == 24 and not summary["preempted"]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12, 18, 24]
  assert not (workdir / "lease.json").exists()  # released at the end
  # The export loads in transformers with the tokenizer beside it.
  model, info = transformers.AlbertForPreTraining.from_pretrained(workdir / "hf",
                                                                  output_loading_info=True)
  assert not any(info.values()), info
  tok = transformers.AlbertTokenizer.from_pretrained(workdir / "hf")
  assert tok.mask_token_id == 4 and tok.vocab_size == 500


def test_tensorboard_event_files_hold_the_metrics(reference):
  workdir, _ = reference
  scalars = tensorboard_scalars(workdir / "tensorboard")
  rows = {r["step"]: r for r in metrics.read_metrics(workdir) if "loss" in r}
  assert sorted(scalars["loss"]) == sorted(rows)
  for step, row in rows.items():
    assert scalars["loss"][step] == pytest.approx(row["loss"], rel=1e-6)
  assert set(scalars["eval/mlm_accuracy"]) == {12, 24}


def test_flop_count_agrees_with_xla_cost_analysis():
  """Our analytic count (what MFU uses) against XLA's own count of the compiled forward."""
  cfg = M.AlbertConfig(vocab_size=500, embedding_size=32, hidden_size=128, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=512)
  module = M.AlbertForPreTraining(cfg, layer_loop="unroll")  # XLA counts a loop body once
  params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                  nn.unbox(M.abstract_params(module)))
  ids = jax.ShapeDtypeStruct((4, 64), np.int32)
  positions = jax.ShapeDtypeStruct((4, 10), np.int32)
  compiled = jax.jit(lambda p, x, m: module.apply({"params": p}, x, masked_lm_positions=m)).lower(
      params, ids, positions).compile()
  xla = compiled.cost_analysis()["flops"]
  ours = 4 * M.pretraining_flops_per_example(cfg, 64, 10)
  # XLA also counts softmax, LayerNorm and activation arithmetic (a few % here).
  assert ours <= xla <= 1.1 * ours, (ours, xla)


# ----------------------------------------------------------------------------- resuming

def _wait_for(path, proc, timeout=300, step=None):
  """Until `path` exists (a metrics file: until it logs `step`), the process still running."""
  def ready():
    if not path.exists():
      return False
    return step is None or any(
        f'"step": {step},' in line for line in path.read_text().splitlines())
  deadline = time.time() + timeout
  while not ready():
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.05)


def test_sigterm_kill_mid_commit_and_re_preemption_reproduce_the_uninterrupted_run(
    tmp_path, spm_model, reference):
  """T1, T3, T5 (positive), T6 in one chain of four runs of the same command, with dropout and
  every step's loss compared, bit for bit, with the uninterrupted run:
    1. SIGTERM (one process, no jax.distributed): save at the next step, exit 0;
    2. killed (os._exit) the moment the next periodic save() returns, its commit in flight:
       that step must never be seen;
    3. SIGTERM again right after resuming, before any step: save the next step, exit 0;
    4. run to the end."""
  ref_workdir, _ = reference
  workdir = tmp_path / "run"
  proc = run_main(workdir, spm_model, wait=False)
  _wait_for(workdir / metrics.METRICS_FILE, proc, step=4)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0 and "Preempted: saving step" in out, out
  saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert 4 <= saved < 18

  uncommitted = (saved // 6 + 1) * 6
  code, out = run_main(workdir, spm_model, fault=f"kill_after_save:{uncommitted}")
  assert code == 137 and f"Resumed from checkpoint step {saved}" in out, out[-3000:]
  assert max(losses(workdir)) >= uncommitted  # it trained up to the save it was killed in
  # The kill left the step's temporary directory, never a step.
  assert not (workdir / "checkpoints" / str(uncommitted)).exists()
  assert any(p.name.startswith(f"{uncommitted}.orbax-checkpoint-tmp")
             for p in (workdir / "checkpoints").iterdir())

  code, out = run_main(workdir, spm_model, fault="sigterm_at_start:0")
  assert code == 0 and f"Resumed from checkpoint step {saved}" in out, out[-3000:]
  assert f"Preempted: saving step {saved + 1}" in out, out[-3000:]

  code, out = run_main(workdir, spm_model)
  assert code == 0 and f"Resumed from checkpoint step {saved + 1}" in out, out[-3000:]
  assert losses(workdir) == losses(ref_workdir)  # exactly: same data, dropout, updates
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r]
  assert steps == list(range(1, 25))  # every step once across the four runs
  kept = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert kept == sorted(map(str, {6, 12, 18, 24, saved, saved + 1}))  # the temporary dir gone
  _, params, _ = model_dir.load_model_dir(workdir / "checkpoints" / "24")  # verifies (b)
  _, ref_params, _ = model_dir.load_model_dir(ref_workdir / "checkpoints" / "24")
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.heavy  # a whole run in a subprocess; the refusal itself is in make test (test_lease)
def test_a_second_launch_on_a_running_workdir_is_refused_and_the_first_loses_nothing(
    tmp_path, spm_model, reference):
  """Issue 21, 5: `main --workdir=W & main --workdir=W`: the second exits 1 naming the first
  (host, pid), and the first runs on as if alone: every step once, the uninterrupted losses."""
  first = run_main(tmp_path, spm_model, wait=False)
  _wait_for(tmp_path / metrics.METRICS_FILE, first, step=2)
  code, out = run_main(tmp_path, spm_model)
  assert code == 1 and (f"is in use by another run (host {socket.gethostname()}, pid "
                        f"{first.pid}, started") in out, out[-3000:]
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  assert [r["step"] for r in metrics.read_metrics(tmp_path) if "loss" in r] == list(range(1, 25))
  assert losses(tmp_path) == losses(reference[0])


def test_restore_onto_a_different_mesh(reference):
  """Saved on 8 devices as 2x2x2 (fsdp_tensor); restored on 4 devices as 4x1x1."""
  workdir, _ = reference
  _, saved, _ = model_dir.load_model_dir(workdir / "checkpoints" / "24")
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:4])
  manager = checkpointing.make_manager(workdir, max_to_keep=None)
  step, params, rest, data = checkpointing.restore_train_state(
      manager, *abstract_state(workdir, 24, mesh, "data_parallel"))
  assert step == 24 and data["next_batch"] == 24 and int(rest["step"]) == 24
  assert data["stream"]["source"] == "embedded" and data["stream"]["global_batch_size"] == 16
  leaf = params["albert"]["encoder"]["embedding_hidden_mapping_in"]["kernel"]
  assert len(leaf.sharding.device_set) == 4
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(saved)):
    np.testing.assert_array_equal(np.asarray(a), b)


# ----------------------------------------------------------------------------- failures

@pytest.mark.heavy  # the in-step guard is tested in make test (test_faults)
def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path, spm_model):
  config = tiny_config(spm_model, **{"optim.name": "adamw_optax", "optim.lr": 1e30,
                                     "optim.warmup_steps": 0, "optim.clip_norm": 0.0,
                                     "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(FloatingPointError, match=r"NaN/Inf at step \d+"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps, "the first steps were finite and should have been saved"
  for step in steps:
    _, params, _ = model_dir.load_model_dir(tmp_path / "checkpoints" / str(step))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params)), step


@pytest.mark.heavy  # init_from in fine-tuning (test_finetune) stays in `make test`
def test_init_from_hf_and_from_an_orbax_run(tmp_path, spm_model, reference):
  config = tiny_config(spm_model)
  cfg = init_from.model_config(config, tasks.get(config.task), 500)
  source = M.init_params(M.AlbertForPreTraining(cfg), 7)
  hf_convert.save(cfg, source, tmp_path / "hf_in", head="pretraining", tokenizer=spm_model)
  for name, source_dir, expected in (
      ("from_hf", tmp_path / "hf_in", source),
      ("from_orbax", reference[0], model_dir.load_model_dir(reference[0])[1])):
    # One step at learning rate 0 (the first warmup step): the export is the initial weights.
    config = tiny_config(spm_model, total_steps=1, init_from=str(source_dir))
    train.train_and_evaluate(config, str(tmp_path / name))
    _, exported, _ = hf_convert.load(tmp_path / name / "hf")
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(exported)):
      np.testing.assert_array_equal(np.asarray(a), b)


def test_misspelled_override_is_an_error(tmp_path, spm_model):
  """Issue 21, 10: ml_collections raised a bare AttributeError ("'lrr'") from inside absl's flag
  parsing; the error now names the override, the fields there are and the closest one."""
  code, out = run_main(tmp_path, spm_model, "--config.optim.lrr=0.1")
  assert code == 1 and "Traceback" not in out, out[-3000:]
  assert ("FATAL Flags parsing error: --config.optim.lrr: config.optim has no field 'lrr'; did "
          "you mean config.optim.lr? (its fields: b1, b2, clip_norm") in out
  assert not (tmp_path / "config.json").exists()
  assert overrides.unknown_field(["--config.total_steps.x=1"], tiny_config(spm_model)) == (
      "--config.total_steps.x: config.total_steps is a int, not a group of fields")


def test_a_failed_save_ends_the_process_within_seconds(tmp_path, spm_model):
  """Issue 21, 6: step 6's directory cannot be created (as under `chattr +i checkpoints`): the
  run stops at its next save check with the message, and exits 74 within 10 s of it. Orbax's
  threads, waiting for the directory that never came, kept it alive 300 s (and a SIGTERM then
  was taken for a preemption request)."""
  # The reference run's program (total_steps is in it): a compile the session has made.
  proc = run_main(tmp_path, spm_model, wait=False, fault="no_step_dir:6", eval_every_steps=0)
  said = None
  for line in proc.stdout:
    if line.startswith("error: checkpoint step 6") and said is None:
      said = time.monotonic()
      assert "was not written" in line and "PermissionError" in line, line
  proc.wait(timeout=600)
  assert said is not None and time.monotonic() - said < 10
  assert proc.returncode == 74
  assert 6 not in [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


@pytest.mark.heavy  # the batch's loss and gradients packed: test_packing, in make test
def test_packed_pretraining_equals_the_unpacked_run(tmp_path, spm_model):
  """data.pack puts several pairs in a row (data/packed_pairs.py): the same pairs a step, so
  with dropout off every step's MLM and SOP loss is the unpacked run's; the data state is the
  pipeline's batch index (resuming is the pipeline's, tested above)."""
  changes = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
             "data.short_seq_prob": 1.0, "data.max_seq_length": 64, "total_steps": 4,
             "eval_every_steps": 0, "checkpoint_every_steps": 4}
  losses = {}
  for name, pack in (("padded", False), ("packed", True)):
    config = tiny_config(spm_model, **changes, **{"data.pack": pack})
    train.train_and_evaluate(config, str(tmp_path / name))
    losses[name] = {r["step"]: (r["mlm_loss"], r["sop_loss"])
                    for r in metrics.read_metrics(tmp_path / name) if "mlm_loss" in r}
  assert sorted(losses["packed"]) == list(range(1, 5))
  for step, (mlm, sop) in losses["padded"].items():
    assert losses["packed"][step] == pytest.approx((mlm, sop), rel=1e-5), step
  # Short pairs share rows; each step's 16 pairs are in its rows (never more rows than pairs).
  packed, _ = tasks.get("pretraining").data(config, AlbertTokenizer(spm_model))
  assert packed.layout.rows <= 16
  batches = [next(packed) for _ in range(3)]
  assert all(b["weight"].sum() == 16 for b in batches)
  assert any((b["weight"].sum(axis=1) > 1).any() for b in batches)
  assert packed.get_state()["next_batch"] == 3
