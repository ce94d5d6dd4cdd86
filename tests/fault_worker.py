"""`python -m albert_jax.main` with one fault injected, for the fault tests' subprocesses.

  ALBERT_FAULT=KIND:STEP[:PROCESS] python tests/fault_worker.py --config=... --workdir=... [flags]

KIND (at training step STEP, on process PROCESS, default every process):
  none              no fault
  kill_after_save   os._exit(137) the moment the save of STEP returns, its commit still running
  sigterm_at_start  SIGTERM to itself right after resuming, before the first step (STEP unused)
  exit              os._exit(1) before STEP (a process that dies)
  stall             sleep for an hour before STEP (alive, stuck before the step's collectives)
  no_step_dir       the save of STEP cannot create its directory (as under chattr +i)
  kill_in_rollback  os._exit(137) in the STEP-th rollback of a loss spike, its checkpoints from
                    inside the spike deleted, before the checkpoint before it is restored

ALBERT_POISON=FIRST:COUNT (any KIND) poisons global batches FIRST .. FIRST+COUNT-1 (`poison`).
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from albert_jax import checkpointing, main, steps  # noqa: E402


def _applies(process):
  import jax
  return process is None or jax.process_index() == process


def poison(first: int, count: int):
  """Global batches [first, first + count) of the pretraining stream get [CLS] as every masked
  token's target and the other sentence order: a loss spike, from outside the code, that
  depends on the batch index alone (the same on any number of processes). Returns what
  `unpoison` needs."""
  from albert_jax.data import input_pipeline
  draw = input_pipeline.BatchIterator.__next__

  def poisoned(self):
    index = self._next
    batch = draw(self)
    if first <= index < first + count:
      batch = {**batch, "sentence_order_label": 1 - batch["sentence_order_label"],
               "masked_lm_ids": np.broadcast_to(batch["input_ids"][:, :1],
                                                batch["masked_lm_ids"].shape).copy()}
    return batch
  input_pipeline.BatchIterator.__next__ = poisoned
  return draw


def unpoison(draw) -> None:
  from albert_jax.data import input_pipeline
  input_pipeline.BatchIterator.__next__ = draw


def inject(kind: str, step: int, process: int | None) -> None:
  if kind == "none":
    return
  if kind == "kill_in_rollback":
    restore, calls = checkpointing.restore_train_state, []

    def restore_or_die(*args, **kwargs):
      calls.append(1)
      if len(calls) == step + 1 and _applies(process):  # the first call is the resume
        print(f"FAULT kill_in_rollback in rollback {step}", flush=True)
        os._exit(137)
      return restore(*args, **kwargs)
    checkpointing.restore_train_state = restore_or_die
    return
  if kind == "kill_after_save":
    save = checkpointing.save_train_state

    def save_then_die(manager, s, *args, **kwargs):
      save(manager, s, *args, **kwargs)
      if s == step and _applies(process):
        os._exit(137)
    checkpointing.save_train_state = save_then_die
    return

  if kind == "no_step_dir":
    from orbax.checkpoint._src.path import atomicity
    create = atomicity._create_tmp_directory

    async def refuse(makedir, tmp_dir, *args, **kwargs):
      if tmp_dir.name.startswith(f"{step}.orbax-checkpoint-tmp") and _applies(process):
        raise PermissionError(1, "Operation not permitted (injected)", str(tmp_dir))
      return await create(makedir, tmp_dir, *args, **kwargs)
    atomicity._create_tmp_directory = refuse
    return

  if kind == "sigterm_at_start":
    restore = checkpointing.restore_train_state

    def restore_then_sigterm(*args, **kwargs):
      out = restore(*args, **kwargs)
      if _applies(process):
        os.kill(os.getpid(), signal.SIGTERM)
      return out
    checkpointing.restore_train_state = restore_then_sigterm
    return

  make_step = steps.jit_train_step

  def faulty_jit_train_step(*args, **kwargs):
    p_train_step = make_step(*args, **kwargs)

    def step_fn(state, batch):
      import jax
      if int(jax.device_get(state.step)) + 1 == step and _applies(process):
        print(f"FAULT {kind} before step {step} on process {jax.process_index()}", flush=True)
        if kind == "exit":
          os._exit(1)
        time.sleep(3600)
      return p_train_step(state, batch)
    return step_fn
  steps.jit_train_step = faulty_jit_train_step


if __name__ == "__main__":
  if os.environ.get("ALBERT_POISON"):
    poison(*map(int, os.environ["ALBERT_POISON"].split(":")))
  kind, step, *process = os.environ["ALBERT_FAULT"].split(":")
  inject(kind, int(step), int(process[0]) if process else None)
  app.run(main.main)
