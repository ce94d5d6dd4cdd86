"""Packed rows: `packing.pack` and its inverse, and the model on packed rows against the same
examples unpacked (logits, losses with the unpacked denominators, token classification's
gradients) for sequence classification, regression and token classification, with every
attention implementation that runs here."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from albert_jax import attention as A
from albert_jax import model as M
from albert_jax import packing
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


def test_a_packed_batch_needs_a_head_that_takes_it():
  """Heads without packed rows refuse a packed batch; a pooling head needs cls_positions."""
  packed = packing.pack(_examples("classification")[:2], rows=1, length=128, max_examples=2)
  batch = {k: jnp.asarray(v) for k, v in packed.features.items()}
  qa = M.make_model(CFG, "question_answering")
  with pytest.raises(ValueError, match="AlbertForQuestionAnswering does not take packed rows.*"
                                       "AlbertForSequenceClassification"):
    jax.eval_shape(lambda b: M.apply_to_batch(qa, random_params(CFG, "question_answering", 0), b),
                   batch)
  classifier = M.make_model(CFG, "sequence_classification")
  del batch["cls_positions"]
  with pytest.raises(ValueError, match="need cls_positions"):
    jax.eval_shape(lambda b: M.apply_to_batch(
        classifier, random_params(CFG, "sequence_classification", 0), b), batch)
