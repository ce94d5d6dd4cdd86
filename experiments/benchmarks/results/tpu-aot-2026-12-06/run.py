"""aot figures on whichever stack runs it (docs/accelerators.md's newest-tier TPU figures,
2026-12-06): the v5p-8 headline, large on v5p-128 with the cost model's estimate, then the fit table at the default remat (auto) for 64-chip slices of each generation.
    python experiments/benchmarks/results/tpu-aot-2026-12-06/run.py OUT.jsonl head,v5p128,fit
"""
import os, sys, json, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "configs"))
import jax
import pretrain
from albert_jax import accelerators, aot
GiB = 2**30
out = open(sys.argv[1], "a")
def row(tag, size, target, estimate, **over):
  c = pretrain.get_config(size)
  for k, v in over.items(): setattr(c, k, v)
  t = time.time()
  try:
    r = aot.compile_report(c, accelerators.parse_target(target), estimate=estimate)
    rec = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
  except Exception as e:
    rec = {"error": repr(e)[:500]}
  rec.update(tag=tag, size=size, target=target, jax=jax.__version__, wall=time.time() - t, **over)
  out.write(json.dumps(rec) + "\n"); out.flush()
  print(tag, size, target, {k: rec.get(k) for k in ("peak_bytes_per_device", "estimated_step_seconds", "estimated_mfu", "fits", "error")}, flush=True)
which = sys.argv[2].split(",")
if "head" in which:
  row("headline", "large", "v5p-8", True, batch_size=128)
if "v5p128" in which:
  row("v5p128", "large", "v5p-128", True)
if "fit" in which:
  for sl in ("tpu7x-128", "v5p-128", "v6e-64", "v5e-64", "v4-128"):
    for size in ("large", "xlarge", "xxlarge", "base"):
      if size == "large" and sl == "v5p-128": continue  # the v5p128 row
      row("fit", size, sl, False)
