"""Serving exports (albert_jax.export): each head's StableHLO artifact and ONNX graph, run by a
fresh process that never imports albert-jax (tests/serving_client.py), against our model and
transformers' PyTorch model on the same Hugging Face directory."""

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

import albert_jax
from albert_jax import export, hf_convert
from albert_jax import model as M
from conftest import once_per_session, tpu_env
from helpers import random_params

HEADS = list(export.OUTPUTS)
# Two shapes, every batch with padded rows; sentence pairs, so both token types.
SHAPES = {"2x9": (2, 9), "3x16": (3, 16)}
TEXTS = [("the cat sat on the mat", "it was big"), ("a", "b"),
         ("hello world, this is a simple test of the model", "and a second sentence")]
CLIENT = Path(__file__).with_name("serving_client.py")
# Neither the exporter nor a model library: only jax (StableHLO) or onnxruntime (ONNX).
NEVER_IMPORTED = {"albert_jax", "flax", "jax2onnx", "torch", "transformers"}


def _config(head: str, vocab_size: int) -> M.AlbertConfig:
  """Tiny configs; token-level heads get the grouped layout and the erf GELU (ALBERT v1)."""
  cfg = M.AlbertConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=16,
                       num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                       num_labels=3, max_position_embeddings=40)
  if head in ("token-classification", "masked-lm"):
    cfg = cfg.replace(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2,
                      hidden_act="gelu")
  return cfg.replace(num_labels=2) if head == "question-answering" else cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
  """An HF directory with random weights and the vocabulary per head, and the inputs; made once
  a session (pytest-xdist's workers share them)."""
  def make(root):
    for i, head in enumerate(HEADS):
      name = head.replace("-", "_")
      cfg = _config(head, tokenizer.vocab_size)
      hf_convert.save(cfg, random_params(cfg, name, seed=i), root / head, head=name,
                      tokenizer=tokenizer)
    inputs = {}
    for shape, (batch, length) in SHAPES.items():
      firsts, seconds = zip(*TEXTS[:batch])
      encoded = tokenizer(list(firsts), list(seconds), padding="max_length", truncation=True,
                          max_length=length, return_tensors="np")
      assert (encoded["attention_mask"] == 0).any() and (encoded["token_type_ids"] == 1).any()
      inputs.update({f"{shape}/{k}": v for k, v in encoded.items()})
    np.savez(root / "inputs.npz", **inputs)
    return str(root)

  root = Path(once_per_session(tmp_path_factory, "export_models", make))
  arrays = np.load(root / "inputs.npz")
  inputs = {shape: {k: arrays[f"{shape}/{k}"] for k in export.INPUTS} for shape in SHAPES}
  return types.SimpleNamespace(dirs={h: root / h for h in HEADS}, inputs=inputs,
                               inputs_file=root / "inputs.npz")


@pytest.fixture(scope="module", params=export.FORMATS)
def served(request, models, tmp_path_factory):
  """Every head exported in one format by the CLI, and what the serving process computed; made
  once a session."""
  fmt = request.param

  def make(out):
    exports = {head: str(out / head) for head in HEADS}
    for head, directory in exports.items():
      assert export.main([f"--model={models.dirs[head]}", f"--head={head}", f"--format={fmt}",
                          f"--out={directory}"]) == 0
    job = out / "job.json"
    job.write_text(json.dumps({"exports": exports, "inputs": str(models.inputs_file)}))
    proc = subprocess.run([sys.executable, str(CLIENT), str(job), str(out / "results.npz")],
                          capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"exports": exports, **json.loads((out / "modules.json").read_text())}

  made = once_per_session(tmp_path_factory, f"export_served_{fmt}", make)
  results = dict(np.load(Path(made["exports"]["base"]).parent / "results.npz"))
  return types.SimpleNamespace(format=fmt, results=results, modules=made["modules"],
                               platforms=made["platforms"],
                               exports={h: Path(d) for h, d in made["exports"].items()})


_references = {}


