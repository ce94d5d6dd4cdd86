"""The fine-tuning data stream (data/arrays.py): every field that decides its batches is in the
resume check, as the pretraining stream's are (test_input_pipeline)."""

import json

import numpy as np
import pytest

from albert_jax.data import arrays, order

FEATURES = {"input_ids": np.arange(96, dtype=np.int32).reshape(48, 2)}
SETTINGS = {"data.max_seq_length": 2, "data.task": "sst2"}


def _iterator(batch=8, seed=0, features=FEATURES, settings=SETTINGS):
  return arrays.ArrayIterator(arrays.Dataset(dict(features)), global_batch_size=batch, seed=seed,
                              process_index=0, process_count=1, settings=settings)


def _saved_at(g):
  """The state a checkpoint holds after batch g of a run with batch 8, seed 0."""
  return json.loads(json.dumps({**_iterator().get_state(), "next_batch": g}))


def _rows(batch):
  return sorted(batch["input_ids"][:, 0] // 2)


@pytest.mark.parametrize("change,field", [
    ({"batch": 4}, "global_batch_size: checkpoint 8, now 4"),
    ({"seed": 1}, "seed: checkpoint 0, now 1"),
    ({"features": {"input_ids": FEATURES["input_ids"][:40]}}, "rows: checkpoint 48, now 40"),
    ({"features": {"input_ids": FEATURES["input_ids"] + 1}}, "arrays: checkpoint"),
    ({"settings": {**SETTINGS, "data.max_seq_length": 3}},
     "data.max_seq_length: checkpoint 2, now 3")],
    ids=["batch size", "seed", "rows", "arrays", "task setting"])
def test_a_resume_with_another_stream_is_refused_naming_the_field(change, field):
  """Each change makes other batches from the same batch index (the batch size: batch 2 of
  size 4 is rows 8-11 of epoch 0, of size 8 rows 16-23), so the resume is refused, naming the
  field with both values and the override."""
  it = _iterator(**change)
  with pytest.raises(order.StreamChanged, match=field) as e:
    it.set_state(_saved_at(2))
  assert order.ALLOW_CHANGE in str(e.value)


def test_an_unchanged_stream_resumes_with_the_uninterrupted_batches():
  run = _iterator()
  batches = [next(run) for _ in range(8)]  # across the end of epoch 0 (6 batches)
  resumed = _iterator()
  resumed.set_state(_saved_at(5))
  for g in range(5, 8):
    assert np.array_equal(next(resumed)["input_ids"], batches[g]["input_ids"])
  assert sorted(r for b in batches[:6] for r in _rows(b)) == list(range(48))  # an epoch: each once
