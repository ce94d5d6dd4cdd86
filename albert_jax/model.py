"""ALBERT's models in Flax linen: the backbone and every Hugging Face head on it, the original
SQuAD 2.0 head, and what builds, initialises and counts them (`make_model`, `HEADS`).

The architecture is `architecture.AlbertConfig` (re-exported here: `M.AlbertConfig`, `M.preset`);
the shared layer, its stack over depth and the remat policies are in `encoder.py`. Parameter
names mirror Hugging Face's `modeling_albert.py`; parameters carry logical axis names only.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from albert_jax.architecture import SIZES, VERSIONS, AlbertConfig, preset  # re-exported
from albert_jax.encoder import _Albert, AlbertEmbeddings, AlbertTransformer
from albert_jax.layers import ACTIVATIONS, ConcatDense

PyTree = Any


# ----------------------------------------------------------------------------- outputs

@flax.struct.dataclass
class BaseModelOutput:
  last_hidden_state: jax.Array
  pooler_output: jax.Array | None = None
  hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class PreTrainingOutput:
  prediction_logits: jax.Array
  sop_logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class MaskedLMOutput:
  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class ClassifierOutput:
  """Sequence, token and multiple-choice classification."""
  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class QuestionAnsweringOutput:
  start_logits: jax.Array
  end_logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class SquadV2Output:
  """The original SQuAD 2.0 head's outputs (`AlbertForSquadV2Original`), float32.

  Always `start_logits` [batch, length] (masked: -1e30 where p_mask is 1) and `cls_logits`
  [batch] (the answer-class logit: high means no answer). Given the gold start (training),
  `end_logits` [batch, length] at that start. Otherwise (inference) the beam the original
  decodes: `start_top_log_probs` / `start_top_index` [batch, start_n_top] and
  `end_top_log_probs` / `end_top_index` [batch, start_n_top, end_n_top], the ends for each top
  start (the original flattens the last two axes start-major: [batch, start_n_top * end_n_top]).
  """
  start_logits: jax.Array
  cls_logits: jax.Array
  end_logits: jax.Array | None = None
  start_top_log_probs: jax.Array | None = None
  start_top_index: jax.Array | None = None
  end_top_log_probs: jax.Array | None = None
  end_top_index: jax.Array | None = None
  hidden_states: tuple[jax.Array, ...] | None = None


def _default_inputs(input_ids, attention_mask, token_type_ids, position_ids, example_ids=None):
  if example_ids is not None:  # packed rows: the ids say which tokens are real
    attention_mask = example_ids > 0
    if position_ids is None:
      position_ids = packed_position_ids(example_ids)
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  if position_ids is None:
    position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
  return attention_mask, token_type_ids, position_ids


def packed_position_ids(example_ids: jax.Array) -> jax.Array:
  """Each token's position within its own example, [rows, length]: 0 at every example's first
  token, as if each were alone in its row (an example's tokens are contiguous in the row)."""
  length = example_ids.shape[-1]
  index = jnp.broadcast_to(jnp.arange(length), example_ids.shape)
  first = jnp.concatenate([jnp.ones_like(example_ids[..., :1], bool),
                           example_ids[..., 1:] != example_ids[..., :-1]], axis=-1)
  return index - jax.lax.cummax(jnp.where(first, index, 0), axis=example_ids.ndim - 1)


def _pooler_input(x, example_ids, cls_positions):
  """What the pooler reads: [batch, hidden] at token 0, or for packed rows each example's own
  [CLS], [rows, max_examples, hidden] at `cls_positions` [rows, max_examples]."""
  if cls_positions is not None:
    return _gather(x, cls_positions)
  if example_ids is not None:
    raise ValueError("packed rows (example_ids) need cls_positions [rows, max_examples], each "
                     "example's [CLS] position (packing.pack gives it), to pool each example")
  return x[:, 0]


# ----------------------------------------------------------------------------- models and heads

class AlbertModel(_Albert):
  """The backbone: `last_hidden_state` [batch, length, hidden], `pooler_output` [batch, hidden].

  Packed rows (`packing.pack`: several examples to a row) pass `example_ids` [rows, length] (1,
  2, ... per example, 0 for padding; `attention_mask` is then not read): attention stays within
  each example and position ids restart at each example's first token. With a pooler they pass
  `cls_positions` [rows, max_examples] too, and `pooler_output` is [rows, max_examples, hidden],
  each example's own [CLS] (empty slots hold what token 0 gives: weigh them 0).
  """
  PACKED_INPUTS = ("example_ids", "cls_positions")
  add_pooling_layer: bool = True

  def setup(self):
    self.embeddings = AlbertEmbeddings(**self.runtime)
    self.encoder = AlbertTransformer(**self.runtime)
    if self.add_pooling_layer:
      self.pooler = self.dense(self.config.hidden_size, ("hidden", None), None)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False, *,
               example_ids=None, cls_positions=None) -> BaseModelOutput:
    attention_mask, token_type_ids, position_ids = _default_inputs(
        input_ids, attention_mask, token_type_ids, position_ids, example_ids)
    x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
    x, hidden_states = self.encoder(x, attention_mask.astype(bool), deterministic,
                                    output_hidden_states, example_ids)
    pooled = None
    if self.add_pooling_layer:
      pooled = jnp.tanh(self.pooler(_pooler_input(x, example_ids, cls_positions)))
    return BaseModelOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=hidden_states)

  def attend(self, x):
    return self.embeddings.attend(x)


