"""Pinned pretraining batches: a sha256 of the first global batches (and the batches across the
end of epoch 0, the eval batches, each process's rows, the stream record and the stats) of every
pretraining source and masking mode.

  python tests/batch_hashes.py --write      # recompute tests/data/batch_hashes.json

The reference was computed on the code before issue 19's data protocol (commit c4d7640, where a
source was a 4-tuple), with both Python tiers (.venv and venv312), and
tests/test_input_pipeline.py::test_batches_are_the_pinned_ones checks the code of today against
it. It uses only the pipeline's public functions (train_iterator, eval_batches, prepare.run,
create_pretraining_data.run), which both sides of that change share, so the same script ran on
both. `--write` keeps the hashes of an embedded corpus it did not compute (another Python's).

The corpus is synthetic (pseudo-words from a seeded NumPy generator) and the vocabulary is
tests/data/pipeline/spiece.model (`--vocabulary` trained it on that corpus once), so the hashes
do not depend on the Python version; the embedded corpus does (its text is the standard
library's documentation), so its cases are kept per `embedded.fingerprint()`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from albert_jax.data import corpus, embedded, examples, input_pipeline  # noqa: E402
from albert_jax.data.tokenizer import AlbertTokenizer  # noqa: E402

REFERENCE = REPO / "tests" / "data" / "batch_hashes.json"
VOCABULARY = REPO / "tests" / "data" / "pipeline" / "spiece.model"
SEQ = 64
BATCH = 16
TAKE = 3  # global batches from the start
SYLLABLES = ("ka lo mi ne ru sa ti vo be da fe gi hu jo ko la me ni po qu re si to un ve wa xi "
             "yo ze an er in on st tr").split()

# name: (what the data config changes, seed, global batch size, process count)
CASES = {
    "files-dynamic": (dict(source="files"), 0, BATCH, 1),
    "files-dynamic-faithful": (dict(source="files", mode="faithful"), 0, BATCH, 1),
    "files-dynamic-nsp": (dict(source="files", random_next_sentence=True), 1, BATCH, 1),
    "files-dynamic-3-processes": (dict(source="files"), 0, 96, 3),
    "files-static": (dict(source="files", masking="static", dupe_factor=2), 0, BATCH, 1),
    "files-static-faithful": (dict(source="files", masking="static", dupe_factor=1,
                                   mode="faithful"), 2, BATCH, 1),
    "files-static-2-processes": (dict(source="files", masking="static", dupe_factor=1), 0, 12, 2),
    "tfds-dynamic": (dict(source="tfds"), 0, BATCH, 1),
    "tfds-static": (dict(source="tfds", masking="static", dupe_factor=1), 0, BATCH, 1),
    "prepared-dynamic": (dict(source="prepared"), 0, BATCH, 1),
    "prepared-dynamic-seed-3": (dict(source="prepared"), 3, BATCH, 1),  # pairs cut with 0
    "prepared-dynamic-2-processes": (dict(source="prepared"), 0, 32, 2),
    "static-examples-array-record": (dict(source="files", static_examples="array_record"), 0,
                                     BATCH, 1),
    "static-examples-jsonl": (dict(source="files", static_examples="jsonl"), 0, BATCH, 1),
    "static-examples-2-processes": (dict(source="files", static_examples="array_record"), 0, 12,
                                    2),
    "embedded-dynamic": (dict(source="embedded"), 0, BATCH, 1),
    "embedded-static": (dict(source="embedded", masking="static", dupe_factor=1), 0, BATCH, 1),
}


def documents(n: int = 240, seed: int = 0) -> list[list[str]]:
  """`n` documents of pseudo-word sentences: words of 1-4 syllables with Zipf frequencies (so
  many are several pieces of a small vocabulary), some one-sentence documents and a one-word
  sentence (the fixed mode's split and drop)."""
  rng = np.random.default_rng(seed)
  words = sorted({"".join(rng.choice(SYLLABLES, size=int(rng.integers(1, 5))))
                  for _ in range(3000)})
  p = 1.0 / np.arange(1, len(words) + 1)
  p /= p.sum()
  order = rng.permutation(len(words))
  docs = []
  for d in range(n):
    sentences = []
    for _ in range(1 if d % 17 == 0 else int(rng.integers(2, 12))):
      k = 1 if d == 0 else int(rng.integers(3, 25))
      text = " ".join(words[i] for i in order[rng.choice(len(words), size=k, p=p)])
      if k > 6 and rng.random() < 0.3:
        cut = int(rng.integers(2, k - 2))
        parts = text.split(" ")
        text = " ".join(parts[:cut]) + ", " + " ".join(parts[cut:])
      sentences.append(text[0].upper() + text[1:] + ".")
    docs.append(sentences)
  return docs


def write_corpus(root: Path) -> str:
  """The synthetic corpus as two text files under root/text; their glob."""
  docs = documents()
  (root / "text").mkdir(parents=True, exist_ok=True)
  for name, part in (("a.txt", docs[:120]), ("b.txt", docs[120:])):
    (root / "text" / name).write_text("\n\n".join("\n".join(d) for d in part) + "\n")
  return f"{root}/text/*.txt"


@contextlib.contextmanager
def mock_tfds():
  """TFDS's `data_source` answering every split with the synthetic corpus, one example per
  document (its sentences one per line)."""
  import tensorflow_datasets as tfds
  texts = [{"text": "\n".join(d)} for d in documents()]

  def data_source(builder, split, **kwargs):
    del builder, kwargs
    assert split == "train", split
    return texts

  with tfds.testing.mock_data(as_data_source_fn=data_source):
    yield


def batch_hash(batch: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for key in sorted(batch):
    value = np.ascontiguousarray(batch[key])
    h.update(f"{key} {value.dtype.str} {value.shape}\n".encode())
    h.update(value.tobytes())
  return h.hexdigest()[:24]


class Workdir:
  """The corpus, and the prepared corpus and static-example files made from it on first use."""

  def __init__(self, root: Path):
    self.root = root
    self.files = write_corpus(root)
    self._made: dict[str, str] = {}

  def prepared(self) -> str:
    if "prepared" not in self._made:
      from albert_jax.data import prepare
      out = str(self.root / "prepared")
      prepare.run(corpus.CorpusSpec.parse(self.files), str(VOCABULARY), out,
                  config=examples.ExampleConfig(max_seq_length=SEQ), seed=0, unit_bytes=20_000)
      self._made["prepared"] = out
    return self._made["prepared"]

  def static_examples(self, fmt: str) -> str:
    if fmt not in self._made:
      from albert_jax.data import create_pretraining_data as cpd
      out = str(self.root / f"static.{fmt}")
      cpd.run(self.files, str(VOCABULARY), out,
              config=input_pipeline.example_config(self.config({})), seed=3, dupe_factor=2)
      self._made[fmt] = out
    return self._made[fmt]

  def config(self, changes: dict) -> ml_collections.ConfigDict:
    changes = dict(changes)
    if "static_examples" in changes:
      changes["static_examples"] = self.static_examples(changes["static_examples"])
    if changes.get("source") == "prepared":
      changes["prepared"] = self.prepared()
    return ml_collections.ConfigDict({
        **input_pipeline.default_data_config().to_dict(), "files": self.files,
        "tfds_name": "squad", "max_seq_length": SEQ, "prefetch": 0, "eval_batches": 3,
        **changes})


def compute(name: str, work: Workdir) -> dict:
  """The pinned values of one case: the stream record and stats, the hashes of global batches
  0..TAKE-1 and of the two after the end of epoch 0 (each process's rows, in process order), and
  of the eval batches (pairs cut with the seed, shuffled and masked with seed + 1)."""
  changes, seed, batch, processes = CASES[name]
  cfg = work.config(changes)
  tok = AlbertTokenizer(str(VOCABULARY))
  with mock_tfds() if cfg.source == "tfds" else contextlib.nullcontext():
    its = [input_pipeline.train_iterator(cfg, tok, global_batch_size=batch, seed=seed,
                                         process_index=p, process_count=processes)
           for p in range(processes)]
    evals = [input_pipeline.eval_batches(cfg, tok, global_batch_size=batch, seed=seed + 1,
                                         pair_seed=seed, process_index=p,
                                         process_count=processes) for p in range(processes)]
  state = its[0].get_state()
  end = int(its[0].stats["batches_per_epoch"])  # the batch that crosses into epoch 1
  hashes = {"start": [[batch_hash(next(it)) for it in its] for _ in range(TAKE)]}
  for it in its:
    it.set_state({**state, "next_batch": end})
  hashes["epoch_end"] = [[batch_hash(next(it)) for it in its] for _ in range(2)]
  hashes["eval"] = [[batch_hash(e[g]) for e in evals] for g in range(len(evals[0]))]
  return {"stream": json.loads(json.dumps(state["stream"], sort_keys=True)),
          "stats": json.loads(json.dumps(its[0].stats, sort_keys=True)), "batches": hashes}


def reference_of(name: str, reference: dict) -> dict | None:
  """The pinned values of `name` for this Python (None: an embedded corpus not pinned)."""
  if name.startswith("embedded"):
    return reference["embedded"].get(embedded.fingerprint(), {}).get(name)
  return reference["cases"].get(name)


def train_vocabulary() -> None:
  from albert_jax.data.train_tokenizer import train_spm
  with tempfile.TemporaryDirectory() as tmp:
    model = train_spm([s for d in documents() for s in d], 400, tmp, num_threads=1,
                      model_type="bpe", normalization_rule_name="identity")
    VOCABULARY.parent.mkdir(parents=True, exist_ok=True)
    VOCABULARY.write_bytes(Path(model).read_bytes())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", action="store_true", help=f"write {REFERENCE}")
  parser.add_argument("--vocabulary", action="store_true", help=f"train {VOCABULARY} first")
  parser.add_argument("--cases", default="", help="comma list (default: all)")
  args = parser.parse_args()
  if args.vocabulary:
    train_vocabulary()
  names = args.cases.split(",") if args.cases else list(CASES)
  reference = (json.loads(REFERENCE.read_text()) if REFERENCE.is_file()
               else {"cases": {}, "embedded": {}})
  with tempfile.TemporaryDirectory() as tmp:
    work = Workdir(Path(tmp))
    for name in names:
      values = compute(name, work)
      pinned = reference_of(name, reference)
      print(f"{name}: {'new' if pinned is None else 'same' if pinned == values else 'DIFFERENT'}",
            flush=True)
      if name.startswith("embedded"):
        reference["embedded"].setdefault(embedded.fingerprint(), {})[name] = values
      else:
        reference["cases"][name] = values
  if args.write:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
