"""TF1 checkpoints (TensorBundle V2: `PREFIX.index` + `PREFIX.data-?????-of-?????`) read without
TensorFlow: the index table, every tensor's bytes with its crc32c checked.

`.index` is a LevelDB-style table (uncompressed blocks, prefix-compressed keys, a 48-byte footer):
key "" holds the BundleHeaderProto, every other key a tensor's BundleEntryProto (dtype, shape,
shard, offset, size, masked crc32c); the bytes are raw little-endian in the data file.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Iterator

import google_crc32c
import ml_dtypes
import numpy as np

from albert_jax import files


# ----------------------------------------------------------------------------- protobuf wire format

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf) or shift > 63:
      raise ValueError("truncated or overlong varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result & 0xFFFFFFFFFFFFFFFF, pos
    shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
  """(field number, value) of a protobuf message: varints as int, other wire types as bytes."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    wire = key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire in (1, 5):  # fixed64, fixed32
      n = 8 if wire == 1 else 4
      value, pos = buf[pos:pos + n], pos + n
    elif wire == 2:  # length-delimited
      n, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos > len(buf):
      raise ValueError("truncated protobuf message")
    yield key >> 3, value


def _signed(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


# ----------------------------------------------------------------------------- TensorBundle V2

# tensorflow/core/framework/types.proto: the DataType enum.
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
           5: np.dtype("<i2"), 6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"),
           14: np.dtype(ml_dtypes.bfloat16), 17: np.dtype("<u2"), 19: np.dtype("<f2"),
           22: np.dtype("<u4"), 23: np.dtype("<u8")}
_UNSUPPORTED = {7: "DT_STRING", 8: "DT_COMPLEX64", 11: "DT_QINT8", 12: "DT_QUINT8",
                13: "DT_QINT32", 15: "DT_QINT16", 16: "DT_QUINT16", 18: "DT_COMPLEX128",
                20: "DT_RESOURCE", 21: "DT_VARIANT"}
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48  # two BlockHandles padded to 40 bytes, then the magic


def masked_crc32c(data: bytes) -> int:
  """crc32c as TF (and LevelDB) store it: rotated and offset, so a CRC of CRCs stays strong."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor of the bundle (a BundleEntryProto)."""
  dtype: int
  shape: tuple[int, ...]
  shard_id: int = 0
  offset: int = 0
  size: int = 0
  crc32c: int | None = None
  sliced: bool = False


def _parse_shape(buf: bytes) -> tuple[int, ...]:
  dims = []
  for field, value in _fields(buf):
    if field == 2:  # dim { size = 1 }
      dims.append(next((_signed(v) for f, v in _fields(value) if f == 1), 0))
    elif field == 3 and value:
      raise ValueError("tensor of unknown rank")
  if any(d < 0 for d in dims):
    raise ValueError(f"tensor of unknown shape {dims}")
  return tuple(dims)


def _parse_entry(buf: bytes) -> Entry:
  kw = {}
  for field, value in _fields(buf):
    if field == 1:
      kw["dtype"] = value
    elif field == 2:
      kw["shape"] = _parse_shape(value)
    elif field in (3, 4, 5):
      kw[{3: "shard_id", 4: "offset", 5: "size"}[field]] = _signed(value)
    elif field == 6:
      kw["crc32c"] = struct.unpack("<I", value)[0]
    elif field == 7:
      kw["sliced"] = True
  return Entry(**{"dtype": 0, "shape": (), **kw})


