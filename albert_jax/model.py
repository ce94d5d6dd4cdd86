"""ALBERT in Flax linen: the config, the shared layer scanned over depth, and every HF head.

Module and parameter names mirror Hugging Face's `modeling_albert.py`, so the conversion table in
`hf_convert.py` reads as a list of renames. Parameters carry logical axis names only
(`vocab`, `emb`, `hidden`, `heads`, `kv`, `mlp`); activations use `batch`, `length` and `act_*`.
`sharding.py` maps those names onto a mesh; no mesh axis is named here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from albert_jax import attention as attention_lib
from albert_jax.layers import ACTIVATIONS, ConcatDense, Dense, LayerNorm, tf_truncated_normal

Dtype = Any
PyTree = Any


# ----------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class AlbertConfig:
  """The model's hyperparameters; field names and defaults are Hugging Face's `AlbertConfig`."""

  vocab_size: int = 30000
  embedding_size: int = 128
  hidden_size: int = 4096
  num_hidden_layers: int = 12
  num_hidden_groups: int = 1
  num_attention_heads: int = 64
  intermediate_size: int = 16384
  inner_group_num: int = 1
  hidden_act: str = "gelu_new"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  classifier_dropout_prob: float = 0.1
  pad_token_id: int = 0
  bos_token_id: int = 2
  eos_token_id: int = 3
  # Classification heads (HF keeps these on PretrainedConfig): `num_labels` outputs, named by
  # `id2label` when the checkpoint names them. num_labels == 1 means regression.
  num_labels: int = 2
  id2label: tuple[str, ...] = ()

  def __post_init__(self):
    problems = []
    if self.hidden_size % self.num_attention_heads:
      problems.append(f"hidden_size={self.hidden_size} is not divisible by "
                      f"num_attention_heads={self.num_attention_heads}")
    if self.num_hidden_groups < 1 or self.num_hidden_layers % self.num_hidden_groups:
      problems.append(f"num_hidden_layers={self.num_hidden_layers} is not a multiple of "
                      f"num_hidden_groups={self.num_hidden_groups}")
    if self.inner_group_num < 1:
      problems.append(f"inner_group_num={self.inner_group_num} must be >= 1")
    if self.hidden_act not in ACTIVATIONS:
      problems.append(f"hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
    if self.id2label and len(self.id2label) != self.num_labels:
      problems.append(f"id2label has {len(self.id2label)} names but num_labels={self.num_labels}")
    if problems:
      raise ValueError("Invalid AlbertConfig: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes) -> "AlbertConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, d: dict) -> "AlbertConfig":
    """Builds a config from a Hugging Face `config.json` dict; unknown keys are ignored."""
    model_type = d.get("model_type", "albert")
    if model_type != "albert":
      raise ValueError(f"config.json has model_type={model_type!r}; only 'albert' is supported")
    pet = d.get("position_embedding_type", "absolute")
    if pet != "absolute":
      raise ValueError(f"config.json has position_embedding_type={pet!r}; only 'absolute' is "
                       "supported (every released ALBERT checkpoint uses it)")
    names = {f.name for f in dataclasses.fields(cls)} - {"num_labels", "id2label"}
    kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
    if d.get("id2label"):
      labels = {int(k): v for k, v in d["id2label"].items()}
      if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"config.json id2label keys {sorted(labels)} are not 0..n-1")
      kwargs["num_labels"] = len(labels)
      names_ = tuple(labels[i] for i in range(len(labels)))
      if names_ != tuple(f"LABEL_{i}" for i in range(len(labels))):
        kwargs["id2label"] = names_
    elif "num_labels" in d:
      kwargs["num_labels"] = int(d["num_labels"])
    return cls(**kwargs)

  def to_hf_dict(self) -> dict:
    """The `config.json` dict Hugging Face writes for this config (without `architectures`)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d.pop("num_labels")
    labels = d.pop("id2label") or tuple(f"LABEL_{i}" for i in range(self.num_labels))
    d["id2label"] = {str(i): name for i, name in enumerate(labels)}
    d["label2id"] = {name: i for i, name in enumerate(labels)}
    d["model_type"] = "albert"
    d["position_embedding_type"] = "absolute"
    return d


def _preset(hidden, layers, heads, intermediate):
  return dict(embedding_size=128, hidden_size=hidden, num_hidden_layers=layers,
              num_attention_heads=heads, intermediate_size=intermediate)


