"""Fault tests that run in this process (../shared/RELIABILITY.md, T4-T9, T11, T14): corrupt,
stale and half-written checkpoints, changed configs and data, failed asynchronous saves,
retention, non-finite updates, uneven eval sets, and negative controls showing the resume
tests fail when the data position, the PRNG or the optimizer state is not restored.

"Nothing lost" is checked as (a) the step restored, (b) the state's fingerprints, (c) the batches
(through the losses, which depend on them) and (d) every step's loss, bit for bit, against the
uninterrupted `reference` run (same mesh, same process)."""

import functools
import json
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from albert_jax import checkpointing, metrics, sharding, steps, train
from albert_jax.checkpoints import model_dir
from albert_jax.data import arrays, order

from conftest import abstract_state, stop_after, tiny_config

pytestmark = pytest.mark.slow


def copy_run(reference, tmp_path, keep=(6, 12, 18, 24)):
  """A copy of the reference run's workdir with only the checkpoints `keep`."""
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  for step in (6, 12, 18, 24):
    if step not in keep:
      shutil.rmtree(workdir / "checkpoints" / str(step))
  return workdir


def losses(workdir):
  return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}


def restore_on_one_device(workdir, step_for_shapes=24):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  manager = checkpointing.make_manager(workdir, max_to_keep=None)
  messages = []
  restored = checkpointing.restore_train_state(
      manager, *abstract_state(workdir, step_for_shapes, mesh, "data_parallel"),
      log=messages.append)
  return restored, messages


# ----------------------------------------------------------------------------- T7: corruption

def _data_files(step_dir):
  return [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]


def _flip(step_dir):
  for path in _data_files(step_dir):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(step_dir):
  for path in _data_files(step_dir):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _stale_params(step_dir):
  """Valid files, wrong content: step 24's params replaced by step 18's (an rsync mishap)."""
  shutil.rmtree(step_dir / "params")
  shutil.copytree(step_dir.parent / "18" / "params", step_dir / "params")


