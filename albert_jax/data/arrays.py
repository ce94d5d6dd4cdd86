"""Batches of in-memory feature arrays (fine-tuning sets): shuffled epochs, resumable, per host.

Fine-tuning sets fit in host memory once tokenised, so this is plain NumPy: global batch g is the
stream of examples [g*B, (g+1)*B) where epoch e is a permutation drawn from (seed, e), and process
p of P takes rows [p*B/P, (p+1)*B/P) of it. The state is the next batch's index, so a resumed run,
or one on another number of hosts, sees the same global batches, and the stream it indexes (a
fingerprint of the arrays, the seed, the batch size and the task's data settings), checked on
restore (order.StreamChanged).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import numpy as np

from albert_jax.data import order

WEIGHT = "weight"  # 1 for real rows, 0 for the padding that completes the last eval batch
IGNORE = -100  # the label of a position without a loss (as Hugging Face)


@dataclasses.dataclass
class Dataset:
  """Model inputs, one row per feature, and what post-processing needs to read them back."""
  features: dict[str, np.ndarray]
  meta: Any = None

  def __post_init__(self):
    sizes = {k: len(v) for k, v in self.features.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"features have different numbers of rows: {sizes}")

  def __len__(self) -> int:
    return len(next(iter(self.features.values()))) if self.features else 0


def _rows(global_batch_size: int, process_index: int | None, process_count: int | None):
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if global_batch_size % count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
  local = global_batch_size // count
  return index * local, (index + 1) * local


def fingerprint(features: dict[str, np.ndarray]) -> str:
  """A checksum of feature arrays: names, dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  for name in sorted(features):
    array = np.ascontiguousarray(features[name])
    digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]


class ArrayIterator:
  """Endless shuffled training batches of `dataset` (this host's rows), with a `weight` of 1.
  `settings`: the task's data settings, recorded in the stream; `allow_change`: resume even
  when the stream differs (config.allow_data_change)."""

  def __init__(self, dataset: Dataset, *, global_batch_size: int, seed: int,
               process_index: int | None = None, process_count: int | None = None,
               settings: dict[str, Any] | None = None, allow_change: bool = False):
    if not len(dataset):
      raise ValueError("the training set is empty")
    self._features, self._n = dataset.features, len(dataset)
    self.global_batch_size, self._seed = global_batch_size, seed
    self._rows = _rows(global_batch_size, process_index, process_count)
    self._next = 0
    self._allow_change = allow_change
    self.stream = order.canonical({
        "seed": seed, "global_batch_size": global_batch_size, "rows": self._n,
        "arrays": fingerprint(self._features), **(settings or {})})

  def __iter__(self):
    return self

  def indices(self, positions: range) -> np.ndarray:
    """The examples at `positions` of the stream (global batch g: g*B to (g+1)*B)."""
    return order.examples_at(positions, self._n, self._seed)

  def next_indices(self) -> np.ndarray:
    """The next global batch's examples (every process's), in order; moves on past it."""
    start = self._next * self.global_batch_size
    self._next += 1
    return self.indices(range(start, start + self.global_batch_size))

  def __next__(self) -> dict[str, np.ndarray]:
    index = self.next_indices()[self._rows[0]:self._rows[1]]
    batch = {k: v[index] for k, v in self._features.items()}
    batch[WEIGHT] = np.ones(len(index), np.float32)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next, "stream": self.stream}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues at state["next_batch"]; order.StreamChanged if state["stream"] differs."""
    self._next = order.resume_position(state, self.stream, allow_change=self._allow_change,
                                       what="fine-tuning data")


def eval_batches(dataset: Dataset, *, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> list[dict[str, np.ndarray]]:
  """Every row once, in order, this host's part of each global batch; the last one padded with
  copies of row 0 whose `weight` is 0 (their predictions are dropped)."""
  n = len(dataset)
  lo, hi = _rows(global_batch_size, process_index, process_count)
  batches = []
  for start in range(0, n, global_batch_size):
    index = np.arange(start + lo, start + hi)
    real = index < n
    index = np.where(real, index, 0)
    batch = {k: v[index] for k, v in dataset.features.items()}
    batch[WEIGHT] = real.astype(np.float32)
    batches.append(batch)
  return batches
