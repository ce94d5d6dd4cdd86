"""The step watchdog: exits, with a diagnostic, when steps stop; not while they run or pause."""

import threading
import time

import pytest

from albert_jax import watchdog


@pytest.fixture
def exits(monkeypatch):
  """os._exit recorded instead of done (the watchdog thread then parks)."""
  calls, done = [], threading.Event()

  def fake_exit(code):
    calls.append(code)
    done.set()
    threading.Event().wait()  # the real one never returns

  monkeypatch.setattr(watchdog.os, "_exit", fake_exit)
  return calls, done


def test_fires_when_steps_stop_and_says_why(exits, capfd, caplog):
  calls, done = exits
  guard = watchdog.StepWatchdog(factor=10, min_seconds=0.3, describe="process 1 of 2")
  for step in range(1, 6):  # ~20 ms steps: the limit is max(0.3 s, 10 x 20 ms)
    guard.beat(step)
    time.sleep(0.02)
  start = time.monotonic()
  assert done.wait(10), "the watchdog did not fire"
  assert 0.2 < time.monotonic() - start < 3
  assert calls == [watchdog.EXIT_CODE]
  assert "Step watchdog: no training step finished" in caplog.text
  assert "after step 5" in caplog.text and "process 1 of 2" in caplog.text
  assert "watchdog.py" in capfd.readouterr().err  # every thread's stack follows
  guard.close()


def test_quiet_while_steps_run_and_while_paused(exits):
  calls, done = exits
  guard = watchdog.StepWatchdog(factor=10, min_seconds=0.3)
  for step in range(1, 30):
    guard.beat(step)
    time.sleep(0.02)
  with guard.paused():  # an eval or a save
    time.sleep(0.8)
  guard.beat(30)
  guard.close()
  time.sleep(0.5)
  assert not done.is_set() and not calls
  off = watchdog.StepWatchdog(factor=0, min_seconds=0.01)  # disabled
  off.beat(1)
  time.sleep(0.2)
  assert not calls
