"""Optimizers against a NumPy transcription of the original's update rules, the schedule and
clipping against hand-computed numbers, the masks on the real model's parameter paths."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from albert_jax import model as M
from albert_jax import optimizer as O

# Leaf names as Flax writes them; "zero/kernel" starts at norm 0, "frozen/kernel" stays at 0.
SHAPES = {
    "albert/embeddings/LayerNorm/scale": (6,),
    "albert/embeddings/LayerNorm/bias": (6,),
    "albert/embeddings/word_embeddings/embedding": (10, 6),
    "albert/encoder/layer/attention/query/kernel": (6, 2, 3),
    "albert/encoder/layer/attention/query/bias": (2, 3),
    "albert/encoder/layer/full_layer_layer_norm/scale": (6,),
    "albert/encoder/layer/ffn/kernel": (6, 8),
    "albert/encoder/zero/kernel": (4, 4),
    "albert/encoder/frozen/kernel": (3, 2),
    "predictions/bias": (10,),
}
ZERO_PARAMS = ("albert/encoder/zero/kernel", "albert/encoder/frozen/kernel")
STEPS, TOTAL = 6, 10


def _nest(flat):
  tree = {}
  for name, x in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return tree


def _flatten(tree):
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _problem(seed=0):
  """Random params (two at zero) and STEPS random grads, some above the clip norm, some below."""
  rs = np.random.RandomState(seed)
  params = {k: rs.normal(0, 1, s).astype(np.float32) for k, s in SHAPES.items()}
  for k in ZERO_PARAMS:
    params[k] = np.zeros(SHAPES[k], np.float32)
  grads = []
  for step in range(STEPS):
    scale = [3.0, 0.05, 1.0][step % 3]
    g = {k: (scale * rs.normal(0, 1, s)).astype(np.float32) for k, s in SHAPES.items()}
    g["albert/encoder/frozen/kernel"] = np.zeros(SHAPES["albert/encoder/frozen/kernel"], np.float32)
    grads.append(g)
  return params, grads


def _cfg(**changes):
  cfg = O.default_optim_config()
  cfg.update(dict(lr=0.05, warmup_steps=2))
  cfg.update(changes)
  return cfg


# ----------------------------------------------------------------------------- the reference

def _reference_lr(cfg, step):
  """create_optimizer: tf.train.polynomial_decay over global_step, overridden during warmup."""
  decay = (cfg.lr - cfg.end_lr) * (1 - min(step, TOTAL) / TOTAL) ** cfg.decay_power + cfg.end_lr
  since = step - cfg.start_warmup_step
  if cfg.warmup_steps and since < cfg.warmup_steps:
    return cfg.lr * since / cfg.warmup_steps
  return decay


def _reference_run(cfg, params, grads, kind):
  """The original's apply_gradients, transcribed leaf by leaf in float64; `kind`: "lamb",
  "adamw" (AdamWeightDecayOptimizer) or "adamw_optax" (the same with Adam's bias correction)."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  wd_ex = cfg.exclude_from_weight_decay
  ad_ex = cfg.exclude_from_layer_adaptation or wd_ex
  for step, g in enumerate(grads):
    g = {k: x.astype(np.float64) for k, x in g.items()}
    norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))  # tf.clip_by_global_norm
    g = {k: x * cfg.clip_norm / max(norm, cfg.clip_norm) for k, x in g.items()}
    lr = _reference_lr(cfg, step)
    for name in p:
      m[name] = cfg.b1 * m[name] + (1 - cfg.b1) * g[name]
      v[name] = cfg.b2 * v[name] + (1 - cfg.b2) * g[name] ** 2
      if kind == "adamw_optax":
        t = step + 1
        update = (m[name] / (1 - cfg.b1 ** t)) / (np.sqrt(v[name] / (1 - cfg.b2 ** t)) + cfg.eps)
      else:
        update = m[name] / (np.sqrt(v[name]) + cfg.eps)
      if cfg.weight_decay and not any(re.search(r, name) for r in wd_ex):
        update = update + cfg.weight_decay * p[name]
      ratio = 1.0
      if kind == "lamb" and not any(re.search(r, name) for r in ad_ex):
        w_norm, g_norm = np.linalg.norm(p[name]), np.linalg.norm(update)
        ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
      p[name] = p[name] - ratio * lr * update
  return p


def _run(opt, params, grads, put=lambda tree: tree):
  """`opt` over `grads` from `params`, one jitted step at a time (inputs placed by `put`)."""

  @jax.jit
  def step(tree, state, g):
    updates, state = opt.update(g, state, tree)
    return optax.apply_updates(tree, updates), state

  tree = put(_nest(params))
  state = jax.jit(opt.init)(tree)
  for g in grads:
    tree, state = step(tree, state, put(_nest(g)))
  return _flatten(tree)


