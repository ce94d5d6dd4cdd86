"""All-or-nothing writes: a file or directory is written beside its destination under a temporary
name and renamed into place, so a reader (or a restart after a kill) sees the old content or the
new, never half of it, and a failure leaves the old content as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
  """Yields a temporary file path beside `path` that replaces `path` if the block succeeds."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    os.chmod(tmp, mode)  # mkstemp makes it owner-only
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies a file to `dst` (nothing to do when they are the same file)."""
  dst = Path(dst)
  if dst.exists() and os.path.samefile(src, dst):
    return
  with atomic_path(dst) as tmp:
    shutil.copyfile(src, tmp)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temporary directory that becomes `path` only if the block succeeds.

  An existing `path` is refused unless `overwrite`, and is replaced only after the new content is
  complete: a failure at any point leaves it untouched.
  """
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
    if path.exists():
      old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.rename(path, old / path.name)
      try:
        os.rename(tmp, path)
      except BaseException:
        os.rename(old / path.name, path)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
