"""The pretraining input pipeline on Grain: corpus, vocabulary, segment pairs, and per-host batches,
shuffled globally, masked dynamically (or read pre-masked), resumable from a one-number state.

  data_cfg = default_data_config()                      # config.data of configs/pretrain.py
  tokenizer = build_tokenizer(data_cfg, workdir)        # trains WORKDIR/spiece.model once
  train = train_iterator(data_cfg, tokenizer, global_batch_size=4096, seed=0)
  batch = next(train)                                   # this host's rows, numpy
  state = train.get_state()             # {"next_batch": 1, "stream": {...}}: store with the step
  evals = eval_batches(data_cfg, tokenizer, global_batch_size=4096, seed=0)

Global batch g holds positions g*B .. (g+1)*B - 1 of an endless stream of examples: epoch e is every
example once, in a permutation drawn from (seed, e). A batch is a pure function of g (an element of
a Grain MapDataset, made in a thread or in Grain worker processes), so the stream is the same for
any `num_workers`, and process p of P takes rows [p*B/P, (p+1)*B/P). Dynamic masking masks
sources.MASK_CHUNK rows at a time with a Generator seeded from (seed, epoch, g, chunk): a host
masks only the chunks holding its rows, and no mask depends on the process count. Segment pairs
are cut once, each document's from (seed, its index in the corpus); masks are fresh every epoch.

Where the pairs come from (`data.source`): "files", "tfds" or "embedded" read, tokenize and cut the
corpus in every process at start (memory and start-up grow with the corpus); "prepared" reads the
pairs `python -m albert_jax.data.prepare` cut (data/prepared.py) by index, in constant start-up
and memory. Both give the same pairs for the same corpus, vocabulary and seed, so the same batches.
`get_state()` is {"next_batch": g, "stream": {...}}: g, and what decides the stream (seed, batch,
lengths, masking, source, fingerprints of the corpus and the vocabulary);
`set_state` refuses a different stream (order.StreamChanged) unless allowed
(config.allow_data_change).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any, Iterator, NamedTuple

import grain
import ml_collections
import numpy as np
from absl import flags

from albert_jax import files
from albert_jax.data import corpus, examples as examples_lib, order, prepared as prepared_lib
from albert_jax.data import records as records_lib, sources
from albert_jax.data.pairs import PairTable
from albert_jax.data.sources import Batch
from albert_jax.data.tokenizer import VOCAB_FILE, AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm

log = logging.getLogger(__name__)

SOURCES = ("embedded", "files", "tfds", "prepared")
MASKINGS = ("dynamic", "static")
SPM_WAIT_SECONDS = 3 * 3600  # how long other processes wait for process 0's vocabulary


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data`: the corpus, the vocabulary, how pairs are cut and masked, and the loader."""
  return ml_collections.ConfigDict(dict(
      source="embedded",  # "embedded" | "files" | "tfds" | "prepared"
      prepared="",  # a directory of `python -m albert_jax.data.prepare` (source "prepared")
      files="",  # comma list of text files, globs or directories (source "files")
      eval_files="",  # "": hold out corpus.HOLDOUT_PERCENT% of the documents of `files`
      tfds_name="",  # e.g. "wikipedia/20230601.en" (source "tfds")
      tfds_feature="text",
      tfds_data_dir="",
      tfds_eval_split="",  # "": hold out documents of the "train" split
      vocab_size=30000,
      max_seq_length=512,
      max_predictions_per_seq=ml_collections.config_dict.placeholder(int),  # None: 0.15 * length
      masked_lm_prob=0.15,
      short_seq_prob=0.1,
      ngram=3,
      favor_shorter_ngram=True,
      random_next_sentence=False,
      mode="fixed",  # "fixed" | "faithful" (data/examples.py)
      masking="dynamic",  # "dynamic": fresh masks each epoch | "static": dupe_factor copies
      dupe_factor=10,  # masking "static" on a corpus: copies masked once, held in memory
      static_examples="",  # create_pretraining_data.py output: train on it (needs spm_model)
      num_workers=0,  # 0: batches made in a thread of this process; N: N worker processes
      prefetch=2,  # batches buffered ahead
      eval_batches=8,
      pack=False,  # several pairs to a row (data/packed_pairs.py); training batches only
      pack_rows=0,  # rows a global batch; 0: sized from the stream's first batches
      pack_max_examples=0,  # pairs a row at most; 0: as the sizing batches need
  ))