def _block(data: bytes, handle: bytes, path: Path) -> bytes:
  """The contents of the table block a BlockHandle (offset, size varints) points at, verified."""
  offset, pos = _varint(handle, 0)
  size, _ = _varint(handle, pos)
  if offset + size + 5 > len(data):
    raise ValueError(f"{path}: block [{offset}, {offset + size}) runs past the end of the file "
                     f"({len(data)} bytes): truncated index")
  contents, kind = data[offset:offset + size], data[offset + size]
  if kind != 0:
    raise ValueError(f"{path}: compressed index block (type {kind}); TF writes them uncompressed")
  (stored,) = struct.unpack_from("<I", data, offset + size + 1)
  if masked_crc32c(contents + bytes([kind])) != stored:
    raise ValueError(f"{path}: bad crc32c in the index block at offset {offset}")
  return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
  """(key, value) of a block: keys share a prefix with the previous one; restart offsets at the end."""
  (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
  end, pos, key = len(block) - 4 - 4 * restarts, 0, b""
  while pos < end:
    shared, pos = _varint(block, pos)
    unshared, pos = _varint(block, pos)
    n, pos = _varint(block, pos)
    key = key[:shared] + block[pos:pos + unshared]
    pos += unshared
    yield key, block[pos:pos + n]
    pos += n


class Checkpoint:
  """A TF1 checkpoint `PREFIX` (`PREFIX.index` + `PREFIX.data-?????-of-?????`): names, shapes, arrays."""

  def __init__(self, prefix: str | Path):
    self.prefix = files.path(prefix)  # local or gs://
    self.index = files.path(f"{prefix}.index")
    if not self.index.is_file():
      raise FileNotFoundError(f"{self.index} not found: not a TF checkpoint")
    data = self.index.read_bytes()
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
      raise ValueError(f"{self.index}: bad magic number: not a TF checkpoint index (or truncated)")
    footer = data[-_FOOTER:]
    pos = _varint(footer, _varint(footer, 0)[1])[1]  # skip the metaindex handle (an empty block)
    end = _varint(footer, _varint(footer, pos)[1])[1]
    self.entries: dict[str, Entry] = {}
    header = None
    try:
      for _, handle in _block_entries(_block(data, footer[pos:end], self.index)):
        for key, value in _block_entries(_block(data, handle, self.index)):
          if key == b"":
            header = dict(_fields(value))
          elif key[:1] != b"\x00":  # "\x00..." keys are the slices of partitioned variables
            self.entries[key.decode()] = _parse_entry(value)
    except (ValueError, struct.error, IndexError) as e:
      raise ValueError(f"{self.index}: corrupt index ({e})") from None
    if header is None:
      raise ValueError(f"{self.index}: no bundle header: not a TensorBundle V2 checkpoint")
    if header.get(2, 0) != 0:
      raise ValueError(f"{self.index}: big-endian checkpoint; only little-endian is supported")
    self.num_shards = header.get(1, 1)

  def data_file(self, shard: int) -> Path:
    return files.path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

  def read(self, name: str) -> np.ndarray:
    """The tensor `name`, its size and crc32c checked against the index."""
    if name not in self.entries:
      raise KeyError(f"{self.prefix}: no variable {name!r}")
    e = self.entries[name]
    if e.sliced:
      raise ValueError(f"{self.prefix}: variable {name!r} was saved partitioned (in slices); "
                       "only whole variables are supported")
    if e.dtype not in _DTYPES:
      kind = _UNSUPPORTED.get(e.dtype, f"DataType {e.dtype}")
      raise ValueError(f"{self.prefix}: variable {name!r} has unsupported dtype {kind}")
    dtype = _DTYPES[e.dtype]
    count = math.prod(e.shape)  # Python ints: a crafted shape cannot overflow
    if not 0 <= e.shard_id < self.num_shards:
      raise ValueError(f"{self.index}: variable {name!r} is in data file {e.shard_id}, but the "
                       f"checkpoint has {self.num_shards}: the index is corrupt")
    if e.offset < 0 or e.size != count * dtype.itemsize:
      raise ValueError(f"{self.index}: variable {name!r} has offset {e.offset} and {e.size} bytes "
                       f"but shape {list(e.shape)} {dtype} needs {count * dtype.itemsize}: the "
                       "index is corrupt")
    path = self.data_file(e.shard_id)
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found (variable {name!r} is in it)")
    # Compared with the file's length before anything is allocated or read.
    length = path.stat().length
    if e.offset + e.size > length:
      raise ValueError(f"{path}: truncated data file: variable {name!r} needs bytes "
                       f"[{e.offset}, {e.offset + e.size}) but the file has {length}")
    with path.open("rb") as f:
      f.seek(e.offset)
      raw = f.read(e.size)
    if len(raw) != e.size:
      raise ValueError(f"{path}: truncated data file: variable {name!r} needs bytes "
                       f"[{e.offset}, {e.offset + e.size}) but reading gave {len(raw)}")
    if e.crc32c is not None and masked_crc32c(raw) != e.crc32c:
      raise ValueError(f"{path}: bad crc32c for variable {name!r}: the data file is corrupt")
    return np.frombuffer(raw, dtype, count).reshape(e.shape).astype(dtype.newbyteorder("="))
