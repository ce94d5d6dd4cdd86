"""Statically masked pretraining examples written to disk, as google-research/albert's
`create_pretraining_data.py` wrote them (training masks dynamically by default; see examples.py).

  python -m albert_jax.data.create_pretraining_data --input='corpus/*.txt.gz' \
      --spm_model=vocab/spiece.model --output=data/train.array_record --max_seq_length=128 \
      --dupe_factor=10 --seed=12345

writes `dupe_factor` differently cut and masked copies of the corpus's train split (or --split=eval),
shuffled, one record per example, and OUTPUT.stats.json (corpus and pair counts, config,
fingerprints) that `report.py` prints. `--input` is files (the original format),
"tfds:NAME[:EVAL_SPLIT]" or "embedded" (corpus.CorpusSpec.parse). Like the original, it holds the
tokenized corpus and all examples (compactly encoded) in memory.

Why this is not a mode of `prepare`: static masks are the original's offline format, kept for
comparisons with it and for training on fixed masks (`data.static_examples`); at scale, training
masks dynamically and reads what `python -m albert_jax.data.prepare` cut. Both read the corpus
(its documents, their indices, the held-out split) through `corpus.CorpusSpec` and cut pairs with
`examples.make_segment_pairs`, the definition training uses, so there is one definition of the
data and two ways of writing it, not two pipelines.

Record formats (`read_examples` reads both; features are those of `examples.mask_examples`):
  .jsonl         one JSON object per line: the seven features, padded, as lists
  array_record   `encode_example`: little-endian int32 [version=1, max_seq_length, max_predictions,
                 length, n_masked, segment_a_length, sentence_order_label] followed by
                 input_ids[:length], masked_lm_positions[:n_masked], masked_lm_ids[:n_masked]; the
                 masks and segment ids are prefixes, so this is all there is (~0.7 kB at 128).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Iterable, Iterator

import numpy as np
from absl import app, flags
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from albert_jax import files
from albert_jax.data import corpus, examples as examples_lib
from albert_jax.data.pairs import PairTable
from albert_jax.data.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_HEADER = 7
MASK_BATCH = 256


# ----------------------------------------------------------------------------- records

def encode_example(features: dict[str, np.ndarray]) -> bytes:
  """One example's features as the compact ArrayRecord record described in the module doc."""
  length = int(features["attention_mask"].sum())
  n_masked = int(features["masked_lm_weights"].sum())
  segment_a = length - int(features["token_type_ids"].sum())  # [CLS] A [SEP]
  header = [FORMAT_VERSION, len(features["input_ids"]), len(features["masked_lm_ids"]), length,
            n_masked, segment_a, int(features["sentence_order_label"])]
  return np.concatenate([
      np.array(header, np.int32), features["input_ids"][:length],
      features["masked_lm_positions"][:n_masked], features["masked_lm_ids"][:n_masked],
  ]).astype("<i4").tobytes()


def decode_example(record: bytes) -> dict[str, np.ndarray]:
  """The padded features of an `encode_example` record."""
  values = np.frombuffer(record, "<i4")
  version, seq_len, max_pred, length, n_masked, segment_a, label = values[:_HEADER].tolist()
  if version != FORMAT_VERSION:
    raise ValueError(f"Record format version {version}; this reader knows {FORMAT_VERSION}")
  index, slots = np.arange(seq_len), np.arange(max_pred)
  out = {"input_ids": np.zeros(seq_len, np.int32),
         "masked_lm_positions": np.zeros(max_pred, np.int32),
         "masked_lm_ids": np.zeros(max_pred, np.int32)}
  out["input_ids"][:length] = values[_HEADER:_HEADER + length]
  start = _HEADER + length
  out["masked_lm_positions"][:n_masked] = values[start:start + n_masked]
  out["masked_lm_ids"][:n_masked] = values[start + n_masked:start + 2 * n_masked]
  out["attention_mask"] = (index < length).astype(np.int32)
  out["token_type_ids"] = ((index >= segment_a) & (index < length)).astype(np.int32)
  out["masked_lm_weights"] = (slots < n_masked).astype(np.float32)
  out["sentence_order_label"] = np.asarray(label, np.int32)
  return {k: out[k] for k in examples_lib.FEATURE_NAMES}


def _is_jsonl(path: str, fmt: str | None = None) -> bool:
  return fmt == "jsonl" if fmt else path.endswith((".jsonl", ".json"))


