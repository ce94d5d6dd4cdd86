"""Trains an ALBERT SentencePiece vocabulary with the original's `spm_train` settings.

  python -m albert_jax.data.train_tokenizer --input='wiki/*.gz,books.txt' --vocab_size=30000 --out=D

writes D/spiece.model (ids 0..4 = <pad> <unk> [CLS] [SEP] [MASK]), D/spiece.vocab and the
tokenizer files that `AlbertTokenizer.from_pretrained(D)` and transformers read.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm
from absl import app, flags

from albert_jax import files
from albert_jax.data import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

# google-research/albert README, "SentencePiece": the command behind the released 30k-clean.model
#   spm_train --input all.txt --model_prefix=30k-clean --vocab_size=30000 --logtostderr
#     --pad_id=0 --unk_id=1 --eos_id=-1 --bos_id=-1 --control_symbols=[CLS],[SEP],[MASK]
#     --user_defined_symbols="(,),\",-,.,–,£,€" --shuffle_input_sentence=true
#     --input_sentence_size=10000000 --character_coverage=0.99995 --model_type=unigram
# We keep all of it but input_sentence_size (10M sentences need tens of GB of RAM; 1M by default).
CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
USER_DEFINED_SYMBOLS = ("(", ")", '"', "-", ".", "–", "£", "€")
EXPECTED_IDS = {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def input_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """The files named by a comma list of paths or globs (or a list of them), local or gs://; each
  must match."""
  if isinstance(spec, str):
    items = spec.split(",")
  elif isinstance(spec, os.PathLike):
    items = [os.fspath(spec)]
  else:
    items = [os.fspath(s) for s in spec]
  found = []
  for item in filter(None, (i.strip() for i in items)):
    matches = files.glob(item)
    if not matches:
      raise FileNotFoundError(f"input {item!r} matches no file")
    found.extend(matches)
  return found


def read_lines(paths: Iterable[str]) -> Iterator[str]:
  """Lines of text files, `.gz` or plain, as UTF-8 (an undecodable byte becomes U+FFFD)."""
  for path in paths:
    log.info("Reading %s", path)
    with files.path(path).open("rb") as raw:
      binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
      for line in io.TextIOWrapper(binary, encoding="utf-8", errors="replace"):
        yield line.rstrip("\r\n")


def _sample(sentences: Iterable[str], k: int, rng: random.Random) -> tuple[list[str], int]:
  """A uniform sample of at most k non-blank sentences (reservoir), and how many there were."""
  sample, seen = [], 0
  for s in sentences:
    if not s.strip():
      continue  # blank lines separate documents
    seen += 1
    if len(sample) < k:
      sample.append(s)
    else:
      j = rng.randrange(seen)
      if j < k:
        sample[j] = s
    if seen % 1_000_000 == 0:
      log.info("Read %d sentences", seen)
  return sample, seen


def _is_file_spec(inputs) -> bool:
  return isinstance(inputs, (str, os.PathLike)) or (
      isinstance(inputs, (list, tuple)) and bool(inputs)
      and all(isinstance(i, os.PathLike) for i in inputs))


def train_spm(inputs: str | os.PathLike | Sequence[os.PathLike] | Iterable[str], vocab_size: int,
              out_dir: str | os.PathLike, *, do_lower_case: bool = True, remove_space: bool = True,
              keep_accents: bool = False, input_sentence_size: int = 1_000_000,
              character_coverage: float = 0.99995, model_type: str = "unigram",
              user_defined_symbols: Sequence[str] = USER_DEFINED_SYMBOLS, seed: int = 0,
              num_threads: int | None = None, spm_log_level: int = 1, **spm_kwargs) -> Path:
  """Trains on `inputs` and returns out_dir/spiece.model.

  `inputs` is a comma list or glob of files (a str), a Path or list of Paths, or else any iterable
  of sentences (so a list of str is text, not file names). Every output is written under a
  temporary name and renamed; spiece.model comes last, so its presence means the directory is whole.
  """
  out = files.path(out_dir)  # local or gs://
  out.mkdir(parents=True, exist_ok=True)
  sentences = read_lines(input_files(inputs)) if _is_file_spec(inputs) else iter(inputs)
  sample, seen = _sample(sentences, input_sentence_size, random.Random(seed))
  log.info("Read %d sentences; training on %d of them", seen, len(sample))
  # The original trained on text already lower-cased and accent-stripped (`do_lower_case`), so the
  # vocabulary holds the strings the tokenizer gives SentencePiece. We apply the tokenizer's own
  # normalisation to the corpus rather than lower-casing it some other way.
  flags = dict(do_lower_case=do_lower_case, remove_space=remove_space, keep_accents=keep_accents)
  text = [t for t in (tokenizer_lib.normalize(s, **flags) for s in sample) if t]
  if not text:
    raise ValueError(f"No text to train on in {inputs!r}")
  log.info("Training a %s SentencePiece model of %d pieces on %d sentences", model_type,
           vocab_size, len(text))
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, model_type=model_type,
        vocab_size=vocab_size, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        control_symbols=list(CONTROL_SYMBOLS), user_defined_symbols=list(user_defined_symbols),
        character_coverage=character_coverage, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, num_threads=num_threads or min(16, os.cpu_count() or 1),
        minloglevel=spm_log_level, **spm_kwargs)
  except RuntimeError as e:
    raise RuntimeError(f"SentencePiece training on {len(text)} sentences failed: {e}") from None

  with tempfile.TemporaryDirectory(prefix=".spm-") as tmp:
    raw = Path(tmp) / tokenizer_lib.VOCAB_FILE
    raw.write_bytes(model.getvalue())
    tok = tokenizer_lib.AlbertTokenizer(raw, **flags)
    ids = {t: tok.convert_tokens_to_ids(t) for t in EXPECTED_IDS}
    if ids != EXPECTED_IDS:
      raise RuntimeError(f"Trained model has special ids {ids}, expected {EXPECTED_IDS}")
    sp = tok.sp_model
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(len(sp)))
    files.write_text(out / "spiece.vocab", vocab)
    tok.save_pretrained(out)
  path = out / tokenizer_lib.VOCAB_FILE
  log.info("Wrote %s (%d pieces)", path, len(tok))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  train_spm(f.input, f.vocab_size, f.out, do_lower_case=f.do_lower_case,
            keep_accents=f.keep_accents, input_sentence_size=f.input_sentence_size,
            character_coverage=f.character_coverage, model_type=f.model_type, seed=f.seed,
            num_threads=f.num_threads, spm_log_level=0 if f.spm_verbose else 1)


def _define_flags():
  """Flags only for the CLI: importing `train_spm` must not register --input / --out globally."""
  flags.DEFINE_string("input", None,
                      "Text, one sentence a line: comma list of files or globs; .gz ok.")
  flags.DEFINE_integer("vocab_size", 30000, "Pieces in the vocabulary (ALBERT: 30000).")
  flags.DEFINE_string("out", None, "Output directory for spiece.model and the tokenizer files.")
  flags.DEFINE_boolean("do_lower_case", True, "Lower-case (ALBERT: true); saved for the tokenizer.")
  flags.DEFINE_boolean("keep_accents", False, "Keep accents (ALBERT: false).")
  flags.DEFINE_integer("input_sentence_size", 1_000_000,
                       "Sentences sampled for training (the original: 10M, which needs a server).")
  flags.DEFINE_float("character_coverage", 0.99995, "Share of characters the vocabulary covers.")
  flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "char", "word"], "ALBERT: unigram.")
  flags.DEFINE_integer("seed", 0, "Seed of the sentence sample and of SentencePiece.")
  flags.DEFINE_integer("num_threads", None, "Training threads (default: cores, at most 16).")
  flags.DEFINE_boolean("spm_verbose", False, "Show SentencePiece's own training log.")
  flags.mark_flags_as_required(["input", "out"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
