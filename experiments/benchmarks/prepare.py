"""Preparing a corpus once against reading it at every start: prepare throughput, and training
start-up and peak memory on prepared and raw corpora of 10, 40 and 80 MB.

    python -m experiments.benchmarks.prepare [--sizes_mb=10,40,80] [--workdir=/tmp/albert_prepare]

1. Corpora: English text in the original format, made from the embedded corpus's sentences (the
   standard library's documentation): documents of 10-60 sentences drawn at random (seeded), so
   the words and sentence lengths are real ones, written as 8 files per corpus. A vocabulary of
   8000 pieces is trained on the embedded corpus (it allows ~9.6k).
2. Prepare throughput: `python -m albert_jax.data.prepare` (seq 512, fixed mode) on the 80 MB
   corpus with 1 and 2 local worker processes (`--direct_num_workers=N
   --direct_running_mode=multi_processing`, 4 MB read units): MB of text per second of the whole
   command (process start, imports, vocabulary, Beam's workers, writing) and of the pipeline alone
   (the time `prepare` logs: Beam's workers started, every stage, the manifest), the CPU seconds
   of all its processes (which other work on the machine does not inflate), and the speed-ups.
3. Start-up and memory: a fresh process builds `input_pipeline.train_iterator` (seq 512, global
   batch 256, one host) and takes the first batch, from the raw files (`source=files`) and from
   the prepared directory (`source=prepared`); it reports the seconds from the call to the first
   batch and its peak RSS (VmHWM), and its RSS before the call (imports, vocabulary).
The machine's load average is printed beside each figure: other work on the cores slows both.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FILES_PER_CORPUS = 8

_STARTUP = r"""
import json, sys, time
import ml_collections
from albert_jax.data import input_pipeline
from albert_jax.data.tokenizer import AlbertTokenizer

def rss(field):
  for line in open("/proc/self/status"):
    if line.startswith(field):
      return int(line.split()[1]) / 1024

source, where, spm = sys.argv[1:4]
cfg = input_pipeline.default_data_config()
cfg.source, cfg.max_seq_length, cfg.num_workers = source, 512, 0
if source == "files":
  cfg.files = where
else:
  cfg.prepared = where
tok = AlbertTokenizer(spm)
before = rss("VmRSS")
start = time.perf_counter()
it = input_pipeline.train_iterator(cfg, tok, global_batch_size=256, seed=0, process_index=0,
                                   process_count=1)
batch = next(it)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": rss("VmHWM"),
                  "pairs": it.stats["examples_per_epoch"]}))
it.close()
"""


def load() -> str:
  return "/".join(f"{x:.1f}" for x in os.getloadavg())


def make_corpus(path: Path, megabytes: float, seed: int) -> int:
  """Text files of about `megabytes` MB from the embedded corpus's sentences; returns bytes."""
  from albert_jax.data import corpus
  sentences = [s for d in corpus.embedded_documents("all") for s in d]
  rng = np.random.default_rng(seed)
  path.mkdir(parents=True, exist_ok=True)
  target, written = megabytes * 1e6, 0
  files = [open(path / f"part-{i:02d}.txt", "w", encoding="utf-8") for i in range(FILES_PER_CORPUS)]
  try:
    k = 0
    while written < target:
      doc = "\n".join(sentences[i] for i in rng.integers(len(sentences), size=rng.integers(10, 61)))
      text = doc + "\n\n"
      files[k % FILES_PER_CORPUS].write(text)
      written += len(text.encode("utf-8"))
      k += 1
  finally:
    for f in files:
      f.close()
  return sum(p.stat().st_size for p in path.iterdir())


def run_prepare(corpus_dir: Path, spm: str, out: Path, workers: int) -> dict:
  args = [sys.executable, "-m", "albert_jax.data.prepare", f"--input={corpus_dir}/*.txt",
          f"--spm_model={spm}", f"--output={out}", "--max_seq_length=512", "--unit_mb=4",
          "--overwrite", f"--direct_num_workers={workers}",
          "--direct_running_mode=multi_processing"]
  before = load()
  cpu = _children_cpu()
  start = time.perf_counter()
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  cpu = _children_cpu() - cpu
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  manifest = json.loads((out / "manifest.json").read_text())
  pipeline = float(re.search(r"Prepared \S+ in ([0-9.]+) s", result.stderr).group(1))
  return {"seconds": seconds, "pipeline_seconds": pipeline, "cpu_seconds": cpu,
          "mb": manifest["corpus"]["text_bytes"] / 1e6,
          "pairs": manifest["splits"]["train"]["pairs"], "load": f"{before} -> {load()}"}