def _references_for(models, head: str, shape: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """(ours, transformers') for each of the head's outputs, in the export's order."""
  key = (head, shape)
  if key not in _references:
    path, x = models.dirs[head], models.inputs[shape]
    module, params = albert_jax.from_pretrained(path)  # the default program: scanned layers
    ours = jax.jit(module.apply)({"params": params}, x["input_ids"],
                                 attention_mask=x["attention_mask"],
                                 token_type_ids=x["token_type_ids"])
    hf = getattr(transformers, M.HEADS[head.replace("-", "_")][1]).from_pretrained(path).eval()
    with torch.no_grad():
      theirs = hf(**{k: torch.from_numpy(v).long() for k, v in x.items()})
    _references[key] = [(np.asarray(getattr(ours, name)), theirs[name].numpy())
                        for name in export.OUTPUTS[head]]
  return _references[key]


def _assert_close(actual, expected, what):
  """float32 agreement to 1e-4 relative to the output's scale (elementwise near zero)."""
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


# ----------------------------------------------------------------------------- parity

@pytest.mark.slow  # the module's exports and one serving process per format: ~30 s
@pytest.mark.parametrize("head", HEADS)
def test_the_export_serves_what_ours_and_transformers_compute(served, models, head):
  """Both shapes, with padding and both token types, each way the ids may come: int32 and int64
  (StableHLO: int64 narrowed by jax's default x64-off mode, and the int64 artifact with x64 on;
  ONNX: model.onnx takes int64, model_int32.onnx int32)."""
  ways = {"stablehlo": ("int32", "int64_narrowed", "int64_x64"),
          "onnx": ("int64", "int32")}[served.format]
  for shape, (batch, length) in SHAPES.items():
    for i, (ours, theirs) in enumerate(_references_for(models, head, shape)):
      _assert_close(ours, theirs, f"{head} {shape}: ours vs transformers")
      for way in ways:
        got = served.results[f"{head}/{shape}/{way}/{i}"]
        assert got.shape == theirs.shape and got.shape[0] == batch and got.dtype == np.float32
        what = f"{served.format} {head} {shape} {way}, output {export.OUTPUTS[head][i]}"
        _assert_close(got, ours, f"{what} vs ours")
        _assert_close(got, theirs, f"{what} vs transformers")


@pytest.mark.slow  # shares the exports of the test above
def test_the_serving_process_needs_no_albert_jax(served):
  assert not NEVER_IMPORTED & set(served.modules), NEVER_IMPORTED & set(served.modules)
  if served.format == "onnx":
    assert "jax" not in served.modules
  else:  # the same artifact holds the CPU, CUDA and TPU programs
    assert all(p == ["cpu", "cuda", "tpu"] for p in served.platforms.values())


@pytest.mark.slow  # shares the exports of the test above
def test_the_directory_holds_config_vocabulary_and_manifest(served, models):
  out = served.exports["sequence-classification"]
  manifest = json.loads((out / "serving.json").read_text())
  assert manifest["inputs"] == list(export.INPUTS) and manifest["outputs"] == ["logits"]
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["config.json", "serving.json", "spiece.model", "special_tokens_map.json",
       "tokenizer_config.json", *manifest["files"].values()]
      + ([export.ONNX_DATA] if served.format == "onnx" else []))
  config = transformers.AlbertConfig.from_pretrained(out)
  assert config.architectures == ["AlbertForSequenceClassification"] and config.num_labels == 3
  text = "Hello world, the cat sat on the mat."
  theirs = transformers.AlbertTokenizer.from_pretrained(out)(text)["input_ids"]
  source = transformers.AlbertTokenizer.from_pretrained(models.dirs["sequence-classification"])
  assert theirs == source(text)["input_ids"] and len(theirs) > 5
  if served.format == "onnx":
    assert manifest["opset"] == export.OPSET == 20


@pytest.mark.slow  # shares the exports of the test above
def test_a_sequence_longer_than_the_positions_is_refused(served, models):
  """Position ids past max_position_embeddings would read past the table; both refuse."""
  out = served.exports["base"]
  limit = M.AlbertConfig.from_hf_dict(json.loads((out / "config.json").read_text())
                                      ).max_position_embeddings
  ids = np.ones((1, limit + 1), np.int32)
  if served.format == "stablehlo":
    exported = jax.export.deserialize(bytearray((out / "model.stablehlo").read_bytes()))
    exported.call(ids[:, :limit], ids[:, :limit], ids[:, :limit])  # the longest that fits
    with pytest.raises(ValueError):
      exported.call(ids, ids, ids)
  else:
    import onnxruntime as ort
    session = ort.InferenceSession(str(out / "model_int32.onnx"))
    with pytest.raises(Exception, match="out of data bounds"):
      session.run(None, dict(zip(export.INPUTS, (ids, ids, ids))))


# ----------------------------------------------------------------------------- TPU and GPU