def example_config(data_cfg: ml_collections.ConfigDict) -> examples_lib.ExampleConfig:
  """The pair-cutting and masking settings of `data_cfg`."""
  return examples_lib.ExampleConfig(
      max_seq_length=data_cfg.max_seq_length, short_seq_prob=data_cfg.short_seq_prob,
      random_next_sentence=data_cfg.random_next_sentence, masked_lm_prob=data_cfg.masked_lm_prob,
      max_predictions_per_seq=data_cfg.max_predictions_per_seq or None, ngram=data_cfg.ngram,
      favor_shorter_ngram=data_cfg.favor_shorter_ngram, mode=data_cfg.mode)


# ----------------------------------------------------------------------------- corpus, vocabulary

def corpus_spec(data_cfg: ml_collections.ConfigDict) -> corpus.CorpusSpec:
  """The corpus `data_cfg` names (sources "files", "tfds", "embedded")."""
  if data_cfg.source not in SOURCES:
    raise ValueError(f"data.source={data_cfg.source!r}: use one of {SOURCES}")
  if data_cfg.source == "prepared":
    raise ValueError("data.source='prepared' reads pairs, not documents")
  spec = corpus.CorpusSpec(data_cfg.source, files=data_cfg.files, eval_files=data_cfg.eval_files,
                           tfds_name=data_cfg.tfds_name, tfds_feature=data_cfg.tfds_feature,
                           tfds_data_dir=data_cfg.tfds_data_dir,
                           tfds_eval_split=data_cfg.tfds_eval_split)
  for names in (spec.files, spec.eval_files):
    if spec.source == "files" and names:
      corpus.input_files(names)  # a missing file fails here, not at the first batch
  return spec


def read_documents(data_cfg: ml_collections.ConfigDict, split: str,
                   stats: corpus.CorpusStats | None = None) -> Iterator[corpus.Document]:
  """Text documents of the "train" or "eval" split of `data_cfg`'s corpus (eval never in train)."""
  spec = corpus_spec(data_cfg)
  return (doc for _, doc in spec.split_documents(split, stats))


def build_tokenizer(data_cfg: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                    process_index: int | None = None,
                    timeout_s: float = SPM_WAIT_SECONDS) -> AlbertTokenizer:
  """The tokenizer of WORKDIR/spiece.model, which process 0 trains on the training corpus's
  sentences (`data_cfg.vocab_size` pieces) when it is missing, while the other processes wait."""
  if data_cfg.static_examples:
    raise ValueError("data.static_examples needs config.spm_model: the vocabulary they were made "
                     "with")
  if data_cfg.source == "prepared":
    return prepared_vocabulary(data_cfg)
  path = files.path(workdir) / VOCAB_FILE
  if not path.is_file():
    if process_index is None:
      import jax  # here: the data code does not otherwise need JAX
      process_index = jax.process_index()
    if process_index == 0:
      log.info("Training a %d-piece vocabulary on the training corpus into %s",
               data_cfg.vocab_size, path)
      # train_spm writes spiece.model last and atomically: its presence means the set is whole.
      train_spm((s for doc in read_documents(data_cfg, "train") for s in doc),
                data_cfg.vocab_size, str(workdir))
    else:
      deadline = time.monotonic() + timeout_s
      while not path.is_file():
        if time.monotonic() > deadline:
          raise TimeoutError(f"Process {process_index} waited {timeout_s:.0f} s for process 0 to "
                             f"write {path}; did it fail?")
        time.sleep(min(5.0, timeout_s / 10))
  return AlbertTokenizer(path)


def _prepared_manifest(data_cfg: ml_collections.ConfigDict) -> dict:
  if not data_cfg.prepared:
    raise ValueError("data.source='prepared' needs data.prepared (a directory written by "
                     "`python -m albert_jax.data.prepare`)")
  return prepared_lib.load_manifest(data_cfg.prepared)


