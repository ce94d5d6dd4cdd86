"""The layers ALBERT is built from: activations, dense projections, LayerNorm.

Parameters carry logical axis names only (see `model.py`). `LayerNorm` is Flax's, computed the
same way, with a backward pass written out: one pass over each row instead of the several that
differentiating the forward formula gives (the largest non-matmul cost of the train step on a GPU,
by `census.py`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Dtype = Any


# ----------------------------------------------------------------------------- activations

# The GELUs with their derivatives written out: the backward pass needs only the input, which the
# remat policy keeps anyway (`ffn_hidden`), where differentiating the formula keeps its tanh (or
# erfc) as well, a second [batch, length, intermediate] array per layer; and a GPU's GEMM epilogue
# computes the forward (bias + GELU) only when nothing else reads the tanh.
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@jax.custom_vjp
def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_bwd(x, dy):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  t = jnp.tanh(_SQRT_2_OVER_PI * (xf + 0.044715 * xf ** 3))
  slope = 0.5 * (1 + t) + 0.5 * xf * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * xf * xf)
  return ((dy * slope).astype(dy.dtype),)


_gelu_tanh.defvjp(lambda x: (jax.nn.gelu(x, approximate=True), x), _gelu_tanh_bwd)


@jax.custom_vjp
def _gelu_erf(x):
  return jax.nn.gelu(x, approximate=False)


def _gelu_erf_bwd(x, dy):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  slope = 0.5 * jax.lax.erfc(-xf * math.sqrt(0.5)) + xf * jnp.exp(-0.5 * xf * xf) / math.sqrt(
      2 * math.pi)
  return ((dy * slope).astype(dy.dtype),)


_gelu_erf.defvjp(lambda x: (jax.nn.gelu(x, approximate=False), x), _gelu_erf_bwd)


# Hugging Face's ACT2FN names, computed the same way.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_10": lambda x: jnp.clip(_gelu_erf(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


# ----------------------------------------------------------------------------- dense projections

def tf_truncated_normal(stddev: float):
  """The original's `tf.truncated_normal_initializer`: N(0, stddev) cut at 2 stddev, not rescaled."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32).astype(dtype) * stddev
  return init


class Dense(nn.Module):
  """y = x . kernel + bias, contracting the last `n_in` axes of x; output axes `features`.

  Written out rather than nn.DenseGeneral: that one builds a multi-axis kernel flat and
  reshapes it, which breaks its logical-axis constraint when traced under a mesh.
  """
  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel's axes (inputs then outputs)
  n_in: int
  stddev: float
  dtype: Dtype
  param_dtype: Dtype
  use_bias: bool = True
  save_as: str | None = None  # a name for the output, biased, flat (what remat policies keep)

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.n_in:]
    kernel = self.param("kernel", nn.with_logical_partitioning(
        tf_truncated_normal(self.stddev), self.axes), in_shape + self.features, self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    # One matmul over the flattened axes, [..., in] x [in, out], reshaped afterwards:
    # [..., heads * head_dim] packs densely in TPU memory where [..., heads, head_dim=64] pads the
    # minor axis to 128 lanes (albert-large at 32 x 512 on a v5p chip: 9.6 GiB of temporaries
    # instead of 11.8, for 9% more step time by XLA's model).
    batch_shape = x.shape[:x.ndim - self.n_in]
    y = jnp.dot(x.reshape(*batch_shape, math.prod(in_shape)),
                kernel.reshape(math.prod(in_shape), math.prod(self.features)))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), self.axes[self.n_in:]), self.features, self.param_dtype)
      # Flat, along the matmul's output axis: a GPU's GEMM adds it in its epilogue.
      y = y + bias.astype(self.dtype).reshape(-1)
    if self.save_as:  # named flat: kept [..., heads * head_dim], not padded as [..., heads, 64]
      y = checkpoint_name(y, self.save_as)
    return y.reshape(*batch_shape, *self.features)


class ConcatDense(nn.Module):
  """dense(concat([a, b], -1)), computed as a . kernel[:n] + b . kernel[n:] + bias.

  The kernel is the concatenated input's ([n + m, features], as the original and Hugging Face
  store it), but each side is projected on its own and the two broadcast against each other: the
  SQuAD 2.0 head pairs every position with one start (training) or with each of the top starts
  (inference), and the original tiles the start state over the positions and projects every pair.
  """
  features: int
  axes: tuple[str | None, str | None]
  stddev: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, a, b):
    n = a.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(
        tf_truncated_normal(self.stddev), self.axes), (n + b.shape[-1], self.features),
        self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), self.axes[1:]), (self.features,), self.param_dtype)
    kernel = kernel.astype(self.dtype)
    return (jnp.dot(a.astype(self.dtype), kernel[:n]) + jnp.dot(b.astype(self.dtype), kernel[n:])
            + bias.astype(self.dtype))


# ----------------------------------------------------------------------------- LayerNorm

def _normalize(x, scale, bias, epsilon: float, dtype):
  """(y, mean, rstd): Flax's LayerNorm (`use_fast_variance=False`): statistics in float32 from the
  centred input, y = (x - mean) * (rstd * scale) + bias, cast to `dtype`."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True) + epsilon)
  return ((xf - mean) * (rstd * scale) + bias).astype(dtype), mean, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
               dtype) -> jax.Array:
  """LayerNorm over the last axis, as Flax computes it, with a hand-written backward pass."""
  return _normalize(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
  y, mean, rstd = _normalize(x, scale, bias, epsilon, dtype)
  # The barrier makes XLA keep the per-row statistics ([rows] floats) for the backward pass:
  # left to itself it recomputes them inside the fusions that need them, and the gradient of
  # `scale` (a column sum of dy * xhat, which cannot share a kernel with the row reductions)
  # then writes and rereads dy * xhat in float32 (134 of 405 MB per LayerNorm, forward and
  # backward, for albert-large's 32 x 512 on a GPU; `census.py`).
  mean, rstd = jax.lax.optimization_barrier((mean, rstd))
  return y, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(epsilon, dtype, residuals, dy):
  """dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy scale: both row means from one read
  of the row; the parameters' gradients are column sums of dy xhat and dy."""
  del epsilon, dtype
  x, mean, rstd, scale, bias = residuals
  xhat = (x.astype(mean.dtype) - mean) * rstd
  dy = dy.astype(mean.dtype)
  g = dy * scale
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
               - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
  rows = tuple(range(x.ndim - 1))
  return (dx.astype(x.dtype), jnp.sum(dy * xhat, axis=rows).astype(scale.dtype),
          jnp.sum(dy, axis=rows).astype(bias.dtype))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm(use_fast_variance=False)` over the last axis: the same parameters (`scale`,
  `bias`, named `axis_name`), the same forward values, `layer_norm`'s backward pass."""
  epsilon: float
  axis_name: str | None
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones_init(), (self.axis_name,)), features, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), (self.axis_name,)), features, self.param_dtype)
    stats = jnp.promote_types(self.param_dtype, jnp.float32)
    return layer_norm(x, scale.astype(stats), bias.astype(stats), self.epsilon, self.dtype)
