"""The pretraining task: MLM over masked positions + sentence-order prediction, as the original.

Losses are returned as sums with their denominators, so gradient accumulation over micro-batches
gives exactly the full batch's gradient (the MLM loss is normalised by the whole batch's
`masked_lm_weights`, not per micro-batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# The features a batch carries (the original's names).
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "sentence_order_label")


def example_spec(seq_len: int, max_predictions: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of one example (no batch axis), as the input pipeline makes them."""
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  return {"input_ids": ints(seq_len), "input_mask": ints(seq_len), "segment_ids": ints(seq_len),
          "masked_lm_positions": ints(max_predictions), "masked_lm_ids": ints(max_predictions),
          "masked_lm_weights": jax.ShapeDtypeStruct((max_predictions,), jnp.float32),
          "sentence_order_label": ints()}


def forward(module, params, batch, *, deterministic: bool, rng=None):
  """(MLM logits at the masked positions [b, P, V], SOP logits [b, 2])."""
  rngs = None if deterministic else {"dropout": rng}
  out = module.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                     token_type_ids=batch["segment_ids"], deterministic=deterministic,
                     masked_lm_positions=batch["masked_lm_positions"], rngs=rngs)
  return out.prediction_logits, out.sop_logits


def loss_sums(mlm_logits, sop_logits, batch) -> dict[str, jax.Array]:
  """Summed losses and counts; `normalise` turns them into the original's losses."""
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch["masked_lm_ids"])
  sop_labels = batch["sentence_order_label"].reshape(-1)
  sop_xent = optax.softmax_cross_entropy_with_integer_labels(sop_logits, sop_labels)
  return {
      "mlm_loss": jnp.sum(mlm_xent * weights),
      "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == batch["masked_lm_ids"]) * weights),
      "mlm_weight": jnp.sum(weights),
      "sop_loss": jnp.sum(sop_xent),
      "sop_correct": jnp.sum(jnp.argmax(sop_logits, -1) == sop_labels).astype(jnp.float32),
      "examples": jnp.asarray(sop_labels.shape[0], jnp.float32),
      "tokens": jnp.sum(batch["input_mask"]).astype(jnp.float32),
  }


def denominators(batch) -> tuple[jax.Array, jax.Array]:
  """The original's: sum(masked_lm_weights) + 1e-5 for MLM, the batch size for SOP."""
  return (jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)) + 1e-5,
          jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32))


def objective(sums, mlm_denominator, sop_denominator) -> jax.Array:
  """Total loss = MLM mean over masked positions + SOP mean over examples."""
  return sums["mlm_loss"] / mlm_denominator + sums["sop_loss"] / sop_denominator


def normalise(sums) -> dict[str, jax.Array]:
  """Means from sums (over one batch or accumulated over many): the logged metrics."""
  mlm_loss = sums["mlm_loss"] / (sums["mlm_weight"] + 1e-5)
  sop_loss = sums["sop_loss"] / sums["examples"]
  return {"loss": mlm_loss + sop_loss, "mlm_loss": mlm_loss, "sop_loss": sop_loss,
          "mlm_accuracy": sums["mlm_correct"] / (sums["mlm_weight"] + 1e-5),
          "sop_accuracy": sums["sop_correct"] / sums["examples"]}
