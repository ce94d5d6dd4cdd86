"""Pretraining pairs packed several to a row (`config.data.pack`): the same pairs a step.

The pipeline's batches (`input_pipeline.BatchIterator`, each process its rows of global batch
g) are packed as they come: each pair trimmed to its tokens and placed by first fit
(`packing.pack`) in rows of `max_seq_length`; its masked positions move with it (positions in
the row), its sentence-order label goes to its slot ([rows, slots], `weight` 1, empty slots 0),
and the model reads each pair's own [CLS] (`model.AlbertForPreTraining`). The MLM and SOP sums
and their denominators (the masked positions, the pairs) are the unpacked ones, so is the data
state (the batch index): resuming, or switching packing on or off, keeps the stream.

The rows a process gets are sized once at the start from the stream's first `SIZING_STEPS`
batches (read ahead, then rewound), all processes taking the largest need, plus `MARGIN`; a step
that needs more gets a multiple of them (every process the same: the processes agree on it each
step, one small host collective), the same pairs and update, one more compile. The masked
positions a row holds are bounded by its length (`predictions_per_row`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from albert_jax import packing
from albert_jax.data import packed_batches

SIZING_STEPS = 20  # pretraining batches are large: their fill varies little from step to step
MARGIN = 1.05  # rows sized 5% over the fullest sizing step's


@dataclasses.dataclass(frozen=True)
class Layout:
  """`rows` a global batch of `length` tokens, at most `max_examples` pairs and `predictions`
  masked positions a row."""
  rows: int
  length: int
  max_examples: int
  predictions: int


def predictions_per_row(length: int, max_examples: int, max_predictions: int,
                        masked_lm_prob: float) -> int:
  """The masked positions a row of `length` tokens can hold: a pair of n tokens masks at most
  min(max_predictions, max(1, round(n p))) <= n p + 1 (masking.py), so a row at most
  length p + one per pair, and never more than max_predictions a pair."""
  return min(max_examples * max_predictions, math.ceil(length * masked_lm_prob) + max_examples)


def _pairs(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Each pair of a padded batch, trimmed: its tokens, label, masked positions (in the pair)."""
  lengths = batch["attention_mask"].sum(axis=1)
  out = []
  for i, n in enumerate(lengths.tolist()):
    masked = batch["masked_lm_weights"][i] > 0
    out.append({"input_ids": batch["input_ids"][i, :n],
                "token_type_ids": batch["token_type_ids"][i, :n],
                "sentence_order_label": batch["sentence_order_label"][i],
                "weight": np.float32(1),
                "masked": (batch["masked_lm_positions"][i][masked],
                           batch["masked_lm_ids"][i][masked],
                           batch["masked_lm_weights"][i][masked])})
  return out


def rows_needed(batch: dict[str, np.ndarray], length: int, max_examples: int) -> tuple[int, int]:
  """(rows, the most pairs in a row) first fit needs for a padded batch's pairs."""
  return packed_batches.fit(batch["attention_mask"].sum(axis=1), length, max_examples)


def pack_batch(batch: dict[str, np.ndarray], rows: int, layout: Layout) -> dict[str, np.ndarray]:
  """A process's padded batch as `rows` packed rows (they must hold it)."""
  pairs = _pairs(batch)
  plain = [{k: v for k, v in p.items() if k != "masked"} for p in pairs]
  packed = packing.pack(plain, rows, layout.length, layout.max_examples)
  if packed.count != len(pairs):
    raise AssertionError(f"{len(pairs)} pairs, {packed.count} packed in {rows} rows")
  positions = np.zeros((rows, layout.predictions), np.int32)
  ids = np.zeros((rows, layout.predictions), np.int32)
  weights = np.zeros((rows, layout.predictions), np.float32)
  filled = np.zeros(rows, np.int64)
  for pair, r, start in zip(pairs, packed.row, packed.start):
    p, i, w = pair["masked"]
    k = filled[r]
    if k + len(p) > layout.predictions:
      raise ValueError(f"a packed row needs more than {layout.predictions} masked positions "
                       "(data.max_predictions_per_seq is larger than masked_lm_prob gives?)")
    positions[r, k:k + len(p)] = p + start
    ids[r, k:k + len(p)] = i
    weights[r, k:k + len(p)] = w
    filled[r] += len(p)
  features = {k: v for k, v in packed.features.items() if k != "example_mask"}
  features.update(masked_lm_positions=positions, masked_lm_ids=ids, masked_lm_weights=weights)
  return features


def _largest(values: list[int]) -> list[int]:
  """Each value's largest over the processes (the same list on every process)."""
  if jax.process_count() == 1:
    return values
  gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
  return np.asarray(gathered).reshape(-1, len(values)).max(axis=0).tolist()


def size_layout(base, data_cfg, row_multiple: int, max_predictions: int) -> Layout:
  """The layout from the stream's first SIZING_STEPS batches (`base` is rewound after)."""
  state = base.get_state()
  needed, slots, pairs = 1, 1, 1
  for _ in range(SIZING_STEPS):
    batch = next(base)
    rows, most = rows_needed(batch, data_cfg.max_seq_length, data_cfg.pack_max_examples)
    needed, slots, pairs = max(needed, rows), max(slots, most), len(batch["input_ids"])
  base.set_state(state)
  needed, slots = _largest([needed, slots])
  slots = int(data_cfg.pack_max_examples) or slots
  processes = jax.process_count()
  multiple = math.lcm(row_multiple, processes)
  # Never more rows than pairs: a pair a row always fits (no step can need more).
  rows = int(data_cfg.pack_rows) or min(
      math.ceil(math.ceil(needed * MARGIN) * processes / multiple) * multiple, pairs * processes)
  if rows % multiple:
    raise ValueError(f"data.pack_rows={rows} must be a multiple of {multiple} (the batch devices x "
                     "grad_accum_steps, and the processes)")
  return Layout(rows, data_cfg.max_seq_length, slots, predictions_per_row(
      data_cfg.max_seq_length, slots, max_predictions, data_cfg.masked_lm_prob))


class PackedPairs:
  """The pipeline's batches, packed; the same state (`input_pipeline.BatchIterator`'s)."""

  def __init__(self, base, layout: Layout):
    self.base, self.layout = base, layout
    self.local_rows = layout.rows // jax.process_count()
    self.row_shape = (layout.rows, layout.length)  # a global batch's
    self._warned = set()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self.base)
    L = self.layout
    needed = _largest([rows_needed(batch, L.length, L.max_examples)[0]])[0]
    rows = math.ceil(needed / self.local_rows) * self.local_rows
    if rows != self.local_rows and rows not in self._warned:
      self._warned.add(rows)
      logging.warning("Pretraining batch %d's pairs need %d packed rows a process, more than the "
                      "%d sized at the start: it runs with %d (the same pairs; one more compile)",
                      self.base.get_state()["next_batch"], needed, self.local_rows, rows)
    return pack_batch(batch, rows, L)

  def get_state(self) -> dict[str, Any]:
    return self.base.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self.base.set_state(state)
