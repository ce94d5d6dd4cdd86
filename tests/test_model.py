"""The Flax model on its own terms, checked against transformers (PyTorch) where one exists."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.activations import ACT2FN

from albert_jax import encoder, model as M
from helpers import random_params

TINY = M.AlbertConfig(vocab_size=64, embedding_size=8, hidden_size=32, num_hidden_layers=3,
                      num_attention_heads=4, intermediate_size=48)


def _ids(shape, vocab, seed=0):
  return np.random.RandomState(seed).randint(5, vocab, shape).astype(np.int32)


def _apply(module, params, *args, **kwargs):
  """module.apply under jit (eager Flax compiles every op on its own: slow)."""
  static = [k for k, v in kwargs.items() if isinstance(v, bool)]
  return jax.jit(module.apply, static_argnames=static)({"params": params}, *args, **kwargs)


@pytest.mark.parametrize("name", sorted(M.ACTIVATIONS))
def test_activation_matches_transformers(name):
  if name not in ACT2FN:
    pytest.skip(f"{name} is not in this transformers' ACT2FN")
  x = np.linspace(-12, 12, 2001, dtype=np.float32)
  ours = np.asarray(M.ACTIVATIONS[name](jnp.asarray(x)))
  theirs = ACT2FN[name](torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=1e-5)


def test_albert_large_v2_parameter_counts():
  cfg = M.preset("albert-large-v2")
  assert (cfg.num_hidden_layers, cfg.embedding_size, cfg.hidden_size, cfg.num_attention_heads,
          cfg.intermediate_size, cfg.vocab_size) == (24, 128, 1024, 16, 4096, 30000)
  hf_cfg = transformers.AlbertConfig(**cfg.to_hf_dict())
  for head, hf_cls, expected in (("base", transformers.AlbertModel, 17_683_968),
                                 ("pretraining", transformers.AlbertForPreTraining, 17_847_474)):
    ours = M.count_params(M.abstract_params(M.make_model(cfg, head)))
    theirs = sum(p.numel() for p in hf_cls(hf_cfg).parameters())
    assert ours == theirs == expected


@pytest.mark.parametrize("size", sorted(M.SIZES))
def test_every_preset_matches_transformers_parameter_count(size):
  for version in M.VERSIONS:
    cfg = M.preset(f"{size}-{version}")
    assert cfg.hidden_act == {"v1": "gelu", "v2": "gelu_new"}[version]
    assert cfg.hidden_dropout_prob == {"v1": 0.1, "v2": 0.0}[version]
  with torch.device("meta"):  # shapes only: xxlarge would take 1 GB
    theirs = sum(p.numel() for p in transformers.AlbertModel(
        transformers.AlbertConfig(**cfg.to_hf_dict())).parameters())
  assert M.count_params(M.abstract_params(M.AlbertModel(cfg))) == theirs


def test_abstract_params_are_traced_once_and_each_caller_gets_its_own(monkeypatch):
  """Cached per module (an equal one made again hits), never shared: a caller that edits its
  tree leaves the next caller's whole; another config is traced again."""
  trace = lambda m: jax.eval_shape(m.init, jax.random.key(0), M.dummy_input_ids(m))["params"]
  traced = []
  monkeypatch.setattr(M, "_trace_params", lambda m: traced.append(m) or trace(m))
  config = TINY.replace(vocab_size=61)  # no other test's module: the cache starts cold
  first = M.abstract_params(M.make_model(config, "pretraining"))
  first.pop("predictions")
  second = M.abstract_params(M.make_model(config, "pretraining"))
  assert len(traced) == 1 and sorted(second) == ["albert", "predictions", "sop_classifier"]
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), nn.unbox(tree))
  assert shapes(second) == shapes(trace(M.make_model(config, "pretraining")))
  M.abstract_params(M.make_model(config.replace(vocab_size=62), "pretraining"))
  assert len(traced) == 2


def test_parameter_count_does_not_depend_on_depth():
  counts = {L: M.count_params(M.abstract_params(M.AlbertModel(TINY.replace(num_hidden_layers=L))))
            for L in (1, 2, 12, 48)}
  assert len(set(counts.values())) == 1, counts
  # num_hidden_groups adds one layer's weights per group (the not-shared ablation: G == L).
  one = counts[1]
  per_layer = (M.count_params(M.abstract_params(M.AlbertModel(
      TINY.replace(num_hidden_layers=4, num_hidden_groups=2)))) - one)
  shared4 = M.count_params(M.abstract_params(M.AlbertModel(
      TINY.replace(num_hidden_layers=4, num_hidden_groups=4))))
  assert shared4 == one + 3 * per_layer


