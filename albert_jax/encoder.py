"""The shared layer and the stack it runs in: embeddings, the attention and FFN blocks, the layer
group scanned (or unrolled) over depth, and the remat policies of the scanned layer.

Module and parameter names mirror Hugging Face's `modeling_albert.py`, so the conversion table in
`checkpoints/table.py` reads as a list of renames. Parameters carry logical axis names only
(`vocab`, `emb`, `hidden`, `heads`, `kv`, `mlp`); activations use `batch`, `length` and `act_*`.
`sharding.py` maps those names onto a mesh; no mesh axis is named here. The heads built on this
stack are in `model.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from albert_jax import attention as attention_lib
from albert_jax.architecture import AlbertConfig
from albert_jax.layers import ACTIVATIONS, Dense, LayerNorm, tf_truncated_normal

Dtype = Any


# ----------------------------------------------------------------------------- remat policies

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


# ----------------------------------------------------------------------------- building blocks

class _Albert(nn.Module):
  """Fields every ALBERT module shares: the config and how to run it."""
  # The packed-row features a head takes (`model.apply_to_batch` passes those a batch has); a
  # head without them refuses packed batches.
  PACKED_INPUTS: ClassVar[tuple[str, ...]] = ()
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
  def __call__(self, x, mask, deterministic, example_ids=None):
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
        example_ids=example_ids, dropout_rate=cfg.attention_probs_dropout_prob,
        deterministic=deterministic,
        dropout=lambda p: probs_dropout(p, deterministic=deterministic))

    out = self.dense(cfg.hidden_size, ("heads", "kv", "hidden"), "dense", n_in=2)(context)
    out = self.dropout(cfg.hidden_dropout_prob, out, deterministic)
    return self.layer_norm("hidden", "LayerNorm")(checkpoint_name(x + out, "attention_residual"))


class AlbertLayer(_Albert):
  """The transformer layer ALBERT shares across depth: attention block, then FFN block."""

  @nn.compact
  def __call__(self, x, mask, deterministic, example_ids=None):
    cfg = self.config
    x = AlbertAttention(**self.runtime, name="attention")(x, mask, deterministic, example_ids)
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
  def __call__(self, x, mask, example_ids=None):
    for i in range(self.config.inner_group_num):
      x = AlbertLayer(**self.runtime, name=f"albert_layers_{i}")(x, mask, self.deterministic,
                                                                 example_ids)
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
  G == L is the paper's not-shared ablation. `example_ids` (packed rows, `attention.py`) reach
  every layer's attention beside the padding mask.
  """

  @nn.compact
  def __call__(self, x, mask, deterministic, output_hidden_states=False, example_ids=None):
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
                      output_hidden_states=output_hidden_states, name=name)(x, mask, example_ids)
        if output_hidden_states:
          all_hidden.extend(ys[i] for i in range(repeats))
      else:
        # Unrolled, a recomputation is the forward pass it repeats, and XLA merges the two: no
        # remat (which would only hide the GELU from a GPU's GEMM epilogue).
        group = AlbertLayerGroup(**self.runtime, deterministic=deterministic, name=name)
        for _ in range(repeats):
          x, _ = group(x, mask, example_ids)
          all_hidden.append(x)
    return x, (tuple(all_hidden) if output_hidden_states else None)
