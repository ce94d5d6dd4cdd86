"""The embedded corpus: English text present wherever Python is, the standard library's own
documentation (the language reference as `help()` shows it, and every module's docstrings and prose
comments), as titled documents of sentences, with its eval split and a fingerprint of its text.
`corpus.embedded_documents` reads it as it reads any corpus (cleaned and counted)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import pydoc_data.topics
import re
import sys
import sysconfig
import zlib
from pathlib import Path

from albert_jax.data import sentences

# Share of the documents (by a hash of the title) held out as the eval split.
EVAL_PERCENT = 5

# A docstring: a triple-quoted string first in a `def` or `class` body whose header fits one line.
# It and a comment block start a line: they are matched in "\n" + source, from the newline before
# it (a search for a literal skips ahead; `^` was tried at every character: 0.25 s for the comment
# blocks of the standard library, 0.03 s now).
_DOCSTRING = re.compile(
    r"""\n[ \t]*(?:async[ \t]+)?(?:def|class)[ \t][^\n]*:[ \t]*(?:\#[^\n]*)?\n"""
    r"""[ \t]*[rRuU]?(?P<q>\"\"\"|''')(?P<body>.*?)(?P=q)""", re.S)
_MODULE_DOCSTRING = re.compile(
    r"""\A(?:[ \t]*(?:\#[^\n]*)?\n)*[ \t]*[rRuU]?(?P<q>\"\"\"|''')(?P<body>.*?)(?P=q)""", re.S)
_COMMENT_BLOCK = re.compile(r"\n(?P<block>(?:[ \t]*#[^\n]*\n){3,})")


def _prose_comment(block: str) -> str | None:
  """A block of 3+ comment lines as one paragraph, if it reads as prose (not code or a licence)."""
  text = " ".join(ln.strip().lstrip("#").strip() for ln in block.splitlines())
  letters = sum(c.isalpha() or c == " " for c in text)
  if letters < 0.85 * len(text) or "copyright" in text.lower() or "license" in text.lower():
    return None
  return text


def _module_document(source: str) -> list[str]:
  """Sentences of a module's docstrings (module, classes, functions) and prose comment blocks."""
  parts = []  # (offset in "\n" + source, text, wrapped)
  if m := _MODULE_DOCSTRING.match(source):
    parts.append((m.start("body") + 1, inspect.cleandoc(m.group("body")), True))
  lines = "\n" + source
  for m in _DOCSTRING.finditer(lines):
    parts.append((m.start("body"), inspect.cleandoc(m.group("body")), True))
  for m in _COMMENT_BLOCK.finditer(lines):
    if text := _prose_comment(m.group("block")):
      parts.append((m.start("block"), text, False))
  parts.sort(key=lambda p: p[0])
  return [s for _, text, wrapped in parts
          for s in sentences.split_sentences(text, wrapped=wrapped)]


def _stdlib_sources(root: Path) -> list[Path]:
  """The standard library's .py files, sorted, outside tests and installed packages. A walk that
  never enters the skipped directories: globbing the whole tree walked site-packages too (half a
  second of every start, more where many packages are installed)."""
  skip = {"test", "tests", "site-packages", "dist-packages", "pydoc_data", "__pycache__"}
  found = []
  for directory, subdirectories, names in os.walk(root):  # symlinked directories not entered
    subdirectories[:] = [d for d in subdirectories if d not in skip]
    found += [Path(directory, n) for n in names if n.endswith(".py")]
  return sorted(found)


@functools.lru_cache(maxsize=1)
def texts() -> tuple[tuple[str, tuple[str, ...]], ...]:
  """(title, sentences) of every embedded document, sorted by title; built once per process."""
  docs = {f"topic:{name}": sentences.split_sentences(text)
          for name, text in pydoc_data.topics.topics.items()}
  root = Path(sysconfig.get_paths()["stdlib"])
  for path in _stdlib_sources(root):
    module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    try:
      source = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
      continue
    docs[f"module:{module}"] = _module_document(source)
  # Modules compiled into the interpreter have no source file; importing one runs no Python code.
  for name in sorted(sys.builtin_module_names):
    try:
      mod = importlib.import_module(name)
    except ImportError:
      continue
    if f"module:{name}" not in docs:
      # Only the module's own C functions and types, each docstring once, in text order: a
      # running program (pytest, a debugger) may have rebound e.g. sys.excepthook, whose
      # original stays reachable as sys.__excepthook__.
      docstrings = [inspect.getdoc(mod) or ""] + sorted({
          inspect.getdoc(obj) or "" for obj in vars(mod).values()
          if (inspect.isbuiltin(obj) or inspect.isclass(obj))
          and getattr(obj, "__module__", None) == name})
      docs[f"module:{name}"] = [s for t in docstrings for s in sentences.split_sentences(t)]
  return tuple((title, tuple(docs[title])) for title in sorted(docs))


def fingerprint() -> str:
  """A checksum of the embedded corpus's text (it differs between Python versions)."""
  digest = hashlib.sha256()
  for title, text in texts():
    digest.update("\n".join((title, *text, "")).encode("utf-8", errors="surrogatepass"))
  return digest.hexdigest()[:16]


def split_of(title: str) -> str:
  """"eval" for about EVAL_PERCENT% of titles (a CRC32 of the title), else "train"."""
  return "eval" if zlib.crc32(title.encode("utf-8")) % 100 < EVAL_PERCENT else "train"
