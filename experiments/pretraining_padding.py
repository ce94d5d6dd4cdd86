r"""The share of padding in pretraining rows (issue 20, Deliver 4): pairs cut by the repository's
own pipeline (examples.document_pairs, the `fixed` and `faithful` modes, short_seq_prob 0.1, SOP)
at max_seq_length 512, for the embedded corpus and for a text-file corpus of real prose built from
this machine's manuals (no download).

    python -m experiments.pretraining_padding [--max_seq_length=512] [--vocab_size=30000]
        [--cache=/tmp/albert_padding] [--max_documents=0] [--rebuild]

For each corpus and mode: instances (pairs: rows of a dynamically masked epoch), real tokens
([CLS] A [SEP] B [SEP]), the padding share 1 - real / (instances * max_seq_length), and where the
padding comes from: documents cut to a random short target on purpose (short_seq_prob, drawn once
per document as the original does, so the share of such pairs is not 10%), the last pair of a
full-target document (its end), and the rest (faithful's random-document B running out of text).
Also what packing pairs into rows would give: the rows best-fit-decreasing would fill, and the
speed-up in rows. The padding of the first rows is checked against masking.mask_examples' own
input_mask.

The text-file corpus (written once under --cache, in the pipeline's documented format: one
sentence per line, a blank line between documents; sentences by data/sentences.py) is, one
document each: every Node.js API page (/usr/share/doc/nodejs/api/*.md, code blocks dropped),
every node of the GNU info manuals (/usr/share/info), every Perl .pod file, and every English
man page of sections 2, 5 and 7 rendered by man(1). A `--vocab_size` SentencePiece vocabulary
is trained on a sample of its sentences (--spm_sentences) with the original's settings
(train_tokenizer.train_spm; up to --vocab_size pieces, fewer if the sample holds fewer) and used
for both corpora. Takes ~2 minutes on 2 cores the first time (~100 s rendering man pages), under
a minute after.

`--squad_race` adds ESTIMATES (no SQuAD or RACE data here) of the padding of SQuAD v1.1 windows
(384, stride 128) and RACE rows (512): synthetic examples with published mean lengths through the
repository's own feature code; see `squad_race_estimate` for the sources and assumptions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import gzip
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from albert_jax.data import corpus, examples as examples_lib, masking, sentences
from albert_jax.data.pairs import PairTable
from albert_jax.data.tokenizer import AlbertTokenizer

SEED = 12345

# ----------------------------------------------------------------------------- the text corpus

_MD_DROP = re.compile(r"^\s*(#|\||<!--|-->|\[[^\]]+\]:|<[a-z/]|>|\* \[|```)")
_MD_INLINE = re.compile(r"[`*]|\[([^\]]*)\]\[[^\]]*\]|\[([^\]]*)\]\([^)]*\)")
_POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")


def _md_sentences(text: str) -> list[str]:
  """Prose of a Markdown page: fenced code, headings, tables, HTML and link lines dropped."""
  keep, fenced = [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      keep.append("")
      continue
    if fenced or _MD_DROP.match(line):
      keep.append("")
      continue
    keep.append(_MD_INLINE.sub(lambda m: m.group(1) or m.group(2) or "", line).rstrip("\\ "))
  return sentences.split_sentences("\n".join(keep), wrapped=True)


def _pod_sentences(text: str) -> list[str]:
  """Prose of a POD file: command paragraphs dropped, formatting codes to their text; verbatim
  (indented) paragraphs are dropped by split_sentences."""
  lines = ["" if line.startswith("=") else _POD_CODE.sub(r"\1", line)
           for line in text.splitlines()]
  return sentences.split_sentences("\n".join(lines), wrapped=True)


def _info_documents(path: str) -> list[list[str]]:
  """One document per node of an info manual (menus, tag tables and indices dropped)."""
  text = gzip.open(path, "rt", errors="replace").read()
  docs = []
  for node in text.split("\x1f")[1:]:
    header, _, body = node.lstrip("\n").partition("\n")
    if "Node:" not in header or "Index" in header:
      continue
    lines = ["" if line.startswith("* ") or line.startswith("*Note") else line
             for line in body.splitlines()]
    if doc := sentences.split_sentences("\n".join(lines), wrapped=True):
      docs.append(doc)
  return docs


def _man_sentences(path: str) -> list[str]:
  """Prose of a man page rendered unwrapped (a paragraph per line), headings and short lines
  (synopses, option names) dropped."""
  out = subprocess.run(["man", "-l", path], capture_output=True,
                       env={**os.environ, "MANWIDTH": "10000", "MANPAGER": "cat", "PAGER": "cat"},
                       timeout=60).stdout
  text = re.sub(r".\x08", "", out.decode("utf-8", errors="replace"))  # overstrikes
  text = re.sub(r"\x1b\[[0-9;]*m", "", text)
  lines = [ln.strip() for ln in text.splitlines()[1:-1]]  # the header and footer lines
  prose = [ln for ln in lines if len(ln.split()) >= 4 and re.search("[a-z]", ln)]
  return sentences.split_sentences("\n".join(prose), wrapped=False)


def build_text_corpus(out: Path) -> dict[str, int]:
  """Writes out/{nodejs,info,pod,man}.txt (one sentence per line, a blank line between
  documents) unless present; returns documents per file."""
  out.mkdir(parents=True, exist_ok=True)
  sources = {
      "nodejs": lambda: [_md_sentences(Path(p).read_text(errors="replace"))
                         for p in sorted(glob.glob("/usr/share/doc/nodejs/api/*.md"))],
      "info": lambda: [d for p in sorted(glob.glob("/usr/share/info/*.info*.gz"))
                       for d in _info_documents(p)],
      "pod": lambda: [_pod_sentences(Path(p).read_text(errors="replace"))
                      for p in sorted(glob.glob("/usr/share/perl/**/*.pod", recursive=True))],
      "man": lambda: list(concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2).map(
          _man_sentences, sorted(p for s in (2, 5, 7)
                                 for p in glob.glob(f"/usr/share/man/man{s}/*")))),
  }
  counts = {}
  for name, read in sources.items():
    path = out / f"{name}.txt"
    if not path.exists():
      docs = [d for d in read() if d]
      tmp = path.with_suffix(".tmp")
      tmp.write_text("\n\n".join("\n".join(s.replace("\n", " ") for s in d) for d in docs) + "\n")
      tmp.rename(path)
    counts[name] = path.read_text().count("\n\n") + 1
  return counts


# ----------------------------------------------------------------------------- the measurement

@dataclasses.dataclass
class Padding:
  corpus: str
  mode: str
  documents: int
  doc_tokens_median: float
  doc_tokens_mean: float
  instances: int
  real_tokens: int
  short_instances: int  # pairs of documents cut to a short target on purpose
  short_padding: int
  end_instances: int  # last pair of a full-target document
  end_padding: int
  other_padding: int
  packed_rows: int  # rows best-fit-decreasing fills with the same pairs
  row: int

  @property
  def padding(self) -> float:
    return 1 - self.real_tokens / (self.instances * self.row)


def best_fit_decreasing(lengths: np.ndarray, row: int) -> int:
  """Rows that best-fit-decreasing packs `lengths` (each <= row) into: longest first, each into
  the open row it fills most, else a new row."""
  free = np.zeros(row + 1, np.int64)  # free[k]: open rows with k tokens free
  rows = 0
  for n in np.sort(lengths)[::-1]:
    fits = np.nonzero(free[n:])[0]
    if len(fits):
      k = n + fits[0]
      free[k] -= 1
      free[k - n] += 1
    else:
      rows += 1
      free[row - n] += 1
  return rows


@dataclasses.dataclass
class Cut:
  """Every pair of a split: its length in a row, why it may be short, its document."""

  lengths: np.ndarray  # [pairs]: [CLS] A [SEP] B [SEP]
  kinds: np.ndarray  # [pairs] 0: its document has a short target, 1: a document's last pair, 2: other
  documents: np.ndarray  # [pairs]: the index of its document
  doc_tokens: dict[int, int]  # tokens of each document, by index


def cut(docs, indices, space_size: int, tables, mode: str, max_seq_length: int,
        short_seq_prob: float = 0.1) -> Cut:
  """The pairs input_pipeline._corpus cuts (seed [SEED, 0], dynamic masking: one epoch's rows),
  each attributed to its document; checked against make_segment_pairs and mask_examples."""
  config = examples_lib.ExampleConfig(max_seq_length=max_seq_length, short_seq_prob=short_seq_prob,
                                      mode=mode)
  seed = [SEED, 0]
  by_index = dict(zip(indices, docs))
  candidates = examples_lib.Candidates(space_size, by_index, len(by_index))
  lengths, kinds, owners = [], [], []
  for index, doc in by_index.items():
    short = examples_lib.generator(seed, index).random() < short_seq_prob  # document_pairs' draw
    pairs = examples_lib.document_pairs(doc, index, seed, config, candidates=candidates,
                                        word_start=tables.word_start)
    for k, pair in enumerate(pairs):
      if isinstance(pair, examples_lib.PendingPair):
        pair = examples_lib.complete_pair(pair, by_index[pair.other], config)
      lengths.append(len(pair.tokens_a) + len(pair.tokens_b) + 3)
      kinds.append(0 if short else 1 if k == len(pairs) - 1 else 2)
      owners.append(index)
  lengths = np.array(lengths)
  # The same pairs as the pipeline's own entry point, and the padding its masking gives them.
  table = PairTable.pack(examples_lib.make_segment_pairs(
      docs, seed, config, indices=indices, space_size=space_size, word_start=tables.word_start))
  assert np.array_equal(table.lengths + 3, lengths), "pairs differ from make_segment_pairs'"
  sample = masking.mask_examples(table.pairs_at(np.arange(min(512, len(table)))),
                                 np.random.default_rng(0), tables, config)
  assert sample["input_ids"].shape[1] == max_seq_length
  assert sample["attention_mask"].sum() == lengths[:512].sum(), "masking pads differently"
  return Cut(lengths, np.array(kinds), np.array(owners),
             {i: sum(map(len, d)) for i, d in by_index.items()})


def summarise(name: str, mode: str, c: Cut, row: int, keep=None) -> Padding:
  """The padding of the pairs of documents `keep` (a predicate on the index; None: all)."""
  sel = np.ones(len(c.lengths), bool) if keep is None else np.vectorize(keep)(c.documents)
  lengths, kinds = c.lengths[sel], c.kinds[sel]
  doc_tokens = np.array([n for i, n in c.doc_tokens.items() if keep is None or keep(i)])
  pad = row - lengths
  return Padding(name, mode, len(doc_tokens), float(np.median(doc_tokens)),
                 float(doc_tokens.mean()), len(lengths), int(lengths.sum()),
                 int((kinds == 0).sum()), int(pad[kinds == 0].sum()), int((kinds == 1).sum()),
                 int(pad[kinds == 1].sum()), int(pad[kinds == 2].sum()),
                 best_fit_decreasing(lengths, row), row)


def print_table(results: list[Padding]) -> None:
  print("| corpus | mode | docs | tokens/doc (median, mean) | instances | real tokens | padding "
        "| short-target pairs | their padding | doc-end padding | other padding | packed rows "
        "(BFD) | rows saved |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in results:
    slots = r.instances * r.row
    print(f"| {r.corpus} | {r.mode} | {r.documents:,} | {r.doc_tokens_median:,.0f}, "
          f"{r.doc_tokens_mean:,.0f} | {r.instances:,} | {r.real_tokens:,} | "
          f"**{100 * r.padding:.1f}%** | {r.short_instances:,} "
          f"({100 * r.short_instances / r.instances:.1f}%) | {100 * r.short_padding / slots:.1f}% | "
          f"{100 * r.end_padding / slots:.1f}% | {100 * r.other_padding / slots:.1f}% | "
          f"{r.packed_rows:,} | {100 * (1 - r.packed_rows / r.instances):.1f}% |")
  print("(padding columns: shares of all row tokens, instances x max_seq_length; they add up to "
        "the padding)")


# ----------------------------------------------------------------------------- SQuAD and RACE

def squad_race_estimate(tokenizer, rng: np.random.Generator, n: int = 4000) -> None:
  """ESTIMATES, not measurements (no SQuAD or RACE data here): synthetic examples with published
  mean lengths, through the repository's own feature code (squad_data.convert_examples at 384,
  stride 128, max_query_length 64; race.convert_examples at 512, max_qa_length 128), padding
  read from their attention masks.

  Lengths in words: SQuAD v1.1 paragraphs ~120 words and questions ~10 words (Rajpurkar et al.
  2016); RACE passages 321.9 words (RACE-M 231.1, RACE-H 353.1), questions 10.0 and options 5.3
  words (Lai et al. 2017, arXiv:1704.04683, Table 2). 1.3 SentencePiece tokens per word (an
  assumption; English prose with a 30k vocabulary). Each length is drawn lognormal about its mean
  (sigma 0.45 for paragraphs and passages, 0.35 for questions and options: a shape assumption).
  A synthetic word is one vocabulary piece, so a text of k words is k tokens.
  """
  from albert_jax.tasks import race, squad_data

  word = next(w for w in ("the", "a", "of", "and", "to") if len(tokenizer.tokenize(w)) == 1)

  def text(mean_tokens: float, sigma: float) -> str:
    k = max(1, int(round(rng.lognormal(np.log(mean_tokens) - sigma ** 2 / 2, sigma))))
    return " ".join([word] * k)

  tpw = 1.3
  examples = [squad_data.Example(str(i), text(10 * tpw, 0.35), text(120 * tpw, 0.45), [], [])
              for i in range(n)]
  mask = squad_data.convert_examples(examples, tokenizer, 384, 128, 64,
                                     is_training=False).features["attention_mask"]
  print(f"SQuAD v1.1 at 384, stride 128 (ESTIMATE, {n} synthetic questions): "
        f"{len(mask) / n:.3f} windows per question, mean row {mask.sum(1).mean():.0f} tokens, "
        f"padding {100 * (1 - mask.mean()):.1f}%")
  for name, words in (("RACE", 321.9), ("RACE-M", 231.1), ("RACE-H", 353.1)):
    examples = [race.Example(str(i), "high", text(words * tpw, 0.45), text(10.0 * tpw, 0.35),
                             tuple(text(5.3 * tpw, 0.35) for _ in range(4)), 0)
                for i in range(n)]
    mask = race.convert_examples(examples, tokenizer, 512, 128)["attention_mask"]
    rows = mask.sum(-1)
    print(f"{name} at 512 (ESTIMATE, {n} synthetic questions, passages of {words} words): mean "
          f"row {rows.mean():.0f} tokens, padding {100 * (1 - mask.mean()):.1f}%, rows full "
          f"{100 * (rows == 512).mean():.1f}%")


# ----------------------------------------------------------------------------- main

def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--max_seq_length", type=int, default=512)
  parser.add_argument("--vocab_size", type=int, default=30000)
  parser.add_argument("--cache", default="/tmp/albert_padding",
                      help="Where the text corpus and the vocabulary are written once.")
  parser.add_argument("--max_documents", type=int, default=0,
                      help="Cut each corpus's train split to its first N documents (0: all).")
  parser.add_argument("--spm_sentences", type=int, default=60_000,
                      help="Sentences the vocabulary is trained on (a sample; 2 cores).")
  parser.add_argument("--modes", default="fixed,faithful")
  parser.add_argument("--squad_race", action="store_true")
  args = parser.parse_args()
  cache = Path(args.cache)
  start = time.monotonic()
  counts = build_text_corpus(cache / "corpus")
  text_bytes = sum(p.stat().st_size for p in (cache / "corpus").glob("*.txt"))
  print(f"Text-file corpus {cache / 'corpus'}: {text_bytes / 1e6:.1f} MB, documents {counts} "
        f"({time.monotonic() - start:.0f} s)")
  vocab = cache / f"spm{args.vocab_size}"
  if not (vocab / "spiece.model").exists():
    from albert_jax.data.train_tokenizer import train_spm
    spec = corpus.CorpusSpec.parse(str(cache / "corpus"), "")
    train_spm((s for _, doc in spec.split_documents("train") for s in doc), args.vocab_size,
              str(vocab), input_sentence_size=args.spm_sentences, hard_vocab_limit=False)
  tokenizer = AlbertTokenizer(str(vocab / "spiece.model"))
  tables = examples_lib.tokenizer_tables(tokenizer)
  print(f"Vocabulary {vocab / 'spiece.model'}: {tokenizer.vocab_size} pieces "
        f"({time.monotonic() - start:.0f} s)")
  results = []
  corpus_dir = cache / "corpus"
  for name, spec_text in (("embedded", "embedded"), ("text files", str(corpus_dir))):
    spec = corpus.CorpusSpec.parse(spec_text, "")
    stats = corpus.CorpusStats()
    docs, indices, _ = examples_lib.tokenize_split(spec, "train", tokenizer, stats)
    space_size = stats.documents
    if args.max_documents:
      docs, indices = docs[:args.max_documents], indices[:args.max_documents]
    print(f"{name}: {stats.documents} documents read, {len(docs)} with tokens in the train split, "
          f"{sum(len(s) for d in docs for s in d):,} tokens ({time.monotonic() - start:.0f} s)")
    # The text files' documents by file (the space numbers them in file order), for a row each.
    bounds, first = {}, 0
    for path in corpus.input_files(spec_text) if spec_text != "embedded" else []:
      n = corpus.CorpusStats()
      for _ in corpus.text_file_documents(path, n):
        pass
      bounds[Path(path).stem], first = (first, first + n.documents), first + n.documents
    for mode in args.modes.split(","):
      c = cut(docs, indices, space_size, tables, mode, args.max_seq_length)
      results.append(summarise(name, mode, c, args.max_seq_length))
      for stem, (lo, hi) in bounds.items():
        results.append(summarise(f"  {stem}", mode, c, args.max_seq_length,
                                 lambda i, lo=lo, hi=hi: lo <= i < hi))
  print()
  print(f"Pretraining rows at max_seq_length {args.max_seq_length} (SOP, short_seq_prob 0.1, "
        f"seed {SEED}, vocabulary {tokenizer.vocab_size}):")
  print_table(results)
  if args.squad_race:
    print()
    squad_race_estimate(tokenizer, np.random.default_rng(0))
  print(f"\n({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
  main()