CORRUPTIONS = {
    "flipped bytes": _flip,
    "truncated data files": _truncate,
    "params/_METADATA deleted": lambda d: (d / "params" / "_METADATA").unlink(),
    "data item deleted": lambda d: shutil.rmtree(d / "data"),
    "stale params": _stale_params,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_newest_step_is_set_aside_for_the_previous_one(tmp_path, reference, corruption):
  """T7: never train from a corrupt step; fall back one interval, loudly, and move the step
  aside so the run can save it again."""
  workdir = copy_run(reference, tmp_path)
  (workdir / "checkpoints" / "30.orbax-checkpoint-tmp").mkdir()  # a kill mid-save: ignored
  CORRUPTIONS[corruption](workdir / "checkpoints" / "24")
  (step, params, rest, data), messages = restore_on_one_device(workdir, step_for_shapes=18)
  assert step == 18 and int(rest["step"]) == 18 and data["next_batch"] == 18  # (a)
  assert len(messages) == 1 and "checkpoint step 24" in messages[0], messages
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert "24" not in names and any(n.startswith("24.corrupt-") for n in names), names
  # (b): what was restored is what step 18 saved.
  stored = json.loads((workdir / "checkpoints" / "18" / "fingerprints" / "metadata").read_text())
  assert checkpointing.fingerprints(params) == stored["params"]
  assert checkpointing.fingerprints(rest) == stored["train_state"]


def test_stale_params_restore_silently_without_the_fingerprints(tmp_path, reference):
  """The control for "stale params": Orbax alone restores step 18's parameters as step 24's
  without a word; only the fingerprints tell."""
  workdir = copy_run(reference, tmp_path)
  _stale_params(workdir / "checkpoints" / "24")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  abstract_params, abstract_rest = abstract_state(workdir, 24, mesh, "data_parallel")
  manager = checkpointing.make_manager(workdir, max_to_keep=None)
  plain = manager.restore(24, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params),
      train_state=ocp.args.StandardRestore(abstract_rest)))
  _, step_18, _ = model_dir.load_model_dir(reference[0] / "checkpoints" / "18")
  for a, b in zip(jax.tree_util.tree_leaves(plain["params"]), jax.tree_util.tree_leaves(step_18)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # The readers of a run (from_pretrained, orbax-to-hf, init_from) check them too: a run
  # falls back to its previous step, a step named explicitly is refused.
  _, params, _ = model_dir.load_model_dir(workdir)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(step_18)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(checkpointing.CorruptCheckpoint, match="fingerprints"):
    model_dir.load_model_dir(workdir / "checkpoints" / "24")


def test_a_run_whose_newest_step_is_corrupt_goes_on_and_loses_nothing(tmp_path, spm_model,
                                                                      reference):
  """The run of the issue: checkpoints 6, 12, 18, step 18 stale (24 never written). It resumes
  from 12, sets 18 aside, saves 18 and 24 again (no StepAlreadyExistsError), and its losses are
  the uninterrupted run's; a rerun then resumes from the end."""
  workdir = copy_run(reference, tmp_path, keep=(6, 12, 18))
  shutil.rmtree(workdir / "checkpoints" / "18" / "params")
  shutil.copytree(workdir / "checkpoints" / "12" / "params",
                  workdir / "checkpoints" / "18" / "params")
  summary = train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  assert summary["step"] == 24
  assert losses(workdir) == losses(reference[0])  # (c), (d)
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert [n for n in names if n.isdigit()] == ["12", "18", "24", "6"]
  assert any(n.startswith("18.corrupt-") for n in names)
  summary = train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  assert summary["step"] == 24 and summary["first"] is None  # resumed at 24: nothing to train


# ----------------------------------------------------------------------------- changed configs

def test_a_changed_optimizer_is_refused_not_taken_for_corruption(tmp_path, spm_model, reference):
  workdir = copy_run(reference, tmp_path)
  config = tiny_config(spm_model, **{"optim.name": "adamw"})
  with pytest.raises(checkpointing.CheckpointMismatch) as e:
    train.train_and_evaluate(config, str(workdir))
  assert "config.optim.name='adamw' (the run's checkpoints: 'lamb')" in str(e.value)
  assert "opt_state" in str(e.value)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12", "18", "24", "6"]


def test_a_changed_data_stream_is_refused_unless_allowed(tmp_path, spm_model, reference):
  """T19 through the trainer: other pair settings would silently make another stream of batches.
  (A setting the step does not see, so the allowed run reuses the reference's compiled step.)"""
  workdir = copy_run(reference, tmp_path, keep=(6, 12, 18))
  changed = {"data.short_seq_prob": 0.5}
  with pytest.raises(order.StreamChanged) as e:
    train.train_and_evaluate(tiny_config(spm_model, **changed), str(workdir))
  assert "short_seq_prob: checkpoint 0.1, now 0.5" in str(e.value)
  assert "--config.allow_data_change=True" in str(e.value)
  summary = train.train_and_evaluate(
      tiny_config(spm_model, allow_data_change=True, **changed), str(workdir))
  ours, ref = losses(workdir), losses(reference[0])
  assert summary["step"] == 24 and sorted(ours) == list(range(1, 25))
  assert [ours[s] for s in range(1, 19)] == [ref[s] for s in range(1, 19)]
  assert [ours[s] for s in range(19, 25)] != [ref[s] for s in range(19, 25)]  # other batches


def test_fine_tuning_data_that_changed_is_refused_unless_allowed():
  """T19 for fine-tuning: the arrays' fingerprint and the task's data settings are the stream."""
  features = {"input_ids": np.arange(40, dtype=np.int32).reshape(20, 2)}
  settings = {"data.max_seq_length": 2, "data.task": "sst2"}

  def iterator(features=features, settings=settings, **kw):
    return arrays.ArrayIterator(arrays.Dataset(dict(features)), global_batch_size=4, seed=0,
                                process_index=0, process_count=1, settings=settings, **kw)

  it = iterator()
  run = [next(it) for _ in range(4)]
  state = json.loads(json.dumps({**it.get_state(), "next_batch": 2}))
  fresh = iterator()
  fresh.set_state(state)
  assert np.array_equal(next(fresh)["input_ids"], run[2]["input_ids"])
  edited = {"input_ids": features["input_ids"].copy()}
  edited["input_ids"][7, 1] += 1
  with pytest.raises(order.StreamChanged, match="arrays: checkpoint"):
    iterator(features=edited).set_state(state)
  with pytest.raises(order.StreamChanged, match="data.max_seq_length: checkpoint 2, now 3"):
    iterator(settings={**settings, "data.max_seq_length": 3}).set_state(state)
  allowed = iterator(features=edited, allow_change=True)
  allowed.set_state(state)
  assert allowed.get_state()["next_batch"] == 2


# ----------------------------------------------------------------------------- T5: controls



def _fresh_opt_state(restore):
  def restore_without_opt_state(*args, **kwargs):
    step, params, rest, data = restore(*args, **kwargs)
    zeros = jax.tree_util.tree_map(lambda x: x * 0, rest["opt_state"])
    return step, params, {**rest, "opt_state": zeros}, data
  return restore_without_opt_state


def _other_dropout_keys(step_fn):
  def train_step(state, batch, **kwargs):
    return step_fn(state, batch, **{**kwargs, "seed": kwargs["seed"] + 1})
  return train_step


CONTROLS = {
    "everything restored": None,
    "data position not restored": lambda mp: mp.setattr(
        "albert_jax.data.input_pipeline.BatchIterator.set_state", lambda self, state: None),
    "PRNG not restored": lambda mp: mp.setattr(
        steps, "train_step", _other_dropout_keys(steps.train_step)),
    "optimizer state not restored": lambda mp: mp.setattr(
        checkpointing, "restore_train_state", _fresh_opt_state(checkpointing.restore_train_state)),
}


# "everything restored" heavy: the same exactness (a resume from step 12 in fresh objects gives
# the uninterrupted losses) is checked in `make test` by the corrupt-step run above and
# test_train's resume chain; the three controls stay.
@pytest.mark.parametrize("control", [
    pytest.param(c, marks=pytest.mark.heavy) if c == "everything restored" else c
    for c in CONTROLS])
def test_resume_comparison_fails_when_a_part_of_the_state_is_not_restored(
    tmp_path, spm_model, reference, monkeypatch, control):
  """T5: resume from step 12 in fresh objects for two steps. Restoring everything gives the
  uninterrupted run's losses exactly; leaving out the data position, the dropout keys or the
  optimizer state changes them (so the exact-resume tests would catch each)."""
  workdir = copy_run(reference, tmp_path, keep=(6, 12))
  monkeypatch.setattr(train, "_StopFlag", stop_after(2))
  if CONTROLS[control]:
    CONTROLS[control](monkeypatch)
  summary = train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  assert summary["step"] == 14 and summary["preempted"]
  ours, ref = losses(workdir), losses(reference[0])
  assert [ours[s] for s in range(1, 13)] == [ref[s] for s in range(1, 13)]
  resumed, expected = [ours[13], ours[14]], [ref[13], ref[14]]
  if control == "everything restored":
    assert resumed == expected
  else:
    assert resumed[1] != expected[1], control  # the optimizer state first shows at step 14


# ----------------------------------------------------------------------------- T8, T9, T4

def test_a_failed_asynchronous_save_stops_the_run_and_never_appears(tmp_path, spm_model,
                                                                     reference, monkeypatch):
  """T8: the background write of step 18 fails (Orbax only logs it): the run stops non-zero at
  its next save check instead of ending as if it had saved, step 18 never appears, and a rerun
  resumes from 12 with nothing else lost."""
  workdir = copy_run(reference, tmp_path, keep=(6, 12))
  save_json = ocp.JsonCheckpointHandler._save_fn

  async def failing(self, x, directory):
    if isinstance(x, dict) and x.get("next_batch") == 18:
      raise OSError("injected: no space left on device")
    return await save_json(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing)
  with pytest.raises(checkpointing.CheckpointNotWritten, match="step 18"):
    train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  monkeypatch.undo()
  fresh = checkpointing.make_manager(workdir, max_to_keep=None)
  assert 18 not in fresh.all_steps() and max(fresh.all_steps()) <= 12
  summary = train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  assert summary["step"] == 24 and losses(workdir) == losses(reference[0])


def _tiny_state(step):
  return {"w": jax.numpy.full((4,), float(step)), "step": jax.numpy.asarray(step)}


def test_retention_keeps_the_newest_committed_steps_and_every_preemption_save(tmp_path,
                                                                            monkeypatch):
  """T9 (and T4: no save policy can drop a step the trainer asks for): periodic saves at 6, 12,
  18, a preemption save at 20 (off the interval), then 24, keeping 2. Exactly {20, 24} survive,
  and while 24 is being written, 18 and 20 are both still there."""
  manager = checkpointing.make_manager(tmp_path, max_to_keep=2)
  save_json = ocp.JsonCheckpointHandler._save_fn
  seen_during_24 = []

  async def slow(self, x, directory):
    if isinstance(x, dict) and x.get("next_batch") == 24:
      time.sleep(0.5)
      seen_during_24.append(sorted(p.name for p in (tmp_path / "checkpoints").iterdir()))
    return await save_json(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", slow)
  for step in (6, 12, 18, 20, 24):
    state = _tiny_state(step)
    checkpointing.save_train_state(manager, step, state, {"n": state["step"]},
                                   {"next_batch": step}, {"config": {}, "head": "base"})
  checkpointing.check_written(manager)
  assert sorted(manager.all_steps()) == [20, 24]
  assert {"18", "20"} <= set(seen_during_24[0]), seen_during_24
  fresh = checkpointing.make_manager(tmp_path, max_to_keep=2)
  assert sorted(fresh.all_steps()) == [20, 24]
  for step in (20, 24):  # (b) on every kept step
    stored = json.loads((tmp_path / "checkpoints" / str(step) / "fingerprints" / "metadata"
                         ).read_text())
    restored = fresh.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_tiny_state(0))))["params"]
    assert checkpointing.fingerprints(restored) == stored["params"]
    assert float(restored["w"][0]) == step