def prepared_vocabulary(data_cfg: ml_collections.ConfigDict) -> AlbertTokenizer:
  """The vocabulary a prepared corpus was cut with (DIR/spiece.model)."""
  manifest = _prepared_manifest(data_cfg)
  return AlbertTokenizer(files.path(data_cfg.prepared) / prepared_lib.VOCAB_FILE,
                         do_lower_case=manifest["do_lower_case"])


# ----------------------------------------------------------------------------- examples

class _Split(NamedTuple):
  """A split's examples; what was read to make them (for the log); what they are made from (for
  the stream record)."""

  examples: sources.Examples
  stats: dict[str, Any]
  fingerprints: dict[str, Any]


def _examples(data_cfg, tokenizer, split: str, pair_seed: int) -> _Split:
  """The examples of `split`, from where `data_cfg` says they come: a create_pretraining_data
  file (training only), a prepared corpus, or a corpus cut here."""
  config = example_config(data_cfg)
  vocabulary = prepared_lib.vocabulary_fingerprint(tokenizer)
  if split == "train" and data_cfg.static_examples:
    return _static_file(data_cfg.static_examples, config, vocabulary)
  if data_cfg.source == "prepared":
    return _prepared(data_cfg, tokenizer, split, config, vocabulary)
  return _corpus(data_cfg, tokenizer, split, pair_seed, config, vocabulary)


def _static_file(path: str, config: examples_lib.ExampleConfig, vocabulary: str) -> _Split:
  """The pre-masked examples of a create_pretraining_data file, with what it recorded of them."""
  examples = sources.Premasked.open(path, config)
  recorded = records_lib.read_stats(path)
  return _Split(examples, {"corpus": recorded.get("corpus"), "pairs": recorded.get("pairs"),
                           "examples_per_epoch": len(examples)},
                {"static_examples": corpus.files_fingerprint(path),
                 "vocabulary": recorded.get("vocabulary", vocabulary)})


def _corpus(data_cfg, tokenizer, split, pair_seed, config, vocabulary) -> _Split:
  """A split of the corpus read, tokenized and cut into pairs here: masked as they are read, or
  (static masking, training) `dupe_factor` copies masked now."""
  spec = corpus_spec(data_cfg)
  corpus_stats, pair_stats = corpus.CorpusStats(), examples_lib.PairStats()
  docs, indices, fingerprint = examples_lib.tokenize_split(spec, split, tokenizer, corpus_stats)
  space_size = corpus_stats.documents  # every document of the split's space was read
  if not docs:
    raise ValueError(f"The {split} split of data.source={data_cfg.source!r} has no document with "
                     "text")
  tables = examples_lib.tokenizer_tables(tokenizer)
  if split == "train" and data_cfg.masking == "static":
    examples = sources.Premasked(records_lib.create_examples(
        docs, tables, config, pair_seed, data_cfg.dupe_factor, pair_stats, indices=indices,
        space_size=space_size))
  else:
    examples = sources.MaskedPairs(PairTable.pack(examples_lib.make_segment_pairs(
        docs, [pair_seed, 0], config, indices=indices, space_size=space_size,
        word_start=tables.word_start, stats=pair_stats)), tables, config)
  if not len(examples):
    raise ValueError(f"The {split} split of data.source={data_cfg.source!r} gave no example")
  return _Split(examples, {"corpus": corpus_stats.as_dict(), "documents": len(docs),
                           "pairs": dataclasses.asdict(pair_stats),
                           "examples_per_epoch": len(examples)},
                {"corpus": fingerprint, "vocabulary": vocabulary})


