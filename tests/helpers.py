"""Small helpers shared by the model tests."""

import flax.linen as nn
import jax
import numpy as np

from albert_jax import model as M


def perturb(params, seed, scale=0.1):
  """Adds N(0, scale) noise to every leaf (LayerNorms and biases too), so no tensor is trivial."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_unflatten(
      tree, [np.asarray(x) + rs.normal(0, scale, x.shape).astype(np.float32) for x in leaves])


def random_params(cfg, head, seed, scale=0.1):
  """Random parameters of the right shapes, without compiling an init function (seconds each)."""
  shapes = nn.unbox(M.abstract_params(M.make_model(cfg, head)))
  return perturb(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes), seed, scale)