@pytest.mark.parametrize("groups,inner", [(1, 1), (2, 2), (4, 1)])
def test_scan_equals_unrolled_loop(groups, inner):
  cfg = TINY.replace(num_hidden_layers=4, num_hidden_groups=groups, inner_group_num=inner)
  scanned = M.AlbertModel(cfg)
  unrolled = M.AlbertModel(cfg, layer_loop="unroll")
  params = random_params(cfg, "base", 3)
  # The same weights fit both: scan broadcasts params, so there is no layer axis.
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      nn.unbox(M.abstract_params(unrolled)))
  ids = _ids((2, 9), cfg.vocab_size)
  a = _apply(scanned, params, ids, output_hidden_states=True)
  b = _apply(unrolled, params, ids, output_hidden_states=True)
  np.testing.assert_allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-6)
  assert len(a.hidden_states) == len(b.hidden_states) == cfg.num_hidden_layers + 1
  for x, y in zip(a.hidden_states, b.hidden_states):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_unrolled_loop_by_hand_over_the_shared_layer():
  """Embeddings -> mapping_in -> the one AlbertLayer applied L times, written out here."""
  cfg = TINY.replace(num_hidden_layers=5)
  module = M.AlbertModel(cfg)
  params = random_params(cfg, "base", 4)
  ids = _ids((2, 6), cfg.vocab_size, 1)
  ref = _apply(module, params, ids).last_hidden_state
  emb = _apply(encoder.AlbertEmbeddings(cfg), params["embeddings"], ids, np.zeros_like(ids),
               np.broadcast_to(np.arange(6), ids.shape), True)
  p_in = params["encoder"]["embedding_hidden_mapping_in"]
  x = emb @ p_in["kernel"] + p_in["bias"]
  layer = encoder.AlbertLayer(cfg)
  layer_params = params["encoder"]["albert_layer_groups_0"]["albert_layers_0"]
  step = jax.jit(lambda x: layer.apply({"params": layer_params}, x, np.ones(ids.shape, bool), True))
  for _ in range(cfg.num_hidden_layers):
    x = step(x)
  np.testing.assert_allclose(ref, x, atol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims", "ffn_residual",
                                    "layer_norm_inputs", "matmul_outputs", "lean"])
def test_remat_gives_the_same_loss_and_gradients(policy):
  cfg = TINY
  ids = _ids((2, 8), cfg.vocab_size)
  plain, remat = M.AlbertForPreTraining(cfg), M.AlbertForPreTraining(cfg, remat_policy=policy)
  params = random_params(cfg, "pretraining", 0)

  def loss(module, p):
    out = module.apply({"params": p}, ids)
    return jnp.sum(out.prediction_logits ** 2) + jnp.sum(out.sop_logits)

  (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(params)
                        for m in (plain, remat))
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                         ga, gb)


@pytest.mark.parametrize("policy, expected", [
    ("full", []),
    ("ffn_residual", ["f32[2,4,16] named 'ffn_residual'"]),
    ("layer_norm_inputs", ["f32[2,4,16] named 'attention_residual'",
                           "f32[2,4,16] named 'ffn_residual'"]),
    # Every matmul's output, flat and biased, and attention's context (xla attention here): no
    # matmul and no attention recomputed.
    ("matmul_outputs", ["f32[2,4,16] named 'query'", "f32[2,4,16] named 'key'",
                        "f32[2,4,16] named 'value'", "f32[2,4,2,8] named 'attention_context'",
                        "f32[2,4,16] named 'attention_residual'",
                        "f32[2,4,64] named 'ffn_hidden'", "f32[2,4,16] named 'ffn_residual'"]),
    ("lean", ["f32[2,4,16] named 'key'", "f32[2,4,16] named 'value'",
              "f32[2,4,2,8] named 'attention_context'", "f32[2,4,64] named 'ffn_hidden'",
              "f32[2,4,16] named 'ffn_residual'"]),
])
def test_remat_policy_saves_what_it_says(policy, expected, capsys):
  """The activations the backward pass keeps (JAX's own report), beyond the layer's arguments."""
  cfg = M.AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_attention_heads=2,
                       intermediate_size=64)
  layer, x, mask = encoder.AlbertLayer(cfg), jnp.ones((2, 4, 16)), np.ones((2, 4), bool)
  params = layer.init(jax.random.key(0), x, mask, True)
  fn = jax.checkpoint(lambda p, x: layer.apply(p, x, mask, True),
                      policy=encoder.REMAT_POLICIES[policy])
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(fn, params, x)
  saved = [line.split(" from ")[0] for line in capsys.readouterr().out.splitlines()
           if " from the argument " not in line and " from a constant" not in line]
  assert saved == expected


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match="remat_policy='sometimes'"):
    M.abstract_params(M.AlbertModel(TINY, remat_policy="sometimes"))
  with pytest.raises(ValueError, match="layer_loop='twice'"):
    M.AlbertModel(TINY, layer_loop="twice")


