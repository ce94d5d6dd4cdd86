"""Packed rows: several tokenized examples share a row, so (nearly) every token is a real one.

`pack` fills a fixed number of rows, first fit in the order given, and returns the features the
model reads for packed rows (`example_ids`, `cls_positions`; `model.AlbertModel`) beside the
examples' own, with the map back to each example (`Packed.per_example`, `Packed.per_token`).
Pure NumPy, for the task code's data side.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

# What `pack` adds to the examples' own features.
PACKED_FEATURES = ("example_ids", "attention_mask", "cls_positions", "example_mask")


@dataclasses.dataclass(frozen=True)
class Packed:
  """Rows holding the first `count` examples given, and where each went.

  `features`: per token [rows, length] (each per-token feature of the examples, `example_ids`:
  1, 2, ... by slot, 0 for padding, and `attention_mask`); per example [rows, max_examples]
  (each per-example feature, `cls_positions`: each example's first token, and `example_mask`:
  1 where a slot holds an example). Example i of those packed sits in row `row[i]`, slot
  `slot[i]` (its example id there is slot + 1), tokens `start[i]` to `start[i] + length[i]`.
  """
  features: dict[str, np.ndarray]
  row: np.ndarray
  slot: np.ndarray
  start: np.ndarray
  length: np.ndarray

  @property
  def count(self) -> int:
    """How many of the examples given were packed (the first `count`)."""
    return len(self.row)

  def per_example(self, x) -> np.ndarray:
    """[rows, max_examples, ...] (a sequence classifier's logits) -> [count, ...], in order."""
    return np.asarray(x)[self.row, self.slot]

  def per_token(self, x) -> list[np.ndarray]:
    """[rows, length, ...] (hidden states, token logits) -> each example's [its length, ...]."""
    x = np.asarray(x)
    return [x[r, s:s + n] for r, s, n in zip(self.row, self.start, self.length)]


def _dtype(value) -> type:
  kind = np.asarray(value).dtype.kind
  return np.float32 if kind == "f" else np.int32


def first_fit(lengths: Sequence[int], length: int, max_examples: int, rows: int | None = None
              ) -> tuple[list[tuple[int, int, int]], int]:
  """(row, slot, start) of each example of `lengths` placed, and the rows used: each example to
  the first row with room for it and a free slot, a new row when none has (up to `rows`; None:
  as many as needed); the placing stops at the first example that fits nowhere. Plain Python:
  sizing a run's row budget packs thousands of steps' lengths (`data/packed_batches.py`)."""
  used, slots, placed = [], [], []
  for n in lengths:
    for r, taken in enumerate(used):
      if taken + n <= length and slots[r] < max_examples:
        break
    else:
      if rows is not None and len(used) >= rows:
        break
      r = len(used)
      used.append(0)
      slots.append(0)
    placed.append((r, slots[r], used[r]))
    used[r] += n
    slots[r] += 1
  return placed, len(used)


def pack(examples: Sequence[Mapping[str, Sequence[int] | int | float]], rows: int, length: int,
         max_examples: int, pad_values: Mapping[str, int | float] | None = None,
         template: Mapping[str, Sequence[int] | int | float] | None = None,
         positions: Sequence[str] = ()) -> Packed:
  """Packs `examples` into `rows` rows of `length` tokens, at most `max_examples` to a row.

  Each example is a dict of features: sequences as long as its `input_ids` are per token
  (`input_ids`, `token_type_ids`, NER's `labels`), scalars per example (GLUE's `labels`,
  `weight`). Examples go in the order given, each to the first row with room for its tokens
  and a free slot (first fit), and the packing stops at the first that fits nowhere: the
  `count` packed are always a prefix, so a stream of examples is cut into steps in order.
  Padding gets `pad_values[name]` (default 0; NER's ignored label, say); an empty slot's label
  must still be a valid one: it weighs 0, but a NaN loss times 0 is NaN. `template`: an example
  whose features' names and kinds the rows take when `examples` is empty (all padding).
  `positions`: per-example features that are positions in the example's tokens (SQuAD's answer
  span): they move with it, to positions in its row.
  """
  if rows < 1 or length < 1 or max_examples < 1:
    raise ValueError(f"rows={rows}, length={length}, max_examples={max_examples}: each must be "
                     "at least 1")
  pad_values = dict(pad_values or {})
  first = examples[0] if examples else (template or {"input_ids": []})
  token_keys = [k for k, v in first.items() if np.ndim(v) == 1]
  example_keys = [k for k, v in first.items() if np.ndim(v) == 0]
  if "input_ids" not in token_keys:
    raise ValueError(f"each example needs a sequence of input_ids; got {sorted(first)}")
  if stray := set(positions) - set(example_keys):
    raise ValueError(f"positions {sorted(stray)} are not per-example features of the examples")
  if clash := set(first) & set(PACKED_FEATURES):
    raise ValueError(f"examples may not have features named {sorted(clash)}: pack adds them")

  features = {k: np.full((rows, length), pad_values.get(k, 0), _dtype(first[k]))
              for k in token_keys}
  features.update({k: np.full((rows, max_examples), pad_values.get(k, 0), _dtype(first[k]))
                   for k in example_keys})
  example_ids = np.zeros((rows, length), np.int32)
  cls_positions = np.zeros((rows, max_examples), np.int32)
  for i, example in enumerate(examples):
    n = len(example["input_ids"])
    if not 1 <= n <= length:
      raise ValueError(f"example {i} has {n} tokens; each needs 1 to length={length} "
                       "(truncate it first)")
    if sorted(example) != sorted(first):
      raise ValueError(f"example {i} has features {sorted(example)}, example 0 {sorted(first)}")
    for k in token_keys:
      if len(example[k]) != n:
        raise ValueError(f"example {i}: {k} has {len(example[k])} values, input_ids {n}")
    for k in positions:
      if not 0 <= example[k] < n:
        raise ValueError(f"example {i}: {k}={example[k]} is not one of its {n} tokens")
  placed, _ = first_fit([len(e["input_ids"]) for e in examples], length, max_examples, rows)
  slots = np.zeros(rows, np.int64)  # examples in each row
  for example, (r, s, start) in zip(examples, placed):
    n = len(example["input_ids"])
    for k in token_keys:
      features[k][r, start:start + n] = example[k]
    for k in example_keys:
      features[k][r, s] = example[k] + start if k in positions else example[k]
    example_ids[r, start:start + n] = s + 1
    cls_positions[r, s] = start
    slots[r] += 1

  features["example_ids"] = example_ids
  features["attention_mask"] = (example_ids > 0).astype(np.int32)
  features["cls_positions"] = cls_positions
  features["example_mask"] = (np.arange(max_examples)[None] < slots[:, None]).astype(np.int32)
  sizes = [len(e["input_ids"]) for e in examples[:len(placed)]]
  row, slot, start = np.array(placed, np.int64).reshape(-1, 3).T
  return Packed(features, row, slot, start, np.array(sizes, np.int64))
