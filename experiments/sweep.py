"""Runs a config file's `get_sweep(arg)`: one training run per override dict, one after another.

  python -m experiments.sweep --config=configs/finetune_glue.py:task=rte --workdir_root=DIR \
      [--dry_run] [--extra=--config.total_steps=100 ...]
  python -m experiments.sweep ... --tpu=NAME --zone=ZONE --project=PROJECT   # prints gcloud lines

Run `name` is its overrides, sorted and made filesystem-safe (`optim.lr=1e-05,seed=1`); it runs
`python -m albert_jax.main --config=... --workdir=DIR/name --config.k=v ...`, logging to
DIR/name/log.txt and recording DIR/name/sweep_overrides.json (at launch) and sweep_status.json
(at exit). Runs whose eval_results.json exists are skipped, so rerunning a sweep resumes it.
Every override key is checked against the config before anything runs. Then
`python -m experiments.summarize DIR` tabulates the results.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from albert_jax import files

OVERRIDES_FILE = "sweep_overrides.json"
STATUS_FILE = "sweep_status.json"
RESULTS_FILE = "eval_results.json"
LOG_FILE = "log.txt"
MAX_NAME = 160  # longer names are cut and get a hash, well under the usual 255-byte limit


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name, overrides, workdir and the command that trains it."""
  name: str
  overrides: dict[str, Any]
  workdir: str
  command: list[str]


def format_value(value: Any) -> str:
  """A value as `--config.k=` takes it back (config_flags parses by the field's type)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return repr(value)


def setting_string(overrides: dict[str, Any]) -> str:
  """`k=v,k=v` with the keys sorted: the same overrides always give the same string."""
  return ",".join(f"{k}={format_value(overrides[k])}" for k in sorted(overrides))


def run_name(overrides: dict[str, Any]) -> str:
  """The run's directory name: its setting string with unsafe characters replaced."""
  name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", setting_string(overrides)) or "base"
  if len(name) > MAX_NAME:
    digest = hashlib.sha1(setting_string(overrides).encode()).hexdigest()[:10]
    name = f"{name[:MAX_NAME - 11]}-{digest}"
  return name


def split_config_arg(config: str) -> tuple[str, str | None]:
  """`path.py:arg` -> (path, arg); the arg is None when there is no ':'."""
  path, sep, arg = config.partition(":")
  return path, (arg if sep else None)


