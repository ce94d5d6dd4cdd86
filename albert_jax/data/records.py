"""Masked pretraining examples as records: the codec, files of them, and the statically masked
copies of a corpus (`create_examples`). `create_pretraining_data` writes them offline; training
reads them (`data.static_examples`) or makes them at start (`data.masking="static"`).

Formats (`read_examples` reads both; features are those of `masking.mask_examples`):
  .jsonl         one JSON object per line: the seven features, padded, as lists
  array_record   `encode_example`: little-endian int32 [version=1, max_seq_length, max_predictions,
                 length, n_masked, segment_a_length, sentence_order_label] followed by
                 input_ids[:length], masked_lm_positions[:n_masked], masked_lm_ids[:n_masked]; the
                 masks and segment ids are prefixes, so this is all there is (~0.7 kB at 128).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterable, Iterator

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from albert_jax import files
from albert_jax.data import examples as examples_lib, masking
from albert_jax.data.pairs import PairTable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_HEADER = 7
MASK_BATCH = 256


# ----------------------------------------------------------------------------- records

def encode_example(features: dict[str, np.ndarray]) -> bytes:
  """One example's features as the compact ArrayRecord record described in the module doc."""
  length = int(features["attention_mask"].sum())
  n_masked = int(features["masked_lm_weights"].sum())
  segment_a = length - int(features["token_type_ids"].sum())  # [CLS] A [SEP]
  header = [FORMAT_VERSION, len(features["input_ids"]), len(features["masked_lm_ids"]), length,
            n_masked, segment_a, int(features["sentence_order_label"])]
  return np.concatenate([
      np.array(header, np.int32), features["input_ids"][:length],
      features["masked_lm_positions"][:n_masked], features["masked_lm_ids"][:n_masked],
  ]).astype("<i4").tobytes()


def decode_example(record: bytes) -> dict[str, np.ndarray]:
  """The padded features of an `encode_example` record."""
  values = np.frombuffer(record, "<i4")
  version, seq_len, max_pred, length, n_masked, segment_a, label = values[:_HEADER].tolist()
  if version != FORMAT_VERSION:
    raise ValueError(f"Record format version {version}; this reader knows {FORMAT_VERSION}")
  index, slots = np.arange(seq_len), np.arange(max_pred)
  out = {"input_ids": np.zeros(seq_len, np.int32),
         "masked_lm_positions": np.zeros(max_pred, np.int32),
         "masked_lm_ids": np.zeros(max_pred, np.int32)}
  out["input_ids"][:length] = values[_HEADER:_HEADER + length]
  start = _HEADER + length
  out["masked_lm_positions"][:n_masked] = values[start:start + n_masked]
  out["masked_lm_ids"][:n_masked] = values[start + n_masked:start + 2 * n_masked]
  out["attention_mask"] = (index < length).astype(np.int32)
  out["token_type_ids"] = ((index >= segment_a) & (index < length)).astype(np.int32)
  out["masked_lm_weights"] = (slots < n_masked).astype(np.float32)
  out["sentence_order_label"] = np.asarray(label, np.int32)
  return {k: out[k] for k in masking.FEATURE_NAMES}


def is_jsonl(path: str, fmt: str | None = None) -> bool:
  return fmt == "jsonl" if fmt else path.endswith((".jsonl", ".json"))


def read_examples(path: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
  """Examples of a file this module wrote (JSON lines if it ends in .jsonl, else ArrayRecord)."""
  path = os.fspath(path)
  if is_jsonl(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        yield {k: np.asarray(row[k], np.float32 if k == "masked_lm_weights" else np.int32)
               for k in masking.FEATURE_NAMES}
    return
  reader = ArrayRecordReader(path)
  try:
    for start in range(0, reader.num_records(), 1024):
      for record in reader.read(list(range(start, min(start + 1024, reader.num_records())))):
        yield decode_example(record)
  finally:
    reader.close()


def write_examples(records: Iterable[bytes | dict], path: str | os.PathLike,
                   fmt: str | None = None) -> int:
  """Writes records (`encode_example` bytes, or feature dicts for JSON lines) under a temporary
  name, then renames it to `path`; returns how many."""
  count = 0
  with files.atomic_path(path) as tmp:
    if is_jsonl(os.fspath(path), fmt):
      with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
          r = decode_example(r) if isinstance(r, bytes) else r
          f.write(json.dumps({k: np.asarray(r[k]).tolist() for k in masking.FEATURE_NAMES},
                             separators=(",", ":")) + "\n")
          count += 1
    else:
      writer = ArrayRecordWriter(str(tmp), "group_size:1")  # one record per chunk: random access
      try:
        for r in records:
          writer.write(r if isinstance(r, bytes) else encode_example(r))
          count += 1
      finally:
        writer.close()
  return count


def stats_path(path: str | os.PathLike) -> str:
  """Where create_pretraining_data records what it wrote to `path`: corpus and pair counts,
  settings, fingerprints."""
  return f"{os.fspath(path)}.stats.json"


def read_stats(path: str | os.PathLike) -> dict:
  """The record of `stats_path(path)`, or {} if there is none."""
  if not os.path.exists(stats_path(path)):
    return {}
  with open(stats_path(path), encoding="utf-8") as f:
    return json.load(f)


# ----------------------------------------------------------------------------- static copies

class Progress:
  """Logs count, rate and ETA (when the total is known) at most every `every` seconds."""

  def __init__(self, what: str, total: int | None = None, every: float = 10.0):
    self.what, self.total, self.every = what, total, every
    self.start = self.last = time.monotonic()

  def update(self, done: int, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self.last < self.every:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (f", ETA {(self.total - done) / max(rate, 1e-9):.0f} s" if self.total else "")
    of = f"/{self.total}" if self.total else ""
    log.info("%s: %d%s (%.0f/s%s)", self.what, done, of, rate, eta)


def create_examples(documents: list[list[np.ndarray]], tables: examples_lib.VocabTables,
                    config: examples_lib.ExampleConfig, seed: int, dupe_factor: int,
                    pair_stats: examples_lib.PairStats | None = None, *,
                    indices: list[int] | None = None,
                    space_size: int | None = None) -> list[bytes]:
  """`dupe_factor` copies of the corpus, each cut (seed [seed, 0, copy], `make_segment_pairs`'s
  `indices` and `space_size`) and masked (generator [seed, 1, copy]) anew, encoded and shuffled
  (generator [seed, 2])."""
  records: list[bytes] = []
  progress = None
  for copy in range(dupe_factor):
    pairs = examples_lib.make_segment_pairs(documents, [seed, 0, copy], config, indices=indices,
                                           space_size=space_size, word_start=tables.word_start,
                                           stats=pair_stats)
    if progress is None:
      progress = Progress("Examples", total=len(pairs) * dupe_factor)
    rng = np.random.default_rng([seed, 1, copy])
    pairs = PairTable.pack(pairs)
    for start in range(0, len(pairs), MASK_BATCH):
      batch = masking.mask_examples(pairs.pairs_at(range(start, min(start + MASK_BATCH,
                                                                         len(pairs)))),
                                         rng, tables, config)
      records.extend(encode_example({k: v[i] for k, v in batch.items()})
                     for i in range(len(batch["input_ids"])))
      progress.update(len(records))
  if progress:
    progress.total = len(records)
    progress.update(len(records), force=True)
  order = np.random.default_rng([seed, 2]).permutation(len(records))
  return [records[i] for i in order]
