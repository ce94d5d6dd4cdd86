"""Serving exports that run without albert-jax: a `jax.export` artifact (StableHLO, parameters
inside, lowered for CPU, CUDA and TPU) or an ONNX graph for onnxruntime (docs/serving.md).

    python -m albert_jax.export --model=DIR --format=stablehlo|onnx --out=OUT [--head=HEAD]
        [--platforms=cpu,cuda,tpu] [--spm_model=FILE] [--overwrite]

DIR is anything `from_pretrained` reads (an HF directory, an albert-jax model directory or run, an
original TF1 release); HEAD one of base, masked-lm, sequence-classification,
token-classification, question-answering (default: the checkpoint's own). OUT, a new directory:

  stablehlo  model.stablehlo (int32 ids; int64 ids too where jax runs without x64, as it does by
             default: jax narrows them at the call) and model_int64.stablehlo (int64 ids, for a
             process with jax_enable_x64 on), each a serialized `jax.export.Exported`;
  onnx       model.onnx (int64 ids, as transformers' tokenizers give them) and model_int32.onnx,
             both reading the weights from model.onnx.data; opset 20, converted by jax2onnx;
  both       config.json (Hugging Face's), the vocabulary (spiece.model, tokenizer_config.json)
             and serving.json (inputs, outputs and files in order).

Inputs are input_ids, attention_mask and token_type_ids, [batch, sequence], both symbolic
(sequence at most max_position_embeddings); outputs are the head's, logits first. float32.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from albert_jax import files, hf_convert, init_from
from albert_jax import model as M
from albert_jax.data.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)

FORMATS = ("stablehlo", "onnx")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What each exportable head returns, in order, by Hugging Face's names (the CLI spells heads with
# hyphens, as the issue and transformers' task names do).
OUTPUTS = {
    "base": ("last_hidden_state", "pooler_output"),
    "masked-lm": ("logits",),
    "sequence-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
}
NOT_EXPORTED = {
    "pretraining": "export masked-lm (its MLM head, sentence order dropped) or base",
    "multiple-choice": "its inputs are [batch, choices, sequence]; export base and score choices",
    "squad-v2-original": "its answer decoding (top-k starts, then ends) is not part of the export",
}
PLATFORMS = ("cpu", "cuda", "tpu")
LOWERINGS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's names
OPSET = 20  # the lowest jax2onnx emits valid graphs for (Gelu is opset 20); onnxruntime >= 1.17
FILES = {"stablehlo": {"int32": "model.stablehlo", "int64": "model_int64.stablehlo"},
         "onnx": {"int64": "model.onnx", "int32": "model_int32.onnx"}}
ONNX_DATA = "model.onnx.data"


def head_name(head: str) -> str:
  """The CLI's name of `head` (`masked_lm` or `masked-lm`) checked against what can be exported."""
  name = head.replace("_", "-")
  if name in OUTPUTS:
    return name
  why = f" ({NOT_EXPORTED[name]})" if name in NOT_EXPORTED else ""
  raise ValueError(f"--head={head!r} cannot be exported{why}; choose one of {list(OUTPUTS)}")


def check_format(fmt: str) -> str:
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r} cannot be exported; choose one of {list(FORMATS)}")
  return fmt


def check_platforms(platforms) -> tuple[str, ...]:
  platforms = tuple(platforms)
  unknown = [p for p in platforms if p not in LOWERINGS]
  if unknown or not platforms:
    raise ValueError(f"--platforms={','.join(platforms)!r}: lower for one or more of "
                     f"{list(LOWERINGS)} (jax.export's names: cuda for NVIDIA GPUs)")
  return platforms


# ----------------------------------------------------------------------------- the program

@dataclasses.dataclass(frozen=True)
class Serving:
  """What an export holds: the model's config and head, and the function it serves."""
  config: M.AlbertConfig
  head: str  # a key of OUTPUTS
  outputs: tuple[str, ...]
  forward: Callable  # (input_ids, attention_mask, token_type_ids) -> tuple of outputs


