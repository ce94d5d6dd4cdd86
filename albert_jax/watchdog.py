"""The step watchdog: a process that stops making training steps exits with a diagnostic.

A peer that is alive but stuck (a hung host, a deadlock before a collective) does not trip JAX's
heartbeats, and the other processes wait for its all-reduce forever (jax#38503). The loop calls
`beat()` after every finished step; a thread exits the process when no step has finished for
max(min_seconds, factor x the median step time), after logging why and every thread's stack.
A supervisor then restarts the job, which resumes from its last checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import os
import statistics
import sys
import threading
import time

from absl import logging

EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure; restarting resumes


class StepWatchdog:
  """`beat()` after each finished step; `paused()` around evals and saves. The first beat arms it
  (the first step's compilation is not watched). `factor` 0 disables it."""

  def __init__(self, factor: float, min_seconds: float, *, exit_code: int = EXIT_CODE,
               describe: str = ""):
    self.factor, self.min_seconds, self.exit_code = factor, min_seconds, exit_code
    self.describe = describe  # who this process is, for the message
    self._intervals = collections.deque(maxlen=200)
    self._last = None  # (step, time) of the last beat
    self._paused = 0
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None
    if factor > 0:
      self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
      self._thread.start()

  def beat(self, step: int) -> None:
    now = time.monotonic()
    with self._lock:
      if self._last is not None and step > self._last[0]:
        self._intervals.append((now - self._last[1]) / (step - self._last[0]))
      self._last = (step, now)

  @contextlib.contextmanager
  def paused(self):
    with self._lock:
      self._paused += 1
    try:
      yield
    finally:
      with self._lock:
        self._paused -= 1
        if self._last is not None:  # the pause is not step time
          self._last = (self._last[0], time.monotonic())

  def deadline(self) -> float:
    """Seconds without a step after which the process exits."""
    median = statistics.median(self._intervals) if self._intervals else 0.0
    return max(self.min_seconds, self.factor * median)

  def close(self) -> None:
    self._stop.set()

  def _watch(self) -> None:
    while not self._stop.wait(min(1.0, max(self.min_seconds / 10, 0.05))):
      with self._lock:
        if self._last is None or self._paused:
          continue
        step, since = self._last
        idle, deadline = time.monotonic() - since, self.deadline()
        median = statistics.median(self._intervals) if self._intervals else 0.0
      if idle > deadline:
        self._fire(step, idle, deadline, median)

  def _fire(self, step: int, idle: float, deadline: float, median: float) -> None:
    logging.error(
        "Step watchdog: no training step finished for %.3g s after step %d (the limit is "
        "max(watchdog_min_seconds %g, watchdog_factor %g x median step time %.3g s) = %.3g s)%s. "
        "A peer process is probably stuck or dead (see its log); this process waits on it "
        "forever otherwise. Exiting with code %d: rerun the job to resume from its last "
        "checkpoint. This process's threads:", idle, step, self.min_seconds, self.factor, median,
        deadline, f" on {self.describe}" if self.describe else "", self.exit_code)
    for handler in logging.get_absl_logger().handlers + [logging.get_absl_handler()]:
      handler.flush()
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(self.exit_code)  # the main thread is blocked in a collective: nothing else returns