def load_config_module(path: str) -> ModuleType:
  """Imports a config file by its path, as config_flags does."""
  if not Path(path).is_file():
    raise SystemExit(f"error: config file {path!r} not found")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _call(fn, arg: str | None):
  """`get_config` / `get_sweep` as config_flags calls them: no argument when there is no ':'."""
  return fn() if arg is None else fn(arg)


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted leaf path of a config (for 'did you mean' messages)."""
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(all_keys(v, f"{prefix}{k}."))
    else:
      keys.append(f"{prefix}{k}")
  return keys


def _unknown(config: ml_collections.ConfigDict, key: str, where: str) -> ValueError:
  close = difflib.get_close_matches(key, all_keys(config), n=3)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  return ValueError(f"unknown config key {key!r}{where}{hint}")


def find_field(config: ml_collections.ConfigDict, key: str,
               where: str = "") -> tuple[ml_collections.ConfigDict, str]:
  """(the ConfigDict holding `key`'s last part, that part); ValueError naming `key` if absent."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise _unknown(config, key, where)
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ValueError(f"config key {key!r} is a group of fields; override its fields one by one")
  return node, leaf


def check_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Raises ValueError naming `key` when it is not a field of `config` (a locked copy: this sets
  the value) or its value does not fit the field's type."""
  node, leaf = find_field(config, key)
  try:
    setattr(node, leaf, value)
  except TypeError as e:
    raise ValueError(f"config key {key!r}: {value!r} does not fit: {e}") from None


def validate(config: ml_collections.ConfigDict, sweep: list[dict], extra: list[str]) -> None:
  """Checks every override, and every `--config.k=` key of `extra`, against the config."""
  if not sweep:
    raise ValueError("get_sweep returned no runs")
  for overrides in sweep:
    if not isinstance(overrides, dict):
      raise ValueError(f"get_sweep must return dicts, got {overrides!r}")
    trial = copy.deepcopy(config)
    trial.lock()
    for key, value in overrides.items():
      try:
        check_override(trial, key, value)
      except ValueError as e:
        raise ValueError(f"{e}, in get_sweep's {overrides}") from None
  for arg in extra:
    if arg.startswith("--config."):  # presence only: config_flags parses the value
      find_field(config, arg.split("=", 1)[0][len("--config."):], where=" in --extra")


def main_command(main_module: str, config: str, workdir: str, overrides: dict[str, Any],
                 extra: list[str], python: str = sys.executable) -> list[str]:
  """The command line of one run."""
  return ([python, "-m", main_module, f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{k}={format_value(overrides[k])}" for k in sorted(overrides)] + extra)


def join_path(root: str, name: str) -> str:
  """`root/name` without pathlib, which would turn gs://b into gs:/b."""
  return f"{root.rstrip('/')}/{name}"


def expand(config: str, workdir_root: str, extra: list[str] = (),
           main_module: str = "albert_jax.main", python: str = sys.executable) -> list[Run]:
  """The runs of `config`'s `get_sweep`, validated, named and with their commands."""
  path, arg = split_config_arg(config)
  module = load_config_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep(arg): nothing to sweep over")
  sweep = list(_call(module.get_sweep, arg))
  validate(_call(module.get_config, arg), sweep, list(extra))
  runs, seen = [], {}
  for overrides in sweep:
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"two runs get the name {name!r}: {seen[name]} and {overrides}")
    seen[name] = overrides
    workdir = join_path(workdir_root, name)
    runs.append(Run(name, dict(overrides), workdir,
                    main_command(main_module, config, workdir, overrides, list(extra), python)))
  return runs


def tpu_command(run: Run, tpu: str, zone: str, project: str, remote_dir: str) -> str:
  """The gcloud line that runs `run` on every worker of a TPU VM set up by tpu/install.sh."""
  remote = f"cd {shlex.quote(remote_dir)} && {shlex.join(run.command)}"
  return (f"gcloud compute tpus tpu-vm ssh {shlex.quote(tpu)} --zone={shlex.quote(zone)} "
          f"--project={shlex.quote(project)} --worker=all --command={shlex.quote(remote)}")


def execute(run: Run, config: str, echo: bool = True) -> dict:
  """Runs one command, its output into log.txt (and the console); returns and writes its status.
  The workdir may be a bucket (gs://): then log.txt is written locally and uploaded at the end
  (objects cannot be appended to)."""
  workdir = files.path(run.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if (workdir / STATUS_FILE).exists():
    (workdir / STATUS_FILE).unlink()  # no status while running: "unfinished"
  files.write_json(workdir / OVERRIDES_FILE,
             dict(name=run.name, overrides=run.overrides, config=config, command=run.command))
  start = time.monotonic()
  with _log_file(workdir / LOG_FILE) as log:
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(run.command)}\n")
    log.flush()
    proc = subprocess.Popen(run.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    for line in proc.stdout:
      log.write(line)
      if echo:
        sys.stdout.write(line)
    returncode = proc.wait()
  status = dict(status="ok", returncode=returncode, command=run.command,
                seconds=round(time.monotonic() - start, 1), overrides=run.overrides)
  if returncode != 0:
    status["status"] = "failed"
  elif not (workdir / RESULTS_FILE).exists():
    status.update(status="failed", error=f"exited 0 without writing {RESULTS_FILE}")
  files.write_json(workdir / STATUS_FILE, status)
  return status


@contextlib.contextmanager
def _log_file(path):
  """An appendable log: the file itself, or for a bucket a local copy uploaded at the end."""
  if not files.is_remote(path):
    with open(path, "a", encoding="utf-8") as log:
      yield log
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = Path(tmp) / LOG_FILE
    local.write_bytes(path.read_bytes() if path.exists() else b"")
    try:
      with open(local, "a", encoding="utf-8") as log:
        yield log
    finally:
      files.copy(local, path)


def is_done(run: Run) -> bool:
  """A run is done when it wrote its results (whatever sweep_status.json says)."""
  return (files.path(run.workdir) / RESULTS_FILE).exists()


def run_all(runs: list[Run], config: str, echo: bool) -> int:
  """Runs the unfinished runs in order, whatever the others do; returns the number that failed."""
  failed = 0
  for i, run in enumerate(runs, 1):
    if is_done(run):
      print(f"[{i}/{len(runs)}] {run.name}: skipped, {RESULTS_FILE} exists", flush=True)
      continue
    print(f"[{i}/{len(runs)}] {run.name}: {shlex.join(run.command)}", flush=True)
    status = execute(run, config, echo)
    failed += status["status"] != "ok"
    print(f"[{i}/{len(runs)}] {run.name}: {status['status']} (returncode "
          f"{status['returncode']}, {status['seconds']} s)", flush=True)
  return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file with get_sweep, e.g. "
                      "configs/finetune_glue.py:task=rte")
  parser.add_argument("--workdir_root", required=True, help="each run works in ROOT/<name>")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--extra", action="append", default=[],
                      help="a flag for every run, e.g. --extra=--config.total_steps=100")
  parser.add_argument("--main_module", default="albert_jax.main", help="what `python -m` runs")
  parser.add_argument("--quiet", action="store_true", help="runs' output to log.txt only")
  parser.add_argument("--tpu", help="print gcloud commands for this TPU VM instead of running")
  parser.add_argument("--zone")
  parser.add_argument("--project")
  parser.add_argument("--remote_dir", default="albert-jax",
                      help="the checkout on the TPU workers (tpu/install.sh puts it there)")
  parser.add_argument("--remote_python", default=".venv/bin/python")
  args = parser.parse_args(argv)
  if args.tpu and not (args.zone and args.project):
    parser.error("--tpu needs --zone and --project")
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  python = args.remote_python if args.tpu else sys.executable
  try:
    runs = expand(args.config, args.workdir_root, args.extra, args.main_module, python)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.tpu:
    print(f"# {len(runs)} runs of {args.config}, one after another on {args.tpu}")
    for run in runs:
      print(tpu_command(run, args.tpu, args.zone, args.project, args.remote_dir))
    return 0
  if args.dry_run:
    for run in runs:
      print(("# done: " if is_done(run) else "") + shlex.join(run.command))
    return 0
  failed = run_all(runs, args.config, echo=not args.quiet)
  print(f"{len(runs)} runs, {failed} failed; python -m experiments.summarize {args.workdir_root}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