# ----------------------------------------------------------------------------- T11

class _Linear(nn.Module):
  """A stand-in head: the guard under test is the step's, not the model's."""

  def batch_inputs(self, training):
    return ()

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
    return nn.Dense(2)(input_ids.astype(jnp.float32))


class _SquaredError:
  loss_sums = staticmethod(lambda out, batch: {"loss": jnp.sum(jnp.square(out - 1.0))})
  counts = staticmethod(lambda batch: {"rows": jnp.float32(batch["input_ids"].shape[0])})
  normalise = staticmethod(lambda sums, counts: {"loss": sums["loss"] / counts["rows"]})


@pytest.mark.parametrize("lr", [1e-2, float("inf")])
def test_a_non_finite_update_is_skipped_even_when_loss_and_gradient_are_finite(lr):
  """T11: an update that overflows (learning rate inf) from a finite loss and gradient. The old
  guard (loss and gradient norm only) applied it; the step skips it, bitwise, and records the
  step, which stops the run before anything non-finite is saved. A finite one is applied."""
  import optax
  module, tx = _Linear(), optax.adam(lr)
  batch = {"input_ids": np.arange(12, dtype=np.int32).reshape(4, 3) % 5,
           "attention_mask": np.ones((4, 3), np.int32),
           "token_type_ids": np.zeros((4, 3), np.int32)}
  params = module.init(jax.random.key(0), batch["input_ids"])["params"]
  state = steps.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                           nonfinite_step=jnp.int32(-1))
  step = jax.jit(functools.partial(steps.train_step, module=module, task=_SquaredError, tx=tx,
                                   schedule=lambda count: lr, accum_steps=1, seed=0))
  new, out = jax.device_get(step(state, batch))
  assert np.isfinite(out["loss"]) and np.isfinite(out["grad_norm"])
  assert int(new.step) == 1
  before = jax.tree_util.tree_leaves((params, tx.init(params)))
  after = jax.tree_util.tree_leaves((new.params, new.opt_state))
  if np.isfinite(lr):
    assert int(new.nonfinite_step) == -1
    assert not np.array_equal(before[0], after[0])
  else:
    assert int(new.nonfinite_step) == 0
    for a, b in zip(before, after):
      np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- T14

