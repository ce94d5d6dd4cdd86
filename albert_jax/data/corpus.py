"""Pretraining corpora as documents (lists of sentences): text files, TFDS datasets, and an English
corpus built at run time from the standard library's own documentation (embedded.py). Every reader
cleans what would crash or stall a long job and counts it in a `CorpusStats`.

  read_documents("corpus/*.txt.gz,more/")          # the original format, see `text_file_documents`
  read_documents("tfds:wikipedia/20230601.en")     # needs TensorFlow, see `tfds_documents`
  read_documents("embedded", split="eval")         # no download, no file, see `embedded_documents`

A corpus as training and `prepare` see it is a `CorpusSpec`: one or two document *spaces* (the
documents in reading order, numbered from 0), cut into read `Unit`s (byte ranges of text files,
example ranges of TFDS, ranges of the embedded corpus) that a distributed job reads apart and that
give exactly the documents of reading the space in one pass. A document's index in its space
decides its split (`held_out`) and seeds its pairs (examples.py), so the data depends on the corpus
alone, never on how it was read.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import importlib.util
import os
import re
import zlib
from typing import Iterable, Iterator, Sequence

from albert_jax import files as files_lib
from albert_jax.data import embedded
from albert_jax.data.sentences import split_sentences

Document = list[str]

# A "sentence" longer than this is cut (at the last space before it): the pair builder would keep
# at most max_seq_length tokens (~2.5k characters at 512) of it anyway, and a multi-megabyte line
# (a minified file, a table dump) would otherwise stall tokenization.
MAX_SENTENCE_CHARS = 8192
# Share of a corpus's documents (by a CRC32 of their index) held out for eval when no eval split
# is named: the embedded corpus's share.
HOLDOUT_PERCENT = embedded.EVAL_PERCENT

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass
class CorpusStats:
  """What the readers (and `pretraining.tokenize_documents`) read, cleaned and dropped."""

  files: int = 0
  documents: int = 0
  sentences: int = 0
  words: int = 0
  chars: int = 0
  invalid_utf8_lines: int = 0  # lines (or TFDS texts) with bytes that are not UTF-8: replaced
  surrogates_replaced: int = 0  # lone surrogates (SentencePiece rejects them): replaced by U+FFFD
  long_sentences_cut: int = 0  # sentences cut to max_sentence_chars
  empty_sentences_dropped: int = 0  # sentences with no token
  empty_documents_dropped: int = 0  # documents with no sentence left
  one_sentence_documents: int = 0  # kept; see `pretraining.make_segment_pairs` for their pairs

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)

  def add(self, other: "CorpusStats | dict[str, int]") -> "CorpusStats":
    """Adds another reader's counts (a distributed job's units) to these."""
    other = other.as_dict() if isinstance(other, CorpusStats) else other
    for key, value in other.items():
      setattr(self, key, getattr(self, key) + value)
    return self


# ----------------------------------------------------------------------------- cleaning

def clean_sentence(text: str, stats: CorpusStats,
                   max_chars: int = MAX_SENTENCE_CHARS) -> str:
  """`text` stripped, lone surrogates replaced by U+FFFD, cut to `max_chars`; counts in `stats`."""
  if not text.isascii():
    text, n = _SURROGATE.subn("\ufffd", text)
    stats.surrogates_replaced += n
  if len(text) > max_chars:
    cut = text.rfind(" ", max_chars // 2, max_chars + 1)
    text = text[:cut if cut > 0 else max_chars]
    stats.long_sentences_cut += 1
  return text.strip()


def decode_utf8(raw: bytes, stats: CorpusStats) -> str:
  """UTF-8 text of `raw`; bytes that are not UTF-8 become U+FFFD and the line is counted."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    stats.invalid_utf8_lines += 1
    return raw.decode("utf-8", errors="replace")


def _finish(sentences: Iterable[str], stats: CorpusStats, max_chars: int) -> Document | None:
  """The cleaned, non-empty sentences as a document (counted), or None when none is left."""
  doc = [s for s in (clean_sentence(t, stats, max_chars) for t in sentences) if s]
  if not doc:
    stats.empty_documents_dropped += 1
    return None
  stats.documents += 1
  stats.sentences += len(doc)
  stats.words += sum(len(s.split()) for s in doc)
  stats.chars += sum(map(len, doc))
  return doc