def _prepared(data_cfg, tokenizer, split, config, vocabulary) -> _Split:
  """The pairs of a prepared directory, masked as they are read, after checking it was cut as
  `data_cfg` would cut it."""
  manifest = _prepared_manifest(data_cfg)
  if data_cfg.masking != "dynamic":
    raise ValueError("data.source='prepared' masks dynamically: set data.masking='dynamic' (for "
                     "static masks use create_pretraining_data.py and data.static_examples)")
  prepared_lib.check_settings(manifest, config, data_cfg.prepared)
  if manifest["vocabulary"] != vocabulary:
    raise ValueError(f"{data_cfg.prepared} was cut with another vocabulary than the job's "
                     f"(fingerprint {manifest['vocabulary'][:12]}..., the job's {vocabulary[:12]}"
                     f"...): leave config.spm_model empty to use {prepared_lib.VOCAB_FILE} there")
  pairs = prepared_lib.PairSource(data_cfg.prepared, split, manifest)
  if not len(pairs):
    raise ValueError(f"{data_cfg.prepared} holds no {split} pair")
  prepared_lib.check_shards(data_cfg.prepared, manifest, split)  # before step 1, in seconds
  info = manifest["splits"][split]
  return _Split(sources.MaskedPairs(pairs, examples_lib.tokenizer_tables(tokenizer), config), {
      "corpus": info["corpus"], "documents": info["documents"], "pairs": info["pair_stats"],
      "examples_per_epoch": len(pairs)}, {
      "corpus": info["fingerprint"], "vocabulary": vocabulary,
      "prepared": manifest["fingerprint"], "pair_seed": manifest["settings"]["seed"],
      "prepared_shards": prepared_lib.stream_shards(manifest, split)})


def _batches(data_cfg, tokenizer, split, global_batch_size, seed, process_index, process_count,
             pair_seed=None):
  """(MapDataset of per-host batches by global batch index, stats, stream). Pairs are cut with
  `pair_seed` (default `seed`; a prepared corpus's own seed), ordered and masked with `seed`."""
  if data_cfg.source not in SOURCES:
    raise ValueError(f"data.source={data_cfg.source!r}: use one of {SOURCES}")
  if data_cfg.masking not in MASKINGS:
    raise ValueError(f"data.masking={data_cfg.masking!r}: use one of {MASKINGS}")
  if data_cfg.masking == "static" and data_cfg.dupe_factor < 1:
    raise ValueError(f"data.dupe_factor={data_cfg.dupe_factor}: static masking needs 1 or more")
  pair_seed = seed if pair_seed is None else pair_seed
  for name, value in (("seed", seed), ("pair_seed", pair_seed)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name}={value!r}: use an integer >= 0")
  if process_index is None or process_count is None:
    import jax  # here: the data code does not otherwise need JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} does not split into {process_count} "
                     "equal per-process batches")
  per_host = global_batch_size // process_count
  config = example_config(data_cfg)
  examples, stats, fingerprints = _examples(data_cfg, tokenizer, split, pair_seed)
  make = functools.partial(examples.rows, batch_size=global_batch_size,
                           rows=(process_index * per_host, (process_index + 1) * per_host),
                           seed=seed)
  stats.update(split=split, masking=examples.masking, global_batch_size=global_batch_size,
               per_host_batch_size=per_host, batches_per_epoch=len(examples) / global_batch_size)
  # What decides the stream, flat and JSON: a resume that changes one of these changes the data.
  stream = {"source": data_cfg.source, "seed": int(seed), "pair_seed": int(pair_seed),
            "global_batch_size": int(global_batch_size), "max_seq_length": config.max_seq_length,
            "max_predictions": config.max_predictions, "masked_lm_prob": config.masked_lm_prob,
            "short_seq_prob": config.short_seq_prob, "ngram": config.ngram,
            "favor_shorter_ngram": config.favor_shorter_ngram,
            "random_next_sentence": config.random_next_sentence, "mode": config.mode,
            "masking": examples.masking, **fingerprints}
  if split == "train" and data_cfg.masking == "static" and not data_cfg.static_examples:
    stream["dupe_factor"] = int(data_cfg.dupe_factor)
  return grain.MapDataset.range(sys.maxsize).map(make), stats, stream


# ----------------------------------------------------------------------------- iterators

