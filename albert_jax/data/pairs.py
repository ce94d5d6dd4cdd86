"""Segment pairs in the one form every pretraining source gives them and masking reads: a
`PairTable`, the token ids of every pair (A then B) back to back with where each pair starts, the
length of its A and its label.

`Pairs` is the question every source of pairs answers, whatever holds them: `pairs_at(indices)`,
the pairs at these indices as a PairTable. A PairTable is itself one (a corpus cut in memory);
`prepared.PairSource` is another (a prepared corpus, read by index). `masking.mask_examples`
reads a PairTable as it is, so a pair's tokens are copied once on their way to a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple, Protocol, Sequence

import numpy as np


class SegmentPair(NamedTuple):
  """Token ids of segments A and B; label 1: B came before A (SOP) or from another document."""

  tokens_a: np.ndarray
  tokens_b: np.ndarray
  sentence_order_label: int


@dataclasses.dataclass(frozen=True)
class PairTable:
  """Pairs packed in four arrays: small to hold, to send to worker processes and to mask."""

  tokens: np.ndarray  # [total] int32: A then B of every pair, back to back
  starts: np.ndarray  # [pairs + 1] int64: pair i is tokens[starts[i]:starts[i + 1]]
  len_a: np.ndarray  # [pairs] int64
  labels: np.ndarray  # [pairs] int32: sentence_order_label

  def __post_init__(self):
    if not (len(self.starts) == len(self.len_a) + 1 == len(self.labels) + 1
            and self.starts[0] == 0 and self.starts[-1] == len(self.tokens)):
      raise ValueError(f"A PairTable of {len(self.tokens)} tokens with {len(self.starts)} starts, "
                       f"{len(self.len_a)} lengths of A and {len(self.labels)} labels")

  @classmethod
  def pack(cls, pairs: Sequence[SegmentPair]) -> "PairTable":
    """`pairs` packed."""
    lengths = [len(p.tokens_a) + len(p.tokens_b) for p in pairs]
    return cls(np.concatenate([t for p in pairs for t in p[:2]] or [[]]).astype(np.int32),
               np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
               np.array([len(p.tokens_a) for p in pairs], np.int64),
               np.array([p.sentence_order_label for p in pairs], np.int32))

  @classmethod
  def of(cls, tokens: Sequence[np.ndarray], len_a: Sequence[int],
         labels: Sequence[int]) -> "PairTable":
    """Pairs from each one's tokens (A then B), the length of its A and its label."""
    lengths = [len(t) for t in tokens]
    return cls(np.concatenate(tokens or [[]]).astype(np.int32, copy=False),
               np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
               np.asarray(len_a, np.int64).reshape(-1), np.asarray(labels, np.int32).reshape(-1))

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def lengths(self) -> np.ndarray:
    """[pairs] int64: tokens of A and B."""
    return np.diff(self.starts)

  def pairs_at(self, indices: Sequence[int] | np.ndarray) -> "PairTable":
    """The pairs at `indices`, packed: the source that holds its pairs in memory."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    first = self.starts[indices]
    lengths = self.starts[indices + 1] - first
    starts = np.concatenate([[0], np.cumsum(lengths)])
    # Token k of the result is token k - starts[i] + first[i] of this table, i its pair.
    offsets = np.repeat(first - starts[:-1], lengths)
    return PairTable(self.tokens[np.arange(starts[-1]) + offsets], starts, self.len_a[indices],
                     self.labels[indices])

  def __getitem__(self, i: int) -> SegmentPair:
    """Pair i unpacked, to look at (batches never unpack it)."""
    if not 0 <= i < len(self):
      raise IndexError(f"pair {i} of {len(self)}")
    start, end = self.starts[i], self.starts[i + 1]
    return SegmentPair(self.tokens[start:start + self.len_a[i]],
                       self.tokens[start + self.len_a[i]:end], int(self.labels[i]))


  def __iter__(self) -> Iterator[SegmentPair]:
    return (self[i] for i in range(len(self)))


class Pairs(Protocol):
  """A source of segment pairs: how many, and the pairs at given indices."""

  def __len__(self) -> int:
    ...

  def pairs_at(self, indices: Sequence[int] | np.ndarray) -> PairTable:
    ...