_COMPILE_FOR_ACCELERATORS = """
import sys, jax, jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
from albert_jax import accelerators  # compile-only devices; the artifact is jax's alone
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
for target in ("v5e-1", "h100-1"):
  device = accelerators.parse_target(target).compile_devices()[0]
  spec = jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=SingleDeviceSharding(device))
  jax.jit(exported.call).lower(spec, spec, spec).compile()
  print("COMPILED", device.platform, device.device_kind)
"""


@pytest.mark.slow  # compiles for a TPU and a GPU in a subprocess (~15 s)
# Heavy: its parts apart in `make test`: the artifact lowered for cpu, cuda and tpu and served
# from its serialized form (test_the_serving_process_needs_no_albert_jax and the parity tests),
# the TPU and GPU compiles (test_aot's v5p-8 and eight H100s).
@pytest.mark.heavy
@pytest.mark.skipif(not all(map(importlib.util.find_spec, ("libtpu", "jax_plugins.xla_cuda13"))),
                    reason="libtpu and jax's CUDA plugin are not installed (.[tpu], .[gpu-aot])")
def test_the_same_artifact_compiles_for_a_tpu_and_a_gpu(models, tmp_path):
  out = tmp_path / "out"
  export.export(models.dirs["question-answering"], out, "stablehlo")
  proc = subprocess.run([sys.executable, "-c", _COMPILE_FOR_ACCELERATORS,
                         str(out / "model.stablehlo")], env=tpu_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  compiled = [line for line in proc.stdout.splitlines() if line.startswith("COMPILED")]
  assert compiled == ["COMPILED tpu TPU v5 lite", "COMPILED gpu NVIDIA H100 80GB HBM3"]


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("head,reason", [
    ("pretraining", "export masked-lm"), ("multiple-choice", "[batch, choices, sequence]"),
    ("squad_v2_original", "answer decoding"), ("causal-lm", "")])
def test_a_head_that_cannot_be_exported_is_named_with_the_choices(models, tmp_path, capsys,
                                                                 head, reason):
  code = export.main([f"--model={models.dirs['base']}", f"--head={head}", "--format=onnx",
                      f"--out={tmp_path / 'out'}"])
  err = capsys.readouterr().err
  assert code == 1 and f"--head={head!r} cannot be exported" in err and reason in err
  assert str(HEADS) in err and not (tmp_path / "out").exists()


def test_a_format_that_cannot_be_exported_is_named_with_the_choices(models, tmp_path, capsys):
  code = export.main([f"--model={models.dirs['base']}", "--format=tflite",
                      f"--out={tmp_path / 'out'}"])
  err = capsys.readouterr().err
  assert code == 1 and "--format='tflite' cannot be exported" in err
  assert "['stablehlo', 'onnx']" in err and not (tmp_path / "out").exists()


def test_a_platform_jax_cannot_lower_for_is_named_with_the_choices(models, tmp_path, capsys):
  code = export.main([f"--model={models.dirs['base']}", "--format=stablehlo", "--platforms=cpu,gpu",
                      f"--out={tmp_path / 'out'}"])
  err = capsys.readouterr().err
  assert code == 1 and "--platforms='cpu,gpu'" in err and "['cpu', 'cuda', 'rocm', 'tpu']" in err
  assert not (tmp_path / "out").exists()


def test_a_head_the_checkpoint_lacks_is_refused_naming_its_weights(models, tmp_path):
  """A classifier the masked-LM checkpoint does not hold would be served with random weights."""
  with pytest.raises(ValueError, match=r"holds a masked_lm checkpoint without the weights of the "
                     r"sequence-classification head \(.*classifier/kernel"):
    export.export(models.dirs["masked-lm"], tmp_path / "out", "onnx",
                  head="sequence-classification")
  assert not (tmp_path / "out").exists()


def test_base_from_a_checkpoint_without_a_pooler_serves_the_hidden_states_only(models):
  """transformers' masked-LM and token-level models have no pooler: nothing to serve for one."""
  assert export.load(models.dirs["masked-lm"], "base").outputs == ("last_hidden_state",)
  assert export.load(models.dirs["sequence-classification"], "base").outputs == (
      "last_hidden_state", "pooler_output")


def test_an_output_inside_the_model_is_refused_untouched(models):
  before = sorted(p.name for p in models.dirs["base"].iterdir())
  with pytest.raises(ValueError, match="lies inside the source"):
    export.export(models.dirs["base"], models.dirs["base"] / "served", "stablehlo")
  assert sorted(p.name for p in models.dirs["base"].iterdir()) == before
