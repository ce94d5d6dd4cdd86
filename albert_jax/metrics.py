"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard event files, the console line.

Only process 0 writes. A row is one line ended by its newline, appended in one write (in a
bucket, where objects cannot be appended to, the file is rewritten whole): a reader takes the
lines that end in a newline, so it never sees half a row, and a last line torn by a kill is
dropped. On resume, rows past the restored step (written after the last checkpoint by the
interrupted run) are dropped too, so metrics.jsonl never holds a step's metrics twice; so are
those past the step a rollback goes back to (spike.py), which writes an event row instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

from albert_jax import accelerators, files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SYNC_SECONDS = 30  # TensorBoard event files: flushed (and uploaded to a bucket) this often


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: where torch is installed tensorboardX
  imports it (1.3 s at every start, and this package never imports torch), though scalars need
  none of it. A torch imported before stays as it is."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    from tensorboardX import SummaryWriter  # here: after torch is blocked, above
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Appends {"step": ..., name: value} rows to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = files.path(workdir) / METRICS_FILE
    self.remote = files.is_remote(workdir)
    self._lines = self._truncate_after(resume_step)  # kept in memory only for a bucket
    SummaryWriter = _summary_writer_class()
    tensorboard = files.path(workdir) / TENSORBOARD_DIR
    if self.remote:  # event files written here, uploaded every SYNC_SECONDS and at the end
      self._tb_local, self._tb_remote = Path(tempfile.mkdtemp(prefix="albert-tb-")), tensorboard
      self._synced = time.monotonic()
      tensorboard = self._tb_local
    self._tb = SummaryWriter(str(tensorboard), flush_secs=SYNC_SECONDS)

  def _truncate_after(self, step: int) -> list[str]:
    """The whole rows up to `step`; the file is rewritten when it held anything else."""
    if not self.path.exists():
      return []
    text = self.path.read_text()
    lines = _whole_lines(text)
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    if "".join(line + "\n" for line in keep) != text:
      files.write_text(self.path, "".join(line + "\n" for line in keep))
      logging.info("Dropped %d metrics rows past step %d (written after the last checkpoint)%s",
                   len(lines) - len(keep), step,
                   "" if text.endswith("\n") or not text else " and a torn last line")
    return keep

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._append(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}))
    for name, value in metrics.items():
      if math.isfinite(float(value)):
        self._tb.add_scalar(name, float(value), int(step))
    self._sync()

  def rewind(self, step: int) -> None:
    """Drops the rows past `step`, as a resume from it would (a rollback: spike.py)."""
    if self.enabled:
      self._lines = self._truncate_after(step)

  def event(self, step: int, name: str, fields: dict) -> None:
    """A row {"step": step, "event": name, **fields} (JSON values) and, in TensorBoard, the
    fields as text and the numbers as scalars NAME/FIELD. An event the file already holds
    (written before a kill, decided again by the rerun) is not written twice."""
    if not self.enabled:
      return
    line = json.dumps({"step": int(step), "event": name, **fields})
    held = self._lines if self.remote or not self.path.exists() else _whole_lines(
        self.path.read_text())
    if line in held:
      return
    self._append(line)
    self._tb.add_text(f"events/{name}", f"`{json.dumps(fields)}`", int(step))
    for key, value in fields.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(f"{name}/{key}", float(value), int(step))
    self._sync()

  def _append(self, line: str) -> None:
    if self.remote:  # objects cannot be appended to: replace the whole file (one upload)
      self._lines.append(line)
      files.write_text(self.path, "".join(x + "\n" for x in self._lines))
    else:  # one write() of the whole row, newline included, at the end of the file
      fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      try:
        os.write(fd, (line + "\n").encode())
      finally:
        os.close(fd)

  def _sync(self) -> None:
    if self.remote and time.monotonic() - self._synced > SYNC_SECONDS:
      self._upload_events()

  def _upload_events(self) -> None:
    self._tb.flush()
    for event_file in self._tb_local.iterdir():
      files.upload(event_file, self._tb_remote / event_file.name)
    self._synced = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self.remote:
        self._upload_events()
        shutil.rmtree(self._tb_local, ignore_errors=True)