def _module(config: M.AlbertConfig, head: str, pooler: bool) -> M._Albert:
  """The head's module as every platform can run it: attention written out in XLA (no TPU or
  GPU kernel), the layers unrolled (jax2onnx cannot trace Flax's scan over symbolic shapes)."""
  runtime = dict(attention="xla", layer_loop="unroll")
  if head == "base":
    return M.AlbertModel(config, add_pooling_layer=pooler, **runtime)
  return M.make_model(config, head.replace("-", "_"), **runtime)


def _params_for(params, saved: str, module: M._Albert, head: str, source) -> dict:
  """`params` of a `saved` checkpoint as `module` (the `head` to export) takes them. Exporting a
  head whose weights the checkpoint lacks would serve random ones: refused, naming them."""
  target = head.replace("-", "_")
  if target == saved:
    return params
  kept, fresh = init_from.matching(params, saved, nn.unbox(M.abstract_params(module)), target)
  if fresh:
    raise ValueError(f"{source} holds a {saved} checkpoint without the weights of the {head} "
                     f"head ({', '.join(fresh)}): exporting it would serve random ones; export "
                     f"--head={saved.replace('_', '-')} or base, or fine-tune it first")
  return flax.traverse_util.unflatten_dict(kept, sep="/")


def load(path, head: str | None = None) -> Serving:
  """The serving function of `head` (default: the checkpoint's own) for the model at `path`."""
  config, params, saved = hf_convert.load_any(path)
  head = head_name(head or saved)
  # A base export keeps the pooler where the checkpoint has one (masked-LM and token-level
  # checkpoints have none, as in transformers).
  pooler = head == "base" and "pooler" in (params if saved == "base" else params["albert"])
  module = _module(config, head, pooler)
  params = _params_for(params, saved, module, head, path)
  outputs = OUTPUTS[head] if pooler or head != "base" else ("last_hidden_state",)

  def forward(input_ids, attention_mask, token_type_ids):
    # Ids of any integer type, cast here: the int64 exports are this program after a cast.
    ids, mask, types = (x.astype(jnp.int32) for x in (input_ids, attention_mask, token_type_ids))
    # Positions from an iota, not the model's `jnp.arange(length)`: jax2onnx traces the length
    # as a symbol that arange does not take. [batch, sequence]
    positions = jax.lax.broadcasted_iota(jnp.int32, ids.shape, 1)
    out = module.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                       position_ids=positions)
    return tuple(getattr(out, name) for name in outputs)

  return Serving(config, head, outputs, forward)


# ----------------------------------------------------------------------------- stablehlo

def to_stablehlo(serving: Serving, ids_dtype=jnp.int32, platforms=PLATFORMS) -> bytes:
  """The serialized `jax.export.Exported` of `serving.forward` for ids of `ids_dtype`, lowered
  for each of `platforms`, the parameters inside as constants."""
  limit = serving.config.max_position_embeddings
  batch, length = jax.export.symbolic_shape("batch, sequence",
                                            constraints=(f"sequence <= {limit}",))
  # int64 exists in a jax program only with x64 on; the program itself is the same after the cast.
  with jax.enable_x64(jnp.dtype(ids_dtype).itemsize == 8):
    spec = jax.ShapeDtypeStruct((batch, length), ids_dtype)
    exported = jax.export.export(jax.jit(serving.forward), platforms=tuple(platforms))(
        spec, spec, spec)
  return bytes(exported.serialize())


# ----------------------------------------------------------------------------- onnx

# Control flow: the exported program has none (its layers are unrolled), and on jax 0.10 these
# plugins read jax.core.DropVar, which jax deprecates.
_UNNEEDED_PLUGINS = ("scan", "fori_loop")


