"""Packed batches of in-memory fine-tuning sets: each step's examples, several to a row.

`config.data.pack` (GLUE, NER): a step trains on exactly the examples, in exactly the order,
of `arrays.ArrayIterator`'s global batch (its position is the data state, so resuming and
turning packing on or off keep the stream), only packed into fewer, shorter rows
(`packing.pack`: first fit in order). The shapes are static and sized from the data once:

- the row length: the multiple of 128 (or `max_seq_length`) from the longest example up that
  needs the fewest row tokens over the sizing steps (`data.pack_length` sets it);
- the slots per row: the most examples any row takes over them (`data.pack_max_examples`);
- the rows per global step: the most any of them needs, rounded up to a multiple of the batch
  devices x accumulation steps (`data.pack_rows`).

The sizing steps are the run's first `SIZING_STEPS` (all of a shorter run). A later step whose
examples need more rows runs with a multiple of the budget (the same examples, the same update:
one more compile, once, and a warning); every process sizes every process's part, so all
agree. Eval batches hold the unpacked batches' examples, with rows sized over every batch
(exact), and are read back to per-example predictions in dataset order (`EvalPacking.unpack`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from absl import logging

from albert_jax import packing
from albert_jax.data import arrays

SIZING_STEPS = 1000  # the steps whose examples size the rows (all of a shorter run)
# Per-example features that are positions in the example's tokens: moved into its row.
POSITIONS = ("start_positions", "end_positions")  # SQuAD's answer span
ROW_MULTIPLE = 128  # row lengths tried: multiples of this (TPU lanes), up to max_seq_length


@dataclasses.dataclass(frozen=True)
class Layout:
  """The static shapes of packed batches: `rows` a global batch, `length` tokens a row, at most
  `max_examples` examples a row."""
  rows: int
  length: int
  max_examples: int


def lengths_of(dataset: arrays.Dataset) -> np.ndarray:
  """Each example's tokens (its attention mask's ones: tokenisation pads at the end)."""
  return dataset.features["attention_mask"].sum(axis=1).astype(np.int64)


def _parts(x: np.ndarray, processes: int) -> list[np.ndarray]:
  """A global batch split as the processes take it (process p: the p-th part)."""
  return np.split(x, processes)


def fit(lengths: np.ndarray, length: int, max_examples: int | None = None) -> tuple[int, int]:
  """(rows, the most examples in a row) that first fit needs for `lengths`."""
  placed, rows = packing.first_fit(lengths.tolist(), length, max_examples or len(lengths) or 1)
  return rows, 1 + max((s for _, s, _ in placed), default=0)


def size_layout(lengths: np.ndarray, steps: list[np.ndarray], *, max_seq_length: int,
                processes: int, row_multiple: int, data_cfg) -> Layout:
  """The layout whose rows hold every step of `steps` (global batches of example indices) in
  the fewest row tokens (shorter rows on a tie: attention costs length squared).
  `data_cfg.pack_length`, `pack_max_examples` and `pack_rows` fix a size (refused, naming the
  step, where one of `steps` would not fit)."""
  longest = int(lengths.max())  # every example of the set, not only those of `steps`
  if data_cfg.pack_length:
    if data_cfg.pack_length < longest:
      raise ValueError(f"data.pack_length={data_cfg.pack_length} is shorter than an example of "
                       f"{longest} tokens; set it to 0 (sized from the data) or >= {longest}")
    candidates = [int(data_cfg.pack_length)]
  else:
    candidates = sorted({min(max_seq_length, m) for m in
                         range(math.ceil(longest / ROW_MULTIPLE) * ROW_MULTIPLE,
                               max_seq_length + ROW_MULTIPLE, ROW_MULTIPLE)})
  multiple = math.lcm(row_multiple, processes)
  if data_cfg.pack_rows and data_cfg.pack_rows % multiple:
    raise ValueError(f"data.pack_rows={data_cfg.pack_rows} must be a multiple of {multiple} "
                     "(the batch devices x grad_accum_steps, and the processes)")
  parts = [_parts(lengths[s], processes) for s in steps]
  best = None
  for length in candidates:
    # Uncapped, first fit gives the most examples a row takes; capped there, the same rows.
    fits = [[fit(part, length, data_cfg.pack_max_examples) for part in step] for step in parts]
    slots = int(data_cfg.pack_max_examples) or max(s for step in fits for _, s in step)
    needed = [max(r for r, _ in step) * processes for step in fits]
    rows = math.ceil(max(needed) / multiple) * multiple
    if data_cfg.pack_rows:
      worst = int(np.argmax(needed))
      if needed[worst] > data_cfg.pack_rows:
        raise ValueError(
            f"data.pack_rows={data_cfg.pack_rows} is too few: step {worst + 1}'s examples need "
            f"{needed[worst]} rows of {length} tokens; set it to 0 (sized from the data) or more")
      rows = int(data_cfg.pack_rows)
    if best is None or rows * length < best.rows * best.length:
      best = Layout(rows, length, slots)
  return best


class Packer:
  """Packs each process's part of a global batch (example indices and weights) into rows of a
  layout: as many as the fullest part needs, in multiples of the layout's (every process
  computes every part, so all agree on the shape)."""

  def __init__(self, dataset: arrays.Dataset, layout: Layout):
    self.layout = layout
    self.process, self.processes = jax.process_index(), jax.process_count()
    self.local_rows = layout.rows // self.processes
    self.lengths = lengths_of(dataset)
    self.features = {k: v for k, v in dataset.features.items() if k != "attention_mask"}
    self.per_token = [k for k, v in self.features.items() if v.ndim == 2]
    self.pad = {"labels": arrays.IGNORE} if "labels" in self.per_token else {}
    self.positions = [k for k in POSITIONS if k in self.features]
    self.template = self._examples(np.zeros(1, np.int64), np.zeros(1, np.float32))[0]

  def _examples(self, index: np.ndarray, weight: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for i, w in zip(index.tolist(), weight.tolist()):
      n = int(self.lengths[i])
      example = {k: v[i, :n] if k in self.per_token else v[i] for k, v in self.features.items()}
      example[arrays.WEIGHT] = np.float32(w)
      out.append(example)
    return out

  def pack(self, parts: list[tuple[np.ndarray, np.ndarray]], every: bool = False
           ) -> tuple[dict[str, np.ndarray], list[packing.Packed]]:
    """(this process's rows, the `Packed` of this process's part, or of every process's with
    `every`: eval reads all predictions back) of each process's (indices, weights). The other
    parts are only counted: the rows are as many as the fullest part needs."""
    L = self.layout
    needed = max(fit(self.lengths[i], L.length, L.max_examples)[0] for i, _ in parts)
    rows = math.ceil(max(needed, 1) / self.local_rows) * self.local_rows
    chosen = range(len(parts)) if every else [self.process]
    packed = {p: packing.pack(self._examples(*parts[p]), rows, L.length, L.max_examples,
                              self.pad, template=self.template, positions=self.positions)
              for p in chosen}
    if any(packed[p].count != len(parts[p][0]) for p in chosen):
      raise AssertionError("first fit sized the rows differently than it packed them")
    mine = packed[self.process].features
    return {k: v for k, v in mine.items() if k != "example_mask"}, list(packed.values())


class PackedIterator:
  """`arrays.ArrayIterator`'s global batches, packed: the same examples a step, the same state."""

  def __init__(self, base: arrays.ArrayIterator, packer: Packer):
    self.base, self.packer = base, packer
    self.stream = base.stream
    self.row_shape = (packer.layout.rows, packer.layout.length)  # a global batch's
    self._warned = set()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    step = self.base.get_state()["next_batch"] + 1
    index = self.base.next_indices()
    ones = np.ones(len(index), np.float32)
    features, _ = self.packer.pack(list(zip(_parts(index, self.packer.processes),
                                            _parts(ones, self.packer.processes))))
    rows = len(features["input_ids"]) * self.packer.processes
    if rows != self.packer.layout.rows and rows not in self._warned:
      self._warned.add(rows)
      logging.warning("Step %d's examples need %d packed rows, more than the %d sized from the "
                      "first steps: it runs with %d (the same examples and update; one more "
                      "compile)", step, rows, self.packer.layout.rows, rows)
    return features

  def get_state(self) -> dict[str, Any]:
    return self.base.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self.base.set_state(state)