class AlbertMLMHead(_Albert):
  """H->E dense, activation, LayerNorm, then the decoder tied to the word embeddings + a bias."""

  @nn.compact
  def __call__(self, x, attend):
    cfg = self.config
    x = self.dense(cfg.embedding_size, ("hidden", "emb"), "dense")(x)
    x = self.layer_norm("emb", "LayerNorm")(ACTIVATIONS[cfg.hidden_act](x))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                      (cfg.vocab_size,), self.param_dtype)
    logits = attend(x) + bias.astype(self.dtype)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))


def _gather(x, positions):
  """x [batch, length, hidden] at positions [batch, P] -> [batch, P, hidden]."""
  return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)


class AlbertForPreTraining(_Albert):
  """MLM (`prediction_logits`) + sentence-order prediction (`sop_logits`).

  With `masked_lm_positions` [batch, P], MLM logits are computed at those positions only
  ([batch, P, vocab]), as the original does: the vocab projection is most of the head's cost.
  Packed rows (`example_ids`, `cls_positions`, as `AlbertModel`: several pairs to a row,
  `data/packed_pairs.py`) give `sop_logits` [rows, max_examples, 2], each pair's at its own
  [CLS]; their masked positions are positions in the row.
  """
  PACKED_INPUTS = ("example_ids", "cls_positions")

  def setup(self):
    self.albert = AlbertModel(**self.runtime)
    self.predictions = AlbertMLMHead(**self.runtime)
    self.sop_classifier = _SOPHead(**self.runtime)

  def batch_inputs(self, training: bool) -> tuple[str, ...]:
    del training
    return ("masked_lm_positions",)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False,
               masked_lm_positions=None, *, example_ids=None,
               cls_positions=None) -> PreTrainingOutput:
    out = self.albert(input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                      output_hidden_states, example_ids=example_ids, cls_positions=cls_positions)
    x = out.last_hidden_state
    if masked_lm_positions is not None:
      x = _gather(x, masked_lm_positions)
    return PreTrainingOutput(
        prediction_logits=self.predictions(x, self.albert.attend),
        sop_logits=self.sop_classifier(out.pooler_output, deterministic),
        hidden_states=out.hidden_states)


