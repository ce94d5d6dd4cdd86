"""setup.py's ranges against the versions each test tier pins (constraints/), and the tier this
suite runs on: a pin outside its range, or a tier that installed something else, fails here."""

import importlib.metadata
import pathlib
import re
import sys

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIERS = {"newest": "3.12", "floor": "3.11"}


def pins(tier: str) -> dict[str, str]:
  lines = (ROOT / "constraints" / f"{tier}.txt").read_text().splitlines()
  return {re.sub(r"[-_.]+", "-", name).lower(): version for name, _, version in
          (line.partition("==") for line in lines if "==" in line and not line.startswith("#"))}


def requirements() -> list[Requirement]:
  """What setup.py asks for: the install requirements and the extras' (read, not executed)."""
  text = (ROOT / "setup.py").read_text()
  return [Requirement(r) for r in re.findall(r'^\s+"([A-Za-z][^"]*)",', text, re.M)]


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_every_pin_lies_in_setup_pys_range(tier):
  pinned = pins(tier)
  env = {**default_environment(), "python_version": TIERS[tier], "extra": "test"}
  checked = 0
  for req in requirements():
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if (req.marker and not req.marker.evaluate(env)) or name not in pinned:
      continue
    version = pinned[name].split("+")[0]
    assert version in req.specifier, f"constraints/{tier}.txt pins {name}=={version}; setup.py " \
        f"asks for {req}"
    checked += 1
  assert checked >= 15  # the direct requirements are all pinned


def test_this_suite_runs_on_a_tested_tier():
  """The running interpreter's jax stack is one tier's pins, entirely."""
  tier = "newest" if sys.version_info >= (3, 12) else "floor"
  pinned = pins(tier)
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "libtpu",
               "transformers", "torch"):
    assert importlib.metadata.version(name) == pinned[name], (tier, name)
