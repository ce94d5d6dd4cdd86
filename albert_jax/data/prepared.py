"""A prepared corpus on disk, as `prepare.py` writes it and training reads it: segment pairs in
sharded ArrayRecord files, a manifest, and the vocabulary they were cut with.

  DIR/manifest.json                 written last: a directory without it is not a prepared corpus
  DIR/spiece.model                  the vocabulary (training uses it when config.spm_model is empty)
  DIR/train-00000-of-00042.array_record ...   pairs of the train split, unit by unit
  DIR/eval-00000-of-00042.array_record ...    pairs of the eval split (units without any: no file)

Pair i of a split is record i of its shards taken in the manifest's order: every document's
pairs in document order, the order `examples.make_segment_pairs` gives in one process. A record
is little-endian uint32 [len(A), sentence_order_label], then the tokens of A and B in the
manifest's `token_dtype` (uint16 for vocabularies up to 65,536 pieces, else int32).

`PairSource(DIR, split)` reads them by index (Grain's `ArrayRecordDataSource`, files opened when
first read), so opening costs the same for 10 MB of text or 17 GB; a record that cannot be read
is reported naming its shard (CorruptShard).

Each shard's entry in the manifest holds its `pairs`, `bytes`, `sha256` and `edges` (sha256 of
its first and last 64 KiB and its size). `check_shards`, at every start, is the check that costs
seconds: every shard there, of its size and record count (ArrayRecord's index: ~0.1 s per
million pairs), and its content: the whole sha256 when the split's shards are at most
FULL_HASH_BYTES together (under a second), else the edges (the header, the first records, the
index and the footer of each). `prepare --verify` reads and checks every record.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
import struct
from typing import Any, Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from albert_jax import files
from albert_jax.data import examples as examples_lib
from albert_jax.data.pairs import PairTable, SegmentPair

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VOCAB_FILE = "spiece.model"
FORMAT = "albert-jax prepared pairs"
VERSION = 1
_HEADER = struct.Struct("<II")
# What cuts pairs, and so what a prepared corpus and training on the raw corpus must agree on.
PAIR_SETTINGS = ("max_seq_length", "short_seq_prob", "random_next_sentence", "mode")
EDGE_BYTES = 64 << 10  # the bytes at each end of a shard that `edges` hashes
FULL_HASH_BYTES = 1 << 30  # a split this small has every byte hashed at start (sha256: ~1.4 GB/s)
VERIFY = "python -m albert_jax.data.prepare --verify --output={}"


class CorruptShard(ValueError):
  """A shard that is not what its manifest says (missing, another size, count or content), or a
  record that cannot be read."""


def token_dtype(vocab_size: int) -> str:
  return "<u2" if vocab_size <= 1 << 16 else "<i4"


def shard_name(split: str, unit: int, units: int) -> str:
  return f"{split}-{unit:05d}-of-{units:05d}.array_record"


def is_corpus_file(name: str) -> bool:
  """A name a prepared corpus holds: the manifest, the vocabulary, a shard, a hidden temporary."""
  return (name in (MANIFEST, VOCAB_FILE) or name.startswith(".")
          or re.fullmatch(r"(train|eval)-\d{5,}-of-\d{5,}\.array_record", name) is not None)


def encode_pair(pair: SegmentPair, dtype: str) -> bytes:
  return (_HEADER.pack(len(pair.tokens_a), int(pair.sentence_order_label))
          + np.concatenate([pair.tokens_a, pair.tokens_b]).astype(dtype).tobytes())


def _parse(record: bytes, dtype: str) -> tuple[int, int, np.ndarray]:
  """(len(A), label, tokens of A and B as stored) of a record; ValueError for bytes that cannot
  be a pair (a damaged record)."""
  itemsize = np.dtype(dtype).itemsize
  if len(record) < _HEADER.size or (len(record) - _HEADER.size) % itemsize:
    raise ValueError(f"a record of {len(record)} bytes is no pair of {dtype} tokens")
  len_a, label = _HEADER.unpack_from(record)
  tokens = np.frombuffer(record, dtype, offset=_HEADER.size)
  if len_a > len(tokens) or label > 1:
    raise ValueError(f"a record claims {len_a} tokens in A of {len(tokens)}, label {label}")
  return len_a, label, tokens


def vocabulary_fingerprint(tokenizer: Any) -> str:
  """sha256 of the SentencePiece model and the text preprocessing flags: the token ids."""
  flags = json.dumps([tokenizer.do_lower_case, tokenizer.remove_space, tokenizer.keep_accents])
  return hashlib.sha256(tokenizer.sp_model.serialized_model_proto() + flags.encode()).hexdigest()


def fingerprint(corpus_fingerprints: dict[str, str], vocabulary: str, settings: dict) -> str:
  """sha256 of what determines the pairs: the corpus (per split), the vocabulary, the settings."""
  blob = json.dumps({"corpus": corpus_fingerprints, "vocabulary": vocabulary,
                     "settings": settings}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def load_manifest(directory: str | os.PathLike) -> dict:
  path = files.path(directory) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: data.prepared must be a directory written by `python -m "
        "albert_jax.data.prepare` (the manifest is written last, so an unfinished run has none)")
  try:
    manifest = json.loads(path.read_text())
  except ValueError as e:  # JSONDecodeError, invalid UTF-8
    raise ValueError(f"{path} is not valid JSON ({e}): the manifest is damaged (a truncated "
                     "copy?); copy it again from where the corpus was prepared, or prepare "
                     "again") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get(
      "version") != VERSION:
    found = manifest if isinstance(manifest, dict) else {}
    raise ValueError(f"{path}: format {found.get('format')!r} version "
                     f"{found.get('version')!r}; this reader knows {FORMAT!r} {VERSION}")
  for split, info in manifest.get("splits", {}).items():
    for shard in info.get("shards", []):
      files.child(directory, shard.get("file"), path)  # a name in the directory, nothing else
      for key in ("pairs", "bytes"):
        if not isinstance(shard.get(key), int) or isinstance(shard[key], bool) or shard[key] < 0:
          raise ValueError(f"{path}: shard {shard.get('file')!r} of {split} has {key}="
                           f"{shard.get(key)!r}; the manifest is damaged: prepare again")
  return manifest


def shard_digests(path: str | os.PathLike) -> dict[str, str]:
  """{"sha256": of the whole file, "edges": of its size and first and last EDGE_BYTES}."""
  whole, edges = hashlib.sha256(), hashlib.sha256()
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      whole.update(block)
  edges.update(str(size).encode() + b"\n" + _edges(path, size))
  return {"sha256": whole.hexdigest(), "edges": edges.hexdigest()}


def _edges(path, size: int) -> bytes:
  with open(path, "rb") as f:
    head = f.read(EDGE_BYTES)
    f.seek(max(size - EDGE_BYTES, len(head)))
    return head + f.read()


def _num_records(path: str) -> int:
  reader = ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def check_shards(directory: str | os.PathLike, manifest: dict, split: str,
                 full_hash_bytes: int = FULL_HASH_BYTES) -> None:
  """Refuses (CorruptShard, naming the shard, what differs and the fix) a split whose shards are
  not what the manifest says, as far as seconds tell (the module docstring); a manifest written
  before shards had digests is checked for sizes and counts, with a warning."""
  shards = manifest["splits"][split]["shards"]
  whole = sum(s["bytes"] for s in shards) <= full_hash_bytes
  fix = (f"copy the prepared corpus again (or prepare it again); `{VERIFY.format(directory)}` "
         "checks every record")
  undigested = []
  for shard in shards:
    path = os.fspath(files.child(directory, shard["file"], files.path(directory) / MANIFEST))
    if not os.path.isfile(path):
      raise CorruptShard(f"{path} not found: {MANIFEST} lists it with {shard['pairs']} pairs; "
                         f"{fix}")
    problems = []
    size = os.path.getsize(path)
    if size != shard["bytes"]:
      problems.append(f"{size} bytes, the manifest says {shard['bytes']}")
    else:
      try:
        count = _num_records(path)
      except Exception as e:  # noqa: BLE001  (whatever ArrayRecord says of a damaged file)
        raise CorruptShard(f"{path} cannot be opened as an ArrayRecord file ({e}); {fix}") from None
      if count != shard["pairs"]:
        problems.append(f"{count} records, the manifest says {shard['pairs']} pairs")
      elif "sha256" not in shard:
        undigested.append(shard["file"])
      elif whole and shard_digests(path)["sha256"] != shard["sha256"]:
        problems.append("content that does not match the manifest's sha256")
      elif not whole and hashlib.sha256(str(size).encode() + b"\n" + _edges(path, size)
                                        ).hexdigest() != shard["edges"]:
        problems.append("a start or end that does not match the manifest's digest")
    if problems:
      raise CorruptShard(f"{path} is not the shard {MANIFEST} describes: it has "
                         f"{'; '.join(problems)}; {fix}")
  if undigested:
    log.warning("%s was prepared before shards had digests: %d %s shards checked for size and "
                "count only (prepare again to have their content checked too)",
                directory, len(undigested), split)


def verify(directory: str | os.PathLike, report=log.info) -> list[str]:
  """Every record of every shard against the manifest: the shards there, their sizes, digests
  and record counts; every record read, decoded, its tokens in the vocabulary and within
  max_seq_length. Returns the problems found (at most 10 a shard), each naming its file."""
  manifest_path = files.path(directory) / MANIFEST
  manifest = load_manifest(directory)
  dtype, vocab = manifest["token_dtype"], manifest["vocab_size"]
  longest = manifest["settings"]["max_seq_length"] - 3  # [CLS] A [SEP] B [SEP]
  problems = []
  for split, info in manifest["splits"].items():
    for shard in info["shards"]:
      path = os.fspath(files.child(directory, shard["file"], manifest_path))
      found = _verify_shard(path, shard, dtype, vocab, longest)
      report(f"{path}: {shard['pairs']} pairs, " + ("all good" if not found else
                                                    f"{len(found)} problem(s)"))
      problems += [f"{path}: {p}" for p in found]
  return problems


def _verify_shard(path: str, shard: dict, dtype: str, vocab: int, longest: int,
                  block: int = 4096) -> list[str]:
  if not os.path.isfile(path):
    return ["missing"]
  found = []
  if os.path.getsize(path) != shard["bytes"]:
    found.append(f"{os.path.getsize(path)} bytes, the manifest says {shard['bytes']}")
  digests = shard_digests(path)
  found += [f"{key} {digests[key][:16]}..., the manifest says {shard[key][:16]}..."
            for key in ("sha256", "edges") if key in shard and digests[key] != shard[key]]
  try:
    reader = ArrayRecordReader(path)
  except Exception as e:  # noqa: BLE001
    return found + [f"not readable as an ArrayRecord file ({e})"]
  try:
    count = reader.num_records()
    if count != shard["pairs"]:
      found.append(f"{count} records, the manifest says {shard['pairs']} pairs")
    for start in range(0, count, block):
      try:
        records = list(enumerate(reader.read(start, min(start + block, count)), start))
      except Exception:  # noqa: BLE001  (find the damaged ones)
        records = []
        for k in range(start, min(start + block, count)):
          try:
            records.append((k, reader.read([k])[0]))
          except Exception as e:  # noqa: BLE001
            found.append(f"record {k} cannot be read ({str(e).strip()[:200]})")
      for k, record in records:
        try:
          _, _, tokens = _parse(record, dtype)  # A then B, as stored
        except ValueError as e:
          found.append(f"record {k}: {e}")
          continue
        if len(tokens) > longest or (len(tokens) and tokens.max() >= vocab):
          found.append(f"record {k}: {len(tokens)} tokens (at most {longest}), largest id "
                       f"{tokens.max() if len(tokens) else None} (vocabulary {vocab})")
      if len(found) >= 10:
        return found[:10]
  finally:
    reader.close()
  return found


def stream_shards(manifest: dict, split: str) -> dict[str, str]:
  """{shard: "PAIRS pairs, sha256 XXXX"} for the stream record: a resume whose shards differ
  from the checkpoint's is refused naming each one (order.resume_position)."""
  return {s["file"]: f"{s['pairs']} pairs, " + (f"sha256 {s['sha256'][:16]}" if "sha256" in s
                                                 else f"{s['bytes']} bytes")
          for s in manifest["splits"][split]["shards"]}