def _assert_close(ours, ref, params, rtol=1e-6):
  assert ours.keys() == ref.keys()
  for name in ref:
    assert np.all(np.isfinite(ours[name])), name
    np.testing.assert_allclose(ours[name], ref[name], rtol=rtol, atol=rtol / 10, err_msg=name)
    # Every tensor moved (the reference would hide a no-op), except the one with nothing to do.
    if name != "albert/encoder/frozen/kernel":
      assert np.abs(ref[name] - params[name]).max() > 1e-3, name


# ----------------------------------------------------------------------------- update rules

@pytest.mark.parametrize("kind", ["lamb", "adamw"])
def test_matches_the_original_update_rule(kind):
  params, grads = _problem()
  cfg = _cfg(name=kind)
  ours = _run(O.make_optimizer(cfg, TOTAL), params, grads)
  _assert_close(ours, _reference_run(cfg, params, grads, kind), params)


def test_lamb_layer_adaptation_exclusions_apart_from_weight_decay():
  params, grads = _problem(seed=1)
  cfg = _cfg(name="lamb", exclude_from_layer_adaptation=("embeddings", "bias"), decay_power=2.0,
             end_lr=0.01, warmup_steps=3, weight_decay=0.1)
  ref = _reference_run(cfg, params, grads, "lamb")
  _assert_close(_run(O.make_optimizer(cfg, TOTAL), params, grads), ref, params)
  # The patterns matter: with the defaults the reference lands elsewhere.
  default = _reference_run(_cfg(name="lamb", decay_power=2.0, end_lr=0.01, warmup_steps=3,
                                weight_decay=0.1), params, grads, "lamb")
  name = "albert/embeddings/word_embeddings/embedding"
  assert np.abs(default[name] - ref[name]).max() > 1e-3


def test_adamw_optax_is_bias_corrected_adamw_after_clipping():
  params, grads = _problem(seed=2)
  cfg = _cfg(name="adamw_optax")
  ours = _run(O.make_optimizer(cfg, TOTAL), params, grads)
  # optax forms 1 - b2 ** t in float32 (1e-5 off for b2 = 0.999), hence the looser tolerance
  # against the float64 transcription, and the tight one against optax itself.
  _assert_close(ours, _reference_run(cfg, params, grads, "adamw_optax"), params, rtol=1e-5)
  mask = _nest({k: not re.search("LayerNorm|layer_norm|bias", k) for k in SHAPES})
  theirs = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      O.learning_rate_schedule(cfg, TOTAL), b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
      mask=mask))
  _assert_close(ours, _run(theirs, params, grads), params)


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("power,end_lr,expected", [
    # step:     0    1     9     10                      55                       100  150
    (1.0, 0.0, [0.0, 0.05, 0.45, 0.5 * 0.9, 0.5 * 0.45, 0.0, 0.0]),
    (2.0, 0.1, [0.0, 0.05, 0.45, 0.4 * 0.81 + 0.1, 0.4 * 0.2025 + 0.1, 0.1, 0.1]),
])
def test_schedule_hand_computed(power, end_lr, expected):
  cfg = O.default_optim_config()
  cfg.update(dict(lr=0.5, warmup_steps=10, decay_power=power, end_lr=end_lr))
  schedule = O.learning_rate_schedule(cfg, 100)
  steps = [0, 1, 9, 10, 55, 100, 150]
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-6, atol=1e-9)
  # Traced steps (the optimizer's int32 count) give the same numbers.
  np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(jnp.array(steps, jnp.int32)), expected,
                             rtol=1e-6, atol=1e-9)


def test_schedule_start_warmup_step_and_no_warmup():
  cfg = O.default_optim_config()
  cfg.update(dict(lr=0.5, warmup_steps=10, start_warmup_step=5))
  schedule = O.learning_rate_schedule(cfg, 100)
  # Warmup over [5, 15); the decay still counts from step 0. Before step 5 we hold 0 (the
  # original's formula would give a negative lr there).
  got = [float(schedule(s)) for s in [0, 2, 5, 7, 14, 15]]
  np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 0.1, 0.45, 0.5 * 0.85], rtol=1e-6, atol=1e-9)
  cfg.warmup_steps = 0
  schedule = O.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose([float(schedule(s)) for s in [0, 50]], [0.5, 0.25], rtol=1e-6)


def test_pretraining_defaults_are_the_papers():
  cfg = O.default_optim_config()
  assert (cfg.name, cfg.lr, cfg.warmup_steps, cfg.clip_norm) == ("lamb", 0.00176, 3125, 1.0)
  schedule = O.learning_rate_schedule(cfg, 125000)
  np.testing.assert_allclose(float(schedule(3124)), 0.00176 * 3124 / 3125, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(3125)), 0.00176 * (1 - 3125 / 125000), rtol=1e-6)


