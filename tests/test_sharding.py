"""Mesh construction, golden parameter specs per strategy, and sharded == single-device steps."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from albert_jax import model as M
from albert_jax import optimizer, sharding, steps
from albert_jax.tasks import pretraining
from helpers import random_params

CFG = M.AlbertConfig(vocab_size=96, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=64)
LAYER = "albert/encoder/albert_layer_groups_0/albert_layers_0"

# The expected spec of every parameter kind, per strategy (a golden table: a new parameter, or a
# changed rule, shows up here).
GOLDEN = {
    "data_parallel": {},
    "fsdp": {
        "albert/embeddings/word_embeddings/embedding": P("fsdp", None),
        "albert/encoder/embedding_hidden_mapping_in/kernel": P(None, "fsdp"),
        "albert/encoder/embedding_hidden_mapping_in/bias": P("fsdp"),
        f"{LAYER}/attention/query/kernel": P("fsdp", None, None),
        f"{LAYER}/attention/dense/kernel": P(None, None, "fsdp"),
        f"{LAYER}/attention/LayerNorm/scale": P("fsdp"),
        f"{LAYER}/ffn/kernel": P("fsdp", None),
        f"{LAYER}/ffn_output/kernel": P(None, "fsdp"),
        "albert/pooler/kernel": P("fsdp", None),
        "predictions/dense/kernel": P("fsdp", None),
        "predictions/bias": P("fsdp"),
        "sop_classifier/classifier/kernel": P("fsdp", None),
    },
    "fsdp_tensor": {
        "albert/embeddings/word_embeddings/embedding": P("tensor", None),
        "albert/encoder/embedding_hidden_mapping_in/kernel": P(None, "fsdp"),
        f"{LAYER}/attention/query/kernel": P("fsdp", "tensor", None),
        f"{LAYER}/attention/query/bias": P("tensor", None),
        f"{LAYER}/attention/dense/kernel": P("tensor", None, "fsdp"),
        f"{LAYER}/attention/dense/bias": P("fsdp"),
        f"{LAYER}/ffn/kernel": P("fsdp", "tensor"),
        f"{LAYER}/ffn/bias": P("tensor"),
        f"{LAYER}/ffn_output/kernel": P("tensor", "fsdp"),
        f"{LAYER}/full_layer_layer_norm/scale": P("fsdp"),
        "predictions/bias": P("tensor"),
        "albert/embeddings/LayerNorm/scale": P(),
        "albert/embeddings/position_embeddings/embedding": P(),
    },
}


def _norm(spec):
  """A spec without trailing Nones (P('x', None) == P('x'))."""
  spec = list(spec)
  while spec and spec[-1] is None:
    spec.pop()
  return tuple(spec)


def _specs(rule_name):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.logical_shardings(M.abstract_params(M.AlbertForPreTraining(CFG)), mesh,
                                         sharding.rules(rule_name))
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(k.key for k in path): s.spec for path, s in flat}


@pytest.mark.parametrize("rule_name", sorted(sharding.RULES))
def test_golden_parameter_specs(rule_name):
  specs = _specs(rule_name)
  for path, expected in GOLDEN[rule_name].items():
    assert _norm(specs[path]) == _norm(expected), path
  if rule_name == "data_parallel":
    assert all(all(a is None for a in spec) for spec in specs.values())


def test_every_logical_name_has_a_rule():
  names = set()
  for head in M.HEADS:
    boxed = M.abstract_params(M.make_model(CFG, head))
    for leaf in jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
      names |= {n for n in leaf.names if n}
  names |= {"batch", "length", "act_emb", "act_hidden", "act_heads", "act_kv", "act_mlp",
            "act_vocab"}
  for rule_name, table in sharding.RULES.items():
    assert names <= {name for name, _ in table}, (rule_name, names - {n for n, _ in table})


@pytest.mark.parametrize("sizes,expected", [
    ({"data": -1, "fsdp": 1, "tensor": 1}, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
    ({"data": 1, "fsdp": 2, "tensor": -1}, (1, 2, 4)),
])
def test_mesh_shape_with_a_wildcard(sizes, expected):
  assert sharding.mesh_shape(sizes, 8) == expected
  assert tuple(sharding.make_mesh(sizes).shape.values()) == expected


@pytest.mark.parametrize("sizes,match", [
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one -1"),
    ({"data": 3, "fsdp": -1, "tensor": 1}, "does not divide"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices"),
])
def test_bad_mesh_sizes_are_explained(sizes, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(sizes, 8)


def _batch(seed, batch=8, length=16, predictions=4):
  rs = np.random.RandomState(seed)
  mask = np.ones((batch, length), np.int32)
  mask[1, 12:] = 0
  positions = np.sort(rs.choice(np.arange(1, 11), (batch, predictions)), axis=1)
  return {
      "input_ids": rs.randint(5, CFG.vocab_size, (batch, length)).astype(np.int32),
      "attention_mask": mask,
      "token_type_ids": (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0),
      "masked_lm_positions": positions.astype(np.int32),
      "masked_lm_ids": rs.randint(5, CFG.vocab_size, (batch, predictions)).astype(np.int32),
      "masked_lm_weights": (rs.rand(batch, predictions) > 0.2).astype(np.float32),
      "sentence_order_label": rs.randint(0, 2, batch).astype(np.int32),
  }


def _run_steps(mesh, rule_name, params, batches, accum_steps=1, hlo=False):
  """Two train steps of the real train_step on `mesh`; (metrics, params on the host, the ffn
  kernel's sharding, and with `hlo` the step's optimised HLO and its state's number of arrays)."""
  module = M.AlbertForPreTraining(CFG.replace(hidden_dropout_prob=0.0))
  optim = optimizer.default_optim_config()
  optim.warmup_steps = 0
  optim.lr = 0.01
  tx = optimizer.make_optimizer(optim, 10)
  rules = sharding.rules(rule_name)
  replicated = NamedSharding(mesh, P())
  layout = steps.state_layout(module, tx, mesh, rules)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))
  state = jax.device_put(state, layout.shardings)
  step = jax.jit(functools.partial(steps.train_step, module=module, task=pretraining, tx=tx,
                                   schedule=optimizer.learning_rate_schedule(optim, 10),
                                   accum_steps=accum_steps, seed=0),
                 out_shardings=(layout.shardings, replicated), donate_argnums=0)
  out = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for b in batches:
      state, m = step(state, sharding.global_batch(b, mesh))
      out.append(jax.device_get(m))
    if hlo:
      hlo = (step.lower(state, sharding.global_batch(batches[0], mesh)).compile().as_text(),
             len(jax.tree_util.tree_leaves(state)))
  kernel = state.params["albert"]["encoder"]["albert_layer_groups_0"]["albert_layers_0"]["ffn"]
  return out, jax.device_get(state.params), kernel["kernel"].sharding, hlo