# The released ALBERT sizes (paper, Table 1), and `tiny`: minutes on a laptop CPU (`make demo`).
# v2 differs from v1 only in these settings.
SIZES = {
    "tiny": dict(embedding_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512),
    "base": _preset(768, 12, 12, 3072),
    "large": _preset(1024, 24, 16, 4096),
    "xlarge": _preset(2048, 24, 16, 8192),
    "xxlarge": _preset(4096, 12, 64, 16384),
}
VERSIONS = {
    "v1": dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
    "v2": dict(hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


def preset(name: str, **overrides) -> AlbertConfig:
  """`preset("large")`, `preset("large-v1")`, `preset("albert-base-v2", vocab_size=...)`."""
  key = name.removeprefix("albert-").replace(",", "-")
  size, _, version = key.partition("-")
  version = version or "v2"
  if size not in SIZES or version not in VERSIONS:
    raise ValueError(f"Unknown ALBERT preset {name!r}: sizes {sorted(SIZES)}, versions "
                     f"{sorted(VERSIONS)} (e.g. 'large' or 'large-v1')")
  return AlbertConfig(**{**SIZES[size], **VERSIONS[version], **overrides})


# Rematerialisation of the scanned layer (`remat_policy`): what the backward pass may keep.
# Why the scan needs one: without it every iteration stacks all that autodiff saves per op (26
# buffers a layer: f32 softmax pieces, six copies of the GELU's input), which XLA cannot fuse
# away across a loop as it does unrolled, so the scan needs twice the loop's HBM and is slower.
# The kept values are ones the forward pass writes anyway (matmul outputs with their biases, the
# residual sums, what the attention kernel returns), so a GPU's GEMM epilogues can still add the
# biases, the GELU and the residuals in place, and neither policy below reruns attention.
MATMUL_OUTPUTS = ("query", "key", "value", attention_lib.ATTENTION_CONTEXT,
                  attention_lib.SPLASH_RESIDUALS, "attention_residual", "ffn_hidden",
                  "ffn_residual")
LEAN = tuple(n for n in MATMUL_OUTPUTS if n not in ("query", "attention_residual"))


def _attention_kernel_outputs(prim, *_, **__) -> bool:
  """Keep what a fused attention kernel's forward returns: not keeping it reruns the kernel."""
  return prim.name in attention_lib.FUSED_FORWARD_PRIMITIVES


def _keep(*names):
  return jax.checkpoint_policies.save_from_both_policies(
      jax.checkpoint_policies.save_only_these_names(*names), _attention_kernel_outputs)


DEFAULT_REMAT = "auto"  # `resolve_remat_policy`
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    # Keep every weight matmul's output with its bias (q, k, v, the FFN's pre-activation, and the
    # two output projections as the residual sums they feed) and the attention kernel's forward
    # outputs (the context and its softmax statistics): the backward pass reruns no matmul and
    # no attention, only LayerNorms and the activation. `auto` on CPU and GPU.
    "matmul_outputs": _keep(*MATMUL_OUTPUTS),
    # `matmul_outputs` less q and the attention block's residual sum: the backward pass recomputes
    # the query and output projections (4 of the layer's 24 hidden^2 FLOPs per token, which XLA's
    # TPU cost model prices at no extra step time) so that the kept stacks, the splash kernel's
    # [heads, length, 64] output among them, fit in the HBM `dots_with_no_batch_dims` needed.
    # `auto` on TPU (README, "The scan").
    "lean": _keep(*LEAN),
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, attention's too
    # Keep the outputs of matmuls with weights, before their biases (q, k, v, the output and FFN
    # projections); recompute attention's scores and softmax, LayerNorms and the activation. The
    # default before `auto`: it reruns a fused attention kernel's forward.
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep the FFN block's residual sum (the last LayerNorm's input, [batch, length, hidden]): the
    # backward pass recomputes all but the FFN output projection, 8 of the layer's 24 hidden^2
    # FLOPs per token, for one activation per layer beside the layer input.
    "ffn_residual": jax.checkpoint_policies.save_only_these_names("ffn_residual"),
    # Keep both residual sums (both LayerNorm inputs): neither output projection is recomputed
    # (10 of 24) for two activations per layer beside the layer input.
    "layer_norm_inputs": jax.checkpoint_policies.save_only_these_names(
        "attention_residual", "ffn_residual"),
}


