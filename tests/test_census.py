"""census.py: the kernel census of optimized XLA programs, against hand-counted programs, XLA's
own cost analysis and the model's FLOP formula; and what it shows of our GPU train step.

The GPU programs are compiled here for compile-only H100s (jax's CUDA plugin, `.[gpu-aot]`)."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import pytest

from albert_jax import accelerators, aot, census

import pretrain  # configs/, put on sys.path by conftest

needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins.xla_cuda13") is None,
    reason="jax's CUDA plugin is not installed (pip install -e .[gpu-aot])")

# A scanned layer (trip count 4) that runs a Triton GEMM, writes its input into a stack in place
# and reads a slice of it back; a cuDNN attention forward after the loop. Counted by hand below.
PROGRAM = """HloModule hand_written, is_scheduled=true

%gemm (p0: bf16[8,16], p1: bf16[16,32]) -> bf16[8,32] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,32]{1,0} parameter(1)
  ROOT %dot = bf16[8,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_dus (p0: bf16[4,8,16], p1: s32[], p2: bf16[8,16]) -> bf16[4,8,16] {
  %p0 = bf16[4,8,16]{2,1,0} parameter(0)
  %p2 = bf16[8,16]{1,0} parameter(2)
  %bitcast.1 = bf16[1,8,16]{2,1,0} bitcast(%p2)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  ROOT %dus = bf16[4,8,16]{2,1,0} dynamic-update-slice(%p0, %bitcast.1, %p1, %c0, %c0)
}

%fused_slice_tanh (p0: bf16[4,8,16], p1: s32[]) -> bf16[8,16] {
  %p0 = bf16[4,8,16]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  %ds = bf16[1,8,16]{2,1,0} dynamic-slice(%p0, %p1, %c0, %c0), dynamic_slice_sizes={1,8,16}
  %b = bf16[8,16]{1,0} bitcast(%ds)
  ROOT %t = bf16[8,16]{1,0} tanh(%b)
}

%body (arg: (s32[], bf16[4,8,16], bf16[8,16], bf16[16,32])) -> (s32[], bf16[4,8,16], bf16[8,16], bf16[16,32]) {
  %arg = (s32[], bf16[4,8,16]{2,1,0}, bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %stack = bf16[4,8,16]{2,1,0} get-tuple-element(%arg), index=1
  %x = bf16[8,16]{1,0} get-tuple-element(%arg), index=2
  %w = bf16[16,32]{1,0} get-tuple-element(%arg), index=3
  %g = bf16[8,32]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm, metadata={op_name="jit(step)/jvp(M)/albert/encoder/while/body/albert_layer_groups_0/albert_layers_0/ffn/dot_general"}, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %u = bf16[4,8,16]{2,1,0} fusion(%stack, %i, %x), kind=kLoop, calls=%fused_dus, metadata={op_name="jit(step)/jvp(M)/albert/encoder/while/body/dynamic_update_slice"}
  %r = bf16[8,16]{1,0} fusion(%u, %i), kind=kLoop, calls=%fused_slice_tanh, metadata={op_name="jit(step)/transpose(jvp(M))/albert/encoder/while/body/albert_layer_groups_0/albert_layers_0/tanh"}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], bf16[4,8,16]{2,1,0}, bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%next, %u, %r, %w)
}

