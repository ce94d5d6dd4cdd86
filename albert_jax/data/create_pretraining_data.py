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
data and two ways of writing it, not two pipelines. The records and their formats:
data/records.py.
"""

from __future__ import annotations

import dataclasses
import logging

from absl import app, flags

from albert_jax import files
from albert_jax.data import corpus, examples as examples_lib, prepared, records as records_lib
from albert_jax.data.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)


def run(input_spec: str, spm_model: str, output: str, *, config: examples_lib.ExampleConfig,
        seed: int = 12345, dupe_factor: int = 10, fmt: str | None = None, split: str = "train",
        do_lower_case: bool = True, max_sentence_chars: int = corpus.MAX_SENTENCE_CHARS,
        tfds_feature: str = "text", tfds_data_dir: str | None = None,
        eval_input: str = "") -> dict:
  """The whole job: read, tokenize, cut, mask, write; returns (and writes) OUTPUT.stats.json."""
  tokenizer = AlbertTokenizer(spm_model, do_lower_case=do_lower_case)
  tables = examples_lib.tokenizer_tables(tokenizer)
  corpus_stats, pair_stats = corpus.CorpusStats(), examples_lib.PairStats()
  spec = corpus.CorpusSpec.parse(input_spec, eval_input, tfds_feature=tfds_feature,
                                 tfds_data_dir=tfds_data_dir or "",
                                 max_sentence_chars=max_sentence_chars)
  progress = records_lib.Progress("Documents tokenized")
  tokenized, indices, fingerprint = examples_lib.tokenize_split(spec, split, tokenizer,
                                                                corpus_stats, progress.update)
  progress.update(corpus_stats.documents, force=True)
  if not tokenized:
    raise ValueError(f"No documents with text in the {split} split of {input_spec!r}")
  records = records_lib.create_examples(tokenized, tables, config, seed, dupe_factor, pair_stats,
                                        indices=indices, space_size=corpus_stats.documents)
  count = records_lib.write_examples(records, output, fmt)
  log.info("Wrote %d examples to %s", count, output)
  settings = {"seed": seed, "dupe_factor": dupe_factor, "split": split,
              "config": dataclasses.asdict(config)}
  vocabulary = prepared.vocabulary_fingerprint(tokenizer)
  summary = {"examples": count, "input": input_spec, "spm_model": spm_model, **settings,
             "corpus": corpus_stats.as_dict(), "pairs": dataclasses.asdict(pair_stats),
             "corpus_fingerprint": fingerprint, "vocabulary": vocabulary,
             "fingerprint": prepared.fingerprint({split: fingerprint}, vocabulary,
                                                 settings)}
  files.write_json(records_lib.stats_path(output), summary)
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
  """Flags only for the CLI, so importing this module registers none."""
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