def resolve_remat_policy(name: str, platform: str) -> str:
  """The policy `name` stands for on `platform`: `auto` is `lean` on TPU (HBM), else
  `matmul_outputs` (a CPU is bound by compute; a GPU's layers are unrolled by default, where no
  policy applies, see `resolve_layer_loop`)."""
  if name != "auto" and name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={name!r} is not one of {sorted(REMAT_POLICIES)} or 'auto'")
  if name != "auto":
    return name
  return "lean" if platform == "tpu" else "matmul_outputs"


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


# ----------------------------------------------------------------------------- building blocks

class _Albert(nn.Module):
  """Fields every ALBERT module shares: the config and how to run it."""
  config: AlbertConfig
  dtype: Dtype = jnp.float32  # compute dtype (bf16 on accelerators)
  param_dtype: Dtype = jnp.float32
  remat_policy: str = DEFAULT_REMAT  # a key of REMAT_POLICIES
  attention: str = "auto"  # xla | splash | cudnn | auto (attention.py)
  layer_loop: str = "auto"  # scan | unroll | auto (`resolve_layer_loop`)

  def __post_init__(self):
    attention_lib.check_name(self.attention)
    resolve_layer_loop(self.layer_loop, "cpu")  # valid names
    resolve_remat_policy(self.remat_policy, "cpu")
    super().__post_init__()

  @property
  def runtime(self) -> dict:
    return dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                remat_policy=self.remat_policy, attention=self.attention,
                layer_loop=self.layer_loop)

  def batch_inputs(self, training: bool) -> tuple[str, ...]:
    """Batch features this head reads beyond `input_ids`, `attention_mask`, `token_type_ids`,
    passed to it as keyword arguments by `apply_to_batch`."""
    del training
    return ()

  def dense(self, features, axes, name, n_in=1, use_bias=True, save_as=None):
    """A dense layer over the last `n_in` input axes; kernel and bias carry logical names `axes`;
    `save_as` names its output for the remat policies."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(features, axes, n_in, self.config.initializer_range, self.dtype,
                 self.param_dtype, use_bias=use_bias, save_as=save_as, name=name)

  def layer_norm(self, axis_name, name):
    return LayerNorm(self.config.layer_norm_eps, axis_name, self.dtype, self.param_dtype,
                     name=name)

  def dropout(self, rate, x, deterministic):
    return nn.Dropout(rate=rate)(x, deterministic=deterministic)


class AlbertEmbeddings(_Albert):
  """Word + position + token-type embeddings (E-dim), LayerNorm, dropout."""

  def setup(self):
    cfg = self.config
    def embed(num, axes):
      return nn.Embed(num, cfg.embedding_size, dtype=self.dtype, param_dtype=self.param_dtype,
                      embedding_init=nn.with_logical_partitioning(
                          tf_truncated_normal(cfg.initializer_range), axes))
    self.word_embeddings = embed(cfg.vocab_size, ("vocab", "emb"))
    self.position_embeddings = embed(cfg.max_position_embeddings, (None, "emb"))
    self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "emb"))
    self.LayerNorm = self.layer_norm("emb", None)
    self.drop = nn.Dropout(rate=cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
    x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
         + self.token_type_embeddings(token_type_ids))
    x = self.drop(self.LayerNorm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "act_emb"))

  def attend(self, x):
    """x @ word_embeddings.T: the MLM decoder, tied to the input embeddings."""
    return self.word_embeddings.attend(x)


class AlbertAttention(_Albert):
  """Multi-head self-attention, output projection, dropout, residual, LayerNorm."""

  @nn.compact
  def __call__(self, x, mask, deterministic):
    cfg = self.config
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    def project(name):  # [batch, length, hidden] -> [batch, length, heads, head_dim]
      y = self.dense((heads, head_dim), ("hidden", "heads", "kv"), name, save_as=name)(x)
      return nn.with_logical_constraint(y, ("batch", "length", "act_heads", "act_kv"))
    q, k, v = project("query"), project("key"), project("value")

    # Created whatever the implementation, so the output dropout below keeps its name (and rng).
    probs_dropout = nn.Dropout(rate=cfg.attention_probs_dropout_prob)
    # init runs xla: attention has no parameters, and the 8-token dummy input is shorter than
    # a splash block.
    context = attention_lib.attend(
        "xla" if self.is_initializing() else self.attention, q, k, v, mask,
        dropout_rate=cfg.attention_probs_dropout_prob, deterministic=deterministic,
        dropout=lambda p: probs_dropout(p, deterministic=deterministic))

    out = self.dense(cfg.hidden_size, ("heads", "kv", "hidden"), "dense", n_in=2)(context)
    out = self.dropout(cfg.hidden_dropout_prob, out, deterministic)
    return self.layer_norm("hidden", "LayerNorm")(checkpoint_name(x + out, "attention_residual"))


class AlbertLayer(_Albert):
  """The transformer layer ALBERT shares across depth: attention block, then FFN block."""

  @nn.compact
  def __call__(self, x, mask, deterministic):
    cfg = self.config
    x = AlbertAttention(**self.runtime, name="attention")(x, mask, deterministic)
    h = self.dense(cfg.intermediate_size, ("hidden", "mlp"), "ffn", save_as="ffn_hidden")(x)
    h = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "act_mlp"))
    h = self.dense(cfg.hidden_size, ("mlp", "hidden"), "ffn_output")(h)
    # The original applies dropout to the FFN output; HF's port drops it (same at eval time).
    h = self.dropout(cfg.hidden_dropout_prob, h, deterministic)
    x = self.layer_norm("hidden", "full_layer_layer_norm")(checkpoint_name(h + x, "ffn_residual"))
    return nn.with_logical_constraint(x, ("batch", "length", "act_hidden"))


class AlbertLayerGroup(_Albert):
  """`inner_group_num` layers applied in sequence: one iteration of the scan (carry -> carry)."""
  deterministic: bool = True
  output_hidden_states: bool = False  # emit the carry per iteration (costs [L, ...] memory)

  @nn.compact
  def __call__(self, x, mask):
    for i in range(self.config.inner_group_num):
      x = AlbertLayer(**self.runtime, name=f"albert_layers_{i}")(x, mask, self.deterministic)
    return x, (x if self.output_hidden_states else None)


def layer_group_class(remat_policy: str, platform: str = "cpu") -> type[AlbertLayerGroup]:
  """What the scan applies per iteration: the layer group, rematerialised as `remat_policy`
  (`auto` resolved for `platform`)."""
  remat_policy = resolve_remat_policy(remat_policy, platform)
  if remat_policy == "none":
    return AlbertLayerGroup
  return nn.remat(AlbertLayerGroup, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)


LAYER_LOOPS = ("scan", "unroll", "auto")


def resolve_layer_loop(name: str, platform: str) -> str:
  """How the encoder applies its layers on `platform`: `scan` (one compiled layer, a loop over
  depth; what the remat policy is for), `unroll` (a Python loop: the program holds every
  application), or for `auto` unrolled on a GPU and scanned elsewhere. On a GPU the scan's stacks
  of kept activations (zero-filled, then copied into) and its per-iteration gradient sums cost
  more than the whole of the unrolled program's non-matmul work (albert-large, 32 x 512:
  `census.py`, README "On a GPU"); on a TPU the scan is as fast and needs far less HBM, on the
  CPU it is as fast and compiles in a fraction of the time."""
  if name not in LAYER_LOOPS:
    raise ValueError(f"layer_loop={name!r} is not one of {list(LAYER_LOOPS)}")
  if name != "auto":
    return name
  return "unroll" if platform in ("gpu", "cuda") else "scan"


class AlbertTransformer(_Albert):
  """E->H projection, then each of the `num_hidden_groups` groups applied L/G times in a row.

  Each group's weights exist once (`variable_broadcast="params"`) however many times the scan
  applies them, so depth costs neither parameters nor compile time; unrolled (`layer_loop`), the
  same weights are applied in a Python loop. Layer i uses group i // (L / G), as in Hugging Face;
  G == L is the paper's not-shared ablation.
  """

  @nn.compact
  def __call__(self, x, mask, deterministic, output_hidden_states=False):
    cfg = self.config
    x = self.dense(cfg.hidden_size, ("emb", "hidden"), "embedding_hidden_mapping_in")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_hidden"))
    repeats = cfg.num_hidden_layers // cfg.num_hidden_groups
    scan = resolve_layer_loop(self.layer_loop, attention_lib.target_platform()) == "scan"
    all_hidden = [x]
    for g in range(cfg.num_hidden_groups):
      name = f"albert_layer_groups_{g}"
      if scan:
        stack = nn.scan(layer_group_class(self.remat_policy, attention_lib.target_platform()),
                        variable_broadcast="params",
                        split_rngs={"params": False, "dropout": True},
                        in_axes=nn.broadcast, length=repeats)
        x, ys = stack(**self.runtime, deterministic=deterministic,
                      output_hidden_states=output_hidden_states, name=name)(x, mask)
        if output_hidden_states:
          all_hidden.extend(ys[i] for i in range(repeats))
      else:
        # Unrolled, a recomputation is the forward pass it repeats, and XLA merges the two: no
        # remat (which would only hide the GELU from a GPU's GEMM epilogue).
        group = AlbertLayerGroup(**self.runtime, deterministic=deterministic, name=name)
        for _ in range(repeats):
          x, _ = group(x, mask)
          all_hidden.append(x)
    return x, (tuple(all_hidden) if output_hidden_states else None)


def _default_inputs(input_ids, attention_mask, token_type_ids, position_ids):
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  if position_ids is None:
    position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
  return attention_mask, token_type_ids, position_ids


# ----------------------------------------------------------------------------- models and heads

class AlbertModel(_Albert):
  """The backbone: `last_hidden_state` [batch, length, hidden] and `pooler_output` [batch, hidden]."""
  add_pooling_layer: bool = True

  def setup(self):
    self.embeddings = AlbertEmbeddings(**self.runtime)
    self.encoder = AlbertTransformer(**self.runtime)
    if self.add_pooling_layer:
      self.pooler = self.dense(self.config.hidden_size, ("hidden", None), None)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False) -> BaseModelOutput:
    attention_mask, token_type_ids, position_ids = _default_inputs(
        input_ids, attention_mask, token_type_ids, position_ids)
    x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
    x, hidden_states = self.encoder(x, attention_mask.astype(bool), deterministic,
                                    output_hidden_states)
    pooled = jnp.tanh(self.pooler(x[:, 0])) if self.add_pooling_layer else None
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
  """

  def setup(self):
    self.albert = AlbertModel(**self.runtime)
    self.predictions = AlbertMLMHead(**self.runtime)
    self.sop_classifier = _SOPHead(**self.runtime)

  def batch_inputs(self, training: bool) -> tuple[str, ...]:
    del training
    return ("masked_lm_positions",)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False,
               masked_lm_positions=None) -> PreTrainingOutput:
    out = self.albert(input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                      output_hidden_states)
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
  """`num_labels` logits from the pooled output (one logit = regression)."""

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False) -> ClassifierOutput:
    out = AlbertModel(**self.runtime, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states)
    x = self.dropout(self.config.classifier_dropout_prob, out.pooler_output, deterministic)
    logits = self.dense(self.config.num_labels, ("hidden", None), "classifier")(x)
    return ClassifierOutput(logits=logits.astype(jnp.float32), hidden_states=out.hidden_states)