class _SOPHead(_Albert):
  """Dense on the pooled output; its HF key is `sop_classifier.classifier`.

  Its width is `num_labels`, as in HF (2 for every released checkpoint: in order / swapped).
  No dropout, as the original's `get_sentence_order_output` (HF's port adds
  classifier_dropout_prob here; the same at inference).
  """

  @nn.compact
  def __call__(self, pooled, deterministic):
    del deterministic
    logits = self.dense(self.config.num_labels, ("hidden", None), "classifier")(pooled)
    return logits.astype(jnp.float32)


class AlbertForMaskedLM(_Albert):
  """MLM logits over the vocabulary (at `masked_lm_positions` only, when given)."""

  def setup(self):
    self.albert = AlbertModel(**self.runtime, add_pooling_layer=False)
    self.predictions = AlbertMLMHead(**self.runtime)

  def batch_inputs(self, training: bool) -> tuple[str, ...]:
    del training
    return ("masked_lm_positions",)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False,
               masked_lm_positions=None) -> MaskedLMOutput:
    out = self.albert(input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                      output_hidden_states)
    x = out.last_hidden_state
    if masked_lm_positions is not None:
      x = _gather(x, masked_lm_positions)
    return MaskedLMOutput(logits=self.predictions(x, self.albert.attend),
                          hidden_states=out.hidden_states)


class AlbertForSequenceClassification(_Albert):
  """`num_labels` logits from the pooled output (one logit = regression), [batch, num_labels].

  Packed rows (`example_ids` and `cls_positions`, as `AlbertModel`) give [rows, max_examples,
  num_labels], each example's from its own [CLS]: with labels and weights packed the same way
  ([rows, max_examples], empty slots weighing 0) the per-example loss sums and their
  denominators are the unpacked ones.
  """
  PACKED_INPUTS = ("example_ids", "cls_positions")

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False, *,
               example_ids=None, cls_positions=None) -> ClassifierOutput:
    out = AlbertModel(**self.runtime, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states, example_ids=example_ids, cls_positions=cls_positions)
    x = self.dropout(self.config.classifier_dropout_prob, out.pooler_output, deterministic)
    logits = self.dense(self.config.num_labels, ("hidden", None), "classifier")(x)
    return ClassifierOutput(logits=logits.astype(jnp.float32), hidden_states=out.hidden_states)


class AlbertForTokenClassification(_Albert):
  """`num_labels` logits for every token, [batch, length, num_labels]; packed rows too
  (`example_ids`, as `AlbertModel`): each token's logits are those it has alone in its row."""
  PACKED_INPUTS = ("example_ids",)

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False, *,
               example_ids=None) -> ClassifierOutput:
    out = AlbertModel(**self.runtime, add_pooling_layer=False, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states, example_ids=example_ids)
    x = self.dropout(self.config.classifier_dropout_prob, out.last_hidden_state, deterministic)
    logits = self.dense(self.config.num_labels, ("hidden", None), "classifier")(x)
    return ClassifierOutput(logits=logits.astype(jnp.float32), hidden_states=out.hidden_states)


class AlbertForQuestionAnswering(_Albert):
  """Span extraction: `start_logits` and `end_logits` [batch, length]; packed rows too
  (`example_ids`, as `AlbertModel`): each token's logits are those it has alone in its row."""
  PACKED_INPUTS = ("example_ids",)

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False, *,
               example_ids=None) -> QuestionAnsweringOutput:
    if self.config.num_labels != 2:
      raise ValueError(f"AlbertForQuestionAnswering needs num_labels=2 (start, end), "
                       f"got {self.config.num_labels}")
    out = AlbertModel(**self.runtime, add_pooling_layer=False, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states, example_ids=example_ids)
    logits = self.dense(2, ("hidden", None), "qa_outputs")(out.last_hidden_state)
    logits = logits.astype(jnp.float32)
    return QuestionAnsweringOutput(start_logits=logits[..., 0], end_logits=logits[..., 1],
                                   hidden_states=out.hidden_states)


