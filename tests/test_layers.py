"""layers.py: the LayerNorm and GELUs whose backward passes are written out, against Flax's and
jax's own formulas differentiated by autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import layers


def _flax_layer_norm(x, scale, bias, dtype, eps=1e-12):
  module = nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False)
  return module.apply({"params": {"scale": scale, "bias": bias}}, x)


def _inputs(dtype, shape=(3, 5, 16), seed=0):
  rng = np.random.RandomState(seed)
  # An offset mean and uneven scales: the centred variance is not the raw second moment.
  x = (rng.normal(size=shape) * rng.uniform(0.5, 3, size=shape[-1]) + 2.0).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, size=shape[-1]).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  return jnp.asarray(x, dtype), jnp.asarray(scale), jnp.asarray(bias)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_forward_is_flaxs(dtype):
  x, scale, bias = _inputs(dtype)
  ours = layers.LayerNorm(1e-12, "hidden", dtype, jnp.float32).apply(
      {"params": {"scale": scale, "bias": bias}}, x)
  ref = _flax_layer_norm(x, scale, bias, dtype)
  assert ours.dtype == ref.dtype == dtype
  np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(ref, np.float32))


def test_layer_norm_gradients_are_flaxs_differentiated():
  """The written-out backward pass against autodiff of Flax's LayerNorm, in float64 (where the
  two differ only by rounding), for x, scale and bias, with a random cotangent."""
  with jax.enable_x64():
    x, scale, bias = (a.astype(jnp.float64) for a in _inputs(jnp.float32))
    dy = jnp.asarray(np.random.RandomState(1).normal(size=x.shape))

    def loss(fn):
      return lambda x, s, b: jnp.sum(fn(x, s, b) * dy)

    ours = jax.grad(loss(lambda x, s, b: layers.layer_norm(x, s, b, 1e-12, jnp.float64)),
                    argnums=(0, 1, 2))(x, scale, bias)
    ref = jax.grad(loss(lambda x, s, b: _flax_layer_norm(x, s, b, jnp.float64)),
                   argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, ref):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_layer_norm_gradients_in_bfloat16_stay_close():
  """bf16 inputs (statistics in float32 either way): as close to the float64 gradient as
  Flax's differentiated in the same precision."""
  x, scale, bias = _inputs(jnp.bfloat16)
  dy = jnp.asarray(np.random.RandomState(1).normal(size=x.shape), jnp.bfloat16)

  def grad(fn, x):
    return jax.grad(lambda x: jnp.sum(fn(x).astype(jnp.float32) * dy.astype(jnp.float32)))(x)

  ours = grad(lambda x: layers.layer_norm(x, scale, bias, 1e-12, jnp.bfloat16), x)
  ref = grad(lambda x: _flax_layer_norm(x, scale, bias, jnp.bfloat16), x)
  with jax.enable_x64():
    exact = np.asarray(grad(lambda x: _flax_layer_norm(x, scale.astype(jnp.float64), bias.astype(
        jnp.float64), jnp.float64), x.astype(jnp.float64)))
  err = lambda g: np.linalg.norm(np.asarray(g, np.float64) - exact) / np.linalg.norm(exact)
  assert err(ours) <= max(1.5 * err(ref), 1e-2)


@pytest.mark.parametrize("name,approximate", [("gelu_new", True), ("gelu", False)])
def test_gelu_derivatives_are_autodiffs(name, approximate):
  """float64, over [-8, 8]: the written-out derivative equals autodiff of jax.nn.gelu, and the
  forward values are jax's."""
  with jax.enable_x64():
    x = jnp.linspace(-8.0, 8.0, 4001)
    ours = jax.vmap(jax.grad(layers.ACTIVATIONS[name]))(x)
    ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=approximate)))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(layers.ACTIVATIONS[name](x),
                                  jax.nn.gelu(x, approximate=approximate))


@pytest.mark.parametrize("name", ["gelu_new", "gelu"])
def test_gelu_backward_keeps_only_its_input(name):
  """What the backward pass needs of the GELU: its input, nothing it computed from it."""
  x = jnp.linspace(-3.0, 3.0, 64, dtype=jnp.bfloat16)
  _, residuals = jax.linearize(layers.ACTIVATIONS[name], x)
  arrays = [a for a in jax.tree_util.tree_leaves(residuals) if hasattr(a, "shape")]
  assert [a.shape for a in arrays if a.shape] == [x.shape]


def test_dense_output_name_is_the_flat_biased_matmul(capsys):
  """`save_as` names [..., heads * head_dim] with the bias added: what the remat policies keep."""
  dense = layers.Dense((2, 4), ("hidden", "heads", "kv"), 1, 0.02, jnp.float32, jnp.float32,
                       save_as="query")
  x = jnp.ones((3, 5, 6))
  params = dense.init(jax.random.key(0), x)
  fn = jax.checkpoint(lambda p, x: jnp.sin(dense.apply(p, x)),  # the backward needs the output
                      policy=jax.checkpoint_policies.save_only_these_names("query"))
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(fn, params, x)
  named = [line.split(" from ")[0] for line in capsys.readouterr().out.splitlines()
           if "named" in line]
  assert named == ["f32[3,5,8] named 'query'"]