def _whole_lines(text: str) -> list[str]:
  """The non-empty lines that end in a newline: a last line without one is being written, or
  was torn by a kill."""
  return [line for line in text.split("\n")[:-1] if line.strip()]


def read_metrics(workdir) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl (a torn or half-written last line is not a row)."""
  return [json.loads(line)
          for line in _whole_lines((files.path(workdir) / METRICS_FILE).read_text())]


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def peak_flops(config) -> tuple[float, str]:
  """(peak FLOP/s of all devices together, where it comes from), for MFU:
  config.peak_tflops_per_device, else a table of accelerators (dense bf16), else, on CPU, a
  float32 matmul measured now."""
  devices = jax.devices()
  if config.get("peak_tflops_per_device"):
    return config.peak_tflops_per_device * 1e12 * len(devices), "config.peak_tflops_per_device"
  flops = accelerators.peak_flops(devices[0].device_kind)
  if flops:
    return flops * len(devices), f"{devices[0].device_kind} bf16 peak"
  if devices[0].platform != "cpu":
    return 0.0, "unknown device"
  # CPU: simulated devices share the host's cores, so measure the host once.
  x = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < 0.2:
    matmul(x).block_until_ready()
    n += 1
  return 2 * 1024**3 * n / (time.perf_counter() - start), "float32 matmul measured on this host"


class Throughput:
  """The logged rows and the progress line: steps/s, tokens/s, MFU and ETA over the steps since
  the last log line, counted from the end of the run's first step, so the compile and the first
  batch are not taken for step time (the first line says how long they took)."""

  def __init__(self, total_steps: int, flops_per_step: float, peak: tuple[float, str]):
    self.total_steps, self.flops_per_step = total_steps, flops_per_step
    self.peak_flops, self.peak_source = peak
    self.begun = time.perf_counter()
    self.first = self.last = None  # the first and last logged rows of this run
    self._mark, self._paused = None, 0.0

  def start(self, step: int) -> None:
    """The run's first step is done (compiled, ran): steady-state timing starts here."""
    now = time.perf_counter()
    logging.info("First step %d took %.1f s (compiling the step, the first batch); %.3g TFLOP "
                 "per step; peak %.3g TFLOP/s (%s)", step, now - self.begun,
                 self.flops_per_step / 1e12, self.peak_flops / 1e12, self.peak_source)
    self._mark, self._paused = (step, now), 0.0

  def rewind(self, step: int) -> None:
    """The run went back to `step` (a rollback): speed is counted from there, from now."""
    self._mark, self._paused = (step, time.perf_counter()), 0.0

  @contextlib.contextmanager
  def paused(self):
    """Time spent in the block (an eval, a checkpoint) is not step time."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  def row(self, step: int, fetched: list[dict]) -> dict[str, float]:
    """The logged step's own metrics (not a window mean: a resumed run logs the same values),
    and the throughput of the steps since the last row; `fetched` are the steps' metrics up to
    `step`, in order."""
    row = {k: float(v) for k, v in fetched[-1].items() if k != "tokens"}
    last_step, last_time = self._mark
    steps = step - last_step
    if steps > 0:
      now = time.perf_counter()
      seconds = max(now - last_time - self._paused, 1e-9)
      steps_per_s = steps / seconds
      tokens = sum(float(m["tokens"]) for m in fetched[-steps:])
      row.update(steps_per_second=steps_per_s, tokens_per_second=tokens / seconds,
                 eta_seconds=(self.total_steps - step) / max(steps_per_s, 1e-9))
      if self.peak_flops:
        row["mfu"] = steps_per_s * self.flops_per_step / self.peak_flops
      self._mark, self._paused = (step, now), 0.0
    self.first = self.first or row
    self.last = row
    return row

  def line(self, step: int, row: dict[str, float], console) -> str:
    speed = ""
    if "steps_per_second" in row:
      speed = (f" | {row['steps_per_second']:.2f} steps/s {row['tokens_per_second']:,.0f} tok/s"
               + (f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
               + f" | ETA {format_duration(row['eta_seconds'])}")
    return (f"step {step}/{self.total_steps} | "
            + " ".join(f"{k} {row[k]:.4f}" for k in console if k in row)
            + f" | lr {row['learning_rate']:.3g}{speed}")
