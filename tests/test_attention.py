"""The attention implementations against the materialised softmax (`xla`): splash in Pallas
interpret mode (alone and under an 8-device mesh), cuDNN's call run through XLA, packed rows,
`auto`'s choices, the refusals, packed rows' cuDNN attention compiled for an H100 and the train
step with splash compiled for a TPU v5p slice."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import accelerators
from albert_jax import attention as A
from albert_jax import model as M
from albert_jax import sharding
from helpers import random_params
from conftest import tpu_env

REPO = Path(__file__).resolve().parents[1]
# 4 heads (tensor=2 leaves 2 per device), head_dim 8; seq 128, the smallest splash block.
CFG = M.AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64)
BATCH, LENGTH = 4, 128


def _inputs(real_lengths=(100, 128, 37, 128), seed=0):
  """Right-padded ids, their mask and two token-type segments (the second from token 50)."""
  rs = np.random.RandomState(seed)
  ids = rs.randint(5, CFG.vocab_size, (len(real_lengths), LENGTH)).astype(np.int32)
  mask = (np.arange(LENGTH)[None] < np.asarray(real_lengths)[:, None]).astype(np.int32)
  token_types = (np.arange(LENGTH)[None] >= 50).astype(np.int32).repeat(len(real_lengths), 0)
  return ids, mask, token_types


def _loss_and_grads(attention, params, inputs):
  """Jitted (loss, pretraining outputs), d loss / d params, through AlbertForPreTraining."""
  module = M.AlbertForPreTraining(CFG, attention=attention)
  ids, mask, token_types = inputs

  def loss(p):
    out = module.apply({"params": p}, ids, mask, token_types)
    # Real tokens only, squared, so every position's logits and every weight get a gradient.
    return jnp.sum((out.prediction_logits * mask[..., None]) ** 2) + jnp.sum(out.sop_logits), out

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.fixture(scope="module")
def params():
  return random_params(CFG, "pretraining", 0)


@pytest.fixture(scope="module")
def xla_result(params):
  return _loss_and_grads("xla", params, _inputs())


def _assert_close(a, b, atol, rtol=1e-5):
  (_, out_a), grads_a = a
  (_, out_b), grads_b = b
  np.testing.assert_allclose(out_a.prediction_logits, out_b.prediction_logits, atol=atol, rtol=rtol)
  np.testing.assert_allclose(out_a.sop_logits, out_b.sop_logits, atol=atol, rtol=rtol)
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(x, y, atol=atol * 10, rtol=rtol * 10),
      grads_a, grads_b)


def test_splash_equals_xla_in_logits_and_gradients(params, xla_result):
  splash = _loss_and_grads("splash", params, _inputs())
  _assert_close(splash, xla_result, atol=1e-5)


def test_splash_under_a_mesh_equals_the_unsharded_result(params, xla_result):
  """fsdp_tensor on 2x2x2: batch over data x fsdp, heads over tensor, the kernel in shard_map."""
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules("fsdp_tensor")):
    sharded = _loss_and_grads("splash", params, _inputs())
    jaxpr = str(jax.make_jaxpr(lambda p: _loss_and_grads("splash", p, _inputs()))(params))
  assert "shard_map" in jaxpr and "pallas_call" in jaxpr
  _assert_close(sharded, xla_result, atol=1e-5)


def test_an_example_without_real_tokens_stays_finite_and_leaves_the_rest_alone(params):
  """Eval batches are padded with all-padding rows: splash must not divide by zero there."""
  inputs = _inputs(real_lengths=(100, 0, 37, 128))
  (_, out), grads = _loss_and_grads("splash", params, inputs)
  (_, ref), _ = _loss_and_grads("xla", params, inputs)
  assert np.isfinite(out.prediction_logits).all() and np.isfinite(out.sop_logits).all()
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  real = np.array([0, 2, 3])
  np.testing.assert_allclose(np.asarray(out.prediction_logits)[real],
                             np.asarray(ref.prediction_logits)[real], atol=1e-5)


def _qkv_mask(dtype=jnp.float32, real_lengths=(128, 100, 1, 0)):
  rs = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rs.randn(len(real_lengths), LENGTH, 4, 16), dtype) for _ in range(3))
  mask = np.arange(LENGTH)[None] < np.asarray(real_lengths)[:, None]
  return q, k, v, mask


def test_cudnn_call_gives_xla_results_on_right_padded_inputs():
  """cuDNN cannot run here: the same jax.nn.dot_product_attention call (key_value_seq_lengths
  from the mask) through XLA must give the materialised softmax, rows with real keys."""
  q, k, v, mask = _qkv_mask()
  ours = A.cudnn(q, k, v, mask, implementation="xla")
  ref = A.xla(q, k, v, mask)
  np.testing.assert_allclose(ours[:3], ref[:3], atol=1e-6, rtol=1e-5)
  assert np.isfinite(ours).all()  # the all-padding example: length 1, not 0


def test_the_model_passes_attention_cudnn_through(params, xla_result, monkeypatch):
  monkeypatch.setattr(A, "cudnn", functools.partial(A.cudnn, implementation="xla"))
  _assert_close(_loss_and_grads("cudnn", params, _inputs()), xla_result, atol=1e-5)


def _packed_qkv():
  """q, k, v [3, 128, 4, 16] and example ids: three examples, one filling its row, no example."""
  q, k, v, _ = _qkv_mask(real_lengths=(128, 128, 128))
  ids = np.zeros((3, LENGTH), np.int32)
  ids[0, :40], ids[0, 40:90], ids[0, 90:120] = 1, 2, 3
  ids[1, :] = 1
  return q, k, v, ids


@pytest.mark.parametrize("attention", ["xla", "splash", "cudnn"])
def test_packed_rows_attend_within_each_example(attention):
  """Each example's context is what it gets alone (xla on its own tokens); padding, a whole row
  of it included, stays finite (no query is left without keys). cudnn's call through XLA."""
  q, k, v, ids = _packed_qkv()
  fn = {"xla": A.xla, "splash": A.splash,
        "cudnn": functools.partial(A.cudnn, implementation="xla")}[attention]
  out = np.asarray(jax.jit(functools.partial(fn, example_ids=ids))(q, k, v, ids > 0))
  assert np.isfinite(out).all()
  for row, start, stop in ((0, 0, 40), (0, 40, 90), (0, 90, 120), (1, 0, 128)):
    span = slice(start, stop)
    alone = A.xla(q[row:row + 1, span], k[row:row + 1, span], v[row:row + 1, span],
                  np.ones((1, stop - start), bool))
    np.testing.assert_allclose(out[row:row + 1, span], alone, atol=1e-6, rtol=1e-5)


