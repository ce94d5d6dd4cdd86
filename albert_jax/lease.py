"""The workdir lease: one run at a time in a workdir, on a local disk or in a bucket.

A second launch on a workdir (a launcher that starts the job twice, a rerun while the first still
runs) removed the first run's in-progress save and wrote its metrics rows beside the first's.
WORKDIR/lease.json names the run that holds the workdir: {"holder": a random id, "host", "pid",
"machine" (boot id and pid namespace), "start", "heartbeat" (Unix seconds), "timeout_s"}. Every
change is a write conditional on the generation read just before (a local file: compared under
an flock'd guard file, written by rename; in a bucket: Cloud Storage's ifGenerationMatch), so
two runs can never both take it:
  - absent: created;
  - held, with a heartbeat within its `timeout_s`: refused (WorkdirInUse, naming host, pid and
    start);
  - held but stale (no heartbeat for `timeout_s`, or its process has ended on this machine):
    taken over, with a warning naming the run that held it.
A thread renews the heartbeat every timeout/4; a lease taken over meanwhile (this run stalled
past its timeout) sets `lost`, and the run stops at its next step (`check`). `release` at exit
deletes it if it is still this run's. Staleness compares the holder's clock with the reader's:
hosts' clocks must agree within a fraction of the timeout (NTP does).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from albert_jax import files

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"


class WorkdirInUse(RuntimeError):
  """Another run holds the workdir, or took it over from this one."""


class _Conflict(Exception):
  """The lease changed since it was read (a conditional write or delete was refused)."""


# ----------------------------------------------------------------------------- storage

class _LocalStore:
  """A local file; its generation is the sha256 of its bytes ("0": absent), compared and changed
  under an exclusive flock on a guard file beside it."""

  def __init__(self, path: str):
    self.path = path
    self.guard = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.guard")

  @contextlib.contextmanager
  def _locked(self):
    os.makedirs(os.path.dirname(self.guard), exist_ok=True)
    fd = os.open(self.guard, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      yield
    finally:
      os.close(fd)  # (releases the lock)

  def _read(self) -> tuple[bytes | None, str]:
    try:
      with open(self.path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None, "0"
    return data, hashlib.sha256(data).hexdigest()

  def read(self) -> tuple[bytes | None, str]:
    with self._locked():
      return self._read()

  def write(self, data: bytes, if_generation: str) -> str:
    with self._locked():
      if self._read()[1] != if_generation:
        raise _Conflict()
      files.write_bytes(self.path, data)
      return hashlib.sha256(data).hexdigest()

  def delete(self, if_generation: str) -> None:
    with self._locked():
      if self._read()[1] != if_generation:
        raise _Conflict()
      os.unlink(self.path)


class _BucketStore:
  """A Cloud Storage object through gcsfs's JSON API calls, with the object's generation as
  Cloud Storage's precondition (ifGenerationMatch; 0: must not exist): a write or delete on a
  generation that changed is refused with 412, which gcsfs raises as FileExistsError."""

  def __init__(self, url: str):
    self.fs = files._fs(url)
    self.bucket, _, self.key = url.split("://", 1)[1].partition("/")

  def read(self) -> tuple[bytes | None, str]:
    try:
      meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
      _, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media",
                             generation=meta["generation"])
    except FileNotFoundError:
      return None, "0"
    return data, str(meta["generation"])

  def write(self, data: bytes, if_generation: str) -> str:
    try:
      meta = self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{{}}/o", self.bucket,
                          uploadType="media", name=self.key, ifGenerationMatch=if_generation,
                          data=data, json_out=True)
    except FileExistsError:  # 412 Precondition Failed
      raise _Conflict() from None
    return str(meta["generation"])

  def delete(self, if_generation: str) -> None:
    try:
      self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key,
                   ifGenerationMatch=if_generation)
    except (FileExistsError, FileNotFoundError):
      raise _Conflict() from None


def _store(path: str):
  return _BucketStore(path) if files.is_remote(path) else _LocalStore(path)


# ----------------------------------------------------------------------------- the lease

def _machine() -> str:
  """This machine's boot and pid namespace: a pid names a process only where both agree."""
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      boot = f.read().strip()
    return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
  except OSError:
    return f"unknown:{uuid.uuid4().hex}"  # never equal: the pid is never trusted


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def describe(holder: dict) -> str:
  """"host H, pid P, started S": who holds a lease, as messages name it."""
  return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('start')}"


