"""The attention core, one function per implementation: softmax(q k^T / sqrt(d) + padding) v.

`xla` (the materialised softmax, any device), `splash` (the Pallas TPU kernel), `cudnn` (the fused
GPU kernel) and `auto` (`resolve` picks one per platform, dtype, length and dropout). Every one
takes q, k, v [batch, length, heads, head_dim] (q not yet scaled) and a key padding mask
[batch, length] (True: a real token) and returns the context [batch, length, heads, head_dim].
Packed rows (several examples to a row) pass `example_ids` [batch, length] as well (1, 2, ...
per example, 0 for padding): each token then attends to its own example's tokens only, padding
to padding, so no query is ever left without keys.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

IMPLEMENTATIONS = ("xla", "splash", "cudnn", "auto")
SPLASH_BLOCKS = (512, 256, 128)  # tried in order; the largest that divides the length is used
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
# The logical names of q, k, v and the context (`sharding.py` maps them onto the mesh).
QKV_AXES = ("batch", "length", "act_heads", "act_kv")
# What the default remat policy keeps of attention (`encoder.REMAT_POLICIES`), so that the backward
# pass does not run the forward again: `xla`'s context and the splash kernel's own residuals
# (its output and softmax statistics) by these names, and the outputs of the primitive jax's
# cuDNN attention binds for its forward pass (the context and the statistics).
ATTENTION_CONTEXT = "attention_context"
SPLASH_RESIDUALS = "splash_residuals"
FUSED_FORWARD_PRIMITIVES = ("dot_product_attention_fwd_wrapper", "dot_product_attention_fwd")


def resolve(name: str, platform: str, dtype, length: int, dropout_active: bool) -> str:
  """The implementation `name` stands for on `platform` ("tpu", "gpu", "cpu"); `auto` picks
  splash on TPU when the length is a multiple of its block, cudnn on GPU in bf16/fp16, else
  xla, and never a fused kernel when attention dropout is active (neither kernel has it).

  Callers that build for another platform than this host's (AOT compilation for a TPU slice on
  a CPU host) pass the target's; inside the model `auto` uses `target_platform()`.
  """
  check_name(name)
  if name != "auto":
    return name
  if dropout_active:
    return "xla"
  if platform == "tpu" and length % SPLASH_BLOCKS[-1] == 0:
    return "splash"
  if platform in ("gpu", "cuda") and jnp.dtype(dtype) in CUDNN_DTYPES:
    return "cudnn"
  return "xla"


def check_name(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention={name!r} is not one of {list(IMPLEMENTATIONS)}")


def target_platform() -> str:
  """The platform being compiled for: the current mesh's devices' (a TPU topology's when
  compiling ahead of time on a CPU host), else the default backend's."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def attend(name: str, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
           example_ids: jax.Array | None = None, dropout_rate: float = 0.0,
           deterministic: bool = True,
           dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """The context by implementation `name` (`auto` resolved here). With `example_ids` (packed
  rows) attention stays within each example and `mask` is not read. `dropout` applies attention
  dropout to the probabilities (xla only); the fused kernels refuse an active one."""
  dropout_active = dropout_rate > 0 and not deterministic
  name = resolve(name, target_platform(), q.dtype, q.shape[1], dropout_active)
  if name != "xla" and dropout_active:
    raise ValueError(f"attention={name!r} has no attention dropout, but "
                     f"attention_probs_dropout_prob={dropout_rate} in training: use "
                     "attention='xla' (or 'auto'), or set attention_probs_dropout_prob=0")
  if name == "xla":
    return xla(q, k, v, mask, example_ids=example_ids, dropout=dropout)
  if name == "splash":
    return splash(q, k, v, mask, example_ids=example_ids)
  return cudnn(q, k, v, mask, example_ids=example_ids)


def same_example(example_ids: jax.Array) -> jax.Array:
  """[batch, 1, q, k]: True where query and key belong to the same example (or are both
  padding): the block-diagonal mask of packed rows, shared by every head."""
  return example_ids[:, None, :, None] == example_ids[:, None, None, :]


def _scale(q: jax.Array) -> jax.Array:
  return q * jnp.asarray(1 / math.sqrt(q.shape[-1]), q.dtype)


# ----------------------------------------------------------------------------- xla

def xla(q, k, v, mask, *, example_ids: jax.Array | None = None,
        dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """The materialised [batch, heads, q, k] softmax in float32, as Hugging Face computes it."""
  # Scale q, not the [b, h, q, k] scores: one pass over heads x length x head_dim instead of
  # heads x length^2 (forward and backward); the mask is added as a [b, 1, 1, k] bias, or for
  # packed rows the block-diagonal one as a [b, 1, q, k] bias.
  q = _scale(q)
  if example_ids is None:
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
  else:
    bias = jnp.where(same_example(example_ids), 0.0, jnp.finfo(jnp.float32).min)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  if dropout is not None:
    probs = dropout(probs)
  return checkpoint_name(jnp.einsum("bhqk,bkhd->bqhd", probs, v), ATTENTION_CONTEXT)


# ----------------------------------------------------------------------------- splash (TPU)

def splash_block(length: int) -> int:
  """The kernel's block size for `length`: the largest of SPLASH_BLOCKS dividing it."""
  for block in SPLASH_BLOCKS:
    if length % block == 0:
      return block
  raise ValueError(f"attention='splash' needs the sequence length to be a multiple of its "
                   f"block size {SPLASH_BLOCKS[-1]}; got length {length} (pad the inputs to a "
                   f"multiple of {SPLASH_BLOCKS[-1]}, or use attention='xla')")


def _splash_modules():
  """jax's splash kernel and mask modules, imported on first use: GPU and CPU runs never import
  the TPU kernels, so a jax release that moves them breaks splash alone."""
  # Here, not at the top: see the docstring.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask  # as above
  return splash_attention_kernel, splash_attention_mask


def _splash_kernel(heads: int, length: int, interpret: bool):
  """The kernel for [heads, length, head_dim] inputs: no static mask (padding comes as segment
  ids), one block size for the forward pass and the backward one, which computes dq, dk and dv
  in one kernel (fused: 0.1 GiB fewer temporaries per v5p chip for albert-large at 32 x 512, the
  same cost-model time). Built at each trace, not cached: it holds arrays, which are tracers of
  the trace that built it."""
  splash_lib, mask_lib = _splash_modules()
  block = splash_block(length)
  mask = mask_lib.MultiHeadMask([mask_lib.FullMask((length, length)) for _ in range(heads)])
  sizes = splash_lib.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      use_fused_bwd_kernel=True)
  return splash_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    residual_checkpoint_name=SPLASH_RESIDUALS,
                                    interpret=interpret)


