"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard event files, the console line.

Only process 0 writes. On resume, rows past the restored step (written after the last checkpoint
by the interrupted run) are dropped, so metrics.jsonl never holds a step twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
  """Appends {"step": ..., name: value} rows to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = Path(workdir) / METRICS_FILE
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR), flush_secs=30)

  def _truncate_after(self, step: int) -> None:
    if not self.path.exists():
      return
    rows = [line for line in self.path.read_text().splitlines() if line.strip()]
    keep = [line for line in rows if json.loads(line)["step"] <= step]
    if len(keep) != len(rows):
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(line + "\n" for line in keep))
      os.replace(tmp, self.path)
      logging.info("Dropped %d metrics rows past step %d (written after the last checkpoint)",
                   len(rows) - len(keep), step)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for name, value in metrics.items():
      if math.isfinite(float(value)):
        self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def read_metrics(workdir) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl."""
  path = Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Throughput:
  """steps/s, tokens/s, MFU and ETA between two log points."""

  def __init__(self, step: int, total_steps: int, flops_per_step: float, peak_flops: float):
    self.total_steps, self.flops_per_step, self.peak_flops = total_steps, flops_per_step, peak_flops
    self._mark(step, 0.0)

  def _mark(self, step, tokens):
    self.step, self.tokens, self.time = step, tokens, time.perf_counter()

  def update(self, step: int, tokens_seen: float) -> dict[str, float]:
    now = time.perf_counter()
    seconds = max(now - self.time, 1e-9)
    steps_per_s = (step - self.step) / seconds
    out = {"steps_per_second": steps_per_s, "tokens_per_second": (tokens_seen - self.tokens) / seconds,
           "eta_seconds": (self.total_steps - step) / max(steps_per_s, 1e-9)}
    if self.peak_flops:
      out["mfu"] = steps_per_s * self.flops_per_step / self.peak_flops
    self._mark(step, tokens_seen)
    return out
