"""Paths that may be local or in a bucket (`gs://...`), and all-or-nothing writes to them.

`path(p)` is an `etils.epath.Path`: local paths behave as `pathlib` paths, `gs://` ones go through
gcsfs. A file or directory is written beside its destination under a temporary name and renamed
into place, so a reader (or a restart after a kill) sees the old content or the new, never half
of it, and a failure leaves the old content as it was. In a bucket a file is one object, whose
upload is all-or-nothing by itself; a directory is written locally, uploaded under a temporary
prefix, then moved into place object by object (a bucket has no atomic directory rename: a kill
during that move can leave the destination part old, part new, the complete copy still under
the temporary prefix). A directory written from sources (a conversion's input) is refused
before anything is touched when it is one of them, holds one or lies inside one.

A local directory's writer holds an flock on `.NAME.tmp-XXXX.lock` beside its temporary while it
writes. The next write of NAME removes the temporaries a killed writer left: those whose lock
is free (the kernel releases it when a process dies), and those without one (another version,
a disk without flock) once nothing in them changed for STALE_SECONDS. A live writer's is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob as glob_lib
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from etils import epath

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


def is_remote(p: PathLike) -> bool:
  """A URL (`gs://bucket/...`, `s3://...`) rather than a local path."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as a path object that reads and writes local files and bucket objects alike."""
  return epath.Path(p)


def absolute(p: PathLike) -> epath.Path:
  """An absolute local path, or the URL as it is."""
  return path(p) if is_remote(p) else path(os.path.abspath(os.fspath(p)))


def _fs(p: PathLike):
  """The fsspec file system of a URL (what epath uses for it)."""
  import fsspec  # here: local paths never need it
  return fsspec.core.url_to_fs(os.fspath(p))[0]


def info(p: PathLike) -> dict:
  """What the file system knows of a file: its "size" in bytes and, for an object in a bucket,
  Cloud Storage's "crc32c" (base64) among the rest."""
  if is_remote(p):
    return _fs(p).info(os.fspath(p))
  return {"size": os.path.getsize(p)}


def open_text(p: PathLike, encoding: str = "utf-8", **kwargs) -> io.TextIOWrapper:
  """A text file for reading, local or in a bucket (`kwargs`: `newline`, `errors`)."""
  if not is_remote(p):
    return open(p, encoding=encoding, **kwargs)
  return io.TextIOWrapper(path(p).open("rb"), encoding=encoding, **kwargs)