def test_cudnn_refuses_float32():
  q, k, v, mask = _qkv_mask()
  with pytest.raises(ValueError, match="attention='cudnn' needs bfloat16 or float16"):
    A.cudnn(q, k, v, mask)


@pytest.mark.parametrize("platform, dtype, length, dropout, expected", [
    ("tpu", jnp.bfloat16, 512, False, "splash"),
    ("tpu", jnp.float32, 128, False, "splash"),
    ("tpu", jnp.bfloat16, 500, False, "xla"),  # not a multiple of the block
    ("tpu", jnp.bfloat16, 512, True, "xla"),  # attention dropout in training
    ("gpu", jnp.bfloat16, 512, False, "cudnn"),
    ("gpu", jnp.float16, 100, False, "cudnn"),
    ("gpu", jnp.float32, 512, False, "xla"),
    ("gpu", jnp.bfloat16, 512, True, "xla"),
    ("cpu", jnp.bfloat16, 512, False, "xla"),
    ("cpu", jnp.float32, 128, False, "xla"),
])
def test_auto_resolves_per_platform(platform, dtype, length, dropout, expected):
  assert A.resolve("auto", platform, dtype, length, dropout) == expected
  assert A.resolve("splash", "cpu", dtype, length, dropout) == "splash"  # explicit names stay