class AlbertForMultipleChoice(_Albert):
  """Inputs [batch, choices, length] -> one logit per choice, `logits` [batch, choices]."""

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False) -> ClassifierOutput:
    batch, choices, length = input_ids.shape
    flat = lambda t: None if t is None else t.reshape(batch * choices, length)
    out = AlbertModel(**self.runtime, name="albert")(
        flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
        deterministic, output_hidden_states)
    x = self.dropout(self.config.classifier_dropout_prob, out.pooler_output, deterministic)
    logits = self.dense(1, ("hidden", None), "classifier")(x)
    return ClassifierOutput(logits=logits.reshape(batch, choices).astype(jnp.float32),
                            hidden_states=out.hidden_states)


# ----------------------------------------------------------------------------- the SQuAD 2.0 head
# google-research/albert `squad_utils.create_v2_model`, the head behind the paper's SQuAD 2.0
# numbers (XLNet's). Transformers' ALBERT has no such head; its modules are named as XLNet's
# (`start_logits.dense`, `end_logits.{dense_0,LayerNorm,dense_1}`,
# `answer_class.{dense_0,dense_1}`), which are also the original's variable scopes.

def mask_logits(x: jax.Array, p_mask: jax.Array | None) -> jax.Array:
  """The original's `x * (1 - p) - 1e30 * p`: positions with p_mask 1 (question, [SEP], padding)
  never win a softmax or a top-k; [CLS] (p_mask 0) stays a candidate, as the null answer."""
  if p_mask is None:
    return x
  p = p_mask.astype(x.dtype)
  return x * (1 - p) - 1e30 * p


class SquadStartLogits(_Albert):
  """One logit per position: dense(hidden) -> [..., length], masked."""

  @nn.compact
  def __call__(self, hidden, p_mask):
    x = self.dense(1, ("hidden", None), "dense")(hidden)[..., 0]
    return mask_logits(x.astype(jnp.float32), p_mask)


class SquadEndLogits(_Albert):
  """dense_1(LayerNorm(tanh(dense_0([hidden; start state])))), masked.

  `hidden` [..., length, H] and `start` [..., 1, H] broadcast: the end logits of every position
  for one start (training) or, with a start axis, for each top start (inference).
  """

  @nn.compact
  def __call__(self, hidden, start, p_mask):
    cfg = self.config
    x = ConcatDense(cfg.hidden_size, ("hidden", None), cfg.initializer_range, self.dtype,
                    self.param_dtype, name="dense_0")(hidden, start)
    x = self.layer_norm("hidden", "LayerNorm")(jnp.tanh(x))
    x = self.dense(1, ("hidden", None), "dense_1")(x)[..., 0]
    return mask_logits(x.astype(jnp.float32), p_mask)


class SquadAnswerClass(_Albert):
  """The no-answer logit: dense_1(dropout(tanh(dense_0([start feature; hidden[CLS]])))), the
  last dense without a bias."""

  @nn.compact
  def __call__(self, start_feature, cls_feature, deterministic):
    cfg = self.config
    x = ConcatDense(cfg.hidden_size, ("hidden", None), cfg.initializer_range, self.dtype,
                    self.param_dtype, name="dense_0")(start_feature, cls_feature)
    x = self.dropout(cfg.classifier_dropout_prob, jnp.tanh(x), deterministic)
    x = self.dense(1, ("hidden", None), "dense_1", use_bias=False)(x)[..., 0]
    return x.astype(jnp.float32)