# ----------------------------------------------------------------------------- clipping

def _adam_state(state):
  (found,) = [s for s in jax.tree_util.tree_leaves(
      state, is_leaf=lambda s: isinstance(s, O.ScaleByAdamNoBiasCorrectionState))
              if isinstance(s, O.ScaleByAdamNoBiasCorrectionState)]
  return found


@pytest.mark.parametrize("clip_norm,scale", [(1.0, 0.1), (None, 1.0), (0.0, 1.0), (20.0, 1.0)])
def test_clipping_global_norm_10(clip_norm, scale):
  params = {"a": {"kernel": jnp.ones((2,))}, "b": {"kernel": jnp.ones((1, 1))}}
  grads = {"a": {"kernel": jnp.array([6.0, 0.0])}, "b": {"kernel": jnp.array([[8.0]])}}  # norm 10
  opt = O.make_optimizer(_cfg(name="adamw", clip_norm=clip_norm), TOTAL)
  _, state = jax.jit(opt.update)(grads, opt.init(params), params)
  adam = _adam_state(state)
  # After one step m = (1 - b1) * clipped grad and v = (1 - b2) * clipped grad ** 2.
  np.testing.assert_allclose(adam.mu["a"]["kernel"], [0.1 * 6 * scale, 0.0], rtol=1e-6)
  np.testing.assert_allclose(adam.mu["b"]["kernel"], [[0.1 * 8 * scale]], rtol=1e-6)
  np.testing.assert_allclose(adam.nu["b"]["kernel"], [[0.001 * (8 * scale) ** 2]], rtol=1e-5)


# ----------------------------------------------------------------------------- masks

def test_weight_decay_mask_on_the_real_model():
  cfg = M.AlbertConfig(vocab_size=64, embedding_size=8, hidden_size=32, num_hidden_layers=2,
                       num_hidden_groups=2, num_attention_heads=4, intermediate_size=48)
  params = nn.unbox(M.abstract_params(M.make_model(cfg, "pretraining")))
  mask = _flatten(O.weight_decay_mask(params, O.default_optim_config().exclude_from_weight_decay))
  decayed = {k for k, on in mask.items() if on}
  assert decayed == {k for k in mask if k.endswith(("/kernel", "/embedding"))}
  assert all(k.endswith(("/bias", "/scale")) for k in mask.keys() - decayed)
  for name in ["albert/encoder/albert_layer_groups_0/albert_layers_0/attention/LayerNorm/scale",
               "albert/encoder/albert_layer_groups_1/albert_layers_0/full_layer_layer_norm/bias",
               "albert/encoder/albert_layer_groups_0/albert_layers_0/full_layer_layer_norm/scale",
               "albert/embeddings/LayerNorm/scale", "predictions/LayerNorm/scale",
               "predictions/bias", "predictions/dense/bias", "sop_classifier/classifier/bias"]:
    assert not mask[name], name
  for name in ["albert/embeddings/word_embeddings/embedding",
               "albert/embeddings/position_embeddings/embedding",
               "albert/encoder/albert_layer_groups_0/albert_layers_0/attention/query/kernel",
               "albert/encoder/albert_layer_groups_1/albert_layers_0/ffn_output/kernel",
               "albert/encoder/embedding_hidden_mapping_in/kernel", "albert/pooler/kernel",
               "predictions/dense/kernel", "sop_classifier/classifier/kernel"]:
    assert mask[name], name


# ----------------------------------------------------------------------------- jit, pytrees, sharding

def test_jitted_step_and_state_pytree_round_trip():
  params, grads = _problem()
  opt = O.make_optimizer(_cfg(name="lamb"), TOTAL)
  tree = _nest({k: jnp.asarray(x) for k, x in params.items()})

  @jax.jit
  def step(tree, state, g):
    updates, state = opt.update(g, state, tree)
    return optax.apply_updates(tree, updates), state

  state = jax.jit(opt.init)(tree)
  tree, state = step(tree, state, _nest(grads[0]))
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(x) for x in leaves])
  a, _ = step(tree, state, _nest(grads[1]))
  b, _ = step(tree, restored, _nest(grads[1]))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sharded_params_give_the_same_step():
  if jax.device_count() < 2:
    pytest.skip("needs several devices (conftest simulates 8 on CPU)")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("x",))
  P = jax.sharding.PartitionSpec
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(
      x, jax.sharding.NamedSharding(mesh, P("x") if x.shape[0] % 2 == 0 else P())), tree)
  assert not put(jnp.zeros((6, 8))).sharding.is_fully_replicated
  params, grads = _problem()
  cfg = _cfg(name="lamb")
  ours = _run(O.make_optimizer(cfg, TOTAL), params, grads, put)
  _assert_close(ours, _reference_run(cfg, params, grads, "lamb"), params)
