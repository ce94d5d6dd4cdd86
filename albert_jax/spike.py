"""Loss spikes (`config.spike`): the detector over recent losses, and what a rollback records.

The detector is a pure function of a small JSON state, fed each step's loss as the step returns
it: the global batch's, reduced on device and replicated, so every process reads the same
float and takes the same decision without a collective. A step is suspect when its loss
exceeds the mean of the last `window` accepted losses by max(`z` x their standard deviation,
`margin` x their mean); `hold` suspect steps in a row are a spike (fewer are noise: they are then
accepted). Non-finite losses are suspect. The first `window` losses only fill the window.

When are checkpoints written? A periodic save is held (a copy of the state on the devices) until
the losses that could start a spike reaching it are judged (`judged_through`: usually once the
next step's loss is in), then written; a spike drops it, so no periodic checkpoint holds parameters from inside
one. A preemption's save and the run's last cannot wait: they are written at once with the
detector's state in their data item, and the rerun judges on from it, computes the same losses
and reaches the same verdict; a rollback deletes every checkpoint newer than its target before
anything else. Retention always keeps the newest judged step, where a rollback goes. (The other
choice, saving at once and marking a step committed later, would need every reader of a run and
every kill between save and mark to know the mark; a held save adds nothing on disk.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

# The key of the data state (saved with every checkpoint) that holds {"detector": ...,
# "rollbacks": [...]}: the detector's state and every rollback of the run's history so far.
DATA_KEY = "spike"


def default_config() -> ml_collections.ConfigDict:
  """`config.spike`: on for pretraining (configs/pretrain.py); the thresholds' figures are in
  docs/pretraining.md, "Loss spikes"."""
  return ml_collections.ConfigDict(dict(
      enabled=False,
      window=100,  # accepted losses the reference is taken over (and steps before it is armed)
      z=6.0,  # a suspect loss exceeds the window's mean by z standard deviations ...
      margin=0.15,  # ... and by this fraction of the mean
      hold=4,  # suspect steps in a row that make a spike
      max_rollbacks=3,  # rollbacks allowed within rollback_window steps; one more spike stops
      rollback_window=2000,
      lr_factor=1.0,  # the learning rate after a rollback, x this (1: as scheduled) ...
      lr_steps=0,  # ... for this many steps (overlapping rollbacks multiply)
  ))


class PersistentSpike(FloatingPointError):
  """The loss kept spiking: `max_rollbacks` rollbacks within `rollback_window` steps did not
  cure it. A FloatingPointError, as the NaN guard's stop: `main` prints it and exits 1."""


@dataclasses.dataclass(frozen=True)
class Spike:
  """`hold` suspect steps in a row. The first one's loss was computed with the parameters of
  the step before it, so checkpoint first_step - 2 is the newest the spike does not reach."""
  first_step: int
  last_step: int
  losses: list[float]
  reference: float  # the window's mean
  threshold: float


def fresh() -> dict[str, Any]:
  """The state of a detector that has seen no step: {"step": last step seen, "recent": accepted
  losses (oldest first), "run": [[step, loss], ...] the suspect steps since the last accepted}."""
  return {"step": 0, "recent": [], "run": []}


def threshold(cfg, recent: list[float]) -> tuple[float, float]:
  """(reference, threshold) of a full window: its mean, and the loss above which a step is
  suspect. Python floats summed exactly (fsum): the same on every host."""
  mean = math.fsum(recent) / len(recent)
  std = math.sqrt(math.fsum((x - mean) ** 2 for x in recent) / len(recent))
  return mean, mean + max(cfg.z * std, cfg.margin * abs(mean))


def observe(cfg, state: dict, step: int, loss: float) -> tuple[dict, Spike | None]:
  """The detector's state after step `step`'s loss, and the spike it completes (or None)."""
  recent, run = state["recent"], state["run"]
  if len(recent) < cfg.window:  # not armed: the window fills
    return {"step": step, "recent": recent + [loss] if math.isfinite(loss) else recent,
            "run": []}, None
  reference, limit = threshold(cfg, recent)
  if not loss <= limit:  # NaN too
    run = run + [[step, loss]]
    new = {"step": step, "recent": recent, "run": run}
    if len(run) < cfg.hold:
      return new, None
    return new, Spike(first_step=run[0][0], last_step=step, losses=[x for _, x in run],
                      reference=reference, threshold=limit)
  accepted = [x for _, x in run if math.isfinite(x)] + [loss]  # a shorter run was noise
  return {"step": step, "recent": (recent + accepted)[-cfg.window:], "run": []}, None


def judged_through(state: dict) -> int:
  """The newest step whose checkpoint no spike can reach any more. A spike's first step t has a
  loss computed with step t-1's parameters, so it reaches checkpoints t-1 and later; a spike
  can still start at the pending run's first step, or at the next step."""
  start = state["run"][0][0] if state["run"] else state["step"] + 1
  return start - 2


def lr_scale(rollbacks: list[dict], step: int) -> float:
  """The learning rate factor of update `step` (1-based): each rollback's `lr_factor` for the
  `lr_steps` steps after the step it went back to."""
  scale = 1.0
  for r in rollbacks:
    if r["to_step"] < step <= r["to_step"] + r["lr_steps"]:
      scale *= r["lr_factor"]
  return scale


def rollbacks_within(rollbacks: list[dict], first_step: int, window: int) -> int:
  """How many rollbacks were for spikes that began within `window` steps before `first_step`."""
  return sum(1 for r in rollbacks if r["spike"][0] > first_step - window)


def record(found: Spike, to_step: int, batches: tuple[int, int], cfg) -> dict:
  """A rollback as the data state and the metrics' event row keep it (JSON)."""
  return {"spike": [found.first_step, found.last_step], "losses": found.losses,
          "reference": found.reference, "threshold": found.threshold, "to_step": to_step,
          "skipped_batches": list(batches), "lr_factor": float(cfg.lr_factor),
          "lr_steps": int(cfg.lr_steps)}