class AlbertForSquadV2Original(_Albert):
  """The original ALBERT SQuAD 2.0 head (`squad_utils.create_v2_model`), on the backbone.

  Start logits from a dense layer, masked by `p_mask` (1 on question tokens, [SEP] and padding;
  0 on [CLS] and the context). End logits from [hidden; hidden at the start] -> dense -> tanh ->
  LayerNorm -> dense: at the gold start when `start_positions` is given (training), else for each
  of the `start_n_top` best starts, keeping the `end_n_top` best ends of each (5 x 5, as
  run_squad_v2.py). The answer class: [sum(softmax(start) * hidden); hidden[cls_index]] -> dense
  -> tanh -> dropout (classifier_dropout_prob) -> dense without bias; it uses the softmax-weighted
  start state in training as well (Hugging Face's XLNet-style SQuADHead takes the gold start's
  state there). Returns `SquadV2Output`.
  """
  start_n_top: int = 5
  end_n_top: int = 5

  def batch_inputs(self, training: bool) -> tuple[str, ...]:
    return ("p_mask", "cls_index") + (("start_positions",) if training else ())

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False, *,
               p_mask=None, cls_index=None, start_positions=None) -> SquadV2Output:
    out = AlbertModel(**self.runtime, add_pooling_layer=False, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states)
    h = out.last_hidden_state  # [batch, length, hidden]
    batch, length = input_ids.shape
    start_logits = SquadStartLogits(**self.runtime, name="start_logits")(h, p_mask)
    end_head = SquadEndLogits(**self.runtime, name="end_logits")
    beam = {}
    if start_positions is not None:  # training: the end given the gold start
      end_logits = end_head(h, _gather(h, start_positions.reshape(batch, 1)), p_mask)
    else:  # inference: the ends of each of the top starts
      end_logits = None
      start_log_probs = jax.nn.log_softmax(start_logits, axis=-1)
      top_lp, top_index = jax.lax.top_k(start_log_probs, min(self.start_n_top, length))
      h_start = _gather(h, top_index)  # [batch, start_n_top, hidden]
      # [batch, length, 1, hidden] with [batch, 1, start_n_top, hidden] -> [batch, length, k]
      ends = end_head(h[:, :, None], h_start[:, None],
                      None if p_mask is None else p_mask[:, :, None])
      ends = jax.nn.log_softmax(jnp.swapaxes(ends, 1, 2), axis=-1)  # [batch, k, length]
      end_lp, end_index = jax.lax.top_k(ends, min(self.end_n_top, length))
      beam = dict(start_top_log_probs=top_lp, start_top_index=top_index.astype(jnp.int32),
                  end_top_log_probs=end_lp, end_top_index=end_index.astype(jnp.int32))
    start_p = jax.nn.softmax(start_logits, axis=-1).astype(h.dtype)
    start_feature = jnp.einsum("blh,bl->bh", h, start_p)
    if cls_index is None:
      cls_index = jnp.zeros((batch,), jnp.int32)  # ALBERT's [CLS] comes first
    cls_feature = _gather(h, cls_index.reshape(batch, 1))[:, 0]
    cls_logits = SquadAnswerClass(**self.runtime, name="answer_class")(
        start_feature, cls_feature, deterministic)
    return SquadV2Output(start_logits=start_logits, end_logits=end_logits, cls_logits=cls_logits,
                         hidden_states=out.hidden_states, **beam)


# Head name -> (module class, Hugging Face architecture, None where transformers has no such
# ALBERT class: saved only as an albert-jax model directory). The names `from_pretrained` accepts.
HEADS: dict[str, tuple[type[_Albert], str | None]] = {
    "base": (AlbertModel, "AlbertModel"),
    "pretraining": (AlbertForPreTraining, "AlbertForPreTraining"),
    "masked_lm": (AlbertForMaskedLM, "AlbertForMaskedLM"),
    "sequence_classification": (AlbertForSequenceClassification, "AlbertForSequenceClassification"),
    "token_classification": (AlbertForTokenClassification, "AlbertForTokenClassification"),
    "question_answering": (AlbertForQuestionAnswering, "AlbertForQuestionAnswering"),
    "multiple_choice": (AlbertForMultipleChoice, "AlbertForMultipleChoice"),
    "squad_v2_original": (AlbertForSquadV2Original, None),
}


def has_hf_class(head: str) -> bool:
  """Whether transformers has a class for `head` (every head but squad_v2_original)."""
  return HEADS[head][1] is not None


def head_from_architecture(architecture: str) -> str:
  for head, (_, arch) in HEADS.items():
    if arch is not None and arch == architecture:
      return head
  raise ValueError(f"Unknown ALBERT architecture {architecture!r}; known: "
                   f"{[arch for _, arch in HEADS.values() if arch]}")


