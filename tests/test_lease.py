"""The workdir lease (albert_jax/lease.py), on a local disk and in a bucket: the local Cloud Storage
server (tests/gcs_emulator.py), which refuses a write or delete on a changed generation as Cloud
Storage does (the emulator itself ignores ifGenerationMatch: gcs_emulator.py adds it)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from albert_jax import files, lease, train

from conftest import tiny_config

HOST, PID = socket.gethostname(), os.getpid()


@pytest.fixture(params=["local", "bucket"])
def workdir(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "run")
  return f"{request.getfixturevalue('gcs_bucket')}/lease-{uuid.uuid4().hex[:8]}"


def _plant(workdir, **fields):
  """A lease as another run would have written it."""
  record = {"holder": "another run", "host": "elsewhere", "pid": 4242, "machine": "elsewhere:1",
            "start": "2026-01-01 00:00:00 UTC", "heartbeat": time.time(), "timeout_s": 120.0,
            **fields}
  files.write_bytes(f"{workdir}/{lease.LEASE_FILE}", json.dumps(record).encode())


def _read(workdir):
  path = files.path(workdir) / lease.LEASE_FILE
  return json.loads(path.read_text()) if path.exists() else None


def test_a_second_run_is_refused_naming_the_first(workdir):
  first = lease.Lease(workdir).acquire()
  assert _read(workdir)["pid"] == PID and _read(workdir)["host"] == HOST
  with pytest.raises(lease.WorkdirInUse) as e:
    lease.Lease(workdir).acquire()
  assert (f"{workdir} is in use by another run (host {HOST}, pid {PID}, started "
          f"{first.record['start']}; last heartbeat 0 s ago") in str(e.value)
  assert "use another --workdir" in str(e.value)
  first.release()
  assert _read(workdir) is None  # released at exit
  lease.Lease(workdir).acquire().release()


def test_a_stale_lease_is_taken_over_naming_its_holder(workdir, caplog):
  _plant(workdir, heartbeat=time.time() - 30)  # alive: within its 120 s
  with pytest.raises(lease.WorkdirInUse, match="host elsewhere, pid 4242, started 2026-01-01"):
    lease.Lease(workdir).acquire()
  _plant(workdir, heartbeat=time.time() - 200)
  taken = lease.Lease(workdir).acquire()
  assert _read(workdir)["holder"] == taken.record["holder"]
  assert ("Took over the workdir lease" in caplog.text and "host elsewhere, pid 4242" in caplog.text
          and "no heartbeat for 200 s" in caplog.text)
  taken.release()


def test_a_lease_whose_process_ended_on_this_machine_is_taken_over_at_once(tmp_path):
  """Same machine (boot and pid namespace), a pid that has exited: no need to wait for the
  timeout. A live pid, or the same pid number on another machine, is not taken over."""
  ended = subprocess.Popen([sys.executable, "-c", "pass"])
  ended.wait()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    workdir = str(tmp_path)
    for pid, machine in ((sleeper.pid, lease._machine()), (ended.pid, "another machine")):
      _plant(workdir, host=HOST, pid=pid, machine=machine)
      with pytest.raises(lease.WorkdirInUse, match=f"pid {pid}"):
        lease.Lease(workdir).acquire()
    _plant(workdir, host=HOST, pid=ended.pid, machine=lease._machine())
    lease.Lease(workdir).acquire().release()
  finally:
    sleeper.kill()


@pytest.mark.parametrize("stale", [False, True])
def test_only_one_of_racing_runs_takes_the_lease(workdir, stale, monkeypatch):
  """Eight runs start together, on a free workdir or on a stale lease, all reading the lease
  before any writes it (a slow read keeps the window open): every write is conditional on the
  generation read, so exactly one holds it and seven are refused."""
  for store in (lease._LocalStore, lease._BucketStore):
    monkeypatch.setattr(store, "read", lambda self, read=store.read: (read(self),
                                                                      time.sleep(0.3))[0])
  if stale:
    _plant(workdir, heartbeat=time.time() - 1000)
  else:
    files.path(workdir).mkdir(parents=True, exist_ok=True)
  start, outcomes = threading.Barrier(8), []

  def contend():
    start.wait()
    try:
      outcomes.append(lease.Lease(workdir).acquire())
    except lease.WorkdirInUse as e:
      outcomes.append(e)

  threads = [threading.Thread(target=contend) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  held = [o for o in outcomes if isinstance(o, lease.Lease)]
  assert len(held) == 1 and len(outcomes) == 8
  assert _read(workdir)["holder"] == held[0].record["holder"]
  held[0].release()


def test_a_write_on_a_generation_that_changed_is_refused(workdir):
  """The precondition itself (on the bucket: the server's 412), under the lease."""
  store = lease._store(f"{workdir}/{lease.LEASE_FILE}")
  first = store.write(b"one", "0")
  with pytest.raises(lease._Conflict):
    store.write(b"two", "0")  # "must not exist"
  second = store.write(b"two", first)
  with pytest.raises(lease._Conflict):
    store.write(b"three", first)
  with pytest.raises(lease._Conflict):
    store.delete(first)
  assert store.read() == (b"two", second)
  store.delete(second)
  assert store.read() == (None, "0")


def test_a_run_whose_lease_was_taken_over_stops(workdir):
  """A run that stalled past its timeout finds, at its next heartbeat, that another took the
  lease: `check` then raises, naming the new holder, and its release leaves that lease alone."""
  held = lease.Lease(workdir, timeout_s=0.4).acquire()
  store = lease._store(held.path)
  _, generation = store.read()
  record = {"holder": "the new run", "host": "elsewhere", "pid": 7, "start": "now",
            "heartbeat": time.time(), "timeout_s": 120.0}
  store.write(json.dumps(record).encode(), generation)
  deadline = time.time() + 10
  while not held.lost and time.time() < deadline:
    time.sleep(0.05)
  with pytest.raises(lease.WorkdirInUse, match="taken over by host elsewhere, pid 7"):
    held.check()
  held.release()
  assert _read(workdir)["holder"] == "the new run"


def test_training_on_a_workdir_another_run_holds_is_refused_before_writing(tmp_path):
  """Issue 21, 5: the second of two runs on one workdir stops before it writes anything
  (config.json, checkpoints, metrics), naming the first; the first's lease is untouched."""
  workdir = tmp_path / "run"
  _plant(str(workdir))
  with pytest.raises(lease.WorkdirInUse, match="host elsewhere, pid 4242"):
    train.train_and_evaluate(tiny_config("unused.model"), str(workdir))
  assert {p.name for p in workdir.iterdir()} <= {"lease.json", ".lease.json.guard"}
  assert _read(str(workdir))["holder"] == "another run"
  assert train.take_lease(str(tmp_path / "other"), 0) is None  # config.lease_timeout_seconds=0
