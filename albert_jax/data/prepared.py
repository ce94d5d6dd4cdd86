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
first read), so opening costs the same for 10 MB of text or 17 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from typing import Any, Sequence

import numpy as np

from albert_jax import files
from albert_jax.data import examples as examples_lib

MANIFEST = "manifest.json"
VOCAB_FILE = "spiece.model"
FORMAT = "albert-jax prepared pairs"
VERSION = 1
_HEADER = struct.Struct("<II")
# What cuts pairs, and so what a prepared corpus and training on the raw corpus must agree on.
PAIR_SETTINGS = ("max_seq_length", "short_seq_prob", "random_next_sentence", "mode")


def token_dtype(vocab_size: int) -> str:
  return "<u2" if vocab_size <= 1 << 16 else "<i4"


def shard_name(split: str, unit: int, units: int) -> str:
  return f"{split}-{unit:05d}-of-{units:05d}.array_record"


def is_corpus_file(name: str) -> bool:
  """A name a prepared corpus holds: the manifest, the vocabulary, a shard, a hidden temporary."""
  return (name in (MANIFEST, VOCAB_FILE) or name.startswith(".")
          or re.fullmatch(r"(train|eval)-\d{5,}-of-\d{5,}\.array_record", name) is not None)


def encode_pair(pair: examples_lib.SegmentPair, dtype: str) -> bytes:
  return (_HEADER.pack(len(pair.tokens_a), int(pair.sentence_order_label))
          + np.concatenate([pair.tokens_a, pair.tokens_b]).astype(dtype).tobytes())


def decode_pair(record: bytes, dtype: str) -> examples_lib.SegmentPair:
  len_a, label = _HEADER.unpack_from(record)
  tokens = np.frombuffer(record, dtype, offset=_HEADER.size).astype(np.int32)
  return examples_lib.SegmentPair(tokens[:len_a], tokens[len_a:], label)


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
  manifest = json.loads(path.read_text())
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise ValueError(f"{path}: format {manifest.get('format')!r} version "
                     f"{manifest.get('version')!r}; this reader knows {FORMAT!r} {VERSION}")
  return manifest


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
    # "path[0:n]" spares opening every file to count its records.
    self._records = grain.sources.ArrayRecordDataSource(
        [f"{os.path.join(self.directory, s['file'])}[0:{s['pairs']}]" for s in shards]
    ) if shards else []

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i: int) -> examples_lib.SegmentPair:
    return decode_pair(self._records[i], self.dtype)

  def pairs_at(self, indices: Sequence[int]) -> list[examples_lib.SegmentPair]:
    """Pairs at `indices`, read together (each file once)."""
    return [decode_pair(r, self.dtype) for r in self._records.__getitems__(list(indices))]


def write_pairs(path: str, pairs: Sequence[examples_lib.SegmentPair], dtype: str,
                group_size: int = 1) -> int:
  """An ArrayRecord file of `pairs`; returns its bytes. `group_size` records per chunk: 1 (what
  Grain asks for) reads fastest at random, but a reader holds ~55 bytes of index per chunk."""
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(path, f"group_size:{group_size}")
  try:
    for pair in pairs:
      writer.write(encode_pair(pair, dtype))
  finally:
    writer.close()
  return os.path.getsize(path)
