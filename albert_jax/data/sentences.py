"""Rule-based sentence splitting of prose: docstrings and manuals (lines wrapped inside
paragraphs) and Wikipedia's TFDS text (a paragraph per line). The corpus readers and the embedded
corpus share it, so a sentence is one thing whatever the text came from."""

from __future__ import annotations

import re

# A period after these is not a sentence end.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx fig figs eq no nos mr mrs ms dr st jr sr prof vol ch sec "
    "resp ca viz".split())
# A sentence end: terminal punctuation, closing quotes or brackets, space, then what a sentence
# starts with (a capital, a digit, an opening quote or bracket).
_SENTENCE_END = re.compile(r"""[.!?]["'’”)\]]*\s+(?=["'‘“(\[]?[A-Z0-9])""")
_RULE_LINE = re.compile(r"""^\s*([-=*~^"#+_.`:])\1{2,}\s*$""")  # reST underlines, rulers
_PROMPT = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")  # doctest lines


def split_sentences(text: str, *, wrapped: bool = True) -> list[str]:
  """Rule-based sentences of prose `text`.

  Paragraphs are separated by blank lines and reST underlines; with `wrapped` (docstrings, manuals)
  a single newline is a line wrap inside a paragraph, without it (Wikipedia's TFDS text) every line
  is a paragraph.
  A wrapped paragraph whose every line is indented is a code or literal block and is dropped, as
  are doctest lines and reST underlines. A paragraph splits after `.`, `!` or `?` (and any closing
  quotes or brackets) followed by whitespace and a capital, digit, quote or bracket, except after
  a common abbreviation ("e.g.", "etc.", "Dr.") or a single-letter initial.
  """
  paragraphs, lines = [], []
  for line in text.splitlines():
    if not line.strip() or _RULE_LINE.match(line) or not wrapped:
      paragraphs.append(lines)
      lines = []
    if line.strip() and not _RULE_LINE.match(line) and not _PROMPT.match(line):
      lines.append(line)
  paragraphs.append(lines)
  sentences = []
  for lines in paragraphs:
    if not lines or (wrapped and all(ln[:1].isspace() for ln in lines)):
      continue
    joined = " ".join(" ".join(lines).split())
    start = 0
    for m in _SENTENCE_END.finditer(joined):
      words = joined[start:m.start()].rsplit(None, 1)
      word = words[-1].lstrip("\"'‘“([").lower() if words else ""
      if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        continue
      sentences.append(joined[start:m.start() + len(m.group(0).rstrip())])
      start = m.end()
    sentences.append(joined[start:])
  return [s for s in (s.strip() for s in sentences) if any(c.isalnum() for c in s)]