def test_auto_picks_the_layer_loop_and_policy_per_platform():
  """GPU: unrolled (no remat applies); TPU: scanned, `lean`; CPU: scanned, `matmul_outputs`."""
  assert [encoder.resolve_layer_loop("auto", p) for p in ("gpu", "tpu", "cpu")] == [
      "unroll", "scan", "scan"]
  assert [encoder.resolve_remat_policy("auto", p) for p in ("gpu", "tpu", "cpu")] == [
      "matmul_outputs", "lean", "matmul_outputs"]
  assert encoder.resolve_layer_loop("scan", "gpu") == "scan"
  assert encoder.resolve_remat_policy("full", "tpu") == "full"


def test_unrolled_layers_are_not_rematerialised(capsys):
  """Unrolled, the backward pass keeps what autodiff keeps whatever the policy (a recomputation
  would be merged with the forward pass it repeats): the same residuals as remat 'none'."""
  cfg = TINY.replace(num_hidden_layers=2)
  ids = _ids((2, 8), cfg.vocab_size)

  def residuals(policy):
    module = M.AlbertModel(cfg, layer_loop="unroll", remat_policy=policy)
    params = M.init_params(module)
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: module.apply({"params": p}, ids).last_hidden_state, params)
    return [line.split(" from ")[0] for line in capsys.readouterr().out.splitlines()]

  assert residuals("full") == residuals("none")


def test_masked_lm_positions_gather_the_full_logits():
  module = M.AlbertForPreTraining(TINY)
  params = random_params(TINY, "pretraining", 1)
  ids = _ids((3, 10), TINY.vocab_size)
  positions = np.array([[1, 4, 9], [0, 0, 0], [2, 3, 7]], np.int32)
  full = _apply(module, params, ids).prediction_logits
  sparse = _apply(module, params, ids, masked_lm_positions=positions)
  assert sparse.prediction_logits.shape == (3, 3, TINY.vocab_size)
  np.testing.assert_allclose(sparse.prediction_logits,
                             np.take_along_axis(np.asarray(full), positions[..., None], 1),
                             atol=1e-6)


