"""`--config.FIELD=VALUE` on the command line: an override of a field the config lacks is refused
naming it, its closest names and the fields there are. ml_collections raises a bare
`AttributeError: "'foo'"` from inside absl's flag parsing, which reaches the user as a traceback.

  app.run(main, flags_parser=overrides.parse_flags)    # main.py, aot.py
"""

from __future__ import annotations

import difflib
import sys
from typing import Sequence

from absl import app, flags


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's own parsing (`app.parse_flags_with_usage`), with an unknown `--config.` field reported
  as absl reports a bad flag: "FATAL Flags parsing error: ..." on stderr, exit 1."""
  try:
    return app.parse_flags_with_usage(list(argv))
  except (AttributeError, KeyError) as e:  # raised while --config itself is parsed: load it here
    message = unknown_field(argv, _config(argv)) or f"{type(e).__name__}: {e}"
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def _config(argv: Sequence[str]):
  """The config `--config=FILE[:ARG]` of `argv` names, or None."""
  for i, arg in enumerate(argv):
    name = arg.split("=", 1)[1] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if name is not None:
      try:
        return flags.FLAGS["config"].parser.parse(name)
      except Exception:  # noqa: BLE001  (a config that does not load: absl's own error stands)
        return None
  return None


def unknown_field(argv: Sequence[str], config) -> str | None:
  """What is wrong with the first `--config.a.b=...` of `argv` that names no field of `config`,
  or None when they all do."""
  for arg in argv:
    if not arg.startswith("--config.") or config is None:
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
      where = ".".join(["config", *parts[:i]])
      if not hasattr(node, "keys"):
        return f"--config.{path}: {where} is a {type(node).__name__}, not a group of fields"
      keys = sorted(node.keys())
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=3)
        hint = f"; did you mean {' or '.join(f'{where}.{c}' for c in close)}?" if close else ""
        return (f"--config.{path}: {where} has no field {part!r}{hint} (its fields: "
                f"{', '.join(keys)})")
      node = node[part]
  return None
