"""The order of an endless stream of examples: epoch e is every example once, in a permutation
drawn from (seed, e), so place k of the stream is a pure function of (seed, k) and resuming at a
batch index needs no other state. The pretraining pipeline and the fine-tuning arrays share it."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """[n]: the example at each place of `epoch`, a permutation drawn from (seed, epoch)."""
  # One NumPy permutation per epoch costs ~0.03 us per example; grain's per-element index shuffle
  # (MapDataset.shuffle) costs 20-70 us, as much as masking the example.
  return np.random.default_rng([seed, 2, epoch]).permutation(
      np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))


def examples_at(positions: range, n: int, seed: int) -> np.ndarray:
  """Indices of the examples at stream `positions`: place k % n of epoch k // n."""
  epochs, places = np.divmod(np.arange(positions.start, positions.stop), n)
  out = np.empty_like(places)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = epoch_order(seed, int(epoch), n)[places[here]]
  return out