# ----------------------------------------------------------------------------- text files

def input_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Files of a comma list of paths, globs and directories (every file below, sorted); local or
  in a bucket (`gs://bucket/corpus/*.txt`)."""
  items = spec.split(",") if isinstance(spec, str) else [os.fspath(s) for s in (
      [spec] if isinstance(spec, os.PathLike) else spec)]
  out = []
  for item in filter(None, (i.strip() for i in items)):
    matches = files_lib.glob(item)
    if not matches:
      raise FileNotFoundError(f"input {item!r} matches no file or directory")
    for m in matches:
      if files_lib.path(m).is_dir():
        out.extend(files_lib.files_below(m))
      else:
        out.append(m)
  return out


def files_fingerprint(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
  """A checksum of the files' contents, in their order (not their names: a corpus moved from a
  FUSE mount to gs:// is the same corpus). A bucket's objects carry their CRC32C; local files are
  read for it."""
  digest = hashlib.sha256()
  for name in input_files(spec):
    crc = files_lib.info(name).get("crc32c")
    if crc is None:
      import google_crc32c  # a dependency already (TF1 checkpoints): C, gigabytes a second
      checksum = google_crc32c.Checksum()
      with files_lib.path(name).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
          checksum.update(block)
      crc = base64.b64encode(checksum.digest()).decode()
    digest.update(f"{crc}\n".encode())
  return digest.hexdigest()[:16]


def _decode(raw: bytes) -> tuple[str, bool]:
  """(text, whether it was invalid UTF-8): `decode_utf8` without counting."""
  try:
    return raw.decode("utf-8"), False
  except UnicodeDecodeError:
    return raw.decode("utf-8", errors="replace"), True


def _previous_line_blank(f, pos: int) -> bool:
  """Whether the line that ends at byte pos - 1 (a newline) is blank; True at the file's start."""
  if pos == 0:
    return True
  chunks, at = [], pos - 1
  while at > 0:
    step = min(at, 1 << 16)
    f.seek(at - step)
    chunk = f.read(step)
    cut = chunk.rfind(b"\n")
    if cut >= 0:
      chunks.append(chunk[cut + 1:])
      break
    chunks.append(chunk)
    at -= step
  return not _decode(b"".join(reversed(chunks)))[0].strip()


def text_range_documents(path: str, start: int = 0, stop: int | None = None,
                         stats: CorpusStats | None = None,
                         max_sentence_chars: int = MAX_SENTENCE_CHARS) -> Iterator[Document]:
  """The documents of a text file (original format) whose first line starts at a byte in
  [start, stop) (None: the end), each read to its end even past `stop`: ranges that tile a file
  give exactly its documents, each once, as reading it whole does. Ranges of `.gz` files must be
  whole (0, None)."""
  stats = CorpusStats() if stats is None else stats
  gz = path.endswith(".gz")
  if gz and (start, stop) != (0, None):
    raise ValueError(f"{path}: a .gz file is read whole, not from byte {start}")
  with files_lib.path(path).open("rb") as raw_file:  # local or gs://, seekable
    f = gzip.open(raw_file) if gz else raw_file
    pos = start
    if start > 0:
      f.seek(start - 1)
      if f.read(1) != b"\n":
        f.readline()  # the rest of a line that started before `start`
      pos = f.tell()
      skipping = not _previous_line_blank(f, pos)  # inside a document that started before
      f.seek(pos)
    else:
      stats.files += 1
      skipping = False
    lines: list[str] = []
    for raw in f:
      offset, pos = pos, pos + len(raw)
      line, invalid = _decode(raw)
      if not line.strip():
        skipping = False
        if lines:
          if (doc := _finish(lines, stats, max_sentence_chars)) is not None:
            yield doc
          lines = []
        continue
      if skipping:
        continue
      if not lines and stop is not None and offset >= stop:
        break  # the next range's first document
      stats.invalid_utf8_lines += invalid
      lines.append(line)
    if lines and (doc := _finish(lines, stats, max_sentence_chars)) is not None:
      yield doc