def check_settings(manifest: dict, config: examples_lib.ExampleConfig, directory: str) -> None:
  """Refuses a config whose pair settings are not the ones the pairs were cut with."""
  wrong = {k: (manifest["settings"][k], getattr(config, k)) for k in PAIR_SETTINGS
           if manifest["settings"][k] != getattr(config, k)}
  if wrong:
    raise ValueError(f"{directory} was prepared with other pair settings than data asks for: "
                     + ", ".join(f"{k} {a!r} (data.{k}={b!r})" for k, (a, b) in wrong.items())
                     + "; set them to the prepared values or prepare again")


class PairSource(Sequence):
  """The pairs of one split of a prepared corpus, by index (a Grain random-access source)."""

  def __init__(self, directory: str | os.PathLike, split: str, manifest: dict | None = None):
    import grain  # here: writing pairs (prepare's workers) does not need it
    if files.is_remote(directory):
      raise ValueError(
          f"data.prepared={directory}: training reads prepared shards with ArrayRecord, which "
          "opens local files only; copy the directory to local disk (gcloud storage cp -r) or "
          "use a Cloud Storage FUSE mount (/gcs/BUCKET/...)")
    self.directory = os.fspath(directory)
    manifest = load_manifest(directory) if manifest is None else manifest
    self.dtype = manifest["token_dtype"]
    shards = manifest["splits"][split]["shards"]
    self.count = sum(s["pairs"] for s in shards)
    self._paths = [os.path.join(self.directory, s["file"]) for s in shards]
    self._starts = np.cumsum([0] + [s["pairs"] for s in shards]).tolist()
    # "path[0:n]" spares opening every file to count its records.
    self._records = grain.sources.ArrayRecordDataSource(
        [f"{p}[0:{s['pairs']}]" for p, s in zip(self._paths, shards)]) if shards else []

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i: int) -> SegmentPair:
    return self.pairs_at([i])[0]

  def pairs_at(self, indices: Sequence[int] | np.ndarray) -> PairTable:
    """The pairs at `indices`, read together (each file once), packed."""
    indices = np.asarray(indices, np.int64).reshape(-1).tolist()
    try:
      records = self._records.__getitems__(indices)
    except Exception as e:  # noqa: BLE001  (ArrayRecord's errors name no file: find the shard)
      for i in indices:
        try:
          self._records[i]
        except Exception as one:  # noqa: BLE001
          raise self._corrupt(i, f"{type(one).__name__}: {one}") from None
      raise self._corrupt(indices[0], f"{type(e).__name__}: {e}") from None
    tokens, len_a, labels = [], [], []
    for i, record in zip(indices, records):
      try:
        a, label, ids = _parse(record, self.dtype)
      except ValueError as e:
        raise self._corrupt(i, str(e)) from None
      tokens.append(ids)
      len_a.append(a)
      labels.append(label)
    return PairTable.of(tokens, len_a, labels)

  def _corrupt(self, i: int, why: str) -> CorruptShard:
    shard = bisect.bisect_right(self._starts, i) - 1
    count = self._starts[shard + 1] - self._starts[shard]
    return CorruptShard(
        f"{self._paths[shard]}: pair {i - self._starts[shard]} of its {count} cannot be read "
        f"({why.strip()}): the shard is damaged, truncated or holds fewer pairs than "
        f"{MANIFEST} says; `{VERIFY.format(self.directory)}` checks every record, then copy the "
        "shard again or prepare again")


def write_pairs(path: str, pairs: Sequence[SegmentPair], dtype: str,
                group_size: int = 1) -> int:
  """An ArrayRecord file of `pairs`; returns its bytes. `group_size` records per chunk: 1 (what
  Grain asks for) reads fastest at random, but a reader holds ~55 bytes of index per chunk."""
  writer = ArrayRecordWriter(path, f"group_size:{group_size}")
  try:
    for pair in pairs:
      writer.write(encode_pair(pair, dtype))
  finally:
    writer.close()
  return os.path.getsize(path)