def _children_cpu() -> float:
  """CPU seconds of finished child processes (and the descendants they waited for: Beam's)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def startup(source: str, where: str, spm: str) -> dict:
  before = load()
  result = subprocess.run([sys.executable, "-c", _STARTUP, source, where, spm], cwd=REPO,
                          capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return {**json.loads(result.stdout.strip().splitlines()[-1]), "load": f"{before} -> {load()}"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes_mb", default="10,40,80")
  parser.add_argument("--throughput_mb", type=float, default=80)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "albert_prepare"))
  parser.add_argument("--parts", default="throughput,startup")
  parser.add_argument("--repeats", type=int, default=1, help="Throughput runs per worker count, "
                      "alternated (1, 2, 1, 2, ...), to see how much the load moves them.")
  args = parser.parse_args()
  from albert_jax.data import corpus
  from albert_jax.data.train_tokenizer import train_spm
  work = Path(args.workdir)
  spm = work / "spm" / "spiece.model"
  if not spm.is_file():
    train_spm([s for d in corpus.embedded_documents("train") for s in d], 8000, work / "spm")
  sizes = [float(s) for s in args.sizes_mb.split(",")]
  corpora = {}
  for mb in sorted(set(sizes) | {args.throughput_mb}):
    path = work / f"corpus_{mb:g}mb"
    if not path.is_dir():
      make_corpus(path, mb, seed=int(mb))
    corpora[mb] = path
  print(f"{os.cpu_count()} CPUs; load average (1/5/15 min) now {load()}")

  parts = args.parts.split(",")
  if "throughput" in parts:
    throughput(corpora[args.throughput_mb], spm, work, args.throughput_mb, args.repeats)
  if "startup" in parts:
    startups(sizes, corpora, spm, work)


def throughput(corpus_dir, spm, work, mb, repeats):
  print("\nPrepare throughput (seq 512, fixed mode, 4 MB read units):")
  print(f"{'corpus MB':>9} {'workers':>7} {'command s':>9} {'MB/s':>6} {'pipeline s':>10} "
        f"{'MB/s':>6} {'CPU s':>6} {'pairs':>7}  load before -> after")
  rates = {1: [], 2: []}
  for workers in (1, 2) * repeats:
    r = run_prepare(corpus_dir, str(spm), work / f"prepared_{mb:g}mb", workers)
    rates[workers].append((r["mb"] / r["seconds"], r["mb"] / r["pipeline_seconds"]))
    rate = rates[workers][-1]
    print(f"{r['mb']:>9.1f} {workers:>7} {r['seconds']:>9.1f} {rate[0]:>6.2f} "
          f"{r['pipeline_seconds']:>10.1f} {rate[1]:>6.2f} {r['cpu_seconds']:>6.1f} "
          f"{r['pairs']:>7}  {r['load']}")
  best = {w: np.max(rates[w], axis=0) for w in rates}
  print(f"speed-up 1 -> 2 workers (best of {repeats}): {best[2][0] / best[1][0]:.2f}x (command), "
        f"{best[2][1] / best[1][1]:.2f}x (pipeline)")


def startups(sizes, corpora, spm, work):
  print("\nStart-up (train_iterator to the first batch; seq 512, batch 256) and peak RSS:")
  print(f"{'corpus MB':>9} {'source':>9} {'seconds':>8} {'RSS before MB':>13} {'peak RSS MB':>11} "
        f"{'pairs':>7}  load before -> after")
  for mb in sizes:
    out = work / f"prepared_{mb:g}mb"
    if not (out / "manifest.json").is_file():
      run_prepare(corpora[mb], str(spm), out, 2)
    for source, where in (("files", f"{corpora[mb]}/*.txt"), ("prepared", str(out))):
      r = startup(source, where, str(spm))
      print(f"{mb:>9g} {source:>9} {r['seconds']:>8.2f} {r['rss_before_mb']:>13.0f} "
            f"{r['peak_rss_mb']:>11.0f} {r['pairs']:>7}  {r['load']}")


if __name__ == "__main__":
  main()