@contextlib.contextmanager
def _jax2onnx():
  """jax2onnx's converter with the plugins for jax's own primitives only, quietly.

  On its first conversion jax2onnx imports every plugin and example it ships, and the examples
  build and compile equinox and Flax models: 15 of the 20 seconds an export of a tiny model took
  here. Its discovery (jax2onnx 0.13.0, pinned) is a flag; it is restored, so a later conversion
  of the caller's own still finds every plugin. onnx_ir warns of each shape constant it writes
  without a type: nothing is wrong, so it is not shown.
  """
  from jax2onnx import plugins  # optional: the [export] extra, for --format=onnx only
  from jax2onnx.plugins import plugin_system  # optional, as above
  done = plugin_system._already_imported_plugins
  root = Path(plugins.__file__).parent
  for path in sorted((root / "jax").rglob("*.py")):
    if path.stem not in ("__init__", *_UNNEEDED_PLUGINS):
      importlib.import_module(".".join(("jax2onnx.plugins", *path.relative_to(root)
                                        .with_suffix("").parts)))
  logger = logging.getLogger("onnx_ir")
  level = logger.level
  plugin_system._already_imported_plugins = True
  logger.setLevel(logging.ERROR)
  try:
    from jax2onnx import to_onnx as convert  # optional: the [export] extra
    yield convert
  finally:
    plugin_system._already_imported_plugins = done
    logger.setLevel(level)


def to_onnx(serving: Serving, matmuls: bool = True):
  """The ONNX graph (a ModelProto, opset OPSET) of `serving.forward` for int32 ids, batch and
  sequence dynamic, converted by jax2onnx; the parameters are its initializers. `matmuls=False`
  keeps jax2onnx's Einsums (experiments/benchmarks/export_serving.py prices the rewrite)."""
  import onnx  # optional: the [export] extra, for --format=onnx only
  spec = jax.ShapeDtypeStruct(("batch", "sequence"), jnp.int32)
  with _jax2onnx() as convert:
    model = convert(serving.forward, [spec] * 3, opset=OPSET, model_name=f"albert_{serving.head}",
                    input_names=INPUTS, output_names=serving.outputs)
  if matmuls:
    model = _matmuls(model)
  onnx.checker.check_model(model, full_check=True)
  return model


def _matmuls(model):
  """The graph with jax2onnx's `Einsum("abc,cd->abd")` (every dense layer) as a MatMul, which is
  the same product: onnxruntime's Einsum runs it ~10% slower (albert-base, 8 x 128, this CPU)."""
  import onnx  # optional: the [export] extra, for --format=onnx only
  nodes = []
  for node in model.graph.node:
    equation = next((a.s for a in node.attribute if a.name == "equation"), None)
    if node.op_type == "Einsum" and equation == b"abc,cd->abd":
      node = onnx.helper.make_node("MatMul", list(node.input), list(node.output), name=node.name)
    nodes.append(node)
  del model.graph.node[:]
  model.graph.node.extend(nodes)
  return model


def with_int64_inputs(model):
  """A copy of an int32-input graph taking int64 ids: each input cast to int32 first."""
  import onnx  # optional: the [export] extra, for --format=onnx only
  model = type(model).FromString(model.SerializeToString())
  casts = []
  for value in model.graph.input:
    name = value.name
    for node in model.graph.node:
      node.input[:] = [f"{name}_int32" if i == name else i for i in node.input]
    casts.append(onnx.helper.make_node("Cast", [name], [f"{name}_int32"],
                                       to=onnx.TensorProto.INT32, name=f"{name}_to_int32"))
    value.type.tensor_type.elem_type = onnx.TensorProto.INT64
  nodes = casts + list(model.graph.node)
  del model.graph.node[:]
  model.graph.node.extend(nodes)
  onnx.checker.check_model(model, full_check=True)
  return model


