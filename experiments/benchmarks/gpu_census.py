"""The kernel census of the default large train step on a GPU, today's program beside an older
revision's, compiled here without a GPU (`pip install -e .[gpu-aot]`).

    python -m experiments.benchmarks.gpu_census [--baseline_rev=640793f] [--gpu=h100-1]
        [--size=large] [--batch=32] [--seq=512] [--json=PATH]
    python -m experiments.benchmarks.gpu_census --lease=experiments/benchmarks/results/h200-2026-11-30

Each program is `configs/pretrain.py:SIZE` as that revision's `albert_jax.aot.lower` builds it
(its defaults for a GPU: attention, layer loop, remat policy, XLA options), compiled for the same
compile-only GPU; the baseline in a git worktree of `--baseline_rev`, in a subprocess. Both are
read by this revision's `census.py` at the GPU's datasheet ceilings. Also this revision with the
old defaults it can still select (scanned, `dots_with_no_batch_dims`, XLA's own options), which
isolates what the layer code changed. Prints the census tables and the ratios the issue's goals
are stated in; nothing here is a measurement of time.

`--lease=DIR` sets a lease's measured steps (gpu_attention's JSON files there) beside the census
of the same programs: each variant compiled at the revision the lease ran (`--lease_rev`) for
the lease's GPU, its roofline at the datasheet, and the measured step over it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from albert_jax import accelerators, aot, census  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "configs"))
import pretrain  # noqa: E402  (configs/ is not a package)

# Run in the baseline's worktree: its own aot.lower, this revision's target description.
_COMPILE_AT_REVISION = r"""
import sys
sys.path.insert(0, "configs")
import pretrain
from jax.experimental import topologies
from albert_jax import aot
text, size, batch, seq, out, *overrides = sys.argv[1:]
devices = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                       target_config=text).devices
config = pretrain.get_config(size)
config.model.vocab_size = 30000
config.batch_size, config.data.max_seq_length = int(batch), int(seq)
config.update(dict(o.split("=", 1) for o in overrides))
with open(out, "w") as f:
  f.write(aot.lower(config, aot.step_of(config), devices)[0].compile().as_text())
"""


def config_of(args, **overrides):
  config = pretrain.get_config(args.size)
  config.model.vocab_size = 30000
  config.batch_size, config.data.max_seq_length = args.batch, args.seq
  config.update(**overrides)
  return config


def hlo_at(rev: str, args, target, *overrides: str) -> str:
  """The optimized program `rev`'s aot.lower builds for the config (with `overrides`, KEY=VALUE
  strings) and `target`, compiled in a git worktree of `rev`."""
  with tempfile.TemporaryDirectory() as tmp:
    tree, out = os.path.join(tmp, "tree"), os.path.join(tmp, "step.hlo")
    subprocess.run(["git", "worktree", "add", "--detach", tree, rev], cwd=REPO, check=True,
                   capture_output=True)
    try:
      env = {**os.environ, "PYTHONPATH": tree, "JAX_PLATFORMS": "cpu"}
      proc = subprocess.run([sys.executable, "-c", _COMPILE_AT_REVISION,
                             target.spec.target_config(), args.size, str(args.batch),
                             str(args.seq), out, *overrides], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=1200)
      if proc.returncode:
        raise SystemExit(f"compiling at {rev} failed:\n{proc.stderr[-3000:]}")
      with open(out) as f:
        return f.read()
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO,
                     capture_output=True)


def lease_check(args) -> dict:
  """Each variant a lease measured (gpu_attention JSON) beside the census of its program."""
  target = accelerators.parse_target(args.gpu)
  ceilings = aot.datasheet_ceilings(target)
  rows = {}
  for name in sorted(os.listdir(args.lease)):
    if not name.endswith(".json") or name == "smoke.json":
      continue
    with open(os.path.join(args.lease, name)) as f:
      measured = json.load(f)
    remat = "none" if "remat_none" in name else "dots_with_no_batch_dims"
    for attention, peer in measured["peers"].items():
      hlo = hlo_at(args.lease_rev, args, target, f"attention={attention}",
                   f"remat_policy={remat}")
      summary = census.summarize(census.census(hlo), ceilings)
      row = dict(measured_ms=1000 * peer["step_s"], roofline_ms=1000 * summary[
          "roofline_seconds"], launches=summary["launches"], gb=summary["bytes"] / 1e9)
      row["measured_minus_roofline_ms"] = row["measured_ms"] - row["roofline_ms"]
      row["measured_over_roofline"] = row["measured_ms"] / row["roofline_ms"]
      rows[f"{remat}/{attention}"] = row
      print(f"{remat:24s} {attention:6s} measured {row['measured_ms']:6.1f} ms, roofline "
            f"{row['roofline_ms']:5.1f} ms ({row['gb']:.0f} GB, {row['launches']} launches): "
            f"+{row['measured_minus_roofline_ms']:.1f} ms, x{row['measured_over_roofline']:.2f}",
            flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline_rev", default="640793f",
                      help="the revision to compare with ('' skips it)")
  parser.add_argument("--gpu", default="h100-1")
  parser.add_argument("--size", default="large")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--json", default="")
  parser.add_argument("--lease", default="", help="a lease's results directory (see above)")
  parser.add_argument("--lease_rev", default="f58b370", help="the revision the lease ran")
  args = parser.parse_args()
  if args.lease:
    args.gpu = "h200-1" if args.gpu == parser.get_default("gpu") else args.gpu
    rows = lease_check(args)
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"args": vars(args), "variants": rows}, f, indent=2)
    return
  target = accelerators.parse_target(args.gpu)
  devices = target.compile_devices()
  ceilings = aot.datasheet_ceilings(target)

  programs = {}
  if args.baseline_rev:
    programs[f"at {args.baseline_rev}"] = hlo_at(args.baseline_rev, args, target)
  old = config_of(args, layer_loop="scan", remat_policy="dots_with_no_batch_dims")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_gpu_enable_triton_gemm=true").strip()
  programs["now, the old defaults"] = aot.compile_report(old, target, devices)["hlo"]
  os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace(
      "--xla_gpu_enable_triton_gemm=true", "").strip()
  report = aot.compile_report(config_of(args), target, devices)
  programs["now"] = report["hlo"]

  results = {}
  for name, hlo in programs.items():
    summary = census.summarize(census.census(hlo), ceilings)
    results[name] = summary
    print(f"\n### {name} (albert-{args.size} {args.batch} x {args.seq}, {target.name})")
    print(census.format_summary(summary, top_parts=8))
  first = results[next(iter(results))]
  now = results["now"]
  print(f"\nnow / {next(iter(results))}: launches {now['launches'] / first['launches']:.2f}, "
        f"non-matmul bytes {now['non_matmul_bytes'] / first['non_matmul_bytes']:.2f}, all bytes "
        f"{now['bytes'] / first['bytes']:.2f}, roofline "
        f"{now['roofline_seconds'] / first['roofline_seconds']:.2f}; attention forward calls "
        f"{first['attention_forward_calls']} -> {now['attention_forward_calls']}; peak memory "
        f"now {report['peak_bytes_per_device'] / 2**30:.2f} GiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "census": results,
                 "peak_bytes_per_device": report["peak_bytes_per_device"]}, f, indent=2)


if __name__ == "__main__":
  main()