def text_file_documents(spec: str | os.PathLike | Sequence[str | os.PathLike],
                        stats: CorpusStats | None = None,
                        max_sentence_chars: int = MAX_SENTENCE_CHARS) -> Iterator[Document]:
  """Documents of text files in the original format: one sentence per line, a blank line between
  documents; `.gz` files are decompressed. Unlike the original, a file's end also ends a document
  (the original ran a file's last document into the next file's first)."""
  stats = CorpusStats() if stats is None else stats
  for path in input_files(spec):
    yield from text_range_documents(path, 0, None, stats, max_sentence_chars)


# ----------------------------------------------------------------------------- TFDS

def _tfds_source(name: str, split: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds  # here: a second to import, and only this reader needs it
  base = name.split("/")[0].split(":")[0]
  if base == "bookcorpus":
    raise ValueError(
        "TFDS has no BookCorpus builder (with or without TensorFlow). Write it as text files, one "
        "sentence per line with a blank line between books, and pass those files as the input; a "
        "TFDS dataset with one sentence per example can be grouped with examples_per_document.")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except tfds.core.registered.DatasetNotFoundError as e:
    if importlib.util.find_spec("tensorflow") is None:
      raise ModuleNotFoundError(
          f"TFDS cannot load {name!r}: without TensorFlow installed TFDS does not register "
          f"datasets whose builders import it ({base} among them). Install it with "
          "`pip install 'albert-jax[tf]'` (tensorflow-cpu), then prepare the dataset with "
          f"`tfds build {name} --file_format=array_record`.") from e
    raise


def tfds_documents(name: str, split: str = "train", *, feature: str = "text",
                   data_dir: str | None = None, examples_per_document: int = 1,
                   download: bool = False, stats: CorpusStats | None = None,
                   max_sentence_chars: int = MAX_SENTENCE_CHARS, start: int = 0,
                   stop: int | None = None) -> Iterator[Document]:
  """Documents of a prepared TFDS text dataset read through `tfds.data_source` (ArrayRecord).

  Each example's `feature` text is split with `split_sentences(wrapped=False)` (Wikipedia's text has
  one paragraph per line); `examples_per_document` > 1 joins consecutive examples into one document,
  for datasets that hold one sentence per example. `start`/`stop` read examples [start, stop) only
  (multiples of `examples_per_document`, so documents are never cut).
  """
  stats = CorpusStats() if stats is None else stats
  source = _tfds_source(name, split, data_dir, download)
  if start % examples_per_document or (stop is not None and stop % examples_per_document
                                       and stop < len(source)):
    raise ValueError(f"examples [{start}, {stop}) cut documents of {examples_per_document}")
  sentences: list[str] = []
  for i in range(start, len(source) if stop is None else min(stop, len(source))):
    text = source[i][feature]
    text = decode_utf8(text, stats) if isinstance(text, bytes) else str(text)
    sentences.extend(split_sentences(text, wrapped=False))
    if (i + 1) % examples_per_document == 0 or i + 1 == len(source):
      if (doc := _finish(sentences, stats, max_sentence_chars)) is not None:
        yield doc
      sentences = []


def embedded_documents(split: str = "train", stats: CorpusStats | None = None,
                       max_sentence_chars: int = MAX_SENTENCE_CHARS,
                       with_titles: bool = False, start: int = 0,
                       stop: int | None = None) -> Iterator[Document | tuple[str, Document]]:
  """A real English corpus present wherever Python is: the standard library's documentation.

  One document per pydoc topic (`pydoc_data.topics`, the language reference as `help()` shows it)
  and one per standard-library module: its module, class and function docstrings and its prose
  comment blocks, in source order, read from the `.py` files without importing anything (plus the
  docstrings of modules compiled into the interpreter): `embedded.texts`, cleaned and counted
  here. Deterministic for a given Python installation (documents sorted by title); the text
  differs between Python versions. `split` is "train", "eval" (`embedded.split_of`) or "all";
  `start` and `stop` take that split's titles [start, stop) only.
  """
  if split not in ("train", "eval", "all"):
    raise ValueError(f"split={split!r}: the embedded corpus has 'train', 'eval' and 'all'")
  stats = CorpusStats() if stats is None else stats
  entries = [(t, s) for t, s in embedded.texts() if split == "all" or embedded.split_of(t) == split]
  for title, sentences in entries[start:stop]:
    if (doc := _finish(sentences, stats, max_sentence_chars)) is not None:
      yield (title, doc) if with_titles else doc


# ----------------------------------------------------------------------------- dispatch

def read_documents(spec: str, *, split: str = "train", stats: CorpusStats | None = None,
                   max_sentence_chars: int = MAX_SENTENCE_CHARS, tfds_feature: str = "text",
                   tfds_data_dir: str | None = None,
                   examples_per_document: int = 1) -> Iterator[Document]:
  """Documents of "embedded", "tfds:NAME" (with `split`) or a comma list of files/globs/dirs."""
  stats = CorpusStats() if stats is None else stats
  if spec == "embedded":
    return embedded_documents(split, stats, max_sentence_chars)
  if spec.startswith("tfds:"):
    return tfds_documents(spec.removeprefix("tfds:"), split, feature=tfds_feature,
                          data_dir=tfds_data_dir, examples_per_document=examples_per_document,
                          stats=stats, max_sentence_chars=max_sentence_chars)
  return text_file_documents(spec, stats, max_sentence_chars)


# ----------------------------------------------------------------------------- spaces and units

def held_out(index: int) -> bool:
  """Whether document `index` of a space without a named eval split is held out for eval (about
  HOLDOUT_PERCENT% of documents, by a CRC32 of the index)."""
  return zlib.crc32(str(index).encode()) % 100 < HOLDOUT_PERCENT


@dataclasses.dataclass(frozen=True)
class Unit:
  """A piece of a document space that one worker reads: the documents whose start lies in
  [start, stop) of a text file (bytes), a TFDS split (examples) or the embedded corpus's split
  (titles); stop None is the end."""

  kind: str  # "file" | "tfds" | "embedded"
  name: str  # a path, a TFDS name, or "embedded"
  split: str = ""  # the TFDS or embedded split
  start: int = 0
  stop: int | None = None
  size: int = 0  # bytes of text (files) or examples / titles: for progress


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """A pretraining corpus: its source, and where its eval split comes from.

  Its documents form one space ("all": eval is a `held_out` share of the indices) or two ("train"
  and "eval", from `eval_files`, `tfds_eval_split`, or the embedded corpus's own split).
  """

  source: str  # "files" | "tfds" | "embedded"
  files: str = ""
  eval_files: str = ""
  tfds_name: str = ""
  tfds_feature: str = "text"
  tfds_data_dir: str = ""
  tfds_eval_split: str = ""
  max_sentence_chars: int = MAX_SENTENCE_CHARS

  def __post_init__(self):
    if self.source not in ("files", "tfds", "embedded"):
      raise ValueError(f"source={self.source!r}: use 'files', 'tfds' or 'embedded'")
    if self.source == "files" and not self.files:
      raise ValueError("data.source='files' needs data.files (a comma list of files or globs)")
    if self.source == "tfds" and not self.tfds_name:
      raise ValueError("data.source='tfds' needs data.tfds_name")

  @classmethod
  def parse(cls, spec: str, eval_spec: str = "", **kwargs) -> "CorpusSpec":
    """From a command line's "FILES", "tfds:NAME[:EVAL_SPLIT]" or "embedded" (and eval files)."""
    if spec == "embedded":
      return cls("embedded", **kwargs)
    if spec.startswith("tfds:"):
      name, _, eval_split = spec.removeprefix("tfds:").partition(":")
      return cls("tfds", tfds_name=name, tfds_eval_split=eval_split, **kwargs)
    return cls("files", files=spec, eval_files=eval_spec, **kwargs)

  @property
  def spaces(self) -> tuple[str, ...]:
    """("all",) when eval is held out of one space, else ("train", "eval")."""
    separate = (self.source == "embedded" or (self.source == "files" and self.eval_files)
                or (self.source == "tfds" and self.tfds_eval_split))
    return ("train", "eval") if separate else ("all",)

  def space_of(self, split: str) -> str:
    if split not in ("train", "eval"):
      raise ValueError(f"split={split!r}: use 'train' or 'eval'")
    return "all" if self.spaces == ("all",) else split

  def split_of(self, space: str, index: int) -> str:
    """The split of document `index` of `space`."""
    if space != "all":
      return space
    return "eval" if held_out(index) else "train"

  def _tfds_split(self, space: str) -> str:
    return self.tfds_eval_split if space == "eval" else "train"

  def documents(self, space: str, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Every document of `space` in order, read in this process (index = position)."""
    stats = CorpusStats() if stats is None else stats
    if self.source == "embedded":
      return embedded_documents(space, stats, self.max_sentence_chars)
    if self.source == "tfds":
      return tfds_documents(self.tfds_name, self._tfds_split(space), feature=self.tfds_feature,
                            data_dir=self.tfds_data_dir or None, stats=stats,
                            max_sentence_chars=self.max_sentence_chars)
    return text_file_documents(self.eval_files if space == "eval" else self.files, stats,
                               self.max_sentence_chars)

  def units(self, space: str, unit_bytes: int = 32 << 20, unit_examples: int = 10_000,
            unit_titles: int = 100) -> list[Unit]:
    """`space` cut into read units in order: text files in byte ranges of about `unit_bytes`
    (a .gz file whole), TFDS in `unit_examples` examples, the embedded corpus in `unit_titles`."""
    if self.source == "files":
      out = []
      for path in input_files(self.eval_files if space == "eval" else self.files):
        size = int(files_lib.info(path)["size"])
        n = 1 if path.endswith(".gz") else max(1, -(-size // unit_bytes))
        cuts = [size * k // n for k in range(n)] + [None]
        out += [Unit("file", path, "", a, b, (size if b is None else b) - a)
                for a, b in zip(cuts[:-1], cuts[1:])]
      return out
    if self.source == "tfds":
      split = self._tfds_split(space)
      total = len(_tfds_source(self.tfds_name, split, self.tfds_data_dir or None, False))
      return [Unit("tfds", self.tfds_name, split, a, min(a + unit_examples, total),
                   min(unit_examples, total - a)) for a in range(0, total, unit_examples)]
    total = sum(1 for t, _ in embedded.texts() if embedded.split_of(t) == space)
    return [Unit("embedded", "embedded", space, a, min(a + unit_titles, total),
                 min(unit_titles, total - a)) for a in range(0, total, unit_titles)]

  def unit_documents(self, unit: Unit, stats: CorpusStats | None = None) -> Iterator[Document]:
    """The documents of one read unit, in order."""
    stats = CorpusStats() if stats is None else stats
    if unit.kind == "file":
      return text_range_documents(unit.name, unit.start, unit.stop, stats, self.max_sentence_chars)
    if unit.kind == "tfds":
      return tfds_documents(unit.name, unit.split, feature=self.tfds_feature,
                            data_dir=self.tfds_data_dir or None, stats=stats,
                            max_sentence_chars=self.max_sentence_chars, start=unit.start,
                            stop=unit.stop)
    return embedded_documents(unit.split, stats, self.max_sentence_chars, start=unit.start,
                              stop=unit.stop)

  def split_documents(self, split: str, stats: CorpusStats | None = None
                      ) -> Iterator[tuple[int, Document]]:
    """(index, document) of `split`, read in this process. Every document of the split's space is
    read, so once exhausted `stats.documents` (of fresh stats) is the size of the space."""
    space = self.space_of(split)
    for index, doc in enumerate(self.documents(space, stats)):
      if self.split_of(space, index) == split:
        yield index, doc


# ----------------------------------------------------------------------------- fingerprints

def document_digest(document: Sequence[str]) -> bytes:
  """16 bytes that change with any character or sentence break of `document`."""
  h = hashlib.blake2b(digest_size=16)
  for sentence in document:
    data = sentence.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
  return h.digest()


@dataclasses.dataclass
class Fingerprint:
  """What a split's documents are, in order: the sum mod 2**128 of a hash of each document's
  index and digest, so that pieces read anywhere combine in any order to the same value."""

  documents: int = 0
  total: int = 0

  def add(self, index: int, digest: bytes) -> None:
    h = hashlib.blake2b(index.to_bytes(8, "little") + digest, digest_size=16).digest()
    self.total = (self.total + int.from_bytes(h, "little")) % (1 << 128)
    self.documents += 1

  def merge(self, other: "Fingerprint") -> "Fingerprint":
    return Fingerprint(self.documents + other.documents, (self.total + other.total) % (1 << 128))

  def hexdigest(self) -> str:
    return f"{self.documents}-{self.total:032x}"