def _write_onnx(model32, out: Path) -> None:
  """model.onnx (int64 ids) and model_int32.onnx, sharing one file of weights."""
  import onnx  # optional: the [export] extra, for --format=onnx only
  from onnx import external_data_helper  # optional, as above
  model64 = with_int64_inputs(model32)
  # Shape constants stay in the graph (onnxruntime's shape inference reads them there).
  external_data_helper.convert_model_to_external_data(model64, location=ONNX_DATA,
                                                      size_threshold=1024)
  onnx.save_model(model64, out / FILES["onnx"]["int64"])  # writes the weights, keeps references
  os.chmod(out / ONNX_DATA, 0o644)  # onnx makes it owner-only; the graphs are 0o644
  del model32.graph.initializer[:]
  model32.graph.initializer.extend(model64.graph.initializer)
  onnx.save_model(model32, out / FILES["onnx"]["int32"])


# ----------------------------------------------------------------------------- the directory

def _tokenizer(path, spm_model) -> AlbertTokenizer | None:
  """The vocabulary to ship: `spm_model`, else the model's own (with its tokenizer_config.json
  flags), else None."""
  if spm_model:
    return AlbertTokenizer.from_pretrained(spm_model)
  return init_from.identify(path).tokenizer()  # the one door: what is at `path`, its vocabulary


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def export(path, out, fmt: str, head: str | None = None, platforms=PLATFORMS,
           spm_model=None, overwrite: bool = False) -> dict:
  """Writes the `fmt` export of `head` of the model at `path` to the directory `out` (module
  docstring); returns what serving.json holds."""
  check_format(fmt)
  platforms = check_platforms(platforms)
  if head is not None:
    head_name(head)
  files.check_apart(out, [path, spm_model])  # before the model is read
  serving = load(path, head)
  tokenizer = _tokenizer(path, spm_model)
  if tokenizer is None:
    log.warning("%s has no spiece.model: the export carries no vocabulary (pass --spm_model)",
                path)
  manifest = {
      "format": fmt, "head": serving.head, "inputs": list(INPUTS),
      "outputs": list(serving.outputs), "files": FILES[fmt],
      "dynamic_axes": ["batch", "sequence"],
      "max_sequence_length": serving.config.max_position_embeddings,
      "vocabulary": tokenizer is not None,
  }
  if fmt == "stablehlo":
    manifest.update(platforms=list(platforms), jax=jax.__version__)
  else:
    manifest.update(opset=OPSET, converter=f"jax2onnx {_version('jax2onnx')}",
                    weights=ONNX_DATA)
  with files.atomic_directory(out, overwrite, sources=[path, spm_model]) as tmp:
    tmp = Path(tmp)
    if fmt == "stablehlo":
      for dtype, name in FILES[fmt].items():
        (tmp / name).write_bytes(to_stablehlo(serving, jnp.dtype(dtype), platforms))
    else:
      _write_onnx(to_onnx(serving), tmp)
    arch = M.HEADS[serving.head.replace("-", "_")][1]
    files.write_json(tmp / "config.json", {"architectures": [arch], **serving.config.to_hf_dict()})
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
    files.write_json(tmp / "serving.json", manifest)
  return manifest


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m albert_jax.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="what from_pretrained reads")
  parser.add_argument("--format", required=True, help=" or ".join(FORMATS))
  parser.add_argument("--out", required=True, help="the directory to write")
  parser.add_argument("--head", default=None,
                      help=f"{', '.join(OUTPUTS)} (default: the checkpoint's own)")
  parser.add_argument("--platforms", default=",".join(PLATFORMS),
                      help="stablehlo: the platforms to lower for, comma-separated")
  parser.add_argument("--spm_model", default=None, help="the vocabulary (default: the model's)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    manifest = export(args.model, args.out, args.format, args.head,
                      [p for p in args.platforms.split(",") if p], args.spm_model, args.overwrite)
  except (FileNotFoundError, FileExistsError, KeyError, ValueError, ImportError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}: {manifest['format']}, {manifest['head']} head, outputs "
        f"{', '.join(manifest['outputs'])}, files {', '.join(manifest['files'].values())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
