"""The loss noise of finished runs, replayed through the spike detector: what its thresholds
(docs/pretraining.md, "Loss spikes") were chosen from.

    python -m experiments.spike_noise WORKDIR [WORKDIR ...] [--window=100 --z=6 --margin=0.15
        --hold=4]

For each run (its metrics.jsonl, which must log every step: --config.log_every_steps=1), from
the step the window is full: how far each loss lies above the mean of the window before it, in
standard deviations of the window (z) and as a fraction of the mean; the largest of each, the
longest run of steps above the detector's threshold, the steps more than 3, 5 and 10% above
the mean (with the longest stretch of them in a row), and the spikes the detector would declare
(false alarms, on a run without spikes). Takes a second.
"""

import argparse
import math

import ml_collections

from albert_jax import metrics, spike

EXCESS = (0.03, 0.05, 0.1)  # losses this far above the window's mean are counted


def replay(losses: dict[int, float], cfg) -> dict:
  """What the detector sees and declares over one run's per-step losses."""
  state, alarms, longest, zs, rel = spike.fresh(), [], 0, [], []
  above = {m: [0, 0, 0] for m in EXCESS}  # steps above the mean by m, longest and current run
  for step in sorted(losses):
    loss = losses[step]
    if len(state["recent"]) >= cfg.window:
      mean, _ = spike.threshold(cfg, state["recent"])
      std = math.sqrt(math.fsum((x - mean) ** 2 for x in state["recent"]) / len(state["recent"]))
      zs.append((loss - mean) / std)
      rel.append(loss / mean - 1)
      for m, counts in above.items():
        counts[2] = counts[2] + 1 if rel[-1] > m else 0
        counts[0] += rel[-1] > m
        counts[1] = max(counts[1], counts[2])
    state, found = spike.observe(cfg, state, step, loss)
    longest = max(longest, len(state["run"]))
    if found is not None:
      alarms.append((found.first_step, found.last_step))
      state = {**state, "run": []}  # a real run rolls back; here: go on judging
  return {"steps": len(losses), "judged": len(zs), "max_z": max(zs, default=float("nan")),
          "max_above_mean": max(rel, default=float("nan")), "longest_run": longest,
          "alarms": alarms, "above": {m: counts[:2] for m, counts in above.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  defaults = spike.default_config()
  for name in ("window", "z", "margin", "hold"):
    parser.add_argument(f"--{name}", type=type(defaults[name]), default=defaults[name])
  args = parser.parse_args()
  cfg = ml_collections.ConfigDict({**defaults.to_dict(), "window": args.window, "z": args.z,
                                   "margin": args.margin, "hold": args.hold})
  print(f"window {cfg.window}, z {cfg.z}, margin {cfg.margin}, hold {cfg.hold}")
  for workdir in args.workdirs:
    rows = [r for r in metrics.read_metrics(workdir) if "loss" in r]
    out = replay({r["step"]: r["loss"] for r in rows}, cfg)
    print(f"{workdir}: {out['steps']} steps, {out['judged']} judged; largest z "
          f"{out['max_z']:.2f}, largest excess over the mean {100 * out['max_above_mean']:.1f}%, "
          f"longest run above the threshold {out['longest_run']}; false alarms "
          f"{len(out['alarms'])} {out['alarms']}; steps more than "
          + ", ".join(f"{100 * m:g}% above the mean {n} (at most {k} in a row)"
                      for m, (n, k) in out["above"].items()))


if __name__ == "__main__":
  main()