def test_uneven_eval_sets_count_every_example_once_on_any_number_of_hosts():
  """T14: 5000 rows in global batches of 48 over 1, 2 and 3 hosts (the hosts hold unequal
  numbers of real rows): every host runs as many eval batches (no hang), the global batches
  they assemble are one process's, every row counted once (weight 1), the padding weighing 0,
  and a metric over them is one process's."""
  n, batch = 5000, 48
  dataset = arrays.Dataset({"row": np.arange(n), "label": np.arange(n) % 3})

  def host_batches(count):
    parts = [arrays.eval_batches(dataset, global_batch_size=batch, process_index=p,
                                 process_count=count) for p in range(count)]
    assert len({len(p) for p in parts}) == 1
    return parts

  def assembled(parts):  # what make_array_from_process_local_data puts together
    return [{k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]}
            for i in range(len(parts[0]))]

  one = assembled(host_batches(1))
  rows = np.concatenate([b["row"][b[arrays.WEIGHT] == 1] for b in one])
  np.testing.assert_array_equal(rows, np.arange(n))
  for count in (2, 3):
    parts = host_batches(count)
    real = [int(sum(b[arrays.WEIGHT].sum() for b in p)) for p in parts]
    assert sum(real) == n and len(set(real)) > 1, real  # uneven across hosts
    many = assembled(parts)
    assert len(many) == len(one)
    for a, b in zip(one, many):
      assert all(np.array_equal(a[k], b[k]) for k in a)
    correct = sum(float(((b["label"] == 0) * b[arrays.WEIGHT]).sum()) for b in many)
    assert correct / n == np.mean(np.arange(n) % 3 == 0)


# ----------------------------------------------------------------------------- T3

def test_tpu_and_gpu_hosts_initialize_jax_distributed_with_our_timeouts(monkeypatch):
  """T3: a single-host TPU VM still calls jax.distributed.initialize (Orbax's preemption sync
  needs it), with the timeouts the flags set."""
  import types
  from albert_jax import main
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(main, "FLAGS", types.SimpleNamespace(
      distributed="auto", coordinator_address=None, initialization_timeout=30,
      heartbeat_timeout=20))
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-8")
  main.initialize_distributed()
  assert calls == [((), {"initialization_timeout": 30, "heartbeat_timeout_seconds": 20})]
