"""Which of the tokenizer tests' hard strings transformers 5's AlbertTokenizer encodes differently.

  .venv/bin/python -c 'import sys; sys.path[:0] = ["tests", "."]; import test_tokenizer as t
  t.train_tiny("/tmp/albert_tiny")'   # the uncased vocabulary of the tests
  /tmp/tf5/bin/python experiments/tokenizer_tf5_diff.py --spm_model=/tmp/albert_tiny/spiece.model

transformers 5 replaced the SentencePiece `AlbertTokenizer` with a `tokenizers`-backed one; ours
reproduces transformers 4's. transformers 5 loads the directory our `save_pretrained` writes, with
`from_pretrained`, as a user loads a checkpoint. Prints Markdown tables of the differences (ids,
pieces, decoding, a pair's model inputs). Needs transformers 5, sentencepiece and numpy; no JAX.
"""

import argparse
import ast
import importlib.util
import tempfile
from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parents[1]


def _our_tokenizer_module():
  """albert_jax/data/tokenizer.py loaded on its own: the package __init__ would import JAX."""
  spec = importlib.util.spec_from_file_location("albert_tokenizer",
                                                REPO / "albert_jax" / "data" / "tokenizer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _hard_strings():
  """The HARD_STRINGS literal of tests/test_tokenizer.py (importing that needs pytest and JAX)."""
  tree = ast.parse((REPO / "tests" / "test_tokenizer.py").read_text(encoding="utf-8"))
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HARD_STRINGS"
                                            for t in node.targets):
      return ast.literal_eval(node.value)
  raise LookupError("HARD_STRINGS not found in tests/test_tokenizer.py")


def _cell(x) -> str:
  return "`" + (x if isinstance(x, str) else " ".join(map(str, x))).replace("|", "\\|") + "`"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--spm_model", required=True)
  p.add_argument("--do_lower_case", default=True, action=argparse.BooleanOptionalAction)
  p.add_argument("--keep_accents", default=False, action=argparse.BooleanOptionalAction)
  args = p.parse_args()
  flags = dict(do_lower_case=args.do_lower_case, keep_accents=args.keep_accents)
  ours = _our_tokenizer_module().AlbertTokenizer(args.spm_model, **flags)
  # transformers 5 converts spiece.model in from_pretrained only: the constructor drops vocab_file.
  direct = transformers.AlbertTokenizer(vocab_file=args.spm_model, **flags)
  with tempfile.TemporaryDirectory() as tmp:
    ours.save_pretrained(tmp)
    theirs = transformers.AlbertTokenizer.from_pretrained(tmp)
  cls = f"{type(theirs).__module__}.{type(theirs).__name__}"
  print(f"transformers {transformers.__version__}: {cls}, {flags}; len: ours {len(ours)}, "
        f"from_pretrained {len(theirs)}, AlbertTokenizer(vocab_file=...) {len(direct)}\n")

  strings = _hard_strings()
  print("| input | ours (transformers 4) | transformers 5 |\n|---|---|---|")
  same = 0
  for text in strings:
    a, b = ours.encode(text), theirs.encode(text)
    if a == b:
      same += 1
      continue
    pa, pb = ours.convert_ids_to_tokens(a), theirs.convert_ids_to_tokens(b)
    print(f"| {_cell(repr(text))} | {_cell(pa)}<br>{_cell(a)} | {_cell(pb)}<br>{_cell(b)} |")
  print(f"\n{same} of {len(strings)} strings give the same ids.\n")

  print("| ids of | ours decode | transformers 5 decode |\n|---|---|---|")
  for text in strings:
    ids = ours.encode(text)
    for skip in (False, True):
      a = ours.decode(ids, skip_special_tokens=skip)
      b = theirs.decode(ids, skip_special_tokens=skip)
      if a != b:
        print(f"| {_cell(repr(text))}{' (skip special)' if skip else ''} | {_cell(repr(a))} | "
              f"{_cell(repr(b))} |")

  pair = ("The capital of France is [MASK].", "Paris, 2,102,650 people.")
  a, b = ours(*pair), theirs(*pair)
  print(f"\nPair {pair!r}:\n  ours keys {sorted(a)}\n  transformers 5 keys {sorted(b)}")
  for k in sorted(set(a) & set(b)):
    print(f"  {k}: {'same' if a[k] == b[k] else f'ours {a[k]} vs theirs {b[k]}'}")


if __name__ == "__main__":
  main()