@pytest.fixture(scope="module")
def single_device_reference():
  params = random_params(CFG, "pretraining", 0, scale=0.05)
  batches = [_batch(1), _batch(2)]
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  metrics, final, _, hlo = _run_steps(mesh, "data_parallel", params, batches, hlo=True)
  return params, batches, metrics, final, hlo


@pytest.mark.slow  # the real train step compiled on each mesh
@pytest.mark.parametrize("sizes,rule_name", [
    ({"data": 8, "fsdp": 1, "tensor": 1}, "data_parallel"),
    ({"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_tensor"),
    pytest.param({"data": 1, "fsdp": 2, "tensor": 4}, "fsdp_tensor", marks=pytest.mark.heavy),
    ({"data": 2, "fsdp": 4, "tensor": 1}, "fsdp"),  # every rule table runs in make test
])
def test_sharded_step_equals_single_device(single_device_reference, sizes, rule_name):
  params, batches, ref_metrics, ref_params, _ = single_device_reference
  mesh = sharding.make_mesh(sizes)
  metrics, final, kernel_sharding, _ = _run_steps(mesh, rule_name, params, batches)
  for ours, ref in zip(metrics, ref_metrics):
    for key in ("loss", "mlm_loss", "sop_loss", "grad_norm"):
      np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, err_msg=key)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), final,
                         ref_params)
  expected = dict(_specs(rule_name))[f"{LAYER}/ffn/kernel"]
  assert _norm(kernel_sharding.spec) == _norm(expected)


@pytest.mark.slow  # the real train step compiled with accumulation
def test_gradient_accumulation_equals_the_full_batch(single_device_reference):
  params, batches, ref_metrics, ref_params, _ = single_device_reference
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  metrics, final, _, _ = _run_steps(mesh, "fsdp_tensor", params, batches, accum_steps=4)
  for ours, ref in zip(metrics, ref_metrics):
    np.testing.assert_allclose(ours["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["grad_norm"], ref["grad_norm"], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), final,
                         ref_params)


def test_the_step_decides_once_whether_its_update_is_kept(single_device_reference):
  """The NaN guard's flag (every new array finite) is computed once. Without the barrier in
  `steps.all_finite`, XLA rewrites its last reduction into a chain of `and`s and fuses a copy
  into every array's update: 99 arrays, 9,725 `and`s in 33k lines of HLO (221 in 12k with it;
  the conftest tiny step compiles in 2.7 s instead of 4.1 on the floor tier, 4.2 instead of 5.7
  on the newest)."""
  hlo, arrays = single_device_reference[-1]
  assert hlo.count(" and(") < 4 * arrays


@pytest.mark.parametrize("name", ["lamb", "adamw_optax"])
def test_optimizer_state_carries_its_parameters_shardings(name):
  """The state is built from boxed parameters: each moment is sharded as its parameter (no path
  matching), counters are replicated."""
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = sharding.rules("fsdp_tensor")
  optim = optimizer.default_optim_config()
  optim.name = name
  module = M.AlbertForPreTraining(CFG)
  layout = steps.state_layout(module, optimizer.make_optimizer(optim, 10), mesh, rules)
  params = {jax.tree_util.keystr(k): v.spec for k, v in
            jax.tree_util.tree_leaves_with_path(layout.shardings.params)}
  moments = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(layout.shardings.opt_state):
    key = jax.tree_util.keystr(path)
    owner = next((p for p in params if key.endswith(p)), None)
    if owner is None:
      assert leaf.spec == P(), key  # a step count
    else:
      assert leaf.spec == params[owner], key
      moments += 1
  assert moments == 2 * len(params)
  assert params["['albert']['encoder']['albert_layer_groups_0']['albert_layers_0']['ffn']['kernel']"] \
      == P("fsdp", "tensor")