class Lease:
  """The lease on `workdir` (local or gs://) for this process: `acquire`, then `check` every
  step and `release` at exit."""

  def __init__(self, workdir, timeout_s: float = 120.0):
    if timeout_s <= 0:
      raise ValueError(f"lease timeout {timeout_s}: must be positive")
    self.path = os.fspath(files.path(workdir) / LEASE_FILE)
    self.timeout_s = timeout_s
    self.store = _store(self.path)
    self.record = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                   "machine": _machine(), "start": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   "timeout_s": timeout_s}
    self.generation = None
    self.lost = None  # why the lease is no longer this run's
    self._stop = threading.Event()
    self._thread = None

  def _stale(self, holder: dict, now: float) -> str | None:
    """Why `holder`'s lease may be taken over, or None while it is alive."""
    age = now - float(holder.get("heartbeat", 0))
    if age > float(holder.get("timeout_s", self.timeout_s)):
      return f"no heartbeat for {age:.0f} s (its timeout: {holder.get('timeout_s')} s)"
    if holder.get("machine") == self.record["machine"] and not _alive(int(holder.get("pid", -1))):
      return "its process has ended"
    return None

  def acquire(self) -> "Lease":
    """Takes the lease, or raises WorkdirInUse naming the run that holds it."""
    for _ in range(5):  # another contender can win the race between our read and our write
      data, generation = self.store.read()
      holder = None
      if data is not None:
        try:
          holder = json.loads(data)
        except ValueError:
          holder = {}  # a damaged lease (a crashed non-atomic copy): take it over
        now = time.time()
        why = self._stale(holder, now) if holder else "it cannot be read"
        if why is None:
          age = now - float(holder["heartbeat"])
          raise WorkdirInUse(
              f"{os.path.dirname(self.path)} is in use by another run ({describe(holder)}; last "
              f"heartbeat {age:.0f} s ago, in {self.path}). Two runs on one workdir would delete "
              "each other's saves and mix their metrics: stop that run or wait for it to end, "
              f"or use another --workdir. A lease without a heartbeat for "
              f"{holder.get('timeout_s')} s is taken over.")
      try:
        self.generation = self.store.write(self._payload(), generation)
      except _Conflict:
        continue
      if holder is not None:
        log.warning("Took over the workdir lease %s from %s: %s", self.path, describe(holder),
                    why)
      log.info("Holding the workdir lease %s (%s)", self.path, describe(self.record))
      self._thread = threading.Thread(target=self._beat, name="workdir-lease", daemon=True)
      self._thread.start()
      return self
    raise WorkdirInUse(f"{self.path}: the lease kept changing while it was taken (several runs "
                       "starting on one workdir?); start one run")

  def _payload(self) -> bytes:
    return json.dumps({**self.record, "heartbeat": time.time()}, indent=1).encode()

  def renew(self) -> None:
    """Writes a fresh heartbeat; sets `lost` if another run took the lease over."""
    try:
      self.generation = self.store.write(self._payload(), self.generation)
      return
    except _Conflict:
      pass
    data, generation = self.store.read()  # our own write, whose answer was lost and retried?
    holder = json.loads(data) if data else {}
    if holder.get("holder") == self.record["holder"]:
      self.generation = generation
      return
    self.lost = (f"this run's lease on {os.path.dirname(self.path)} was taken over by "
                 f"{describe(holder) if holder else 'nobody (it was deleted)'}: this run gave "
                 f"no heartbeat for over {self.timeout_s:.0f} s")
    log.error("%s", self.lost)
    self._stop.set()

  def _beat(self) -> None:
    while not self._stop.wait(self.timeout_s / 4):
      try:
        self.renew()
      except Exception as e:  # noqa: BLE001  (storage hiccup: the next beat tries again)
        log.warning("Could not renew the workdir lease %s: %s", self.path, e)

  def check(self) -> None:
    """Raises WorkdirInUse once the lease is no longer this run's."""
    if self.lost:
      raise WorkdirInUse(f"{self.lost}; stopping, so the two runs do not both write the workdir")

  def release(self) -> None:
    """Stops the heartbeat and deletes the lease if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.generation is None or self.lost:
      return
    try:
      self.store.delete(self.generation)
    except _Conflict:
      log.warning("The workdir lease %s changed before it was released; left as it is",
                  self.path)
    self.generation = None
