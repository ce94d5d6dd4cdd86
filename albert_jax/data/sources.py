"""What the pretraining pipeline batches: `Examples`, the rows of global batch g, made from g alone.

There are two kinds, chosen once where the config is read (input_pipeline):
  MaskedPairs  segment pairs from any source (`pairs.Pairs`: a corpus cut in memory, a prepared
               corpus), masked as they are read (dynamic masking: fresh masks every epoch);
  Premasked    examples masked before, as records (`records.encode_example`): a
               create_pretraining_data file (`data.static_examples`) or the `dupe_factor` copies
               static masking makes at start.
Both place the examples in the same endless stream (order.examples_at: epoch e is every example
once, in a permutation drawn from (seed, e)), so a batch is a pure function of (seed, g).
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Protocol, Sequence

import grain
import numpy as np

from albert_jax.data import examples as examples_lib, masking, order, records as records_lib
from albert_jax.data.pairs import Pairs

# Rows masked together. Masks depend on it (mask_examples draws for a whole batch), so it is part
# of the data's definition; 64 rows mask at 85-95% of the speed of 256, and hosts with fewer rows
# than that mask some rows they drop.
MASK_CHUNK = 64

Batch = dict[str, np.ndarray]


class Examples(Protocol):
  """Examples by place in the stream: rows [lo, hi) of global batch g of `batch_size`."""

  masking: ClassVar[str]  # "dynamic" | "static", as the stream record names it

  def __len__(self) -> int:  # examples in an epoch
    ...

  def rows(self, g: int, *, batch_size: int, rows: tuple[int, int], seed: int) -> Batch:
    ...


@dataclasses.dataclass(frozen=True)
class MaskedPairs:
  """Pairs masked as they are read: MASK_CHUNK rows at a time, with a generator seeded from
  (seed, epoch, g, chunk), so a host masks only the chunks holding its rows and no mask depends
  on the process count."""

  pairs: Pairs
  tables: examples_lib.VocabTables
  config: examples_lib.ExampleConfig
  masking: ClassVar[str] = "dynamic"

  def __len__(self) -> int:
    return len(self.pairs)

  def rows(self, g: int, *, batch_size: int, rows: tuple[int, int], seed: int) -> Batch:
    lo, hi = rows
    first, n = g * batch_size, len(self.pairs)
    parts = []
    for j in range(lo // MASK_CHUNK, -(-hi // MASK_CHUNK)):
      start, stop = first + j * MASK_CHUNK, first + min((j + 1) * MASK_CHUNK, batch_size)
      pairs = self.pairs.pairs_at(order.examples_at(range(start, stop), n, seed))
      rng = np.random.default_rng([seed, 1, start // n, g, j])
      parts.append(masking.mask_examples(pairs, rng, self.tables, self.config))
    offset = lo - lo // MASK_CHUNK * MASK_CHUNK  # row lo within the first chunk masked
    return {k: np.concatenate([p[k] for p in parts])[offset:offset + hi - lo]
            for k in masking.FEATURE_NAMES}


@dataclasses.dataclass(frozen=True)
class Premasked:
  """Examples masked before, as `records.encode_example` records read by index; their masks are
  the same every epoch."""

  records: Sequence[bytes]
  masking: ClassVar[str] = "static"

  @classmethod
  def open(cls, path: str, config: examples_lib.ExampleConfig) -> "Premasked":
    """A create_pretraining_data file (ArrayRecord, read by index; or JSON lines, held encoded),
    checked against `config`."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"data.static_examples={path!r} is not a file")
    if records_lib.is_jsonl(path):
      records = [records_lib.encode_example(ex) for ex in records_lib.read_examples(path)]
    else:
      records = grain.sources.ArrayRecordDataSource(path)
    if not len(records):
      raise ValueError(f"data.static_examples={path!r} holds no example")
    first = records_lib.decode_example(records[0])
    shape = (len(first["input_ids"]), len(first["masked_lm_ids"]))
    if shape != (config.max_seq_length, config.max_predictions):
      raise ValueError(f"{path} holds examples of (max_seq_length, max_predictions) {shape}; the "
                       f"config asks for {(config.max_seq_length, config.max_predictions)}")
    return cls(records)

  def __len__(self) -> int:
    return len(self.records)

  def rows(self, g: int, *, batch_size: int, rows: tuple[int, int], seed: int) -> Batch:
    lo, hi = rows
    first = g * batch_size
    decoded = [records_lib.decode_example(self.records[i])
               for i in order.examples_at(range(first + lo, first + hi), len(self.records), seed)]
    return {k: np.stack([r[k] for r in decoded]) for k in masking.FEATURE_NAMES}
