"""Where the test suite's time goes: compiling the tiny job's train step, and running the tiny job.

    python -m experiments.benchmarks.test_costs [--repeats=2]

1. The train step of the tests' tiny pretraining job (tests/conftest.py's OVERRIDES: LAMB, the
   scanned layer, the NaN guard, a 2x2x2 mesh of 8 simulated CPU devices), lowered with
   `albert_jax.aot.lower` and compiled in a fresh process: lines of optimised HLO and compile
   seconds with XLA's default flags (the peer), LLVM at -O0, and -O0 with XLA:CPU's classic
   fusion emitter where jaxlib < 0.11 still has it (what tests/conftest.py sets), alternating,
   and the ratios to the default.
2. `python -m albert_jax.main` with that config, as the end-to-end tests start it: wall seconds
   with an empty compilation cache (cold) and again with the cache it filled (warm).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
O0 = "--xla_backend_optimization_level=0"
CLASSIC_FUSIONS = "--xla_cpu_use_fusion_emitters=false"
VARIANTS = {"default": "", "-O0": O0}
if tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2]) < (0, 11):  # newer refuse it
  VARIANTS["-O0 classic fusions"] = f"{O0} {CLASSIC_FUSIONS}"

_COMPILE = r"""
import sys, time
sys.path.insert(0, "configs"); sys.path.insert(0, "tests")
import jax
from conftest import OVERRIDES
import pretrain
from albert_jax import aot
config = pretrain.get_config("tiny")
for key, value in {**OVERRIDES, "data.vocab_size": 500}.items():
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
lowered, _, _ = aot.lower(config, aot.step_of(config), jax.devices())
start = time.perf_counter()
compiled = lowered.compile()
print("RESULT", time.perf_counter() - start, compiled.as_text().count("\n"))
"""


def compile_step(flags: str) -> tuple[float, int]:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {flags}",
         "JAX_PLATFORMS": "cpu"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True).stdout
  _, seconds, lines = next(l for l in out.splitlines() if l.startswith("RESULT")).split()
  return float(seconds), int(lines)


def run_job(workdir: Path, spm_model: str, cache: Path) -> float:
  sys.path.insert(0, str(REPO / "tests"))
  from conftest import OVERRIDES, cpu_flags
  args = [sys.executable, "-m", "albert_jax.main", "--config=configs/pretrain.py:tiny",
          f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in {**OVERRIDES, "spm_model": spm_model}.items()]]
  env = {**os.environ, "XLA_FLAGS": cpu_flags(8), "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}
  start = time.perf_counter()
  subprocess.run(args, cwd=REPO, env=env, capture_output=True, check=True)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  print(f"{os.cpu_count()} CPUs; load average now {os.getloadavg()[0]:.1f}")

  times = {name: [] for name in VARIANTS}
  for _ in range(args.repeats):
    for name, flags in VARIANTS.items():
      seconds, lines = compile_step(flags)
      times[name].append(seconds)
  print(f"\nThe tiny job's train step: {lines} lines of optimised HLO (with the last flags)")
  for name, values in times.items():
    print(f"  compile, {name:20s} best {min(values):.2f} s  "
          f"({', '.join(f'{v:.2f}' for v in values)}), "
          f"{min(values) / min(times['default']):.2f}x the default")

  from albert_jax.data import corpus
  from albert_jax.data.train_tokenizer import train_spm
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    spm = str(train_spm([s for d in corpus.embedded_documents("train") for s in d][::4], 500,
                        tmp / "spm"))  # tests/conftest.py's vocabulary
    runs = [run_job(tmp / f"run{i}", spm, tmp / "cache") for i in range(2)]
  print(f"\nThe tiny job (24 steps, 4 checkpoints, 2 evals, export) as a subprocess: "
        f"cold {runs[0]:.1f} s, warm {runs[1]:.1f} s")


if __name__ == "__main__":
  main()
