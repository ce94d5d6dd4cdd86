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

from albert_jax.data import input_pipeline
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
  """One example as the input pipeline makes it (no batch axis)."""
  length = data_cfg.max_seq_length
  predictions = input_pipeline.example_config(data_cfg).max_predictions
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  return {**common.input_spec(length), "masked_lm_positions": ints(predictions),
          "masked_lm_ids": ints(predictions),
          "masked_lm_weights": jax.ShapeDtypeStruct((predictions,), jnp.float32),
          "sentence_order_label": ints()}


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
  sop_labels = batch["sentence_order_label"].reshape(-1)
  sop_xent = optax.softmax_cross_entropy_with_integer_labels(sop_logits, sop_labels)
  return {
      "mlm_loss": jnp.sum(mlm_xent * weights),
      "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == batch["masked_lm_ids"]) * weights),
      "sop_loss": jnp.sum(sop_xent),
      "sop_correct": jnp.sum(jnp.argmax(sop_logits, -1) == sop_labels).astype(jnp.float32),
  }


def counts(batch) -> dict[str, jax.Array]:
  """The original's denominators: the masked positions (`masked_lm_weights`) and the examples."""
  return {"masked": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
          "examples": jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32)}


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
