"""albert-jax: ALBERT (A Lite BERT) in JAX/Flax.

Top-level names load lazily, so `python -m albert_jax.data...` tools start without JAX.
"""

import importlib

_EXPORTS = {
    "AlbertConfig": "albert_jax.model", "preset": "albert_jax.model",
    "make_model": "albert_jax.model", "init_params": "albert_jax.model",
    "AlbertModel": "albert_jax.model", "AlbertForPreTraining": "albert_jax.model",
    "AlbertForMaskedLM": "albert_jax.model",
    "AlbertForSequenceClassification": "albert_jax.model",
    "AlbertForTokenClassification": "albert_jax.model",
    "AlbertForQuestionAnswering": "albert_jax.model", "AlbertForMultipleChoice": "albert_jax.model",
    "AlbertForSquadV2Original": "albert_jax.model",
    "from_pretrained": "albert_jax.init_from",
    "pipeline": "albert_jax.inference",
    "AlbertTokenizer": "albert_jax.data.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'albert_jax' has no attribute {name!r}")