def test_auto_on_this_cpu_is_xla(params, xla_result):
  assert A.target_platform() == "cpu"
  np.testing.assert_array_equal(_loss_and_grads("auto", params, _inputs())[0][1].prediction_logits,
                                xla_result[0][1].prediction_logits)


def test_unknown_attention_is_an_error_listing_the_choices():
  with pytest.raises(ValueError, match=r"attention='flash' is not one of \['xla', 'splash', "
                                       r"'cudnn', 'auto'\]"):
    M.AlbertModel(CFG, attention="flash")
  with pytest.raises(ValueError, match="attention='flash'"):
    A.resolve("flash", "tpu", jnp.bfloat16, 512, False)


@pytest.mark.parametrize("attention", ["splash", "cudnn"])
def test_fused_kernels_refuse_attention_dropout_in_training(attention):
  cfg = CFG.replace(attention_probs_dropout_prob=0.1)
  module = M.AlbertModel(cfg, attention=attention, dtype=jnp.bfloat16)
  ids, mask, _ = _inputs()
  variables = {"params": random_params(cfg, "base", 0)}
  with pytest.raises(ValueError, match=f"attention='{attention}' has no attention dropout, but "
                                       "attention_probs_dropout_prob=0.1 in training"):
    jax.eval_shape(functools.partial(module.apply, deterministic=False),
                   variables, ids, mask, rngs={"dropout": jax.random.key(0)})
  if attention == "splash":  # evaluation has no dropout: fine (cuDNN cannot even trace here)
    jax.eval_shape(module.apply, variables, ids, mask)


def test_auto_falls_back_to_xla_with_attention_dropout_in_training():
  cfg = CFG.replace(attention_probs_dropout_prob=0.1)
  ids, mask, _ = _inputs()
  apply = lambda m: m.apply({"params": random_params(cfg, "base", 0)}, ids, mask,
                            deterministic=False, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(apply(M.AlbertModel(cfg)).last_hidden_state,
                                apply(M.AlbertModel(cfg, attention="xla")).last_hidden_state)


def test_splash_refuses_a_length_that_is_not_a_multiple_of_its_block(params):
  module = M.AlbertForPreTraining(CFG, attention="splash")
  ids = np.zeros((2, 100), np.int32)
  with pytest.raises(ValueError, match="multiple of its block size 128; got length 100"):
    jax.eval_shape(module.apply, {"params": params}, ids)
  assert [A.splash_block(n) for n in (128, 256, 384, 512, 1024)] == [128, 256, 128, 512, 512]


# ----------------------------------------------------------------------------- GPU, compiled here

@pytest.mark.slow  # a GPU compile (~10 s here, most of it fixed cost)
# Heavy: its parts apart in `make test`: `auto` picking cudnn on a GPU in bf16 (the table above),
# packed rows through cudnn's call (test_packing, by XLA's implementation), cuDNN's fused
# attention in the step compiled for H100s (test_aot's eight H100s).
@pytest.mark.heavy
@pytest.mark.skipif(importlib.util.find_spec("jax_plugins.xla_cuda13") is None,
                    reason="jax's CUDA plugin is not installed (pip install -e .[gpu-aot])")
def test_packed_rows_compile_to_cudnn_for_an_h100():
  """`auto` on a GPU in bf16 picks cudnn for packed rows too: forward and backward lower to
  cuDNN's fused attention with the block-diagonal mask as its bias, and no [batch, heads, q, k]
  scores are written (compiled for a compile-only H100; no GPU here)."""
  device = accelerators.parse_target("h100-1").compile_devices()[0]
  on_gpu = jax.sharding.SingleDeviceSharding(device)
  module = M.AlbertForTokenClassification(CFG, dtype=jnp.bfloat16)  # attention="auto"
  params = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_gpu),
      nn.unbox(M.abstract_params(module)))
  ids = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32, sharding=on_gpu)

  def loss(p, input_ids, example_ids):
    out = module.apply({"params": p}, input_ids, example_ids=example_ids)
    return jnp.sum(out.logits * (example_ids > 0)[..., None])

  with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("data",))):
    text = jax.jit(jax.grad(loss)).lower(params, ids, ids).compile().as_text()
  assert text.count('custom_call_target="__cudnn$fmhaScaleBiasSoftmax"') == CFG.num_hidden_layers
  assert text.count('custom_call_target="__cudnn$fmhaScaleBiasSoftmaxBackward"') == (
      CFG.num_hidden_layers)
  assert f"[{BATCH},{CFG.num_attention_heads},{LENGTH},{LENGTH}]" not in text