class BatchIterator(grain.DatasetIterator):
  """Endless per-host batches. The state is the index of the next global batch, so it restores
  whatever the worker count (and a run on more or fewer hosts gets the same global batches), and
  the stream it indexes (`stream_spec`), checked on restore."""

  def __init__(self, batches: grain.MapDataset, *, num_workers: int, prefetch: int,
               stats: dict[str, Any], stream: dict[str, Any] | None = None,
               allow_change: bool = False):
    super().__init__()
    self._batches = batches  # element g: this host's rows of global batch g
    self._num_workers, self._prefetch = num_workers, prefetch
    # What decides the stream, saved with the position: in the form a checkpoint reads back, so
    # get_state() is the same before a save and after a restore.
    self.stream, self._allow_change = order.canonical(stream or {}), allow_change
    self._next = 0
    self._it = None
    self.stats = stats  # corpus and pair counts, examples per epoch: for the trainer's log

  def _iterator(self) -> grain.DatasetIterator:
    if self._it is None:
      threads = 1 if self._prefetch and not self._num_workers else 0
      ds = self._batches[self._next:].to_iter_dataset(
          grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self._prefetch * threads))
      if self._num_workers:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags (google/grain#1355)
          flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self._num_workers,
            per_worker_buffer_size=max(1, -(-self._prefetch // self._num_workers))))
      self._it = iter(ds)
    return self._it

  def __next__(self) -> Batch:
    self._assert_not_closed()
    batch = next(self._iterator())
    self._next += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next, "stream": dict(self.stream)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues at state["next_batch"]; order.StreamChanged if state["stream"] differs."""
    next_batch = order.resume_position(state, self.stream, allow_change=self._allow_change)
    self._close_workers()
    self._next = next_batch

  def start_prefetch(self) -> None:
    self._iterator().start_prefetch()

  def _close_workers(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def close(self) -> None:
    self._close_workers()
    super().close()


def train_iterator(data_cfg: ml_collections.ConfigDict, tokenizer: AlbertTokenizer, *,
                   global_batch_size: int, seed: int, process_index: int | None = None,
                   process_count: int | None = None,
                   allow_change: bool = False) -> BatchIterator:
  """This process's rows of every global training batch, endlessly (`.stats` for the log).

  Process p of P (default: JAX's) gets rows [p*B/P, (p+1)*B/P) of global batch g, which does not
  depend on P or `num_workers`. `get_state()`/`set_state()` resume exactly; `set_state` refuses
  a state whose stream differs from this one's unless `allow_change`.
  """
  if data_cfg.num_workers < 0 or data_cfg.prefetch < 0:
    raise ValueError(f"data.num_workers={data_cfg.num_workers}, data.prefetch={data_cfg.prefetch}"
                     ": use 0 or more")
  batches, stats, stream = _batches(data_cfg, tokenizer, "train", global_batch_size, seed,
                                    process_index, process_count, _pair_seed(data_cfg, seed))
  log.info("Training data: %s", json.dumps(stats))
  return BatchIterator(batches, num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch,
                       stats=stats, stream=stream, allow_change=allow_change)


def _pair_seed(data_cfg, seed: int) -> int:
  """Pairs are cut with the job's seed, or for a prepared corpus with the seed it was cut with."""
  if data_cfg.source == "prepared" and data_cfg.prepared and not data_cfg.static_examples:
    pair_seed = prepared_lib.load_manifest(data_cfg.prepared)["settings"]["seed"]
    if pair_seed != seed:
      log.info("Pairs of %s were cut with seed %d; order and masks use seed %d",
               data_cfg.prepared, pair_seed, seed)
    return pair_seed
  return seed


def eval_batches(data_cfg: ml_collections.ConfigDict, tokenizer: AlbertTokenizer, *,
                 global_batch_size: int, seed: int, process_index: int | None = None,
                 process_count: int | None = None, pair_seed: int | None = None) -> list[Batch]:
  """`data_cfg.eval_batches` per-host batches of held-out documents with fixed masks: the same
  every call, so eval metrics compare across steps. Past one epoch of the eval set the examples
  come again, reshuffled and masked anew. Pairs are cut with `pair_seed` (default `seed`; the
  pretraining task passes the training seed, as `prepare` cuts both splits with one seed),
  shuffled and masked with `seed`."""
  if data_cfg.eval_batches <= 0:
    return []
  pair_seed = _pair_seed(data_cfg, seed if pair_seed is None else pair_seed)
  batches, stats, _ = _batches(data_cfg, tokenizer, "eval", global_batch_size, seed,
                               process_index, process_count, pair_seed)
  if data_cfg.eval_batches * global_batch_size > stats["examples_per_epoch"]:
    log.warning("Eval: %d batches of %d from %d examples; some come twice with other masks",
                data_cfg.eval_batches, global_batch_size, stats["examples_per_epoch"])
  return [batches[g] for g in range(data_cfg.eval_batches)]