def make_model(config: AlbertConfig, head: str = "base", **runtime) -> _Albert:
  """The module for `head` (a key of HEADS); `runtime`: dtype, param_dtype, remat_policy..."""
  if head not in HEADS:
    raise ValueError(f"Unknown head {head!r}; choose one of {sorted(HEADS)}")
  return HEADS[head][0](config=config, **runtime)


def apply_to_batch(module: _Albert, params: PyTree, batch: dict[str, jax.Array],
                   rng: jax.Array | None = None):
  """The head's outputs for a batch of features named as Hugging Face names them; dropout on
  (training) when given a `rng`. Heads that read more of the batch name it (`batch_inputs`); a
  packed batch (one with `example_ids`) passes the packed-row features its head takes."""
  extra = {k: batch[k] for k in module.batch_inputs(training=rng is not None)}
  if "example_ids" in batch:
    if not module.PACKED_INPUTS:
      raise ValueError(f"{type(module).__name__} does not take packed rows (example_ids); "
                       "the heads that do: " + ", ".join(
                           cls.__name__ for cls, _ in HEADS.values() if cls.PACKED_INPUTS))
    extra.update({k: batch[k] for k in module.PACKED_INPUTS if k in batch})
  return module.apply({"params": params}, batch["input_ids"],
                      attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], deterministic=rng is None,
                      rngs=None if rng is None else {"dropout": rng}, **extra)


def dummy_input_ids(module: _Albert, length: int = 8) -> jax.Array:
  shape = (1, 2, length) if isinstance(module, AlbertForMultipleChoice) else (1, length)
  return jnp.zeros(shape, jnp.int32)


def init_params(module: _Albert, rng: jax.Array | int = 0) -> PyTree:
  """Freshly initialised parameters (plain arrays, logical names stripped)."""
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  variables = jax.jit(module.init)(rng, dummy_input_ids(module))
  return nn.unbox(variables["params"])


def abstract_params(module: _Albert) -> PyTree:
  """Shapes and dtypes of the parameters, boxed with their logical axis names; no FLOPs spent.
  Traced once per module and mesh in a process (loads, conversions, exports and aot ask again)."""
  try:
    hash(module)
  except TypeError:  # a field that cannot be a key: traced every time
    return _trace_params(module)
  tree = _traced_params(module, jax.sharding.get_abstract_mesh())
  return jax.tree_util.tree_map(lambda x: x, tree)  # the caller's own containers


def _trace_params(module: _Albert) -> PyTree:
  return jax.eval_shape(module.init, jax.random.key(0), dummy_input_ids(module))["params"]


@functools.lru_cache(maxsize=64)
def _traced_params(module: _Albert, mesh) -> PyTree:
  del mesh  # the key: a mesh's device can choose the attention traced, not the parameters
  return _trace_params(module)


def count_params(params: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def pretraining_flops_per_example(cfg: AlbertConfig, seq_len: int, num_predictions: int) -> int:
  """Forward FLOPs of AlbertForPreTraining on one example, counting what actually runs.

  The shared layer runs num_hidden_layers * inner_group_num times (attention scores and the
  weighted sum included), the MLM head only at `num_predictions` masked positions. The usual
  6 * params * tokens rule would count the shared layer once: ~18x too few at albert-large.
  A training step costs 3x this (forward + backward).
  """
  E, H, I, V, T = (cfg.embedding_size, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size,
                   seq_len)
  layer = 2 * T * (4 * H * H + 2 * H * I) + 2 * 2 * T * T * H  # projections + FFN; QK^T and PV
  encoder = 2 * T * E * H + cfg.num_hidden_layers * cfg.inner_group_num * layer
  heads = 2 * H * H + 2 * H * 2 + num_predictions * (2 * H * E + 2 * E * V)  # pooler, SOP, MLM
  return encoder + heads