@dataclasses.dataclass
class EvalPacking:
  """Where each eval example went: per batch, every process's `Packed`."""
  packed: list[list[packing.Packed]]
  local_rows: int  # a process's rows of a batch
  per_token: bool  # per-token predictions (NER's tags, SQuAD's logits), else per example
  max_seq_length: int

  def unpack(self, predictions: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The eval batches' predictions (global rows) -> per example, in dataset order: per-token
    arrays as [n, max_seq_length, ...], each example's tokens first, then what no token has:
    -inf for floats (logits: never a candidate), 0 for integers (ids)."""
    out = {}
    for name in predictions[0] if predictions else ():
      rows = []
      for batch, processes in zip(predictions, self.packed):
        for p, packed in enumerate(processes):
          local = np.asarray(batch[name])[p * self.local_rows:(p + 1) * self.local_rows]
          if not self.per_token:
            rows.extend(packed.per_example(local))
            continue
          for tokens in packed.per_token(local):
            none = -np.inf if np.issubdtype(tokens.dtype, np.floating) else 0
            row = np.full((self.max_seq_length, *tokens.shape[1:]), none, tokens.dtype)
            row[:len(tokens)] = tokens
            rows.append(row)
      out[name] = np.stack(rows)
    return out


def sizing_steps(base: arrays.ArrayIterator, total_steps: int) -> list[np.ndarray]:
  """The global batches (example indices) of the run's first SIZING_STEPS steps."""
  count = min(max(total_steps, 1), SIZING_STEPS)
  return np.split(base.indices(range(0, count * base.global_batch_size)), count)


def eval_batches(dataset: arrays.Dataset, *, global_batch_size: int, length: int,
                 row_multiple: int, max_examples: int, token_predictions: bool = False
                 ) -> tuple[list[dict[str, np.ndarray]], EvalPacking]:
  """The examples of `arrays.eval_batches`' batches, each once, in order, packed into rows of
  `length` tokens (longer where an example is: the training rows' length is sized from the
  training set), as many a batch as the fullest needs (the last batch's padding is left out:
  there is no row to fill). `token_predictions`: the task predicts per token (else per
  example), which `EvalPacking.unpack` reads back."""
  processes = jax.process_count()
  n, max_seq_length = dataset.features["input_ids"].shape
  lengths = lengths_of(dataset)
  if lengths.max(initial=0) > length:
    length = min(max_seq_length, math.ceil(lengths.max() / ROW_MULTIPLE) * ROW_MULTIPLE)
  batches = []
  for start in range(0, n, global_batch_size):
    index = np.arange(start, start + global_batch_size)
    real = index < n
    batches.append([(i[r], np.ones(r.sum(), np.float32))
                    for i, r in zip(_parts(index, processes), _parts(real, processes))])
  needed = max((fit(lengths[i], length, max_examples)[0] for parts in batches for i, _ in parts),
               default=1)
  multiple = math.lcm(row_multiple, processes)
  packer = Packer(dataset, Layout(math.ceil(needed * processes / multiple) * multiple, length,
                                  max_examples))
  packed = [packer.pack(parts, every=True) for parts in batches]
  return [local for local, _ in packed], EvalPacking(
      [every for _, every in packed], packer.local_rows, token_predictions, max_seq_length)
