"""The pretraining task: MLM over the masked positions + sentence-order prediction, as the
original, on the Grain input pipeline (`data/input_pipeline.py`).

The MLM loss is summed over the masked positions and divided by the whole batch's number of them
(`counts`), not per micro-batch, so gradient accumulation gives exactly the full batch's gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from albert_jax import sharding
from albert_jax.data import input_pipeline, packed_pairs
from albert_jax.tasks import common

METRIC = None  # no best checkpoint: the last one is the model
CONSOLE = ("loss", "mlm_accuracy", "sop_accuracy")


def data_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  return input_pipeline.default_data_config()


def head(data_cfg) -> str:
  del data_cfg
  return "pretraining"


def num_labels(data_cfg) -> int:
  del data_cfg
  return 2  # sentence order: in order / swapped


def example_spec(data_cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One example as the input pipeline makes it (no batch axis); packed (data.pack), one row of
  pairs: their example ids, and per pair slot (data.pack_max_examples; common.PACK_SLOTS where
  0) the [CLS] position, the sentence-order label and the weight, and the masked positions a
  row holds (`packed_pairs.predictions_per_row`)."""
  length = data_cfg.max_seq_length
  example = input_pipeline.example_config(data_cfg)
  predictions = example.max_predictions
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  per_pair = {"sentence_order_label": ints()}
  if data_cfg.get("pack"):
    slots = data_cfg.pack_max_examples or common.PACK_SLOTS
    predictions = packed_pairs.predictions_per_row(length, slots, predictions,
                                                   example.masked_lm_prob)
    per_pair = {"sentence_order_label": ints(slots), "cls_positions": ints(slots),
                "weight": jax.ShapeDtypeStruct((slots,), jnp.float32),
                "example_ids": ints(length)}
  return {**common.input_spec(length), "masked_lm_positions": ints(predictions),
          "masked_lm_ids": ints(predictions),
          "masked_lm_weights": jax.ShapeDtypeStruct((predictions,), jnp.float32), **per_pair}


def tokenizer(config, workdir):
  """config.spm_model, else config.init_from's, else a prepared corpus's (data.prepared), else
  WORKDIR/spiece.model: trained on the training corpus the first time (then reused, so a rerun
  resumes with the same vocabulary). The pipeline refuses a vocabulary other than the one a
  prepared corpus was cut with."""
  found = common.find_vocabulary(config)
  if found is None and config.data.source == "prepared":
    found = input_pipeline.prepared_vocabulary(config.data)
  if found is not None:
    return common.keep_copy(found, workdir)
  return input_pipeline.build_tokenizer(config.data, workdir)


def data(config, tok):
  train = input_pipeline.train_iterator(config.data, tok, global_batch_size=config.batch_size,
                                        seed=config.seed,
                                        allow_change=config.get("allow_data_change", False))
  if config.data.get("pack"):  # several pairs to a row (data/packed_pairs.py)
    data_devices, fsdp, _ = sharding.mesh_shape(dict(config.mesh), jax.device_count())
    layout = packed_pairs.size_layout(
        train, config.data, data_devices * fsdp * config.grad_accum_steps,
        input_pipeline.example_config(config.data).max_predictions)
    logging.info("Packing %d pairs a step into %d rows of %d tokens (at most %d pairs and %d "
                 "masked positions a row)", config.batch_size, layout.rows, layout.length,
                 layout.max_examples, layout.predictions)
    train = packed_pairs.PackedPairs(train, layout)
  # Held-out pairs are cut with the training seed (as `prepare` cuts both splits), and shuffled
  # and masked with another.
  batches = input_pipeline.eval_batches(
      config.data, tok, global_batch_size=config.eval_batch_size or config.batch_size,
      seed=config.seed + 1, pair_seed=config.seed)
  return train, ([common.EvalSet("eval", batches)] if batches else [])


# ----------------------------------------------------------------------------- loss and metrics

def loss_sums(outputs, batch) -> dict[str, jax.Array]:
  """MLM cross-entropy at the masked positions (weighted by `masked_lm_weights`), SOP
  cross-entropy, and the correct predictions of each, summed over the batch."""
  mlm_logits, sop_logits = outputs.prediction_logits, outputs.sop_logits  # [b, P, V], [b, 2]
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch["masked_lm_ids"])
  sop_labels = batch["sentence_order_label"]  # [b], packed [rows, slots] with their weights
  sop_weights = _pair_weights(batch)
  sop_xent = optax.softmax_cross_entropy_with_integer_labels(sop_logits, sop_labels)
  sop_correct = (jnp.argmax(sop_logits, -1) == sop_labels).astype(jnp.float32)
  return {
      "mlm_loss": jnp.sum(mlm_xent * weights),
      "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == batch["masked_lm_ids"]) * weights),
      "sop_loss": jnp.sum(sop_xent * sop_weights),
      "sop_correct": jnp.sum(sop_correct * sop_weights),
  }


def _pair_weights(batch) -> jax.Array:
  """1 for each pair (packed rows: each slot's weight, 0 where empty)."""
  if "weight" in batch:
    return batch["weight"].astype(jnp.float32)
  return jnp.ones(batch["sentence_order_label"].shape, jnp.float32)


def counts(batch) -> dict[str, jax.Array]:
  """The original's denominators: the masked positions (`masked_lm_weights`) and the pairs."""
  return {"masked": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
          "examples": jnp.sum(_pair_weights(batch))}


def normalise(sums, denominators) -> dict[str, jax.Array]:
  """The original's loss, MLM mean over masked positions (+1e-5) + SOP mean over examples."""
  masked, examples = denominators["masked"] + 1e-5, denominators["examples"]
  mlm_loss, sop_loss = sums["mlm_loss"] / masked, sums["sop_loss"] / examples
  return {"loss": mlm_loss + sop_loss, "mlm_loss": mlm_loss, "sop_loss": sop_loss,
          "mlm_accuracy": sums["mlm_correct"] / masked,
          "sop_accuracy": sums["sop_correct"] / examples}


def predictions(outputs, batch):
  """An eval batch's sums and counts: the eval set's metrics are their totals, normalised."""
  return {"sums": loss_sums(outputs, batch), "counts": counts(batch)}


def score(predictions_, eval_set, data_cfg, out_dir) -> dict[str, float]:
  del eval_set, data_cfg, out_dir
  total = jax.tree_util.tree_map(lambda *x: np.sum(x, axis=0), *predictions_)
  return {k: float(v) for k, v in normalise(total["sums"], total["counts"]).items()}
