"""`python -m MODULE ARGS` for several argument lists, each in a process forked from this one once it
has imported MODULE's dependencies: a command line's refusals (exit code, stdout, stderr), at one
interpreter start and one `import jax` for all of them instead of one each.

  echo '{"module": "albert_jax.aot", "runs": [[ARG, ...], ...]}' | python tests/forked_cli.py

prints one JSON list: {"code", "stdout", "stderr"} of each run, in order. Each child runs MODULE as
`-m` does (`runpy`, `__name__ == "__main__"`, its own absl flags), exits as the interpreter would
(`SystemExit` read as CPython reads it) and is never reused. No jax backend is started here before
the forks (importing jax starts none).
"""

import importlib
import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _child(module: str, args: list[str], out: int, err: int) -> None:
  os.dup2(out, 1)
  os.dup2(err, 2)
  sys.argv = [module, *args]
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
  except SystemExit as e:  # read as CPython reads it: None, an int, or a message (exit 1)
    if e.code is None or isinstance(e.code, int):
      code = e.code or 0
    else:
      print(e.code, file=sys.stderr)
      code = 1
  except BaseException:  # noqa: BLE001  (a traceback, as the interpreter prints it)
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def run(module: str, runs: list[list[str]]) -> list[dict]:
  importlib.import_module(module)  # its imports, once; the module itself runs in each child,
  sys.modules.pop(module)  # anew as `__main__` (as `-m` runs it)
  results = []
  for args in runs:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(module, args, out.fileno(), err.fileno())
      _, status = os.waitpid(pid, 0)
      out.seek(0)
      err.seek(0)
      results.append({"code": os.waitstatus_to_exitcode(status),
                      "stdout": out.read().decode(errors="replace"),
                      "stderr": err.read().decode(errors="replace")})
  return results


if __name__ == "__main__":
  request = json.loads(sys.stdin.readline())
  print(json.dumps(run(request["module"], request["runs"])))