def test_dropout_is_active_only_when_not_deterministic():
  cfg = TINY.replace(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
  module = M.AlbertForSequenceClassification(cfg)
  params = random_params(cfg, "sequence_classification", 0)
  ids = _ids((4, 8), cfg.vocab_size)
  apply = jax.jit(module.apply, static_argnames="deterministic")
  eval_a = apply({"params": params}, ids, deterministic=True).logits
  eval_b = apply({"params": params}, ids, deterministic=True).logits
  train = lambda seed: apply({"params": params}, ids, deterministic=False,
                             rngs={"dropout": jax.random.key(seed)}).logits
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  assert not np.allclose(train(1), eval_a)


def test_bfloat16_compute_keeps_float32_params():
  module = M.AlbertForPreTraining(TINY, dtype=jnp.bfloat16)
  abstract = nn.unbox(M.abstract_params(module))
  assert {x.dtype for x in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype("float32")}
  params = random_params(TINY, "pretraining", 0)
  ids = _ids((2, 8), TINY.vocab_size)
  lo = _apply(module, params, ids).prediction_logits
  hi = _apply(M.AlbertForPreTraining(TINY), params, ids).prediction_logits
  assert lo.dtype == jnp.float32
  np.testing.assert_allclose(lo, hi, atol=0.1)


def test_init_is_the_originals_truncated_normal():
  """TF's truncated_normal_initializer(0.02): cut at 2 sigma and not rescaled, so std = 0.02 * s,
  s^2 = 1 - 4 phi(2) / (Phi(2) - Phi(-2)) for the standard normal cut at +-2."""
  cfg = TINY.replace(hidden_size=256, intermediate_size=1024, vocab_size=4000)
  params = M.init_params(M.AlbertForPreTraining(cfg), 0)
  phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
  expected_std = 0.02 * math.sqrt(1 - 4 * phi2 / math.erf(2 / math.sqrt(2)))
  layer = params["albert"]["encoder"]["albert_layer_groups_0"]["albert_layers_0"]
  for w in (layer["ffn"]["kernel"], params["albert"]["embeddings"]["word_embeddings"]["embedding"],
            layer["attention"]["query"]["kernel"]):
    w = np.asarray(w)
    assert abs(w.std() / expected_std - 1) < 0.02 and abs(w.mean()) < 1e-3
    assert np.abs(w).max() <= 0.04 and np.abs(w).max() > 0.039
  np.testing.assert_array_equal(layer["full_layer_layer_norm"]["scale"], 1.0)
  np.testing.assert_array_equal(layer["ffn"]["bias"], 0.0)
  np.testing.assert_array_equal(params["predictions"]["bias"], 0.0)


def test_every_parameter_has_logical_axis_names():
  allowed = {"vocab", "emb", "hidden", "heads", "kv", "mlp", None}
  cfg = TINY.replace(num_hidden_groups=3, inner_group_num=2, num_hidden_layers=3)
  for head in M.HEADS:
    boxed = M.abstract_params(M.make_model(cfg, head))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), (head, leaf)
      assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= allowed, leaf.names


def test_depth_does_not_grow_the_program():
  """One shared layer, scanned: the step's program for 24 layers holds as many matmuls as for 2,
  so it compiles like one (what compile time follows; timed in experiments/benchmarks/); the same
  weights unrolled grow with depth, which shows the count can tell."""
  def matmuls(layers, layer_loop="scan"):
    cfg = TINY.replace(hidden_size=64, num_hidden_layers=layers)
    module = M.AlbertForPreTraining(cfg, layer_loop=layer_loop)
    params = nn.unbox(M.abstract_params(module))
    ids = jax.ShapeDtypeStruct((2, 32), jnp.int32)

    def loss(p, x):
      return jnp.sum(module.apply({"params": p}, x).prediction_logits)

    return jax.jit(jax.grad(loss)).lower(params, ids).as_text().count("dot_general")

  assert matmuls(24) == matmuls(2)
  assert matmuls(24, layer_loop="unroll") > 5 * matmuls(2, layer_loop="unroll")


def test_config_round_trips_through_transformers():
  cfg = M.AlbertConfig(vocab_size=123, hidden_size=48, num_attention_heads=6, num_hidden_groups=2,
                       num_hidden_layers=4, inner_group_num=3, hidden_act="gelu",
                       classifier_dropout_prob=0.2, num_labels=3, id2label=("neg", "neu", "pos"))
  hf = transformers.AlbertConfig(**cfg.to_hf_dict())
  assert hf.id2label == {0: "neg", 1: "neu", 2: "pos"} and hf.num_labels == 3
  assert M.AlbertConfig.from_hf_dict(hf.to_dict()) == cfg
  defaults = transformers.AlbertConfig().to_dict()
  assert M.AlbertConfig.from_hf_dict(defaults) == M.AlbertConfig()
  for field in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                "hidden_act", "layer_norm_eps", "classifier_dropout_prob", "eos_token_id"):
    assert getattr(M.AlbertConfig(), field) == defaults[field], field


@pytest.mark.parametrize("bad,match", [
    ({"model_type": "bert"}, "model_type='bert'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible"),
    ({"num_hidden_layers": 5, "num_hidden_groups": 2}, "num_hidden_groups=2"),
    ({"hidden_act": "gelu_banana"}, "gelu_banana"),
])
def test_bad_configs_are_rejected_with_a_message(bad, match):
  with pytest.raises(ValueError, match=match):
    M.AlbertConfig.from_hf_dict({**M.AlbertConfig().to_hf_dict(), **bad})


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match="sizes"):
    M.preset("huge")
  assert M.preset("large,v1") == M.preset("albert-large-v1")