def glob(pattern: PathLike) -> list[str]:
  """Sorted matches of a glob (`**` recursive), local or in a bucket."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern, recursive=True))
  protocol = pattern.split("://", 1)[0]
  return sorted(f"{protocol}://{m}" for m in _fs(pattern).glob(pattern))


def child(directory: PathLike, name, source: PathLike) -> epath.Path:
  """`directory / name` for a file name read from `source` (a manifest, an index): a plain name
  in `directory`, never `..`, absolute or with a separator, nor (locally) a link out of it."""
  if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
      or os.path.basename(name) != name):
    raise ValueError(f"{source}: {name!r} is not a file name in {directory}; refused (a path "
                     "read from a file must stay in its directory)")
  p = path(directory) / name
  if not is_remote(directory) and (os.path.dirname(os.path.realpath(p))
                                   != os.path.realpath(directory)):
    raise ValueError(f"{source}: {name!r} links outside {directory}; refused")
  return p


def files_below(directory: PathLike) -> list[str]:
  """Every file under `directory`, sorted, skipping names that start with a dot."""
  directory = os.fspath(directory)
  if not is_remote(directory):
    return sorted(str(p) for p in Path(directory).rglob("*")
                  if p.is_file() and not p.name.startswith("."))
  protocol = directory.split("://", 1)[0]
  return sorted(f"{protocol}://{m}" for m in _fs(directory).find(directory)
                if not os.path.basename(m).startswith("."))


# ----------------------------------------------------------------------------- single files

@contextlib.contextmanager
def atomic_path(p: PathLike, mode: int = 0o644) -> Iterator[Path]:
  """Yields a temporary local file path that replaces `p` (local or in a bucket) if the block
  succeeds."""
  if is_remote(p):
    fd, tmp = tempfile.mkstemp(prefix=".upload-")
    os.close(fd)
    try:
      yield Path(tmp)
      upload(tmp, p)
    finally:
      os.unlink(tmp)
    return
  p = Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    os.chmod(tmp, mode)  # mkstemp makes it owner-only
    os.replace(tmp, p)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def upload(local: PathLike, remote: PathLike) -> None:
  """Copies a local file to a URL (one object: readers see the old one or the new one)."""
  with open(local, "rb") as src, path(remote).open("wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 22)


def write_bytes(p: PathLike, data: bytes) -> None:
  with atomic_path(p) as tmp:
    tmp.write_bytes(data)


def write_text(p: PathLike, text: str) -> None:
  with atomic_path(p) as tmp:
    tmp.write_text(text, encoding="utf-8")


def write_json(p: PathLike, obj) -> None:
  write_text(p, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def copy(src: PathLike, dst: PathLike) -> None:
  """Copies a file to `dst` (nothing to do when they are the same file)."""
  if not is_remote(src) and not is_remote(dst):
    if Path(dst).exists() and os.path.samefile(src, dst):
      return
  elif os.fspath(src) == os.fspath(dst):
    return
  with atomic_path(dst) as tmp, path(src).open("rb") as f, open(tmp, "wb") as out:
    shutil.copyfileobj(f, out, 1 << 22)


def move(src: PathLike, dst: PathLike) -> None:
  """Renames a file or directory (in a bucket: every object copied, then the originals deleted;
  a bucket without hierarchical namespace has no rename)."""
  if is_remote(src):
    fs = _fs(src)
    fs.copy(os.fspath(src), os.fspath(dst), recursive=True)
    fs.rm(os.fspath(src), recursive=True)
  else:
    os.rename(src, dst)


def rmtree(p: PathLike) -> None:
  if is_remote(p):
    _fs(p).rm(os.fspath(p), recursive=True)
  else:
    shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- outputs apart from
# their sources

class OverlappingPaths(ValueError):
  """An output that is, holds or lies inside a path it is made from: replacing it would delete
  or change its own source (`orbax-to-hf RUN RUN --overwrite` would delete the run)."""


def _normal_url(url: PathLike) -> str:
  """A URL as a comparable prefix: scheme and bucket lower-case (bucket names are), repeated,
  trailing, `.` and `..` path parts gone."""
  scheme, rest = os.fspath(url).split("://", 1)
  bucket, _, key = rest.partition("/")
  key = posixpath.normpath("/" + key.lstrip("/")).rstrip("/")
  return f"{scheme.lower()}://{bucket.lower()}{key}"


def _within(inner: PathLike, outer: PathLike) -> bool:
  """Whether `inner` is `outer` or lies below it: local paths resolved (links followed), URLs
  normalised; a local path and a URL never overlap."""
  if is_remote(inner) or is_remote(outer):
    if not (is_remote(inner) and is_remote(outer)):
      return False
    inner, outer = _normal_url(inner), _normal_url(outer)
    return inner == outer or inner.startswith(outer + "/")
  inner, outer = os.path.realpath(inner), os.path.realpath(outer)
  if inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep):
    return True
  if not os.path.exists(outer):
    return False
  # The same directory under another name (a bind mount, a case-insensitive disk).
  while not (os.path.exists(inner) and os.path.samefile(inner, outer)):
    if os.path.dirname(inner) == inner:
      return False
    inner = os.path.dirname(inner)
  return True


def _named(p: PathLike) -> str:
  p = os.fspath(p)
  real = p if is_remote(p) else os.path.realpath(p)
  return p if real in (p, os.path.abspath(p)) else f"{p} (that is {real})"


def check_apart(output: PathLike, sources) -> None:
  """Refuses (OverlappingPaths) an `output` that is one of `sources`, holds one or lies inside
  one: writing it would replace or change what it is read from. `None` sources are skipped."""
  for source in sources:
    if source is None:
      continue
    holds, inside = _within(source, output), _within(output, source)
    if holds or inside:
      relation = "is" if holds and inside else "holds" if holds else "lies inside"
      raise OverlappingPaths(
          f"the output {_named(output)} {relation} the source {_named(source)}: writing it "
          "would replace or change what it is read from; choose another output directory")


# ----------------------------------------------------------------------------- directories

@contextlib.contextmanager
def atomic_directory(p: PathLike, overwrite: bool = False, skip_if_empty: bool = False,
                     sources=()) -> Iterator[Path]:
  """Yields a temporary local directory that becomes `p` only if the block succeeds (and, with
  `skip_if_empty`, wrote something).

  `sources`: the paths the content is read from; an output that is one, holds one or lies inside
  one is refused (OverlappingPaths) before anything is touched. An existing `p` is refused unless
  `overwrite`, and is replaced only after the new content is complete: a failure at any point
  leaves it untouched. In a bucket, see the module docstring.
  """
  check_apart(p, sources)
  if is_remote(p):
    with _remote_directory(p, overwrite, skip_if_empty) as tmp:
      yield tmp
  else:
    with _local_directory(p, overwrite, skip_if_empty) as tmp:
      yield tmp


@contextlib.contextmanager
def staged_directory(p: PathLike, overwrite: bool = False, sources=()) -> Iterator[str]:
  """Yields a directory beside `p` (on its disk, or under a temporary prefix in its bucket) for
  content that other processes write there (Beam's workers); it becomes `p` only when the block
  succeeds, and is removed when it fails. `overwrite` and `sources` as for `atomic_directory`.

  A staging directory a killed run left (`.NAME.tmp-*`) is removed when it is a dead writer's
  (the module docstring); the others are named in a warning: they may be another run's, still
  writing.
  """
  check_apart(p, sources)
  target = path(p)
  if not is_remote(p):
    _remove_dead_temporaries(Path(p).absolute())
  stale = _leftovers(target)
  if stale:
    log.warning("Staging directories of %s from earlier runs that did not finish (or still run): "
                "%s; remove them if no run uses them", p, ", ".join(stale))
  if not is_remote(p):
    with _local_directory(p, overwrite, False) as tmp:
      yield str(tmp)
    return
  if target.exists() and not overwrite:
    raise FileExistsError(f"{p} already exists; pass --overwrite (overwrite=True) to replace it")
  staged = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    yield os.fspath(staged)
    _replace_remote(staged, target)
  finally:
    if staged.exists():
      rmtree(staged)


def _leftovers(target: epath.Path) -> list[str]:
  """The staging directories (`.NAME.tmp-*`) beside `target`."""
  prefix = f".{target.name}.tmp-"
  if is_remote(target):
    return [m for m in glob(f"{target.parent}/{prefix}*") if os.path.basename(m).startswith(prefix)]
  if not os.path.isdir(target.parent):
    return []
  return sorted(str(target.parent / n) for n in os.listdir(target.parent) if n.startswith(prefix))


STALE_SECONDS = 3600  # a temporary without a lock, untouched this long, is a killed writer's


def _near(p: Path) -> Path:
  """Where `p`'s temporaries go: its parent, or its nearest existing ancestor (on the
  destination's file system: a rename is atomic only within one)."""
  near = p.parent
  while not near.exists():
    near = near.parent
  return near


def _remove_dead_temporaries(p: Path) -> None:
  """Removes the `.NAME.tmp-*` directories killed writes of `p` left (the module docstring)."""
  near, prefix = _near(p), f".{p.name}.tmp-"
  for name in sorted(os.listdir(near)):
    tmp = near / name
    if not name.startswith(prefix) or name.endswith(".lock") or not tmp.is_dir():
      continue
    lock = near / f"{name}.lock"
    if lock.exists():
      fd = os.open(lock, os.O_RDWR)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:  # held: its writer is alive
        continue
      else:
        why = "its writer has ended"
        shutil.rmtree(tmp, ignore_errors=True)
        lock.unlink(missing_ok=True)
      finally:
        os.close(fd)
    else:
      newest = max([tmp.lstat().st_mtime] + [f.lstat().st_mtime for f in tmp.rglob("*")])
      if time.time() - newest < STALE_SECONDS:
        continue
      why = f"untouched for {(time.time() - newest) / 60:.0f} minutes"
      shutil.rmtree(tmp, ignore_errors=True)
    log.warning("Removed %s, which a killed write of %s left (%s)", tmp, p, why)


@contextlib.contextmanager
def _held(tmp: Path) -> Iterator[None]:
  """An flock on `tmp`.lock while the block runs: later writes see this writer is alive."""
  lock = f"{tmp}.lock"
  fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a disk without flock: the age rule applies to this temporary
      os.unlink(lock)
    yield
  finally:
    if os.path.exists(lock):
      os.unlink(lock)
    os.close(fd)


@contextlib.contextmanager
def _local_directory(p: PathLike, overwrite: bool, skip_if_empty: bool) -> Iterator[Path]:
  p = Path(p).absolute()
  if p.exists() and not overwrite:
    raise FileExistsError(f"{p} already exists; pass --overwrite (overwrite=True) to replace it")
  _remove_dead_temporaries(p)
  near = _near(p)
  tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.tmp-", dir=near))
  with _held(tmp):
    try:
      yield tmp
      if skip_if_empty and not any(tmp.iterdir()):
        return
      p.parent.mkdir(parents=True, exist_ok=True)
      if p.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{p.name}.old-", dir=p.parent))
        os.rename(p, old / p.name)
        try:
          os.rename(tmp, p)
        except BaseException:
          os.rename(old / p.name, p)
          raise
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.rename(tmp, p)
    finally:
      if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _remote_directory(p: PathLike, overwrite: bool, skip_if_empty: bool) -> Iterator[Path]:
  target = path(p)
  if target.exists() and not overwrite:
    raise FileExistsError(f"{p} already exists; pass --overwrite (overwrite=True) to replace it")
  with tempfile.TemporaryDirectory(prefix=".upload-") as local:
    yield Path(local)
    if skip_if_empty and not any(Path(local).iterdir()):
      return
    staged = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    for f in sorted(Path(local).rglob("*")):
      if f.is_file():
        upload(f, staged / f.relative_to(local).as_posix())
    _replace_remote(staged, target)


def _replace_remote(staged: epath.Path, target: epath.Path) -> None:
  """Moves the complete `staged` prefix to `target`, the old `target` aside first."""
  old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
  if target.exists():
    move(target, old)
  move(staged, target)
  if path(old).exists():
    rmtree(old)
