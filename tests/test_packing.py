"""Packed rows: `packing.pack` and its inverse, and the model on packed rows against the same
examples unpacked (logits, losses with the unpacked denominators, token classification's
gradients) for sequence classification, regression, token classification and SQuAD's spans,
with every attention implementation that runs here."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from albert_jax import attention as A
from albert_jax import model as M
from albert_jax import packing, tasks
from albert_jax.data import arrays, packed_batches, packed_pairs
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.tasks import common, squad
import finetune_glue
from conftest import tiny_config
from helpers import random_params

IGNORE = -100  # a token without a label (NER's convention)


# ----------------------------------------------------------------------------- pack

def _example(n, label, first=None):
  """n tokens: ids 10, 11, ...; token types 0 then 1 from token `first`."""
  types = [0] * n if first is None else [0] * first + [1] * (n - first)
  return {"input_ids": list(range(10, 10 + n)), "token_type_ids": types, "labels": label}


def test_pack_is_first_fit_in_order_and_maps_back():
  examples = [_example(5, 1, first=3), _example(6, 0), _example(4, 2), _example(2, 1),
              _example(3, 0)]
  packed = packing.pack(examples, rows=2, length=10, max_examples=2, pad_values={"labels": -1})
  # Row 0: examples 0 and 2 (5 + 4 tokens; 1 does not fit beside 0); row 1: 1 and 3; row 0 has
  # no slot left for example 4, row 1 no room (6 + 2 + 3 > 10): the packing stops there.
  assert packed.count == 4
  assert packed.row.tolist() == [0, 1, 0, 1] and packed.slot.tolist() == [0, 0, 1, 1]
  assert packed.start.tolist() == [0, 0, 5, 6] and packed.length.tolist() == [5, 6, 4, 2]
  f = packed.features
  assert f["example_ids"].tolist() == [[1] * 5 + [2] * 4 + [0], [1] * 6 + [2] * 2 + [0] * 2]
  assert f["attention_mask"].tolist() == (f["example_ids"] > 0).astype(int).tolist()
  assert f["input_ids"].tolist() == [[10, 11, 12, 13, 14, 10, 11, 12, 13, 0],
                                     [10, 11, 12, 13, 14, 15, 10, 11, 0, 0]]
  assert f["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 0, 0, 0], [0] * 10]
  assert f["labels"].tolist() == [[1, 2], [0, 1]]
  assert f["cls_positions"].tolist() == [[0, 5], [0, 6]]
  assert f["example_mask"].tolist() == [[1, 1], [1, 1]]
  assert all(v.dtype == np.int32 for v in f.values())
  # The inverse: each example's own features, in the order given.
  assert packed.per_example(f["labels"]).tolist() == [1, 0, 2, 1]
  assert [x.tolist() for x in packed.per_token(f["input_ids"])] == [
      e["input_ids"] for e in examples[:4]]
  assert [x.tolist() for x in packed.per_token(f["token_type_ids"])] == [
      e["token_type_ids"] for e in examples[:4]]
  # The rest goes into the next rows; empty slots weigh 0 and pad with pad_values.
  rest = packing.pack(examples[4:], rows=2, length=10, max_examples=2, pad_values={"labels": -1})
  assert rest.count == 1 and rest.features["labels"].tolist() == [[0, -1], [-1, -1]]
  assert rest.features["example_mask"].tolist() == [[1, 0], [0, 0]]


def test_packed_position_ids_restart_at_each_example():
  ids = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  assert np.asarray(M.packed_position_ids(jnp.asarray(ids))).tolist() == [
      [0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


@pytest.mark.parametrize("examples, kwargs, match", [
    ([_example(11, 0)], {}, "example 0 has 11 tokens; each needs 1 to length=10"),
    ([_example(0, 0)], {}, "example 0 has 0 tokens"),
    ([_example(3, 0), {"input_ids": [5, 6]}], {}, "example 1 has features"),
    ([{"input_ids": [5, 6], "token_type_ids": [0]}, ], {}, "token_type_ids has 1 values"),
    ([{"input_ids": [5], "example_ids": [1]}], {}, r"named \['example_ids'\]"),
    ([{"labels": 1}], {}, "needs a sequence of input_ids"),
    ([_example(3, 0)], {"max_examples": 0}, "each must be at least 1"),
])
def test_pack_refuses_what_it_cannot_pack(examples, kwargs, match):
  with pytest.raises(ValueError, match=match):
    packing.pack(examples, **{"rows": 2, "length": 10, "max_examples": 2, **kwargs})


# ----------------------------------------------------------------------------- the model

# 4 heads of 8; rows of 128 tokens, the smallest splash block.
CFG = M.AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64)
ROWS, LENGTH, SLOTS, UNPACKED_LENGTH = 3, 128, 4, 48
HEADS = {"classification": ("sequence_classification", 3), "regression":
         ("sequence_classification", 1), "token_classification": ("token_classification", 5)}


def _examples(kind, seed=0):
  """Ten examples of 4 to 48 tokens (a pair's second segment typed 1), with labels of `kind`."""
  rs = np.random.RandomState(seed)
  out = []
  for n in rs.randint(4, UNPACKED_LENGTH + 1, 10):
    ids = [2] + rs.randint(5, CFG.vocab_size, n - 2).tolist() + [3]
    types = (np.arange(n) >= rs.randint(1, n)).astype(int).tolist()
    if kind == "token_classification":  # no label on [CLS], [SEP] and a few pieces
      labels = np.where(rs.rand(n) < 0.3, IGNORE, rs.randint(0, 5, n))
      labels[[0, -1]] = IGNORE
      label = labels.tolist()
    else:
      label = float(rs.randn()) if kind == "regression" else int(rs.randint(0, 3))
    out.append({"input_ids": ids, "token_type_ids": types, "labels": label})
  return out


def _loss(kind, logits, labels, weight):
  """The task's loss: a sum over examples (tokens) over the same count as unpacked."""
  if kind == "token_classification":
    labelled = (labels != IGNORE).astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(xent * labelled) / jnp.sum(labelled)
  weight = weight.astype(jnp.float32)
  if kind == "regression":
    return jnp.sum(jnp.square(logits[..., 0] - labels) * weight) / jnp.sum(weight)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
  return jnp.sum(xent * weight) / jnp.sum(weight)


def _run(loss, params, kind):
  """Jitted (loss, logits, gradients): gradients for token classification only, where every
  token's output reaches the loss (the backward pass is the same for the other heads; one
  gradient program per case would double these tests' compile time)."""
  if kind != "token_classification":
    return *jax.jit(loss)(params), None
  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


@functools.cache
def _case(kind):
  """(module head name, params, examples, packed, unpacked logits, loss and gradients)."""
  head, labels = HEADS[kind]
  cfg = CFG.replace(num_labels=labels)
  params = random_params(cfg, head, seed=1)
  examples = _examples(kind)
  # Padding: no label on a token, a valid one in an empty slot (it weighs 0, but NaN * 0 is NaN).
  pad = {"labels": IGNORE if kind == "token_classification" else 0}
  # Unpacked: one example to a row, right padded, xla attention, as every other test runs it.
  unpacked = packing.pack(examples, rows=len(examples), length=UNPACKED_LENGTH, max_examples=1,
                          pad_values=pad)
  f = unpacked.features
  module = M.make_model(cfg, head, attention="xla")

  def loss(p):
    out = module.apply({"params": p}, f["input_ids"], f["attention_mask"], f["token_type_ids"])
    logits = out.logits if kind == "token_classification" else out.logits[:, None]
    return _loss(kind, logits, f["labels"], f["example_mask"]), out.logits

  value, logits, grads = _run(loss, params, kind)
  logits = unpacked.per_token(logits) if kind == "token_classification" else np.asarray(logits)
  packed = packing.pack(examples, rows=ROWS, length=LENGTH, max_examples=SLOTS, pad_values=pad)
  assert packed.count == len(examples) and packed.row.max() == ROWS - 1  # all in, every row used
  return cfg, head, params, packed, (value, logits, grads)


@pytest.mark.parametrize("attention", ["xla", "splash", "cudnn"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_packed_rows_equal_the_same_examples_unpacked(kind, attention, monkeypatch):
  """float32, 1e-5 relative in logits and loss (gradients 1e-4), the task's loss over the packed
  [rows, max_examples] labels and weights with the unpacked denominators. splash runs in
  interpret mode (its backward kernel too); cudnn's call runs through XLA (no GPU here)."""
  if attention == "cudnn":
    monkeypatch.setattr(A, "cudnn", functools.partial(A.cudnn, implementation="xla"))
  cfg, head, params, packed, (ref_loss, ref_logits, ref_grads) = _case(kind)
  module = M.make_model(cfg, head, attention=attention)
  batch = {k: jnp.asarray(v) for k, v in packed.features.items()}

  def loss(p):
    out = M.apply_to_batch(module, p, batch)  # what the train step calls
    return _loss(kind, out.logits, batch["labels"], batch["example_mask"]), out.logits

  value, logits, grads = _run(loss, params, kind)
  if kind == "token_classification":
    assert logits.shape == (ROWS, LENGTH, 5)
    for ours, ref in zip(packed.per_token(logits), ref_logits, strict=True):
      np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  else:
    assert logits.shape == (ROWS, SLOTS, cfg.num_labels)
    np.testing.assert_allclose(packed.per_example(logits), ref_logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
  if grads is not None:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           grads, ref_grads)


def _windows(seed=0):
  """Ten SQuAD-like windows (the examples above) with an answer span each: none ([CLS], 0) in
  some, else start <= end inside the window."""
  rs = np.random.RandomState(seed)
  out = []
  for e in _examples("classification", seed):
    n = len(e["input_ids"])
    del e["labels"]
    start = 0 if rs.rand() < 0.3 else int(rs.randint(1, n - 1))
    end = 0 if start == 0 else int(rs.randint(start, n - 1))
    out.append({**e, "start_positions": start, "end_positions": end})
  return out


@functools.cache
def _span_case():
  """(params, windows, the unpacked model's start and end logits at each window's tokens)."""
  cfg = CFG.replace(num_labels=2)
  params = random_params(cfg, "question_answering", seed=1)
  windows = _windows()
  unpacked = packing.pack(windows, rows=len(windows), length=UNPACKED_LENGTH, max_examples=1)
  f = unpacked.features
  module = M.make_model(cfg, "question_answering", attention="xla")
  out = jax.jit(lambda p: module.apply({"params": p}, f["input_ids"], f["attention_mask"],
                                       f["token_type_ids"]))(params)
  return cfg, params, windows, [unpacked.per_token(out.start_logits),
                                unpacked.per_token(out.end_logits)]


def _own_tokens_loss(logits: list[np.ndarray], windows, side: str) -> float:
  """The reference: each window's cross-entropy over its own tokens' logits (float64), summed."""
  total = 0.0
  for x, w in zip(logits, windows, strict=True):
    x = np.asarray(x, np.float64)
    total += np.log(np.exp(x - x.max()).sum()) + x.max() - x[w[f"{side}_positions"]]
  return total


@pytest.mark.parametrize("attention", ["xla", "splash", "cudnn"])
def test_packed_squad_windows_equal_the_same_windows_unpacked(attention, monkeypatch):
  """The span head on packed windows: start and end logits at each window's tokens equal the
  unpacked ones (float32, 1e-5), the answer spans moved into the row, and the task's loss
  (`squad.loss_sums`) the cross-entropy over each window's own tokens of the unpacked logits
  (NumPy here), over the same count of windows."""
  if attention == "cudnn":
    monkeypatch.setattr(A, "cudnn", functools.partial(A.cudnn, implementation="xla"))
  cfg, params, windows, (ref_start, ref_end) = _span_case()
  packed = packing.pack(windows, rows=ROWS, length=LENGTH, max_examples=SLOTS,
                        positions=packed_batches.POSITIONS)
  assert packed.count == len(windows) and packed.row.max() == ROWS - 1
  f = packed.features
  for i, w in enumerate(windows):  # the same token, now in the row
    for side in ("start", "end"):
      at = f[f"{side}_positions"][packed.row[i], packed.slot[i]]
      assert at == packed.start[i] + w[f"{side}_positions"]
      assert f["input_ids"][packed.row[i], at] == w["input_ids"][w[f"{side}_positions"]]
  batch = {k: jnp.asarray(v) for k, v in f.items() if k != "example_mask"}
  batch[common.WEIGHT] = jnp.asarray(f["example_mask"], jnp.float32)
  module = M.make_model(cfg, "question_answering", attention=attention)
  out = jax.jit(lambda p, b: M.apply_to_batch(module, p, b))(params, batch)
  for ours, ref in ((out.start_logits, ref_start), (out.end_logits, ref_end)):
    for x, y in zip(packed.per_token(ours), ref, strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  sums = squad.loss_sums(out, batch)
  assert float(squad.counts(batch)["weight"]) == len(windows)
  expected = (_own_tokens_loss(ref_start, windows, "start")
              + _own_tokens_loss(ref_end, windows, "end")) / 2
  np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-5)


def test_pack_moves_positions_with_their_example():
  """Per-example positions (SQuAD's answer span) are the example's token, now in its row; one
  outside the example is refused."""
  examples = [{**_example(n, 0), "start_positions": n - 1} for n in (5, 3, 4)]
  packed = packing.pack(examples, rows=2, length=8, max_examples=2, positions=["start_positions"])
  f = packed.features
  for i, e in enumerate(examples):
    at = f["start_positions"][packed.row[i], packed.slot[i]]
    assert f["input_ids"][packed.row[i], at] == e["input_ids"][-1]
  with pytest.raises(ValueError, match="example 1: start_positions=3 is not one of its 3 tokens"):
    packing.pack([examples[0], {**examples[1], "start_positions": 3}], rows=2, length=8,
                 max_examples=2, positions=["start_positions"])


def test_a_packed_batch_needs_a_head_that_takes_it():
  """Heads without packed rows refuse a packed batch; a pooling head needs cls_positions."""
  packed = packing.pack(_examples("classification")[:2], rows=1, length=128, max_examples=2)
  batch = {k: jnp.asarray(v) for k, v in packed.features.items()}
  choice = M.make_model(CFG, "multiple_choice")
  with pytest.raises(ValueError, match="AlbertForMultipleChoice does not take packed rows.*"
                                       "AlbertForSequenceClassification"):
    jax.eval_shape(lambda b: M.apply_to_batch(choice, random_params(CFG, "multiple_choice", 0), b),
                   batch)
  classifier = M.make_model(CFG, "sequence_classification")
  del batch["cls_positions"]
  with pytest.raises(ValueError, match="need cls_positions"):
    jax.eval_shape(lambda b: M.apply_to_batch(
        classifier, random_params(CFG, "sequence_classification", 0), b), batch)


# ----------------------------------------------------------------------------- packed batches

def _dataset(lengths, per_token_labels=False, length=48):
  """Padded features as a task's `load` makes them: ids 1000*i + position, labels i (per
  example) or 100*i + position (per token)."""
  n = len(lengths)
  ids = np.zeros((n, length), np.int32)
  mask = np.zeros((n, length), np.int32)
  for i, k in enumerate(lengths):
    ids[i, :k] = 1000 * i + np.arange(k)
    mask[i, :k] = 1
  labels = (np.where(mask > 0, ids % 1000 + 100 * np.arange(n)[:, None], IGNORE)
            if per_token_labels else np.arange(n, dtype=np.int32))
  return arrays.Dataset({"input_ids": ids, "attention_mask": mask,
                         "token_type_ids": (ids % 2) * mask, "labels": labels.astype(np.int32)})


def _unpacked(batch) -> list[dict]:
  """The examples of a packed batch, row by row, slot by slot: each one's tokens and label."""
  out = []
  for r in range(len(batch["input_ids"])):
    for slot in np.flatnonzero(batch["weight"][r]):
      tokens = batch["example_ids"][r] == slot + 1
      assert batch["input_ids"][r, batch["cls_positions"][r, slot]] % 1000 == 0  # its first
      out.append({"ids": batch["input_ids"][r, tokens].tolist(),
                  "types": batch["token_type_ids"][r, tokens].tolist(),
                  "label": (batch["labels"][r, tokens].tolist() if batch["labels"].shape[1] ==
                            batch["input_ids"].shape[1] else int(batch["labels"][r, slot]))})
  return out


def _order(examples: list[dict]) -> list[dict]:
  return sorted(examples, key=lambda e: e["ids"][0])


def _trimmed(dataset, index) -> list[dict]:
  f, out = dataset.features, []
  for i in index:
    n = int(f["attention_mask"][i].sum())
    label = f["labels"][i, :n].tolist() if f["labels"].ndim == 2 else int(f["labels"][i])
    out.append({"ids": f["input_ids"][i, :n].tolist(), "types": f["token_type_ids"][i, :n].tolist(),
                "label": label})
  return out


@pytest.mark.parametrize("per_token, max_examples, processes",
                         [(False, 0, 1), (True, 0, 1), (False, 1, 1), (False, 0, 2)])
def test_packed_steps_hold_the_unpacked_steps_examples(per_token, max_examples, processes,
                                                        monkeypatch):
  """Every packed step holds exactly the examples of the same unpacked step (three epochs of a
  shuffled stream), each process its part in rows of one shape; one slot a row packs one
  example a row; the state is the unpacked one's."""
  rs = np.random.RandomState(0)
  dataset = _dataset(rs.randint(3, 49, 40), per_token)
  cfg = ml_collections.ConfigDict(dict(pack_length=0, pack_rows=0,
                                       pack_max_examples=max_examples))
  plain = arrays.ArrayIterator(dataset, global_batch_size=8, seed=3, process_index=0,
                               process_count=1)
  sizing = packed_batches.sizing_steps(plain, 15)
  layout = packed_batches.size_layout(
      packed_batches.lengths_of(dataset), sizing, max_seq_length=48, processes=processes,
      row_multiple=2, data_cfg=cfg)
  assert layout.length == 48 and layout.rows % 2 == 0
  if processes == 1:
    assert layout.rows == 8 if max_examples == 1 else layout.rows < 8
  iterators = []
  for p in range(processes):
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    base = arrays.ArrayIterator(dataset, global_batch_size=8, seed=3)
    iterators.append(packed_batches.PackedIterator(base, packed_batches.Packer(dataset, layout)))
  for _ in range(15):
    batches, reference = [next(i) for i in iterators], next(plain)
    assert {b["input_ids"].shape for b in batches} == {(layout.rows // processes, 48)}
    index = [int(i) for i in reference["input_ids"][:, 0] // 1000]
    assert _order([e for b in batches for e in _unpacked(b)]) == _order(_trimmed(dataset, index))
  packed = iterators[-1]  # the process the patched jax says this is
  assert packed.get_state() == plain.get_state()
  again = packed_batches.PackedIterator(arrays.ArrayIterator(dataset, global_batch_size=8, seed=3),
                                        packed_batches.Packer(dataset, layout))
  again.set_state(packed.get_state())
  assert all(np.array_equal(a, b) for a, b in zip(next(again).values(), next(packed).values()))


def test_a_step_that_needs_more_rows_runs_with_more(caplog):
  """Past the sizing steps, a step whose examples do not fit the budget gets a multiple of it:
  the same examples, one more shape (and a warning)."""
  dataset = _dataset([40] * 8 + [4] * 8)
  base = arrays.ArrayIterator(dataset, global_batch_size=8, seed=0)
  layout = packed_batches.Layout(rows=2, length=48, max_examples=8)
  packer = packed_batches.Packer(dataset, layout)
  features, (packed,) = packer.pack([(np.arange(8), np.ones(8, np.float32))])
  assert features["input_ids"].shape == (8, 48) and packed.count == 8  # 8 rows of 40 tokens
  assert _order(_unpacked(features)) == _trimmed(dataset, range(8))
  features, _ = packer.pack([(np.arange(8, 16), np.ones(8, np.float32))])
  assert features["input_ids"].shape == (2, 48)
  iterator = packed_batches.PackedIterator(base, packer)
  shapes = {next(iterator)["input_ids"].shape for _ in range(6)}
  assert max(shapes)[0] > 2 and "more than the 2 sized" in caplog.text


@pytest.mark.parametrize("setting, match", [
    ({"pack_length": 32}, "data.pack_length=32 is shorter than an example of 48 tokens"),
    ({"pack_rows": 6}, "data.pack_rows=6 must be a multiple of 4"),
    ({"pack_rows": 4}, r"data.pack_rows=4 is too few: step \d+'s examples need \d+ rows of 48"),
])
def test_packing_sizes_it_cannot_hold_are_refused(setting, match):
  dataset = _dataset([48] * 4 + [10] * 12)
  cfg = ml_collections.ConfigDict(dict(pack_length=0, pack_rows=0, pack_max_examples=0))
  cfg.update(setting)
  base = arrays.ArrayIterator(dataset, global_batch_size=16, seed=0)
  with pytest.raises(ValueError, match=match):
    packed_batches.size_layout(packed_batches.lengths_of(dataset),
                               packed_batches.sizing_steps(base, 4), max_seq_length=48,
                               processes=1, row_multiple=4, data_cfg=cfg)


def test_the_row_length_is_the_one_with_fewest_row_tokens():
  """Rows of 128 hold examples of 100 one a row (28 tokens wasted each); rows of 512 five."""
  dataset = _dataset([100] * 10, length=512)
  cfg = ml_collections.ConfigDict(dict(pack_length=0, pack_rows=0, pack_max_examples=0))
  base = arrays.ArrayIterator(dataset, global_batch_size=10, seed=0)
  layout = packed_batches.size_layout(packed_batches.lengths_of(dataset),
                                      packed_batches.sizing_steps(base, 3), max_seq_length=512,
                                      processes=1, row_multiple=1, data_cfg=cfg)
  assert (layout.rows, layout.length, layout.max_examples) == (2, 512, 5)
  short = _dataset([20] * 10, length=512)  # 6 a row of 128: 2 rows x 128 < 1 x 512
  layout = packed_batches.size_layout(packed_batches.lengths_of(short),
                                      packed_batches.sizing_steps(base, 3), max_seq_length=512,
                                      processes=1, row_multiple=1, data_cfg=cfg)
  assert (layout.rows, layout.length) == (2, 128)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("per_token", [False, True])
def test_packed_eval_batches_read_back_in_dataset_order(processes, per_token, monkeypatch):
  """Each eval example once (the last batch's padding left out), on every process's rows; the
  predictions read back per example in dataset order, per token as [n, max_seq_length]."""
  rs = np.random.RandomState(1)
  dataset = _dataset(rs.randint(3, 49, 21), per_token)
  every = []
  for p in range(processes):
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    batches, packed = packed_batches.eval_batches(dataset, global_batch_size=8, length=48,
                                                  row_multiple=2, max_examples=4,
                                                  token_predictions=per_token)
    every.append(batches)
  assert len(batches) == 3
  seen = [e for b in zip(*every) for local in b for e in _unpacked(local)]
  assert _order(seen) == _trimmed(dataset, range(21))
  # What an eval step returns: global rows (the processes' in order); here the labels, and as
  # floats (logits: past an example's tokens they read back as -inf, ids as 0).
  predictions = [{"labels": np.concatenate([local["labels"] for local in b])} for b in zip(*every)]
  for p in predictions:
    p["logits"] = p["labels"].astype(np.float32)
  unpacked = packed.unpack(predictions)
  back = unpacked["labels"]
  if per_token:
    assert back.shape == (21, 48)
    mask = dataset.features["attention_mask"] > 0
    np.testing.assert_array_equal(back, np.where(mask, dataset.features["labels"], 0))
    np.testing.assert_array_equal(unpacked["logits"],
                                  np.where(mask, dataset.features["labels"], -np.inf))
  else:
    np.testing.assert_array_equal(back, np.arange(21))


@pytest.mark.parametrize("pack", [False, True])
def test_an_empty_eval_split_is_refused(pack):
  """At the start, naming the eval set, rather than at the first eval."""
  config = finetune_glue.get_config("sst2")
  config.data.pack = pack
  config.update(total_steps=2, batch_size=8)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  load = lambda data_cfg, tok, split: _dataset([5] * 16 if split == "train" else [])
  with pytest.raises(ValueError, match="glue: eval set 'eval' \\(split 'eval'\\) has no examples"):
    common.data(load, config, None)



def test_packed_pretraining_pairs_give_the_unpacked_loss_and_gradients(spm_model):
  """A batch of the pipeline's pairs (short on purpose), packed (data/packed_pairs.py): the MLM
  and SOP sums, their denominators and the gradients are the unpacked batch's."""
  config = tiny_config(spm_model, **{"data.short_seq_prob": 1.0, "data.max_seq_length": 64,
                                     "data.pack": True})
  tokenizer = AlbertTokenizer(spm_model)
  train, _ = tasks.get("pretraining").data(config, tokenizer)
  batch = next(train.base)  # what the packed iterator would pack next
  layout = train.layout
  rows = packed_pairs.rows_needed(batch, layout.length, layout.max_examples)[0]  # as few as fit
  packed = packed_pairs.pack_batch(batch, rows, layout)
  assert rows < len(batch["input_ids"]) and (packed["weight"].sum(axis=1) > 1).any()
  assert packed["masked_lm_weights"].sum() == batch["masked_lm_weights"].sum()
  cfg = dataclasses.replace(CFG, vocab_size=tokenizer.vocab_size)
  module, task = M.make_model(cfg, "pretraining"), tasks.get("pretraining")
  params = random_params(cfg, "pretraining", 0)

  @jax.jit
  def loss(params, b):
    out = M.apply_to_batch(module, params, b)
    sums, counts = task.loss_sums(out, b), task.counts(b)
    return task.normalise(sums, counts)["loss"], (sums, counts)

  (ref, (ref_sums, ref_counts)), ref_grads = jax.value_and_grad(loss, has_aux=True)(
      params, {k: jnp.asarray(v) for k, v in batch.items()})
  (value, (sums, counts)), grads = jax.value_and_grad(loss, has_aux=True)(
      params, {k: jnp.asarray(v) for k, v in packed.items()})
  assert counts == ref_counts
  for k in ref_sums:
    np.testing.assert_allclose(sums[k], ref_sums[k], rtol=1e-5)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         grads, ref_grads)
