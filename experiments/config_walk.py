"""Where `config` goes on its way from `train_and_evaluate` to the train step (issue 19's measure).

    python -m experiments.config_walk [--config=configs/pretrain.py:tiny]

Runs the job for one step in a temporary workdir with a profile hook that records every call of
an albert_jax function (or a config file's) that is handed the config object itself, until the
train step is first traced. Prints the stops in order, how many there were, and how many times
the walk entered each module (a visit: consecutive stops in the same module count once).
"""

import argparse
import collections
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ml_collections import config_flags  # noqa: E402

from albert_jax import train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Walk(Exception):
  """Raised from the hook when the train step is first traced: the walk is over."""


def walk(config) -> list[tuple[str, str]]:
  """[(module, function)] of the calls that were handed `config`, in order."""
  stops = []

  def hook(frame, event, arg):
    del arg
    if event != "call":
      return
    path = frame.f_code.co_filename
    if not path.startswith((os.path.join(REPO, "albert_jax"), os.path.join(REPO, "configs"))):
      return
    if frame.f_code.co_name == "train_step" and path.endswith("albert_jax/train.py"):
      raise Walk
    args = frame.f_code.co_varnames[:frame.f_code.co_argcount + frame.f_code.co_kwonlyargcount]
    if any(frame.f_locals.get(a) is config for a in args):
      stops.append((os.path.relpath(path, REPO), frame.f_code.co_name))

  sys.setprofile(hook)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir)
  except Walk:
    pass
  finally:
    sys.setprofile(None)
  return stops


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/pretrain.py:tiny")
  args = parser.parse_args()
  path, _, arg = args.config.partition(":")
  config = config_flags.config_flags._LoadConfigModule("config", path).get_config(arg or None)
  config.total_steps = 1
  stops = walk(config)
  visits = collections.Counter()
  previous = None
  for module, function in stops:
    print(f"  {module}: {function}")
    if module != previous:
      visits[module] += 1
    previous = module
  print(f"{len(stops)} stops in {len(visits)} files; visits per module (goal: at most 2):")
  for module, n in visits.most_common():
    print(f"  {n}  {module}")


if __name__ == "__main__":
  main()
