"""Tabulates a sweep (`experiments.sweep`) as Markdown: one row per setting, failures shown.

  python -m experiments.summarize DIR [--metric=score] [--config=configs/finetune_glue.py:task=rte]

A setting is a run's overrides minus `seed`; its row has the number of seeds that finished and
the median and best over them of every metric in their eval_results.json (nested dicts
flattened as `outer/inner`), or of --metric only. Rows are sorted by the median of the main
metric (--metric, else `score`, else the first). Every run that did not finish gets its own row,
marked failed (with its returncode), unfinished (started, no status: running or killed), or, with
--config, not started: no run is ever silently missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

from albert_jax import files
from experiments import sweep

LOWER_IS_BETTER = ("loss", "error", "perplexity")


@dataclasses.dataclass
class RunRecord:
  """What a run directory says about one run."""
  name: str
  overrides: dict[str, str]  # values formatted as on the command line
  state: str  # ok | failed | unfinished | not started
  detail: str = ""  # why it failed
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def setting(self) -> str:
    return sweep.setting_string({k: v for k, v in self.overrides.items() if k != "seed"})


def flatten(results: dict, prefix: str = "") -> dict[str, float]:
  """Numeric leaves of a (nested) results dict, keyed `outer/inner`; other values dropped."""
  flat = {}
  for key, value in results.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      flat[f"{prefix}{key}"] = float(value)
  return flat


def _read_json(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def overrides_from_name(name: str) -> dict[str, str]:
  """A run's overrides recovered from its directory name (for runs launched on TPU VMs, which
  leave no sweep_overrides.json); a name that is not `k=v,...` is its own setting."""
  pairs = [part.partition("=") for part in name.split(",")]
  if all(sep and key for key, sep, _ in pairs):
    return {key: value for key, _, value in pairs}
  return {"run": name}


def read_run(run_dir: Path) -> RunRecord | None:
  """The record of one run directory; None for a directory that is not a sweep run."""
  launched = _read_json(run_dir / sweep.OVERRIDES_FILE)
  status = _read_json(run_dir / sweep.STATUS_FILE)
  results = _read_json(run_dir / sweep.RESULTS_FILE)
  if launched is None and status is None and results is None:
    return None
  overrides = (launched or status or {}).get("overrides")
  if overrides is None:
    overrides = overrides_from_name(run_dir.name)
  overrides = {k: sweep.format_value(v) for k, v in overrides.items()}
  if results is not None:
    return RunRecord(run_dir.name, overrides, "ok", metrics=flatten(results))
  if status is None:
    return RunRecord(run_dir.name, overrides, "unfinished")
  detail = status.get("error") or f"returncode {status.get('returncode')}"
  return RunRecord(run_dir.name, overrides, "failed", detail)


def read_runs(root: Path, config: str | None = None) -> list[RunRecord]:
  """Every run under `root`; with the sweep's `config`, its runs with no directory too."""
  records = [r for d in sorted(root.iterdir()) if d.is_dir() and (r := read_run(d))]
  if config:
    present = {r.name for r in records}
    for run in sweep.expand(config, str(root)):
      if run.name not in present:
        overrides = {k: sweep.format_value(v) for k, v in run.overrides.items()}
        records.append(RunRecord(run.name, overrides, "not started"))
  return records


def lower_is_better(metric: str) -> bool:
  return any(word in metric.lower() for word in LOWER_IS_BETTER)


def best(metric: str, values: list[float]) -> float:
  return min(values) if lower_is_better(metric) else max(values)


def _fmt(value: float | None) -> str:
  return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def metric_columns(records: list[RunRecord], metric: str | None) -> tuple[str | None, list[str]]:
  """(the main metric, the metrics to show): --metric alone, else all with the main one first."""
  names = sorted({m for r in records for m in r.metrics})
  if metric:
    if names and metric not in names:
      raise ValueError(f"no run has metric {metric!r}; the runs have: {', '.join(names)}")
    return metric, [metric]
  main = "score" if "score" in names else (names[0] if names else None)
  return main, ([main] + [m for m in names if m != main]) if main else []


def _group_row(setting: str, runs: list[RunRecord], metrics: list[str]) -> list[str]:
  row = [setting or "(config defaults)", str(len(runs)), "ok"]
  for m in metrics:
    values = [r.metrics[m] for r in runs if m in r.metrics]
    row += [_fmt(statistics.median(values)), _fmt(best(m, values))] if values else ["-", "-"]
  return row


def _problem_row(record: RunRecord, metrics: list[str]) -> list[str]:
  what = ", ".join(x for x in (f"seed={record.overrides['seed']}"
                               if "seed" in record.overrides else "", record.detail) if x)
  state = f"{record.state} ({what})" if what else record.state
  return [record.setting or "(config defaults)", "-", state] + ["-", "-"] * len(metrics)


def _sort_key(main: str | None, runs: list[RunRecord]) -> tuple:
  values = [r.metrics[main] for r in runs if main in r.metrics]
  if not values:
    return (1, 0.0)
  median = statistics.median(values)
  return (0, median if lower_is_better(main) else -median)


def table(records: list[RunRecord], metric: str | None = None) -> str:
  """The Markdown table: settings by the median of the main metric, then the runs that failed."""
  finished = [r for r in records if r.state == "ok"]
  main, metrics = metric_columns(finished, metric)
  groups: dict[str, list[RunRecord]] = {}
  for r in finished:
    groups.setdefault(r.setting, []).append(r)
  header = ["setting", "seeds", "status"]
  header += [f"{m} {stat}" for m in metrics for stat in ("median", "best")]
  rows = [_group_row(s, runs, metrics)
          for s, runs in sorted(groups.items(), key=lambda kv: (_sort_key(main, kv[1]), kv[0]))]
  problems = sorted((r for r in records if r.state != "ok"),
                    key=lambda r: (r.setting, r.overrides.get("seed", ""), r.name))
  rows += [_problem_row(r, metrics) for r in problems]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def counts_line(root: Path, records: list[RunRecord]) -> str:
  states = [r.state for r in records]
  parts = [f"{states.count(s)} {s}" for s in ("ok", "failed", "unfinished", "not started")
           if s in states]
  return f"{root}: {len(records)} runs, {', '.join(parts)}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("root", type=files.path, help="the sweep's --workdir_root (or gs://...)")
  parser.add_argument("--metric", help="show only this metric (and sort by it)")
  parser.add_argument("--config", help="the sweep's --config: list its runs not started too")
  args = parser.parse_args(argv)
  if not args.root.is_dir():
    print(f"error: {args.root} is not a directory", file=sys.stderr)
    return 2
  records = read_runs(args.root, args.config)
  if not records:
    print(f"error: no sweep runs under {args.root}", file=sys.stderr)
    return 1
  try:
    text = table(records, args.metric)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(counts_line(args.root, records) + "\n\n" + text)
  print("\nbest: the highest value (the lowest for a loss, error or perplexity)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