# ----------------------------------------------------------------------------- TPU, compiled here

# Runs in a subprocess: libtpu initialises there, and the test session's backend stays the 8
# simulated CPU devices. The real pretraining step of a small model (head_dim 64 as every preset
# but xlarge, seq 512 as pretraining, LAMB, bf16) through albert_jax.aot for a v5p-8 slice.
# Prints {attention: {temp_bytes, kernel, seconds}}.
_COMPILE_FOR_V5P = r"""
import json, sys, time
sys.path.insert(0, "configs")
import pretrain
from albert_jax import accelerators, aot

devices = accelerators.parse_target("v5p-8").compile_devices()
result = {"platform": devices[0].platform, "chips": len(devices)}
for attention in sys.argv[1:]:
  config = pretrain.get_config("tiny")
  config.model.update(vocab_size=1024, hidden_size=256, num_attention_heads=4,
                      intermediate_size=1024)
  config.data.update(max_seq_length=512, max_predictions_per_seq=32)
  config.update(dtype="bfloat16", batch_size=16, attention=attention)
  config.optim.name = "lamb"
  start = time.perf_counter()
  lowered, _, _ = aot.lower(config, aot.step_of(config), devices)
  compiled = lowered.compile()
  text = compiled.as_text()
  result[attention] = {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
                       "kernels": text.count('custom_call_target="tpu_custom_call"'),
                       "scores": text.count(",512,512]"),  # [batch, heads, length, length]
                       "seconds": time.perf_counter() - start}
print("RESULT " + json.dumps(result))
"""


def _compile_for_v5p(*attentions):
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install 'jax[tpu]'): cannot compile for TPU")
  env = tpu_env()
  env.update(TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
             PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", _COMPILE_FOR_V5P, *attentions], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow  # a TPU compile at seq 512 in a subprocess
# Heavy: its parts apart in `make test`: splash's kernels against XLA's attention (interpreted on
# the CPU, above), the pretraining step compiled for a v5p-8 (test_aot), what the remat
# policies keep (test_model: attention's context).
@pytest.mark.heavy
def test_pretraining_step_with_splash_compiles_for_a_v5p_slice():
  result = _compile_for_v5p("splash")
  assert (result["platform"], result["chips"]) == ("tpu", 4)
  # The Mosaic kernels themselves, not the interpreter's XLA loops (the host is a CPU): in the
  # scanned layer one forward, whose outputs the default remat policy keeps (so the backward
  # pass does not run it again), and one fused backward.
  assert result["splash"]["kernels"] == 2 and result["splash"]["temp_bytes"] > 0


@pytest.mark.heavy  # two v5p compiles at seq 512: `make test-all`
def test_splash_needs_fewer_tpu_temporaries_than_xla():
  """The point of the kernel: no [batch, heads, length, length] scores in HBM, forward or
  backward (the kernel keeps its blocks of them in VMEM). Fewer temporaries, though not by much
  more: under the default policy each keeps a few activations per layer, splash its own
  [heads, length, 64] output and statistics among them."""
  result = _compile_for_v5p("splash", "xla")
  assert result["xla"]["kernels"] == 0 and result["xla"]["scores"] > 0
  assert result["splash"]["scores"] == 0
  assert result["splash"]["temp_bytes"] < 0.9 * result["xla"]["temp_bytes"], result
