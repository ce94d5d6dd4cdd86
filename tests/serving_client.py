"""A serving process as a user of an export writes it: jax or onnxruntime, and no albert-jax.

    python tests/serving_client.py JOB.json RESULTS.npz

JOB: {"exports": {KEY: EXPORT_DIR}, "inputs": NPZ}, the NPZ holding `{shape}/{name}` arrays
(int32) for names input_ids, attention_mask, token_type_ids. Every export runs on every shape,
each way its ids may come (below); RESULTS holds `{KEY}/{shape}/{way}/{i}`, the i-th output, and
`modules.json` beside it what this process imported and each StableHLO artifact's platforms.
Started by tests/test_export.py in a fresh process.
"""

import json
import sys
from pathlib import Path

import numpy as np

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def stablehlo(directory: Path, manifest: dict, inputs: dict) -> tuple[dict, list]:
  """int32 ids, int64 ids (jax narrows them: x64 off, jax's default) and int64 ids to the int64
  artifact with x64 on."""
  import jax
  from jax import export
  read = lambda dtype: export.deserialize(
      bytearray((directory / manifest["files"][dtype]).read_bytes()))
  exp32, exp64 = read("int32"), read("int64")
  ids32 = [inputs[n] for n in NAMES]
  ids64 = [x.astype(np.int64) for x in ids32]
  out = {"int32": exp32.call(*ids32), "int64_narrowed": exp32.call(*ids64)}
  jax.config.update("jax_enable_x64", True)
  try:
    out["int64_x64"] = exp64.call(*ids64)
  finally:
    jax.config.update("jax_enable_x64", False)
  return out, list(exp32.platforms)


def onnx(directory: Path, manifest: dict, inputs: dict) -> dict:
  """int64 ids to model.onnx, int32 ids to model_int32.onnx, both on the CPU."""
  import onnxruntime as ort
  out = {}
  for dtype, name in manifest["files"].items():
    session = ort.InferenceSession(str(directory / name), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == manifest["inputs"]
    assert [o.name for o in session.get_outputs()] == manifest["outputs"]
    out[dtype] = session.run(None, {n: inputs[n].astype(dtype) for n in NAMES})
  return out


def main(job_path: str, results_path: str) -> None:
  job = json.loads(Path(job_path).read_text())
  arrays = np.load(job["inputs"])
  shapes = sorted({key.split("/")[0] for key in arrays.files})
  results, platforms = {}, {}
  for key, directory in job["exports"].items():
    directory = Path(directory)
    manifest = json.loads((directory / "serving.json").read_text())
    for shape in shapes:
      inputs = {n: arrays[f"{shape}/{n}"] for n in NAMES}
      if manifest["format"] == "stablehlo":
        ways, platforms[key] = stablehlo(directory, manifest, inputs)
      else:
        ways = onnx(directory, manifest, inputs)
      for way, outputs in ways.items():
        assert len(outputs) == len(manifest["outputs"]), (key, way)
        for i, value in enumerate(outputs):
          results[f"{key}/{shape}/{way}/{i}"] = np.asarray(value)
  np.savez(results_path, **results)
  Path(results_path).with_name("modules.json").write_text(json.dumps(
      {"modules": sorted(m.split(".")[0] for m in sys.modules), "platforms": platforms}))


if __name__ == "__main__":
  main(*sys.argv[1:])
