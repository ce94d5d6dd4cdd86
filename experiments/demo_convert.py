"""Demo until the pretraining job lands: albert-large-v2 -> HF directory -> back, and Orbax too.

    python -m experiments.demo_convert [--workdir=demo_workdir]

Initialises an albert-large-v2-shaped AlbertForPreTraining, exports it to the Hugging Face format,
imports it again, does the same through an Orbax model directory, and prints the parameter count
and the largest output difference (expected: 17,847,474 parameters, difference 0).
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from albert_jax import hf_convert
from albert_jax.checkpoints import model_dir
from albert_jax import model as M


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="demo_workdir")
  args = parser.parse_args()
  workdir = Path(args.workdir)

  config = M.preset("albert-large-v2")
  module = M.AlbertForPreTraining(config)
  start = time.perf_counter()
  params = M.init_params(module, 0)
  print(f"initialised albert-large-v2 (AlbertForPreTraining): {M.count_params(params):,} "
        f"parameters in {time.perf_counter() - start:.1f}s")

  rs = np.random.RandomState(0)
  ids = rs.randint(5, config.vocab_size, (4, 128)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 100:] = 0
  types = (np.arange(128) >= 64).astype(np.int32)[None].repeat(4, 0)
  apply = jax.jit(module.apply)

  def outputs(p):
    out = apply({"params": p}, ids, attention_mask=mask, token_type_ids=types)
    return np.asarray(out.prediction_logits), np.asarray(out.sop_logits)

  reference = outputs(params)
  for name, write, read in (
      ("Hugging Face", lambda d: hf_convert.save(config, params, d, overwrite=True),
       lambda d: hf_convert.load(d)),
      ("Orbax", lambda d: model_dir.save_model_dir(d, config, params, "pretraining",
                                                       overwrite=True),
       lambda d: model_dir.load_model_dir(d))):
    d = workdir / {"Hugging Face": "hf", "Orbax": "orbax"}[name]
    start = time.perf_counter()
    write(d)
    loaded_config, loaded, head = read(d)
    seconds = time.perf_counter() - start
    assert (loaded_config, head) == (config, "pretraining")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(reference, outputs(loaded)))
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
    print(f"{name:>12}: wrote and read {d} ({size:.0f} MiB) in {seconds:.1f}s; "
          f"max |output difference| = {diff:.3g}")
  print(f"Load it in transformers: AlbertForPreTraining.from_pretrained('{workdir / 'hf'}')")


if __name__ == "__main__":
  main()
