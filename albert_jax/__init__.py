"""albert-jax: ALBERT (A Lite BERT) in JAX/Flax."""

from albert_jax.model import (AlbertConfig, AlbertForMaskedLM, AlbertForMultipleChoice,
                              AlbertForPreTraining, AlbertForQuestionAnswering,
                              AlbertForSequenceClassification, AlbertForTokenClassification,
                              AlbertModel, init_params, make_model, preset)


def from_pretrained(path, head=None, **kwargs):
  """(module, params) from a Hugging Face directory or an Orbax checkpoint directory."""
  from albert_jax import hf_convert
  return hf_convert.from_pretrained(path, head=head, **kwargs)