def _splash_segments(ids, packed: bool):
  """The kernel's (query ids, key ids) [batch, length]: a query attends to keys of its own id.

  `ids` is the padding mask, or for packed rows the example ids. Unpacked, every query attends
  to the real keys only (kv id 1; padding 0, query ids all 1), as xla's bias does, and an example
  without a real token (a padding row of an eval batch) attends to all its keys instead: a
  segment mask never leaves a query row without keys (the kernel's softmax would divide by
  zero), and the row's output is discarded anyway. Packed, both are the example ids: padding
  (id 0) attends to padding, so no row is empty there either.
  """
  if packed:
    ids = ids.astype(jnp.int32)
    return ids, ids
  real = ids.astype(bool)
  kv_ids = jnp.where(jnp.any(real, axis=-1, keepdims=True), real, True).astype(jnp.int32)
  return jnp.ones(ids.shape, jnp.int32), kv_ids


def _splash_local(q, k, v, ids, *, packed: bool, interpret: bool):
  """The kernel on one device's shard: [batch, length, heads, head_dim] in and out; `ids` the
  padding mask or the example ids (`packed`)."""
  _, length, heads, _ = q.shape
  kernel = _splash_kernel(heads, length, interpret)
  q_ids, kv_ids = _splash_segments(ids, packed)
  segments = _splash_modules()[0].SegmentIds(q=q_ids, kv=kv_ids)
  # [batch, length, heads, head_dim] -> [batch, heads, length, head_dim], the kernel's layout
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (_scale(q), k, v))
  out = jax.vmap(kernel)(q, k, v, segments)
  return jnp.swapaxes(out, 1, 2)


def splash(q, k, v, mask, *, example_ids: jax.Array | None = None,
           interpret: bool | None = None) -> jax.Array:
  """Splash attention (Pallas, TPU); on other platforms the same kernel in interpret mode.

  No attention dropout. Padding, and packed rows' examples, go in as the kernel's segment ids
  (`_splash_segments`). Under a mesh the kernel runs per shard (`shard_map`: XLA cannot
  partition a Pallas call), the batch and heads split as the logical rules place QKV_AXES.
  """
  splash_block(q.shape[1])  # fail here, with the length, not inside the kernel
  if interpret is None:
    interpret = target_platform() != "tpu"
  packed = example_ids is not None
  local = functools.partial(_splash_local, packed=packed, interpret=interpret)
  ids = example_ids if packed else mask
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, ids)
  qkv_spec = nn.logical_to_mesh_axes(QKV_AXES)
  mask_spec = jax.sharding.PartitionSpec(qkv_spec[0], qkv_spec[1])
  if qkv_spec[1] is not None:
    raise ValueError(f"attention='splash' cannot split the sequence (the rules map 'length' to "
                     f"{qkv_spec[1]!r}); use attention='xla'")
  # check_vma=False: pallas_call has no rule for which mesh axes its outputs vary over.
  return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, mask_spec),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, ids)


# ----------------------------------------------------------------------------- cudnn (GPU)

def cudnn(q, k, v, mask, *, example_ids: jax.Array | None = None,
          implementation: str = "cudnn") -> jax.Array:
  """cuDNN's fused attention (`jax.nn.dot_product_attention`), bf16/fp16 only, no dropout.

  Padding goes in as each example's number of real tokens, so the inputs must be right padded
  (real tokens first), as every ALBERT input is. An example without a real token gets length 1
  (no query row may be left without keys); its output is discarded anyway.
  Packed rows go in as the block-diagonal boolean mask (`same_example`), which jax hands cuDNN
  as a [batch, 1, q, k] bias: cuDNN's own packed layout (`q_offsets`) is not reachable through
  jax.nn and cannot be compiled on a host without a GPU (docs/model.md, "Packed rows").
  `implementation="xla"` runs the same call through XLA (how the tests check the plumbing
  where there is no GPU).
  """
  if implementation == "cudnn" and jnp.dtype(q.dtype) not in CUDNN_DTYPES:
    raise ValueError(f"attention='cudnn' needs bfloat16 or float16 inputs, got {q.dtype} (set "
                     "config.dtype='bfloat16', or use attention='xla')")
  if example_ids is not None:
    return jax.nn.dot_product_attention(q, k, v, mask=same_example(example_ids),
                                        scale=1 / math.sqrt(q.shape[-1]),
                                        implementation=implementation)
  lengths = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1), 1)  # [batch]
  return jax.nn.dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]),
                                      key_value_seq_lengths=lengths,
                                      implementation=implementation)
