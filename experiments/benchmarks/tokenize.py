"""Corpus tokenization: `AlbertTokenizer.ids_raw` (what pretraining's pipeline and `prepare` call)
against the piece by piece way it replaced (with today's `preprocess_text`) and transformers' slow
AlbertTokenizer, on the embedded corpus, ids checked equal.

    python -m experiments.benchmarks.tokenize [--vocab_size=8000] [--repeats=3]

A vocabulary of --vocab_size pieces is trained on the embedded corpus (the standard library's
documentation, ~25k sentences, 2 MB); each way tokenizes every sentence as corpus text ("[MASK]"
written in it stays text), best of --repeats. The machine's load is printed beside the figures.
"""

import argparse
import os
import tempfile
import time

from albert_jax.data import corpus
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm


def best_of(repeats, fn):
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import transformers  # the peer; a test-only dependency
  documents = list(corpus.read_documents("embedded"))
  sentences = [s for doc in documents for s in doc]
  with tempfile.TemporaryDirectory() as tmp:
    vocab = str(train_spm(sentences, args.vocab_size, tmp, spm_log_level=2))
    ours, peer = AlbertTokenizer(vocab), transformers.AlbertTokenizer(vocab_file=vocab)
    ways = {
        "ids_raw (now)": lambda: [ours.ids_raw(doc) for doc in documents],
        "tokenize_raw + convert_tokens_to_ids (piece by piece)": lambda: [
            [ours.convert_tokens_to_ids(ours.tokenize_raw(s)) for s in doc] for doc in documents],
        "transformers.AlbertTokenizer (slow, split_special_tokens)": lambda: [
            [peer.convert_tokens_to_ids(peer.tokenize(s, split_special_tokens=True)) for s in doc]
            for doc in documents],
    }
    print(f"{len(documents)} documents, {len(sentences)} sentences, "
          f"{sum(map(len, sentences)) / 1e6:.2f} M characters, vocabulary {args.vocab_size}; "
          f"load {os.getloadavg()[0]:.1f}")
    results = {name: best_of(args.repeats, fn) for name, fn in ways.items()}
  first, reference = next(iter(results.values()))
  tokens = sum(len(ids) for doc in reference for ids in doc)
  for name, (seconds, ids) in results.items():
    assert ids == reference, f"{name} gives other ids than ids_raw"
    print(f"{name:58s} {seconds:6.2f} s  {len(sentences) / seconds:9.0f} sentences/s  "
          f"{tokens / seconds / 1e3:7.0f}k tokens/s  ids_raw {seconds / first:4.1f}x faster")
  print(f"load {os.getloadavg()[0]:.1f}; every way gave the same {tokens} ids")


if __name__ == "__main__":
  main()