%cond (arg: (s32[], bf16[4,8,16], bf16[8,16], bf16[16,32])) -> pred[] {
  %arg = (s32[], bf16[4,8,16]{2,1,0}, bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: bf16[8,16], w: bf16[16,32], q: bf16[2,64,4,32]) -> (bf16[8,16], bf16[2,64,4,32]) {
  %x = bf16[8,16]{1,0} parameter(0)
  %w = bf16[16,32]{1,0} parameter(1)
  %q = bf16[2,64,4,32]{3,2,1,0} parameter(2)
  %zero = s32[] constant(0)
  %stack = bf16[4,8,16]{2,1,0} broadcast(%x), dimensions={1,2}
  %init = (s32[], bf16[4,8,16]{2,1,0}, bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%zero, %stack, %x, %w)
  %loop = (s32[], bf16[4,8,16]{2,1,0}, bf16[8,16]{1,0}, bf16[16,32]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="jit(step)/jvp(M)/albert/encoder/while"}, backend_config={"known_trip_count":{"n":"4"},"known_init_step":{"init":"0","step":"1"}}
  %out = bf16[8,16]{1,0} get-tuple-element(%loop), index=2
  %att = (bf16[2,64,4,32]{3,1,2,0}, f32[2,4,64]{2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(step)/jvp(M)/albert/encoder/albert_layer_groups_0/albert_layers_0/attention/dot_product_attention_fwd"}, backend_config={"cudnn_fmha_backend_config":{"bmm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"],"rhs_contracting_dimensions":["3"],"lhs_batch_dimensions":["0","2"],"rhs_batch_dimensions":["0","2"]}}}
  %ctx = bf16[2,64,4,32]{3,1,2,0} get-tuple-element(%att), index=0
  ROOT %res = (bf16[8,16]{1,0}, bf16[2,64,4,32]{3,1,2,0}) tuple(%out, %ctx)
}
"""


def test_a_hand_written_program_is_counted_as_by_hand():
  kernels = {k.name: k for k in census.census(PROGRAM)}
  # Not kernels: parameters, constants, tuples, get-tuple-element; the loop is an entry of its own.
  assert sorted(kernels) == ["att", "g", "loop", "lt", "next", "r", "stack", "u"]
  bf16, trips = 2, 4
  gemm = kernels["g"]
  assert (gemm.kind, gemm.phase, gemm.part, gemm.launches) == (
      "gemm_triton", "forward", "layer/ffn", trips)
  assert gemm.flops == 2 * 8 * 32 * 16
  assert gemm.bytes == (8 * 16 + 16 * 32 + 8 * 32) * bf16
  # In place: reads the [8, 16] update and the index, writes the update's bytes into the stack.
  update = kernels["u"]
  assert (update.kind, update.launches) == ("data_movement", trips)
  assert update.bytes == 8 * 16 * bf16 + 4 + 8 * 16 * bf16
  # Reads one slice of the stack (not the stack), writes its tanh; in the backward pass.
  read = kernels["r"]
  assert (read.kind, read.phase, read.launches) == ("elementwise", "backward", trips)
  assert read.bytes == 8 * 16 * bf16 + 4 + 8 * 16 * bf16 and read.flops == 8 * 16
  # The condition runs once more than the body; the loop itself counts its iterations.
  assert kernels["lt"].launches == trips + 1 and kernels["loop"].launches == trips
  assert kernels["stack"].kind == "data_movement" and kernels["stack"].bytes == (
      8 * 16 + 4 * 8 * 16) * bf16
  # cuDNN's forward: Q.K^T and P.V over [batch 2, heads 4, 64 x 64, head_dim 32].
  att = kernels["att"]
  assert (att.kind, att.launches) == ("attention", 1)
  assert att.flops == 2 * (2 * 2 * 4 * 64 * 64 * 32)
  assert att.bytes == 4 * (2 * 64 * 4 * 32 * bf16) + 2 * 4 * 64 * 4  # q, k, v, out; statistics

  summary = census.summarize(list(kernels.values()),
                             census.Ceilings(1e12, 5e11, 1e9, "round numbers"))
  assert summary["kernels"]["gemm_triton"] == {
      "count": 4, "flops": 4 * gemm.flops, "bytes": 4 * gemm.bytes,
      "seconds": 4 * max(gemm.flops / 1e12, gemm.bytes / 1e9)}
  assert summary["attention_forward_calls"] == 1
  assert summary["launches"] == 4 + 4 + 4 + 5 + 4 + 1 + 1  # g, u, r, lt, next, stack, att
  assert math.isclose(summary["roofline_seconds"],
                      sum(s["seconds"] for s in summary["kernels"].values()))
  assert "roofline (a lower bound" in census.format_summary(summary)


def test_unknown_trip_counts_count_the_body_once():
  program = PROGRAM.replace('"known_trip_count":{"n":"4"},', "")
  kernels = {k.name: k for k in census.census(program)}
  assert kernels["g"].launches == 1 and kernels["lt"].launches == 2


def test_text_without_an_entry_computation_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    census.census("HloModule nothing\n")


# ----------------------------------------------------------------------------- compiled programs

def _gpu_devices(n=1):
  return accelerators.parse_target(f"h100-{n}").compile_devices()


@needs_cuda_plugin
def test_triton_programs_agree_with_xlas_cost_analysis():
  """XLA's own cost analysis prices Triton fusions (not library calls): on a GEMM with its bias
  and GELU, compiled with XLA's default options, the census counts the same FLOPs (the GEMM's
  are 2 M N K) and bytes within 10%."""
  from jax._src.lib import xla_client
  device = _gpu_devices()[0]
  sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16,
                                           sharding=jax.sharding.SingleDeviceSharding(device))
  fn = lambda x, w, b: jax.nn.gelu(x @ w + b)
  compiled = jax.jit(fn).lower(sds((256, 512)), sds((512, 1024)), sds((1024,))).compile()
  summary = census.summarize(census.census(compiled.as_text()))
  assert summary["kernels"]["gemm_triton"]["flops"] == 2 * 256 * 512 * 1024
  ref = xla_client._xla.hlo_module_cost_analysis(
      jax.devices("cpu")[0].client, compiled.runtime_executable().hlo_modules()[0])
  assert math.isclose(summary["flops"], ref["flops"], rel_tol=0.01), (summary["flops"], ref)
  assert math.isclose(summary["bytes"], ref["bytes accessed"], rel_tol=0.1), (summary, ref)


def _tiny_config(**overrides):
  config = pretrain.get_config("tiny")
  config.model.update(vocab_size=512, hidden_size=128, num_attention_heads=2,
                      intermediate_size=512, num_hidden_layers=4)
  config.data.update(max_seq_length=128, max_predictions_per_seq=20)
  config.update(dtype="bfloat16", batch_size=8)
  config.update(**overrides)
  return config


@needs_cuda_plugin
def test_an_option_named_in_xla_flags_is_xla_flags_to_set():
  """accelerators.compiler_options (the GPU options the steps compile with) yields to XLA_FLAGS;
  none for a CPU."""
  devices = accelerators.parse_target("h100-1").compile_devices()
  assert accelerators.compiler_options(devices) == {"xla_gpu_enable_triton_gemm": False}
  os.environ["XLA_FLAGS"] += " --xla_gpu_enable_triton_gemm=true"
  try:
    assert accelerators.compiler_options(devices) is None
  finally:
    os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace(
        " --xla_gpu_enable_triton_gemm=true", "")
  assert accelerators.compiler_options(jax.devices("cpu")) is None


@needs_cuda_plugin
@pytest.mark.slow  # three GPU compiles of a small train step
# Heavy (~75 s alone): its parts apart in `make test`: the census of hand-counted programs and of
# a compiled GPU GEMM (above), the GPU train step's census, FLOPs, attention calls, cuBLAS
# epilogues and compiler options (test_aot's eight H100s), what each remat policy saves
# (test_model), the options XLA_FLAGS overrides (the test above).
@pytest.mark.heavy
def test_the_gpu_train_step_census():
  """The real train step for one compile-only H100: what runs per step, by the census.
  Independent checks: the FLOPs the model's formula counts; a scan counted by its trip count
  equals the same layers unrolled; the attention kernel's forward runs once per layer
  application, where the old default policy ran it twice."""
  target = accelerators.parse_target("h100-1")
  devices = target.compile_devices()

  def run(**overrides):
    return aot.compile_report(_tiny_config(**overrides), target, devices)

  unrolled, scanned, old = run(), run(layer_loop="scan"), run(
      layer_loop="scan", remat_policy="dots_with_no_batch_dims")
  layers = 4
  assert (unrolled["layer_loop"], unrolled["remat_policy"], unrolled["attention"]) == (
      "unroll", "none", "cudnn")
  assert scanned["remat_policy"] == "matmul_outputs"
  gemm = lambda r: r["kernels"]["gemm_library"]["flops"]
  assert gemm(scanned) == gemm(unrolled)
  # 3 x forward FLOPs (the model's count, attention at full length): the census adds the
  # backward pass's attention (2.5x its forward) and the optimizer's arithmetic.
  assert 0.95 < unrolled["census"]["flops"] / unrolled["flops_per_step"] < 1.1
  assert unrolled["census"]["attention_forward_calls"] == layers
  assert scanned["census"]["attention_forward_calls"] == layers
  assert old["census"]["attention_forward_calls"] == 2 * layers
  # cuBLAS with its epilogues, not Triton GEMM fusions (accelerators.GPU_OPTIONS).
  assert "gemm_triton" not in unrolled["kernels"]
  assert unrolled["compiler_options"] == {"xla_gpu_enable_triton_gemm": False}
  assert '"epilogue":"BIAS_GELU_AUX"' in unrolled["hlo"] and '"beta":1' in unrolled["hlo"]
  # The scan's stacks cost memory traffic the unrolled program does not have.
  assert scanned["census"]["non_matmul_bytes"] > unrolled["census"]["non_matmul_bytes"]
  assert 0 < unrolled["roofline_seconds"] and 0 < unrolled["roofline_mfu"] < 1
  assert unrolled["fits"] and unrolled["peak_bytes_per_device"] < unrolled["hbm_bytes_per_device"]


def test_a_library_call_fused_with_its_slices_is_priced_as_the_call():
  """XLA's dynamic-slice fusion (jax >= 0.11 in scanned programs): a cuBLAS GEMM reading one
  layer's slice of a stack inside the fusion. FLOPs the GEMM's, bytes the slice, the other
  operand and the result (not the stack, not the workspace); phase from the call's metadata."""
  program = """HloModule fused_call, is_scheduled=true

%dsf (p0: bf16[4,64,32], p1: s32[], p2: bf16[32,16]) -> (bf16[64,16], s8[1024]) {
  %p0 = bf16[4,64,32]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %c0, %c0), dynamic_slice_sizes={1,64,32}
  %b = bf16[64,32]{1,0} bitcast(%ds)
  %p2 = bf16[32,16]{1,0} parameter(2)
  ROOT %gemm = (bf16[64,16]{1,0}, s8[1024]{0}) custom-call(%b, %p2), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/transpose(jvp(M))/albert/encoder/while/body/albert_layer_groups_0/albert_layers_0/ffn/dot_general"}, backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
}

ENTRY %main (stack: bf16[4,64,32], i: s32[], w: bf16[32,16]) -> (bf16[64,16], s8[1024]) {
  %stack = bf16[4,64,32]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %w = bf16[32,16]{1,0} parameter(2)
  ROOT %f = (bf16[64,16]{1,0}, s8[1024]{0}) fusion(%stack, %i, %w), kind=kCustom, calls=%dsf, backend_config={"fusion_backend_config":{"kind":"__custom_fusion","custom_fusion_config":{"name":"dynamic_slice_fusion"}}}
}
"""
  (kernel,) = census.census(program)
  assert (kernel.kind, kernel.phase, kernel.part) == ("gemm_library", "backward", "layer/ffn")
  assert kernel.flops == 2 * 64 * 16 * 32
  assert kernel.bytes == 64 * 32 * 2 + 4 + 32 * 16 * 2 + 64 * 16 * 2  # slice, index, w, result