class AlbertForTokenClassification(_Albert):
  """`num_labels` logits for every token."""

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_hidden_states: bool = False) -> ClassifierOutput:
    out = AlbertModel(**self.runtime, add_pooling_layer=False, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states)
    x = self.dropout(self.config.classifier_dropout_prob, out.last_hidden_state, deterministic)
    logits = self.dense(self.config.num_labels, ("hidden", None), "classifier")(x)
    return ClassifierOutput(logits=logits.astype(jnp.float32), hidden_states=out.hidden_states)


class AlbertForQuestionAnswering(_Albert):
  """Span extraction: `start_logits` and `end_logits` [batch, length]."""

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               deterministic: bool = True,
               output_hidden_states: bool = False) -> QuestionAnsweringOutput:
    if self.config.num_labels != 2:
      raise ValueError(f"AlbertForQuestionAnswering needs num_labels=2 (start, end), "
                       f"got {self.config.num_labels}")
    out = AlbertModel(**self.runtime, add_pooling_layer=False, name="albert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic,
        output_hidden_states)
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
  (training) when given a `rng`. Heads that read more of the batch name it (`batch_inputs`)."""
  extra = {k: batch[k] for k in module.batch_inputs(training=rng is not None)}
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
  """Shapes and dtypes of the parameters, boxed with their logical axis names; no FLOPs spent."""
  return jax.eval_shape(module.init, jax.random.key(0), dummy_input_ids(module))["params"]


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
