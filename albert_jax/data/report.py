"""A readable report on pretraining data: what the corpus readers cleaned and dropped, how pairs
were cut, and what masking did (masked share, 80/10/10, n-gram lengths, SOP balance, lengths).

  python -m albert_jax.data.report --input=embedded --spm_model=vocab/spiece.model
  python -m albert_jax.data.report --examples=data/train.array_record --spm_model=vocab/spiece.model

With --input the corpus is cut and masked here (dynamic masking, one draw per pair); with
--examples a file from create_pretraining_data.py is read, with its OUTPUT.stats.json when present.
The --spm_model gives word boundaries, so masked spans are counted in words rather than tokens.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable

import numpy as np
from absl import app, flags

from albert_jax.data import corpus, examples as examples_lib, masking, records
from albert_jax.data.pairs import PairTable
from albert_jax.data.tokenizer import AlbertTokenizer


@dataclasses.dataclass
class MaskingSummary:
  """Counts over examples (features of `masking.mask_examples`, one example or a batch)."""

  examples: int = 0
  label_1: int = 0
  tokens: int = 0  # non-special tokens
  masked: int = 0
  as_mask: int = 0
  unchanged: int = 0
  randomised: int = 0
  special_masked: int = 0
  unsorted: int = 0  # examples whose positions are not strictly increasing
  outside: int = 0  # positions not inside [CLS] .. last [SEP]
  lengths: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  span_lengths: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  span_unit: str = "tokens"


def summarize(examples: Iterable[dict[str, np.ndarray]],
              tables: examples_lib.VocabTables | None = None,
              summary: MaskingSummary | None = None) -> MaskingSummary:
  """Adds `examples` to `summary`. Masked spans are runs of consecutive masked positions (adjacent
  n-grams merge into one), counted in words (pieces starting with "▁") when `tables` is given."""
  s = MaskingSummary() if summary is None else summary
  mask_id = tables.mask_id if tables else 4
  special = [tables.cls_id, tables.sep_id, 0] if tables else [0, 2, 3]
  s.span_unit = "words" if tables else "tokens"
  for ex in examples:
    ids = np.atleast_2d(ex["input_ids"])
    length = np.atleast_2d(ex["attention_mask"]).sum(axis=1)
    weights = np.atleast_2d(ex["masked_lm_weights"]) > 0
    positions = np.atleast_2d(ex["masked_lm_positions"])
    labels = np.atleast_2d(ex["masked_lm_ids"])
    s.examples += len(ids)
    s.label_1 += int(np.sum(ex["sentence_order_label"]))
    s.tokens += int((length - 3).sum())
    s.lengths.update(length.tolist())
    rows = np.nonzero(weights)[0]
    pos, lab = positions[weights], labels[weights]
    cur = ids[rows, np.minimum(pos, ids.shape[1] - 1)]
    s.masked += len(pos)
    s.as_mask += int((cur == mask_id).sum())
    s.unchanged += int(((cur == lab) & (cur != mask_id)).sum())
    s.randomised += int(((cur != lab) & (cur != mask_id)).sum())
    s.special_masked += int(np.isin(lab, special).sum())
    s.outside += int(((pos <= 0) | (pos >= length[rows] - 1)).sum())
    new_row = np.r_[True, rows[1:] != rows[:-1]]
    s.unsorted += len(np.unique(rows[~new_row & (np.diff(pos, prepend=0) <= 0)]))
    # Runs of consecutive positions in one example; each run's length in words or tokens.
    run_start = new_row | np.r_[True, np.diff(pos) != 1]
    starts_word = (tables.word_start[lab] if tables else np.ones(len(lab), bool)) | run_start
    if len(pos):
      s.span_lengths.update(np.add.reduceat(starts_word.astype(np.int64),
                                            np.flatnonzero(run_start)).tolist())
  return s


def _percent(part: int, whole: int) -> str:
  return f"{100 * part / whole:.2f}%" if whole else "n/a"


def _histogram(counts: dict[str, int], width: int = 40) -> list[str]:
  total, top = sum(counts.values()), max(counts.values(), default=0)
  return [f"  {label:>9}  {'#' * round(width * n / top) if top else '':<{width}}  "
          f"{_percent(n, total):>7}  ({n})" for label, n in counts.items()]


def format_report(s: MaskingSummary, max_seq_length: int, corpus_stats: dict | None = None,
                  pair_stats: dict | None = None) -> str:
  """The report as text."""
  out = ["Pretraining data report", "======================="]
  if corpus_stats:
    c = corpus_stats
    out += [f"Corpus: {c['documents']:,} documents, {c['sentences']:,} sentences, "
            f"{c['words']:,} words, {c['chars']:,} characters, {c['files']:,} files",
            f"  replaced: {c['invalid_utf8_lines']:,} lines with invalid UTF-8, "
            f"{c['surrogates_replaced']:,} lone surrogates; cut: {c['long_sentences_cut']:,} "
            "over-long sentences",
            f"  dropped: {c['empty_documents_dropped']:,} empty documents, "
            f"{c['empty_sentences_dropped']:,} sentences without tokens; kept "
            f"{c['one_sentence_documents']:,} one-sentence documents"]
  if pair_stats:
    p = pair_stats
    out += [f"Pairs: {p['pairs']:,} (label 1: {_percent(p['label_1'], p['pairs'])}); "
            f"{p['tokens_truncated']:,} tokens truncated",
            f"  B from another document: {p['random_document_b']:,}; one-sentence chunks split "
            f"at a word: {p['sentences_split']:,}, dropped (one word): {p['chunks_dropped']:,}"]
  out += [f"Examples: {s.examples:,}",
          f"  sentence order label 1 (swapped or random next): {_percent(s.label_1, s.examples)}",
          f"  masked: {_percent(s.masked, s.tokens)} of {s.tokens:,} non-special tokens "
          f"({s.masked / max(s.examples, 1):.1f} per example)",
          f"  of the masked: [MASK] {_percent(s.as_mask, s.masked)}, random "
          f"{_percent(s.randomised, s.masked)}, unchanged {_percent(s.unchanged, s.masked)}",
          f"  checks: {s.special_masked} special tokens masked, {s.outside} positions outside the "
          f"sequence, {s.unsorted} examples with unsorted positions",
          f"  masked spans, in {s.span_unit} (adjacent n-grams merge):"]
  out += _histogram({str(k): v for k, v in sorted(s.span_lengths.items())})
  out.append("  sequence lengths (tokens, with [CLS] and [SEP]):")
  step = max(1, -(-max_seq_length // 8))
  bins = collections.Counter({f"{lo + 1}-{min(lo + step, max_seq_length)}": 0
                              for lo in range(0, max_seq_length, step)})
  for length, n in s.lengths.items():
    lo = (length - 1) // step * step
    bins[f"{lo + 1}-{min(lo + step, max_seq_length)}"] += n
  out += _histogram(dict(bins))
  return "\n".join(out)


def report_examples_file(path: str, tables: examples_lib.VocabTables | None = None) -> str:
  """The report of a file from create_pretraining_data.py (and its .stats.json, if there)."""
  stats = records.read_stats(path)
  summary, seq_len = MaskingSummary(), 0
  for ex in records.read_examples(path):
    seq_len = len(ex["input_ids"])
    summarize([ex], tables, summary)
  return format_report(summary, seq_len, stats.get("corpus"), stats.get("pairs"))


def report_corpus(input_spec: str, tokenizer, config: examples_lib.ExampleConfig, seed: int = 0,
                  split: str = "train", max_examples: int | None = None) -> str:
  """The report of a corpus cut into pairs and masked once each (as dynamic masking would)."""
  corpus_stats, pair_stats = corpus.CorpusStats(), examples_lib.PairStats()
  tables = examples_lib.tokenizer_tables(tokenizer)
  docs = examples_lib.tokenize_documents(
      corpus.read_documents(input_spec, split=split, stats=corpus_stats), tokenizer, corpus_stats)
  pairs = PairTable.pack(examples_lib.make_segment_pairs(
      docs, seed, config, word_start=tables.word_start, stats=pair_stats)[:max_examples])
  rng = np.random.default_rng([seed, 1])
  summary = MaskingSummary()
  for start in range(0, len(pairs), 256):
    chunk = pairs.pairs_at(range(start, min(start + 256, len(pairs))))
    summarize([masking.mask_examples(chunk, rng, tables, config)], tables, summary)
  return format_report(summary, config.max_seq_length, corpus_stats.as_dict(),
                       dataclasses.asdict(pair_stats))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if bool(f.input) == bool(f.examples):
    raise app.UsageError("Give one of --input (a corpus) or --examples (a created file)")
  tokenizer = None
  if f.spm_model:
    tokenizer = AlbertTokenizer(f.spm_model, do_lower_case=f.do_lower_case)
  if f.examples:
    print(report_examples_file(f.examples, tokenizer and examples_lib.tokenizer_tables(tokenizer)))
    return
  if tokenizer is None:
    raise app.UsageError("--input needs --spm_model")
  config = examples_lib.ExampleConfig(
      max_seq_length=f.max_seq_length, masked_lm_prob=f.masked_lm_prob,
      max_predictions_per_seq=f.max_predictions_per_seq or None,
      random_next_sentence=f.random_next_sentence, mode=f.mode)
  print(report_corpus(f.input, tokenizer, config, f.seed, f.split, f.max_examples or None))


def define_flags():
  flags.DEFINE_string("input", None, "A corpus: files, 'tfds:NAME' or 'embedded'.")
  flags.DEFINE_string("split", "train", "Split of a TFDS or the embedded corpus.")
  flags.DEFINE_string("examples", None, "A file written by create_pretraining_data.py.")
  flags.DEFINE_string("spm_model", None, "SentencePiece model (needed with --input).")
  flags.DEFINE_boolean("do_lower_case", True, "Lower-case, as the vocabulary was trained.")
  flags.DEFINE_integer("max_seq_length", 128, "Tokens per example (--input).")
  flags.DEFINE_integer("max_predictions_per_seq", 0, "0: ceil(max_seq_length * masked_lm_prob).")
  flags.DEFINE_float("masked_lm_prob", 0.15, "Share of tokens to predict.")
  flags.DEFINE_boolean("random_next_sentence", False, "NSP instead of SOP.")
  flags.DEFINE_enum("mode", "fixed", list(examples_lib.MODES), "See data/examples.py's docstring.")
  flags.DEFINE_integer("seed", 0, "Seed of the cuts and masks (--input).")
  flags.DEFINE_integer("max_examples", 0, "Report on at most this many pairs (0: all).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
