r"""Prepare a pretraining corpus once, on Apache Beam: read, tokenize, cut segment pairs, write
them as sharded ArrayRecord files with a manifest (data/prepared.py). Training reads them with
`--config.data.source=prepared --config.data.prepared=DIR`, starting in seconds whatever the size.

  python -m albert_jax.data.prepare --input='corpus/*.txt' --spm_model=spiece.model \
      --output=DIR --max_seq_length=512 --seed=0 \
      --direct_num_workers=2 --direct_running_mode=multi_processing    # local processes

  python -m albert_jax.data.prepare --input='gs://B/corpus/*.txt' --spm_model=spiece.model \
      --output=gs://B/prepared --runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://B/tmp --setup_file=./setup.py --max_num_workers=64

  python -m albert_jax.data.prepare --verify --output=DIR    # every record against the manifest

Flags not defined here are Beam's pipeline options (runner, workers). `--input` is text files
(comma list, globs, directories, .gz), "tfds:NAME[:EVAL_SPLIT]" or "embedded", as
create_pretraining_data.py takes it; without `--eval_input` or an eval split, eval is the
held-out share of documents training would hold out (corpus.held_out).

The data is the one training defines (corpus.CorpusSpec, examples.document_pairs): a document's
pairs depend on the seed and its index in the corpus only, so the result is the same on any runner
and any number of workers, and training on it gives the batches of training on the raw corpus
with the same seed and vocabulary (tests/test_prepare.py). The pipeline:
  1. Tokenize, per read unit (corpus.CorpusSpec.units: ~32 MB byte ranges of text files, TFDS
     example ranges): documents to token ids, packed, with a digest of each document's text.
  2. Index: the units' document counts give each unit's first index (a side input), so every
     document's index, split and generator.
  3. Cut, per unit. In fixed SOP mode no pair needs another document and the unit's shards are
     written here. With NSP or in faithful mode, pairs whose B comes from a random document are
     joined with it (CoGroupByKey on its index), completed, and grouped back by unit.
  4. The manifest, last: shards with their counts, sizes and digests, corpus and pair statistics,
     settings, and the fingerprints of the corpus (per split), the vocabulary and the settings.
All of it goes to a staging directory beside the output (`.NAME.tmp-*`, in its bucket for a
gs:// output) that replaces the output only when complete, and only once the inputs, the
vocabulary and the flags have been checked: a typo, a failure or a kill leaves the corpus that
was there as it was (in a bucket, a kill during that final move excepted: see files.py). An
output that is an input, holds one or lies inside one is refused.
Progress: a log line per read unit (documents, MB, MB/s), Beam counters, and a summary at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Iterable

import apache_beam as beam
import numpy as np
from absl import app, flags
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from albert_jax import files as files_lib
from albert_jax.data import corpus, examples as examples_lib, prepared
from albert_jax.data.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)
_COUNTERS = "albert_jax.prepare"


# ----------------------------------------------------------------------------- the elements

@dataclasses.dataclass
class TokenizedUnit:
  """One read unit's documents as token ids, packed flat (cheap to send between workers)."""

  space: str
  unit: int
  reader_stats: dict[str, int]  # what the corpus reader read, cleaned, dropped
  tokens: np.ndarray  # [tokens] of every sentence, back to back
  sentence_lengths: np.ndarray  # [sentences] int32
  doc_sentences: np.ndarray  # [documents] int32: sentences with tokens (0: the document is empty)
  empty_sentences: np.ndarray  # [documents] int32: sentences left without tokens
  digests: bytes  # 16 bytes per document: corpus.document_digest

  def documents(self) -> list[list[np.ndarray]]:
    sentences = np.split(self.tokens.astype(np.int32), np.cumsum(self.sentence_lengths)[:-1])
    if not len(self.sentence_lengths):
      sentences = []
    bounds = np.concatenate([[0], np.cumsum(self.doc_sentences)])
    return [sentences[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

  def tokenizer_stats(self, local: np.ndarray) -> dict[str, int]:
    """What tokenize_documents counts for the documents at `local` positions."""
    sentences = self.doc_sentences[local]
    return {"empty_sentences_dropped": int(self.empty_sentences[local].sum()),
            "empty_documents_dropped": int((sentences == 0).sum()),
            "one_sentence_documents": int((sentences == 1).sum())}


class _Tokenize(beam.DoFn):
  """A read unit -> TokenizedUnit."""

  def __init__(self, spec: corpus.CorpusSpec, tokenizer: AlbertTokenizer, dtype: str,
               units: dict[str, int]):
    self.spec, self.tokenizer, self.dtype, self.units = spec, tokenizer, dtype, units
    self.documents = beam.metrics.Metrics.counter(_COUNTERS, "documents")
    self.bytes = beam.metrics.Metrics.counter(_COUNTERS, "text_bytes")

  def process(self, element):  # (no annotations: Beam would read them as type hints)
    space, number, unit = element  # a corpus.Unit, its space and number
    start = time.monotonic()
    stats = corpus.CorpusStats()
    tokens, lengths, doc_sentences, empty, digests = [], [], [], [], []
    for doc in self.spec.unit_documents(unit, stats):
      digests.append(corpus.document_digest(doc))
      doc_stats = corpus.CorpusStats()
      tokenized = examples_lib.tokenize_documents([doc], self.tokenizer, doc_stats)
      sentences = tokenized[0] if tokenized else []
      tokens.extend(sentences)
      lengths.extend(len(s) for s in sentences)
      doc_sentences.append(len(sentences))
      empty.append(doc_stats.empty_sentences_dropped)
    self.documents.inc(len(digests))
    text_bytes = unit.size if unit.kind == "file" else stats.chars
    self.bytes.inc(text_bytes)
    seconds = time.monotonic() - start
    log.info("Tokenized %s unit %d/%d (%s [%s, %s)): %d documents, %.1f MB of text in %.1f s "
             "(%.2f MB/s)", space, number + 1, self.units[space], unit.name, unit.start,
             "end" if unit.stop is None else unit.stop, len(digests), text_bytes / 1e6, seconds,
             text_bytes / 1e6 / max(seconds, 1e-9))
    yield TokenizedUnit(
        space, number, stats.as_dict(),
        np.concatenate(tokens).astype(self.dtype) if tokens else np.zeros(0, self.dtype),
        np.array(lengths, np.int32), np.array(doc_sentences, np.int32),
        np.array(empty, np.int32), b"".join(digests))


def _layout(summaries, spec):
  """Per space: each unit's first document index, the space's size, its documents without tokens,
  and per split how many documents with tokens it has (the random-document candidates)."""
  out = {}
  for space in spec.spaces:
    units = sorted((u, n, e) for s, u, n, e in summaries if s == space)
    offsets = np.concatenate([[0], np.cumsum([n for _, n, _ in units])]).tolist()
    empty = frozenset(offsets[u] + i for u, _, e in units for i in e)
    size = offsets[-1]
    splits = ("train", "eval") if space == "all" else (space,)
    members = {split: 0 for split in splits}
    for index in range(size) if space == "all" else ():
      members[spec.split_of(space, index)] += 1
    if space != "all":
      members[space] = size
    for index in empty:
      members[spec.split_of(space, index)] -= 1
    out[space] = {"offsets": offsets[:-1], "size": size, "empty": empty, "candidates": members}
  return out


class _Members:
  """`in`: a document of `split` with tokens (examples.Candidates' members, from the layout)."""

  def __init__(self, spec: corpus.CorpusSpec, space: str, split: str, size: int,
               empty: frozenset):
    self.spec, self.space, self.split, self.size, self.empty = spec, space, split, size, empty

  def __contains__(self, index: int) -> bool:
    return (0 <= index < self.size and index not in self.empty
            and self.spec.split_of(self.space, index) == self.split)


@dataclasses.dataclass(frozen=True)
class _Settings:
  spec: corpus.CorpusSpec
  config: examples_lib.ExampleConfig
  seed: int
  word_start: np.ndarray
  output: str
  dtype: str
  units: dict[str, int]  # units per space
  join: bool  # pairs may need another document
  group_size: int = 1  # ArrayRecord records per chunk


class _Cut(beam.DoFn):
  """A TokenizedUnit -> its pairs: written as shards (no join), or sent to be joined and grouped;
  with facts (statistics, fingerprints, shards) for the manifest."""

  def __init__(self, settings: _Settings):
    self.s = settings
    self.pairs = beam.metrics.Metrics.counter(_COUNTERS, "pairs")

  def process(self, unit, layout):
    s = self.s
    info = layout[unit.space]
    first = info["offsets"][unit.unit]
    splits = ("train", "eval") if unit.space == "all" else (unit.space,)
    candidates = {split: examples_lib.Candidates(
        info["size"], _Members(s.spec, unit.space, split, info["size"], info["empty"]),
        info["candidates"][split]) for split in splits}
    items = {split: [] for split in splits}
    pair_stats = {split: examples_lib.PairStats() for split in splits}
    fingerprints = {split: corpus.Fingerprint() for split in splits}
    local = {split: [] for split in splits}
    for i, doc in enumerate(unit.documents()):
      index = first + i
      split = s.spec.split_of(unit.space, index)
      fingerprints[split].add(index, unit.digests[16 * i:16 * i + 16])
      local[split].append(i)
      if not doc:
        continue
      if s.join:
        yield beam.pvalue.TaggedOutput("docs", ((unit.space, index), doc))
      pairs = examples_lib.document_pairs(doc, index, [s.seed, 0], s.config,
                                          candidates=candidates[split], word_start=s.word_start,
                                          stats=pair_stats[split])
      for k, pair in enumerate(pairs):
        if isinstance(pair, examples_lib.PendingPair):
          yield beam.pvalue.TaggedOutput(
              "pending", ((unit.space, pair.other), (unit.unit, split, index, k, pair)))
        else:
          items[split].append((index, k, pair))
    yield beam.pvalue.TaggedOutput("facts", {"space": unit.space, "reader": unit.reader_stats})
    for split in splits:
      positions = np.array(local[split], np.int64)
      self.pairs.inc(pair_stats[split].pairs)
      yield beam.pvalue.TaggedOutput("facts", {
          "split": split, "corpus": unit.tokenizer_stats(positions),
          "documents": int((unit.doc_sentences[positions] > 0).sum()),
          "pairs": dataclasses.asdict(pair_stats[split]),
          "fingerprint": [fingerprints[split].documents, fingerprints[split].total]})
      if s.join:
        yield (unit.space, unit.unit, split), items[split]
      elif items[split]:
        yield beam.pvalue.TaggedOutput("facts", _write_shard(s, unit.space, unit.unit, split,
                                                             items[split]))


def _complete(element, config):
  """Pairs waiting for document (space, index), completed with it, back to their unit."""
  (space, _), grouped = element
  docs, pending = grouped["docs"], grouped["pending"]
  if not pending:
    return
  (doc,) = docs
  for unit, split, index, k, pair in pending:
    stats = examples_lib.PairStats()
    done = examples_lib.complete_pair(pair, doc, config, stats)
    yield beam.pvalue.TaggedOutput("facts", {"split": split, "pairs": {
        "tokens_truncated": stats.tokens_truncated}})
    yield (space, unit, split), [(index, k, done)]


def _write_grouped(element, settings):
  (space, unit, split), lists = element
  items = sorted((item for part in lists for item in part), key=lambda item: item[:2])
  if items:
    yield _write_shard(settings, space, unit, split, items)


def _write_shard(s: _Settings, space: str, unit: int, split: str, items: list) -> dict:
  """Pairs (index, k, pair) in document order -> s.output/SPLIT-UNIT-of-UNITS.array_record."""
  name = prepared.shard_name(split, unit, s.units[space])
  pairs = [pair for _, _, pair in items]
  with _local_file(s.output, name) as path:
    size = prepared.write_pairs(path, pairs, s.dtype, s.group_size)
    digests = prepared.shard_digests(path)
  return {"split": split, "unit": unit, "file": name, "pairs": len(pairs), "bytes": size,
          **digests, "tokens": int(sum(len(p.tokens_a) + len(p.tokens_b) for p in pairs))}


class _local_file:
  """A local path to write `name` at; then it is moved into `directory` whole (a rename for a
  local directory, Beam's FileSystems for a bucket), so a retried or killed worker never leaves
  half a file under the final name."""

  def __init__(self, directory: str, name: str):
    self.directory, self.name = directory, name
    self.local = "://" not in directory

  def __enter__(self) -> str:
    where = self.directory if self.local else None
    if self.local:
      os.makedirs(self.directory, exist_ok=True)
    fd, self.tmp = tempfile.mkstemp(prefix=f".{self.name}.tmp-", dir=where)
    os.close(fd)
    return self.tmp

  def __exit__(self, kind, *_):
    try:
      if kind is None:
        if self.local:
          os.chmod(self.tmp, 0o644)
          os.replace(self.tmp, os.path.join(self.directory, self.name))
        else:
          with open(self.tmp, "rb") as src, FileSystems.create(
              FileSystems.join(self.directory, self.name)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    finally:
      if os.path.exists(self.tmp):
        os.unlink(self.tmp)


def _write_bytes(directory: str, name: str, data: bytes) -> None:
  with _local_file(directory, name) as path, open(path, "wb") as f:
    f.write(data)


# ----------------------------------------------------------------------------- the manifest

def _manifest(facts: list[dict], *, spec: corpus.CorpusSpec, settings: dict, vocabulary: str,
              tokenizer_info: dict, units: dict[str, int], text_bytes: int) -> dict:
  """The manifest from the pipeline's facts (summed per split; shards in unit order)."""
  reader = {space: corpus.CorpusStats() for space in spec.spaces}
  splits = {}
  for split in ("train", "eval"):
    space = spec.space_of(split)
    stats, pairs, fp = corpus.CorpusStats(), examples_lib.PairStats(), corpus.Fingerprint()
    documents, shards = 0, []
    for fact in facts:
      if fact.get("split") != split:
        continue
      if "file" in fact:  # a shard
        shards.append(fact)
        continue
      if "corpus" in fact:
        stats.add(fact["corpus"])
        documents += fact["documents"]
        fp = fp.merge(corpus.Fingerprint(*fact["fingerprint"]))
      if "pairs" in fact:
        for key, value in fact["pairs"].items():
          setattr(pairs, key, getattr(pairs, key) + value)
    shards.sort(key=lambda f: f["unit"])
    splits[split] = {"space": space, "stats": stats, "pairs": pairs, "fingerprint": fp,
                     "documents": documents, "shards": shards}
  for fact in facts:
    if "reader" in fact:
      reader[fact["space"]].add(fact["reader"])
  out_splits = {}
  for split, info in splits.items():
    corpus_stats = corpus.CorpusStats().add(reader[info["space"]]).add(info["stats"])
    tokens = sum(s["tokens"] for s in info["shards"])
    count = sum(s["pairs"] for s in info["shards"])
    if count != info["pairs"].pairs:
      raise RuntimeError(f"{split}: {count} pairs written, {info['pairs'].pairs} cut")
    out_splits[split] = {
        "fingerprint": info["fingerprint"].hexdigest(), "documents": info["documents"],
        "pairs": count, "tokens": tokens, "bytes": sum(s["bytes"] for s in info["shards"]),
        "mean_pair_tokens": round(tokens / max(count, 1), 2),
        "label_1_share": round(info["pairs"].label_1 / max(count, 1), 4),
        "corpus": corpus_stats.as_dict(), "pair_stats": dataclasses.asdict(info["pairs"]),
        "shards": [{k: s[k] for k in ("file", "pairs", "bytes", "sha256", "edges")}
                   for s in info["shards"]]}
  corpus_fingerprints = {split: info["fingerprint"] for split, info in out_splits.items()}
  return {
      "format": prepared.FORMAT, "version": prepared.VERSION,
      "fingerprint": prepared.fingerprint(corpus_fingerprints, vocabulary, settings),
      "vocabulary": vocabulary, **tokenizer_info, "settings": settings,
      "corpus": {**dataclasses.asdict(spec), "spaces": list(spec.spaces), "read_units": units,
                 "text_bytes": text_bytes},
      "splits": out_splits}


def _write_manifest(facts, output, spm_bytes, **kwargs):
  manifest = _manifest(facts, **kwargs)
  _write_bytes(output, prepared.VOCAB_FILE, spm_bytes)
  _write_bytes(output, prepared.MANIFEST, json.dumps(manifest, indent=1).encode())
  return manifest


# ----------------------------------------------------------------------------- the pipeline

def build(p: beam.Pipeline, spec: corpus.CorpusSpec, tokenizer: AlbertTokenizer, spm_bytes: bytes,
          output: str, *, config: examples_lib.ExampleConfig, seed: int,
          units: dict[str, list[corpus.Unit]], group_size: int = 1) -> None:
  """Adds the preparation of `spec` into `output` to pipeline `p`."""
  dtype = prepared.token_dtype(tokenizer.vocab_size)
  count = {space: len(u) for space, u in units.items()}
  settings = _Settings(spec, config, seed, examples_lib.tokenizer_tables(tokenizer).word_start,
                       output, dtype, count,
                       join=config.mode == "faithful" or config.random_next_sentence,
                       group_size=group_size)
  tokenized = (p | "Units" >> beam.Create([(space, i, u) for space, us in units.items()
                                           for i, u in enumerate(us)])
               | "Tokenize" >> beam.ParDo(_Tokenize(spec, tokenizer, dtype, count)))
  layout = (tokenized
            | "Counts" >> beam.Map(lambda t: (t.space, t.unit, len(t.doc_sentences),
                                              np.flatnonzero(t.doc_sentences == 0).tolist()))
            | "AllCounts" >> beam.combiners.ToList()
            | "Layout" >> beam.Map(_layout, spec))
  cut = tokenized | "Cut" >> beam.ParDo(_Cut(settings), beam.pvalue.AsSingleton(layout)
                                        ).with_outputs("docs", "pending", "facts", main="units")
  facts = [cut.facts]
  if settings.join:
    joined = ({"docs": cut.docs, "pending": cut.pending} | "Join" >> beam.CoGroupByKey()
              | "Complete" >> beam.FlatMap(_complete, config).with_outputs("facts", main="pairs"))
    facts += [joined.facts,
              (cut.units, joined.pairs) | "AllPairs" >> beam.Flatten()
              | "ByUnit" >> beam.GroupByKey() | "Write" >> beam.FlatMap(_write_grouped, settings)]
  settings_dict = _settings_dict(config, seed, spec)
  text_bytes = sum(u.size for us in units.values() for u in us if u.kind == "file")
  _ = (facts | "AllFacts" >> beam.Flatten() | "Facts" >> beam.combiners.ToList()
       | "Manifest" >> beam.Map(
           _write_manifest, output, spm_bytes, spec=spec, settings=settings_dict,
           vocabulary=prepared.vocabulary_fingerprint(tokenizer),
           tokenizer_info={"do_lower_case": tokenizer.do_lower_case, "token_dtype": dtype,
                           "vocab_size": tokenizer.vocab_size, "group_size": group_size},
           units=count, text_bytes=text_bytes))


def _settings_dict(config: examples_lib.ExampleConfig, seed: int, spec: corpus.CorpusSpec) -> dict:
  return {"seed": seed, **{k: getattr(config, k) for k in prepared.PAIR_SETTINGS},
          "max_sentence_chars": spec.max_sentence_chars,
          "holdout_percent": corpus.HOLDOUT_PERCENT if spec.spaces == ("all",) else None}


def run(spec: corpus.CorpusSpec, spm_model: str, output: str, *,
        config: examples_lib.ExampleConfig, seed: int = 0, do_lower_case: bool = True,
        unit_bytes: int = 32 << 20, unit_examples: int = 10_000, group_size: int = 1,
        pipeline_args: Iterable[str] = (), overwrite: bool = False) -> dict | None:
  """Prepares `spec` into `output`; returns the manifest (None when `output` is a bucket).

  Everything is checked before `output` is touched (`_check`); the new corpus is written into a
  staging directory beside it that replaces it only when complete (files.staged_directory), so a
  run that fails or is killed leaves the corpus already there as it was.
  """
  tokenizer = AlbertTokenizer(spm_model, do_lower_case=do_lower_case)
  spm_bytes = files_lib.path(spm_model).read_bytes()  # local or gs://
  local = not files_lib.is_remote(output)
  if local:  # a link's target is what gets replaced, staged on its own disk
    output = os.path.realpath(output)
  units = _check(spec, output, overwrite, unit_bytes=unit_bytes, unit_examples=unit_examples,
                 group_size=group_size)
  text_bytes = sum(u.size for us in units.values() for u in us if u.kind == "file")
  log.info("Preparing %s: %s read units%s, pairs of %d tokens, seed %d, mode %s, into %s",
           spec.files or spec.tfds_name or spec.source,
           " + ".join(f"{len(u)} ({space})" for space, u in units.items()),
           f", {text_bytes / 1e6:.1f} MB of text" if text_bytes else "", config.max_seq_length,
           seed, config.mode, output)
  start = time.monotonic()
  options = PipelineOptions(list(pipeline_args))
  runner = _local_runner(options)
  # overwrite=True: _check has decided what may be replaced.
  with files_lib.staged_directory(output, overwrite=True, sources=_sources(spec)) as staging:
    with beam.Pipeline(runner=runner, options=options) as p:
      build(p, spec, tokenizer, spm_bytes, staging, config=config, seed=seed, units=units,
            group_size=group_size)
  seconds = time.monotonic() - start
  if not local:
    log.info("Prepared %s in %.0f s", output, seconds)
    return None
  manifest = prepared.load_manifest(output)
  for split, info in manifest["splits"].items():
    log.info("%s: %d documents -> %d pairs (%.1f tokens each, %.1f%% label 1) in %d shards, %.1f MB",
             split, info["documents"], info["pairs"], info["mean_pair_tokens"],
             100 * info["label_1_share"], len(info["shards"]), info["bytes"] / 1e6)
  log.info("Prepared %s in %.1f s%s; fingerprint %s", output, seconds,
           f" ({text_bytes / 1e6 / seconds:.2f} MB of text/s)" if text_bytes else "",
           manifest["fingerprint"][:16])
  return manifest


def _check(spec: corpus.CorpusSpec, output: str, overwrite: bool, *, unit_bytes: int,
           unit_examples: int, group_size: int) -> dict[str, list[corpus.Unit]]:
  """The read units of every document space, once what a run needs is checked: sizes at least
  1, every input there (a local one readable: a bucket's object sizes, read here, need the
  permission reading does), something to read, and an output that may be replaced."""
  for name, value in (("unit_bytes (--unit_mb)", unit_bytes), ("unit_examples", unit_examples),
                      ("group_size", group_size), ("max_sentence_chars", spec.max_sentence_chars)):
    if value < 1:
      raise ValueError(f"{name}={value}: must be at least 1")
  units = {space: spec.units(space, unit_bytes=unit_bytes, unit_examples=unit_examples)
           for space in spec.spaces}
  for space, us in units.items():
    if not us:
      raise ValueError(f"nothing to read for the {space!r} documents (--input="
                       f"{spec.files or spec.tfds_name or spec.source!r}, --eval_input="
                       f"{spec.eval_files!r})")
  for name in sorted({u.name for us in units.values() for u in us if u.kind == "file"}):
    if not files_lib.is_remote(name):
      with open(name, "rb") as f:
        f.read(1)
  _check_output(output, overwrite)
  return units


def _check_output(output: str, overwrite: bool) -> None:
  """Refuses an output whose replacement would lose something: a prepared corpus without
  `overwrite`, files a prepared corpus does not hold, a mount point (replaced whole, its new
  content would be staged on the disk it is mounted on)."""
  out = files_lib.path(output)
  if not out.exists():
    return
  if not out.is_dir():
    raise FileExistsError(f"--output={output} is a file; name a directory")
  if not files_lib.is_remote(output) and os.path.ismount(output):
    raise ValueError(f"--output={output} is a mount point, which cannot be replaced whole; name "
                     "a directory inside it")
  names = sorted(p.name for p in out.iterdir())
  foreign = [n for n in names if not prepared.is_corpus_file(n)]
  if foreign:
    raise FileExistsError(
        f"--output={output} holds files that are no part of a prepared corpus ("
        f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), and the new corpus "
        "replaces the whole directory: choose another --output, or move them")
  if names and not overwrite:
    what = "a prepared corpus" if prepared.MANIFEST in names else "part of a prepared corpus"
    raise FileExistsError(f"{output} already holds {what}; pass --overwrite to replace it")


def _sources(spec: corpus.CorpusSpec) -> list[str | None]:
  """The paths `spec` reads (what its input globs match, a TFDS data_dir): the output may
  overlap none."""
  items = [i.strip() for s in (spec.files, spec.eval_files) for i in s.split(",") if i.strip()]
  return [m for item in items for m in files_lib.glob(item)] + [spec.tfds_data_dir or None]


def _local_runner(options):
  """Without --runner (or with DirectRunner): Beam's FnApiRunner, which runs the pipeline here in
  --direct_num_workers threads or processes. (The DirectRunner would first try to download the
  Prism runner, and use it where the network allows.) None: the runner --runner names."""
  if options.view_as(StandardOptions).runner not in (None, "DirectRunner"):
    return None
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


# ----------------------------------------------------------------------------- the CLI

def main(argv):
  f = flags.FLAGS
  if f.verify:
    if not f.output:
      raise app.UsageError("--verify checks the prepared corpus --output names")
    problems = prepared.verify(f.output)
    for problem in problems:
      log.error("%s", problem)
    if problems:
      sys.exit(f"error: {f.output}: {len(problems)} problem(s) above; copy the damaged shards "
               "again, or prepare again")
    log.info("%s: every shard and record is what %s says", f.output, prepared.MANIFEST)
    return
  missing = [name for name in ("input", "spm_model", "output") if not getattr(f, name)]
  if missing:
    raise app.UsageError(f"--{', --'.join(missing)} required (or --verify --output=DIR)")
  config = examples_lib.ExampleConfig(
      max_seq_length=f.max_seq_length, short_seq_prob=f.short_seq_prob,
      random_next_sentence=f.random_next_sentence, mode=f.mode)
  spec = corpus.CorpusSpec.parse(f.input, f.eval_input, tfds_feature=f.tfds_feature,
                                 tfds_data_dir=f.tfds_data_dir or "",
                                 max_sentence_chars=f.max_sentence_chars)
  try:
    run(spec, f.spm_model, f.output, config=config, seed=f.seed, do_lower_case=f.do_lower_case,
        unit_bytes=int(f.unit_mb * (1 << 20)), unit_examples=f.unit_examples,
        group_size=f.group_size, pipeline_args=argv[1:], overwrite=f.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError) as e:  # refusals, before any write
    sys.exit(f"error: {e}")


def define_flags():
  """Flags only for the CLI (importing this module registers none)."""
  flags.DEFINE_string("input", None, "Text files (comma list, globs, dirs; .gz), "
                      "'tfds:NAME[:EVAL_SPLIT]' or 'embedded'.")
  flags.DEFINE_string("eval_input", "", "Text files of the eval split (default: hold out "
                      f"{corpus.HOLDOUT_PERCENT}% of --input's documents, as training does).")
  flags.DEFINE_string("tfds_feature", "text", "Text feature of a TFDS dataset.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
  flags.DEFINE_string("spm_model", None, "SentencePiece model (spiece.model), copied to --output.")
  flags.DEFINE_boolean("do_lower_case", True, "Lower-case, as the vocabulary was trained.")
  flags.DEFINE_string("output", None, "Directory for the shards and manifest.json.")
  flags.DEFINE_boolean("overwrite", False, "Replace a prepared corpus already in --output (once "
                       "the new one is complete).")
  flags.DEFINE_integer("seed", 0, "Seed of the cuts: train with the same --config.seed to get "
                       "the batches of training on the raw corpus.")
  flags.DEFINE_enum("mode", "fixed", list(examples_lib.MODES), "See data/examples.py's docstring.")
  flags.DEFINE_integer("max_seq_length", 512, "Tokens per example.")
  flags.DEFINE_float("short_seq_prob", 0.1, "Share of documents cut to a random shorter target.")
  flags.DEFINE_boolean("random_next_sentence", False, "NSP (random-document B) instead of SOP.")
  flags.DEFINE_integer("max_sentence_chars", corpus.MAX_SENTENCE_CHARS, "Longer lines are cut.")
  flags.DEFINE_float("unit_mb", 32, "Text files are read in byte ranges of about this size "
                     "(the unit of parallelism and of output shards; a .gz file is one).")
  flags.DEFINE_integer("unit_examples", 10_000, "TFDS examples per read unit.")
  flags.DEFINE_integer("group_size", 1, "ArrayRecord records per chunk. 1 (Grain's advice) reads "
                       "fastest; a training host then holds ~55 bytes of index per pair once it "
                       "has read from every shard. 16 makes that ~1/16 for slower random reads "
                       "(Grain logs an error per file for any size but 1).")
  flags.DEFINE_boolean("verify", False, "Check the prepared corpus --output names, every record "
                       "of every shard against manifest.json, instead of preparing one.")


if __name__ == "__main__":
  # Through the module's own name, so what Beam pickles names albert_jax.data.prepare, which
  # its workers can import, rather than __main__.
  from albert_jax.data import prepare
  prepare.define_flags()
  # Flags absl does not know are Beam's pipeline options: they reach main as argv.
  app.run(prepare.main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