def read_examples(path: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
  """Examples of a file this module wrote (JSON lines if it ends in .jsonl, else ArrayRecord)."""
  path = os.fspath(path)
  if _is_jsonl(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        yield {k: np.asarray(row[k], np.float32 if k == "masked_lm_weights" else np.int32)
               for k in examples_lib.FEATURE_NAMES}
    return
  reader = ArrayRecordReader(path)
  try:
    for start in range(0, reader.num_records(), 1024):
      for record in reader.read(list(range(start, min(start + 1024, reader.num_records())))):
        yield decode_example(record)
  finally:
    reader.close()


def write_examples(records: Iterable[bytes | dict], path: str | os.PathLike,
                   fmt: str | None = None) -> int:
  """Writes records (`encode_example` bytes, or feature dicts for JSON lines) under a temporary
  name, then renames it to `path`; returns how many."""
  count = 0
  with files.atomic_path(path) as tmp:
    if _is_jsonl(os.fspath(path), fmt):
      with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
          r = decode_example(r) if isinstance(r, bytes) else r
          f.write(json.dumps({k: np.asarray(r[k]).tolist() for k in examples_lib.FEATURE_NAMES},
                             separators=(",", ":")) + "\n")
          count += 1
    else:
      writer = ArrayRecordWriter(str(tmp), "group_size:1")  # one record per chunk: random access
      try:
        for r in records:
          writer.write(r if isinstance(r, bytes) else encode_example(r))
          count += 1
      finally:
        writer.close()
  return count


# ----------------------------------------------------------------------------- the job

class Progress:
  """Logs count, rate and ETA (when the total is known) at most every `every` seconds."""

  def __init__(self, what: str, total: int | None = None, every: float = 10.0):
    self.what, self.total, self.every = what, total, every
    self.start = self.last = time.monotonic()

  def update(self, done: int, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self.last < self.every:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (f", ETA {(self.total - done) / max(rate, 1e-9):.0f} s" if self.total else "")
    of = f"/{self.total}" if self.total else ""
    log.info("%s: %d%s (%.0f/s%s)", self.what, done, of, rate, eta)


def create_examples(documents: list[list[np.ndarray]], tables: examples_lib.VocabTables,
                    config: examples_lib.ExampleConfig, seed: int, dupe_factor: int,
                    pair_stats: examples_lib.PairStats | None = None, *,
                    indices: list[int] | None = None,
                    space_size: int | None = None) -> list[bytes]:
  """`dupe_factor` copies of the corpus, each cut (seed [seed, 0, copy], `make_segment_pairs`'s
  `indices` and `space_size`) and masked (generator [seed, 1, copy]) anew, encoded and shuffled
  (generator [seed, 2])."""
  records: list[bytes] = []
  progress = None
  for copy in range(dupe_factor):
    pairs = examples_lib.make_segment_pairs(documents, [seed, 0, copy], config, indices=indices,
                                           space_size=space_size, word_start=tables.word_start,
                                           stats=pair_stats)
    if progress is None:
      progress = Progress("Examples", total=len(pairs) * dupe_factor)
    rng = np.random.default_rng([seed, 1, copy])
    pairs = PairTable.pack(pairs)
    for start in range(0, len(pairs), MASK_BATCH):
      batch = examples_lib.mask_examples(pairs.pairs_at(range(start, min(start + MASK_BATCH,
                                                                         len(pairs)))),
                                         rng, tables, config)
      records.extend(encode_example({k: v[i] for k, v in batch.items()})
                     for i in range(len(batch["input_ids"])))
      progress.update(len(records))
  if progress:
    progress.total = len(records)
    progress.update(len(records), force=True)
  order = np.random.default_rng([seed, 2]).permutation(len(records))
  return [records[i] for i in order]


def run(input_spec: str, spm_model: str, output: str, *, config: examples_lib.ExampleConfig,
        seed: int = 12345, dupe_factor: int = 10, fmt: str | None = None, split: str = "train",
        do_lower_case: bool = True, max_sentence_chars: int = corpus.MAX_SENTENCE_CHARS,
        tfds_feature: str = "text", tfds_data_dir: str | None = None,
        eval_input: str = "") -> dict:
  """The whole job: read, tokenize, cut, mask, write; returns (and writes) OUTPUT.stats.json."""
  from albert_jax.data import prepared  # the fingerprints training compares
  tokenizer = AlbertTokenizer(spm_model, do_lower_case=do_lower_case)
  tables = examples_lib.tokenizer_tables(tokenizer)
  corpus_stats, pair_stats = corpus.CorpusStats(), examples_lib.PairStats()
  spec = corpus.CorpusSpec.parse(input_spec, eval_input, tfds_feature=tfds_feature,
                                 tfds_data_dir=tfds_data_dir or "",
                                 max_sentence_chars=max_sentence_chars)
  progress = Progress("Documents tokenized")
  tokenized, indices, fingerprint = examples_lib.tokenize_split(spec, split, tokenizer,
                                                                corpus_stats, progress.update)
  progress.update(corpus_stats.documents, force=True)
  if not tokenized:
    raise ValueError(f"No documents with text in the {split} split of {input_spec!r}")
  records = create_examples(tokenized, tables, config, seed, dupe_factor, pair_stats,
                            indices=indices, space_size=corpus_stats.documents)
  count = write_examples(records, output, fmt)
  log.info("Wrote %d examples to %s", count, output)
  settings = {"seed": seed, "dupe_factor": dupe_factor, "split": split,
              "config": dataclasses.asdict(config)}
  vocabulary = prepared.vocabulary_fingerprint(tokenizer)
  summary = {"examples": count, "input": input_spec, "spm_model": spm_model, **settings,
             "corpus": corpus_stats.as_dict(), "pairs": dataclasses.asdict(pair_stats),
             "corpus_fingerprint": fingerprint, "vocabulary": vocabulary,
             "fingerprint": prepared.fingerprint({split: fingerprint}, vocabulary,
                                                 settings)}
  files.write_json(f"{output}.stats.json", summary)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  config = examples_lib.ExampleConfig(
      max_seq_length=f.max_seq_length, short_seq_prob=f.short_seq_prob,
      random_next_sentence=f.random_next_sentence, masked_lm_prob=f.masked_lm_prob,
      max_predictions_per_seq=f.max_predictions_per_seq or None, ngram=f.ngram,
      favor_shorter_ngram=f.favor_shorter_ngram, do_whole_word_mask=f.do_whole_word_mask,
      mode=f.mode)
  run(f.input, f.spm_model, f.output, config=config, seed=f.seed, dupe_factor=f.dupe_factor,
      fmt=f.format, split=f.split, do_lower_case=f.do_lower_case,
      max_sentence_chars=f.max_sentence_chars, tfds_feature=f.tfds_feature,
      tfds_data_dir=f.tfds_data_dir, eval_input=f.eval_input)


def define_flags():
  """Flags only for the CLI, so importing `read_examples` registers none."""
  flags.DEFINE_string("input", None, "Text files (comma list, globs, dirs; .gz), "
                      "'tfds:NAME[:EVAL_SPLIT]' or 'embedded'.")
  flags.DEFINE_string("eval_input", "", "Text files of the eval split (default: hold out "
                      f"{corpus.HOLDOUT_PERCENT}% of --input's documents, as training does).")
  flags.DEFINE_enum("split", "train", ["train", "eval"], "Which split of the corpus to write.")
  flags.DEFINE_string("tfds_feature", "text", "Text feature of a TFDS dataset.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
  flags.DEFINE_string("spm_model", None, "SentencePiece model (spiece.model).")
  flags.DEFINE_boolean("do_lower_case", True, "Lower-case, as the vocabulary was trained.")
  flags.DEFINE_string("output", None, "Output file: .jsonl for JSON lines, else ArrayRecord.")
  flags.DEFINE_enum("format", None, ["array_record", "jsonl"], "Default: from --output's name.")
  flags.DEFINE_integer("seed", 12345, "Seed of the cuts, the masks and the shuffle.")
  flags.DEFINE_integer("dupe_factor", 10, "Copies with different masks (the original: 40).")
  flags.DEFINE_enum("mode", "fixed", list(examples_lib.MODES), "See examples_lib.py's docstring.")
  flags.DEFINE_integer("max_seq_length", 128, "Tokens per example.")
  flags.DEFINE_integer("max_predictions_per_seq", 0, "0: ceil(max_seq_length * masked_lm_prob).")
  flags.DEFINE_float("masked_lm_prob", 0.15, "Share of tokens to predict.")
  flags.DEFINE_float("short_seq_prob", 0.1, "Share of documents cut to a random shorter target.")
  flags.DEFINE_integer("ngram", 3, "Longest masked n-gram, in words.")
  flags.DEFINE_boolean("favor_shorter_ngram", True, "p(n) proportional to 1/n.")
  flags.DEFINE_boolean("do_whole_word_mask", True, "Mask whole words.")
  flags.DEFINE_boolean("random_next_sentence", False, "NSP (random-document B) instead of SOP.")
  flags.DEFINE_integer("max_sentence_chars", corpus.MAX_SENTENCE_CHARS, "Longer lines are cut.")
  flags.mark_flags_as_required(["input", "spm_model", "output"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
