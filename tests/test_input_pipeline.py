"""The Grain input pipeline: shapes, determinism, exact resume, rows per process, masks per epoch,
the held-out eval set, the cached vocabulary, pre-masked files, worker processes, config errors."""

import collections
import json
import shutil

import grain
import ml_collections
import numpy as np
import pytest

from albert_jax.data import corpus, embedded, examples, input_pipeline, order
from albert_jax.tasks import pretraining
from albert_jax.data import create_pretraining_data as cpd, records
from albert_jax.data.masking import FEATURE_NAMES
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm

import batch_hashes

SEQ = 64  # max_predictions: 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """Two text files of ~240 documents (the embedded eval split cut into 8-sentence documents) and
  a 500-piece SentencePiece model trained on them."""
  root = tmp_path_factory.mktemp("pipeline")
  docs = [d[i:i + 8] for d in corpus.embedded_documents("eval") for i in range(0, len(d), 8)]
  (root / "text").mkdir()
  for name, part in (("a.txt", docs[:120]), ("b.txt", docs[120:])):
    (root / "text" / name).write_text("\n\n".join("\n".join(d) for d in part) + "\n")
  model = train_spm([s for d in docs for s in d], 500, root / "spm")
  return root, str(model)


def _cfg(tiny, **overrides):
  root, model = tiny
  return ml_collections.ConfigDict({
      **input_pipeline.default_data_config().to_dict(), "source": "files", "files": f"{root}/text/*.txt",
      "spm_model": model, "max_seq_length": SEQ, "prefetch": 0, "eval_batches": 3, **overrides})


def _iter(cfg, batch, seed=0, p=0, n=1):
  return input_pipeline.train_iterator(cfg, AlbertTokenizer(cfg.spm_model), global_batch_size=batch,
                           seed=seed, process_index=p, process_count=n)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _rows(batches):
  """Every row of `batches` as a dict of arrays."""
  return [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]


def _original(row):
  """The row's tokens before masking (with its label): which pair it is, whatever the masks."""
  ids = row["input_ids"].copy()
  n = int(row["masked_lm_weights"].sum())
  ids[row["masked_lm_positions"][:n]] = row["masked_lm_ids"][:n]
  return ids.tobytes() + bytes([int(row["sentence_order_label"])])


def test_batches_shapes_and_seeds(tiny):
  cfg = _cfg(tiny)
  first = _take(_iter(cfg, 8), 3)
  assert {k: (v.shape, v.dtype) for k, v in first[0].items()} == {
      **{k: ((8, SEQ), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")},
      **{k: ((8, 10), np.int32) for k in ("masked_lm_positions", "masked_lm_ids")},
      "masked_lm_weights": ((8, 10), np.float32), "sentence_order_label": ((8,), np.int32)}
  tok = AlbertTokenizer(cfg.spm_model)
  assert (first[0]["input_ids"][:, 0] == tok.cls_token_id).all()
  # The original's budget per row: max(1, round(0.15 * tokens incl. [CLS]/[SEP])); whole-word
  # n-grams that overflow it are skipped, so a short row of multi-piece words can get none.
  for b in first:
    budget = np.maximum(1, np.round(0.15 * b["attention_mask"].sum(1)))
    assert (b["masked_lm_weights"].sum(1) <= budget).all() and b["masked_lm_weights"].sum() > 0
  assert _same(first, _take(_iter(cfg, 8), 3))
  other = _take(_iter(cfg, 8, seed=1), 3)
  assert not any(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))
  stats = _iter(cfg, 8).stats
  assert stats["examples_per_epoch"] == stats["pairs"]["pairs"] > 300
  assert stats["corpus"]["files"] == 2 and stats["masking"] == "dynamic"


def test_resume_is_exact_across_epochs(tiny):
  cfg = _cfg(tiny, prefetch=2)
  it = _iter(cfg, 16)
  per_epoch = it.stats["batches_per_epoch"]
  stop = int(per_epoch) + 4
  run = _take(it, stop)
  # Epoch 0 is every pair once: the first N rows are N different pairs.
  n = it.stats["examples_per_epoch"]
  assert len({_original(r) for r in _rows(run)[:n]}) >= 0.98 * n  # (a few texts repeat)
  interrupted = _iter(cfg, 16)
  _take(interrupted, 3)
  states = {3: interrupted.get_state()}
  states.update({k: {**states[3], "next_batch": k} for k in (int(per_epoch) - 1, int(per_epoch) + 1)})
  for k, state in states.items():  # the last two batches cross the end of epoch 0
    fresh = _iter(cfg, 16)
    fresh.set_state(json.loads(json.dumps(state)))
    assert _same(_take(fresh, 3), run[k:k + 3])
  # set_state on a running iterator, backwards.
  it.set_state({**states[3], "next_batch": 2})
  assert _same(_take(it, 2), run[2:4]) and it.get_state()["next_batch"] == 4


def test_orbax_saves_and_restores_the_state(tiny, tmp_path):
  """The way the trainer stores it: Grain's Orbax handler, next to the train state."""
  import orbax.checkpoint as ocp
  cfg = _cfg(tiny)
  it = _iter(cfg, 8)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 2)
    restored = _iter(cfg, 8)
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert restored.get_state() == {"next_batch": 3, "stream": it.stream}
  assert _same(_take(restored, 2), expected)


def test_the_state_is_what_a_checkpoint_reads_back():
  """get_state() holds the stream as JSON gives it back (tuples as lists), so the state is the
  same before a save and after a restore, and the iterator's own: the caller's dict may change."""
  stream = {"seed": 0, "lengths": (64, 10), "prepared_shards": {"train-0": "3 pairs"}}
  it = input_pipeline.BatchIterator(grain.MapDataset.range(4), num_workers=0, prefetch=0,
                                    stats={}, stream=stream)
  state = it.get_state()
  assert state == json.loads(json.dumps(state))
  assert state["stream"]["lengths"] == [64, 10]
  stream["prepared_shards"]["train-0"] = "4 pairs"
  assert it.get_state() == state
  it.set_state(json.loads(json.dumps({**state, "next_batch": 2})))  # the same stream: accepted
  assert next(it) == 2


@pytest.mark.parametrize("masking,batch,count", [("dynamic", 128, 2), ("dynamic", 96, 3),
                                                 ("dynamic", 12, 4), ("static", 12, 2)])
def test_processes_split_the_global_batch(tiny, masking, batch, count):
  cfg = _cfg(tiny, masking=masking, dupe_factor=1)
  whole = _take(_iter(cfg, batch), 3)
  parts = [_take(_iter(cfg, batch, p=p, n=count), 3) for p in range(count)]
  for g in range(3):
    assert all(len(part[g]["input_ids"]) == batch // count for part in parts)
    joined = {k: np.concatenate([part[g][k] for part in parts]) for k in FEATURE_NAMES}
    assert _same([joined], [whole[g]])
  keys = [{_original(r) for r in _rows(part)} for part in parts]
  assert all(not keys[i] & keys[j] for i in range(count) for j in range(i))


def test_dynamic_masks_change_each_epoch_static_do_not(tiny):
  for masking in ("dynamic", "static"):
    it = _iter(_cfg(tiny, masking=masking, dupe_factor=1), 16)
    n = it.stats["examples_per_epoch"]
    rows = _rows(_take(it, -(-2 * n // 16)))
    epochs = rows[:n], rows[n:2 * n]
    originals = [collections.Counter(map(_original, e)) for e in epochs]
    assert originals[0] == originals[1]  # the same pairs
    assert [_original(r) for r in epochs[0]] != [_original(r) for r in epochs[1]]  # reshuffled
    masked = [{_original(r): r["masked_lm_positions"].tobytes() for r in e} for e in epochs]
    same = np.mean([masked[0][k] == masked[1][k] for k in masked[0]])
    assert same == 1.0 if masking == "static" else same < 0.2


def test_eval_batches_fixed_and_held_out(tiny):
  cfg = _cfg(tiny)
  tok = AlbertTokenizer(cfg.spm_model)
  make = lambda p=0, n=1: input_pipeline.eval_batches(cfg, tok, global_batch_size=8, seed=0, process_index=p,
                                           process_count=n)
  evals = make()
  assert len(evals) == 3 and _same(evals, make())
  assert _same([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(make(0, 2),
                                                                           make(1, 2))], evals)
  train_docs = list(input_pipeline.read_documents(cfg, "train"))
  eval_docs = list(input_pipeline.read_documents(cfg, "eval"))
  all_docs = list(corpus.text_file_documents(cfg.files))
  assert 0 < len(eval_docs) < 0.15 * len(all_docs)
  assert len(train_docs) + len(eval_docs) == len(all_docs)
  assert not {tuple(d) for d in train_docs} & {tuple(d) for d in eval_docs}
  # Segment A of every eval row (before masking) is text of an eval document; hardly any is also
  # in a train one (the corpus repeats some docstrings).
  text = lambda docs: "," + ",".join(",".join(map(str, s)) for d in examples.tokenize_documents(docs, tok)
                                     for s in d) + ","
  eval_text, train_text = text(eval_docs), text(train_docs)
  in_train = []
  for row in _rows(evals):
    ids = np.frombuffer(_original(row)[:-1], np.int32)
    a = ids[1:int(np.argmax(ids == tok.sep_token_id))]
    if len(a) >= 8:
      needle = "," + ",".join(map(str, a)) + ","
      assert needle in eval_text
      in_train.append(needle in train_text)
  assert len(in_train) >= 10 and np.mean(in_train) < 0.2
  embedded = _cfg(tiny, source="embedded")
  assert list(input_pipeline.read_documents(embedded, "eval")) == list(corpus.embedded_documents("eval"))
  # Named eval files instead of a hash hold-out.
  named = _cfg(tiny, files=f"{tiny[0]}/text/a.txt", eval_files=f"{tiny[0]}/text/b.txt")
  assert len(list(input_pipeline.read_documents(named, "eval"))) == len(all_docs) - 120


def test_vocabulary_trained_once_and_cached(tiny, tmp_path):
  cfg = _cfg(tiny, spm_model="", vocab_size=300)
  tok = input_pipeline.build_tokenizer(cfg, tmp_path, process_index=0)
  path = tmp_path / "spiece.model"
  assert tok.vocab_size == 300 and path.is_file()
  mtime = path.stat().st_mtime_ns
  again = input_pipeline.build_tokenizer(cfg, tmp_path, process_index=0)
  assert path.stat().st_mtime_ns == mtime and again.vocab_size == 300
  assert input_pipeline.build_tokenizer(cfg, tmp_path, process_index=1).vocab_size == 300  # file there: no wait
  with pytest.raises(TimeoutError, match="process 0"):
    input_pipeline.build_tokenizer(cfg, tmp_path / "empty", process_index=1, timeout_s=0.3)


@pytest.mark.parametrize("name", ["train.array_record", "train.jsonl"])
def test_static_examples_file(tiny, tmp_path, name):
  cfg = _cfg(tiny)
  out = str(tmp_path / name)
  cpd.run(cfg.files, cfg.spm_model, out, config=input_pipeline.example_config(cfg), seed=3, dupe_factor=2)
  rows = list(records.read_examples(out))
  it = _iter(_cfg(tiny, static_examples=out), 16)
  assert it.stats["examples_per_epoch"] == len(rows) and it.stats["pairs"]["pairs"] > 0
  epoch = _rows(_take(it, -(-len(rows) // 16)))[:len(rows)]
  key = lambda r: b"".join(r[k].tobytes() for k in FEATURE_NAMES)
  assert collections.Counter(map(key, epoch)) == collections.Counter(map(key, rows))
  with pytest.raises(ValueError, match="max_seq_length"):
    _iter(_cfg(tiny, static_examples=out, max_seq_length=128), 16)


def test_worker_processes_give_the_same_batches(tiny):
  cfg = _cfg(tiny)
  expected = _take(_iter(cfg, 16), 6)
  it = _iter(_cfg(tiny, num_workers=2, prefetch=2), 16)
  try:
    got = [{k: np.array(v) for k, v in b.items()} for b in _take(it, 4)]  # copies out of shm
    state = it.get_state()
  finally:
    it.close()
  assert _same(got, expected[:4])
  in_process = _iter(cfg, 16)
  in_process.set_state(state)  # a state taken with workers restores without
  assert _same(_take(in_process, 2), expected[4:6])


def test_config_errors(tiny, tmp_path):
  (tmp_path / "blank.txt").write_text("\n\n\n")
  cases = [
      (dict(source="hdfs"), ValueError, "data.source"),
      (dict(files=""), ValueError, "data.files"),
      (dict(files=str(tmp_path / "missing*.txt")), FileNotFoundError, "matches no file"),
      (dict(files=str(tmp_path / "blank.txt")), ValueError, "no document"),
      (dict(masking="sometimes"), ValueError, "data.masking"),
      (dict(mode="loose"), ValueError, "mode"),
      (dict(static_examples=str(tmp_path / "none.array_record")), FileNotFoundError, "static"),
  ]
  for overrides, error, match in cases:
    with pytest.raises(error, match=match):
      _iter(_cfg(tiny, **overrides), 8)
  with pytest.raises(ValueError, match="equal per-process"):
    _iter(_cfg(tiny), 10, n=4)
  with pytest.raises(ValueError, match="seed"):
    _iter(_cfg(tiny), 8, seed=-1)
  with pytest.raises(FileNotFoundError, match="spm_model"):
    pretraining.tokenizer(ml_collections.ConfigDict(dict(
        spm_model=str(tmp_path / "no.model"), init_from="", data=_cfg(tiny))), tmp_path)
  with pytest.raises(ValueError, match="needs config.spm_model"):
    input_pipeline.build_tokenizer(_cfg(tiny, spm_model="", static_examples="x.array_record"), tmp_path)


# ----------------------------------------------------------------------------- the stream contract

def test_a_resume_that_changes_the_stream_is_refused_naming_the_field(tiny, caplog):
  """T19: what changes the stream of batches (batch size, seed, masking, lengths) is refused on
  resume, naming the field with both values and the override; what does not (worker count,
  process count, prefetch) resumes the same batches."""
  cfg = _cfg(tiny)
  run = _take(_iter(cfg, 16), 6)
  state = json.loads(json.dumps(_iter(cfg, 16).get_state() | {"next_batch": 4}))
  for changed, field in [(dict(batch=8), "global_batch_size: checkpoint 16, now 8"),
                         (dict(seed=1), "seed: checkpoint 0, now 1"),
                         (dict(cfg=_cfg(tiny, masked_lm_prob=0.2)), "masked_lm_prob"),
                         (dict(cfg=_cfg(tiny, max_seq_length=32)), "max_seq_length"),
                         (dict(cfg=_cfg(tiny, masking="static", dupe_factor=1)), "masking")]:
    it = _iter(changed.get("cfg", cfg), changed.get("batch", 16), seed=changed.get("seed", 0))
    with pytest.raises(order.StreamChanged, match=field) as e:
      it.set_state(state)
    assert "--config.allow_data_change=True" in str(e.value)
  for same in (_cfg(tiny, prefetch=0, num_workers=0), _cfg(tiny, prefetch=3)):
    it = _iter(same, 16)
    it.set_state(state)
    assert _same(_take(it, 2), run[4:6])
  halves = [_iter(cfg, 16, p=p, n=2) for p in range(2)]  # another process count: same stream
  for half in halves:
    half.set_state(state)
  parts = [next(h) for h in halves]
  joined = {k: np.concatenate([p[k] for p in parts]) for k in FEATURE_NAMES}
  assert _same([joined], run[4:5])
  # The override: continue from the checkpoint's batch of the new stream, loudly.
  it = input_pipeline.train_iterator(cfg, AlbertTokenizer(cfg.spm_model), global_batch_size=16,
                                     seed=1, allow_change=True)
  it.set_state(state)
  assert it.get_state()["next_batch"] == 4 and "allow_data_change" in caplog.text
  # A state saved before streams were recorded: accepted, with a warning.
  old = _iter(cfg, 16)
  old.set_state({"next_batch": 4})
  assert _same(_take(old, 1), run[4:5]) and "does not say what its stream" in caplog.text


def test_a_corpus_file_or_vocabulary_changed_between_save_and_resume_is_detected(tiny, tmp_path):
  """T18: the stream records fingerprints of the corpus's contents (not its paths: the same
  files elsewhere, e.g. moved to a bucket, are the same corpus) and of the vocabulary."""
  root, model = tiny
  shutil.copytree(root / "text", tmp_path / "text")
  cfg = _cfg(tiny, files=f"{tmp_path}/text/*.txt")
  state = _iter(cfg, 16).get_state()
  assert state["stream"] == _iter(_cfg(tiny), 16).get_state()["stream"]  # moved: the same
  with open(tmp_path / "text" / "b.txt", "a") as f:
    f.write("\nA sentence added after the checkpoint was saved.\n")
  with pytest.raises(order.StreamChanged, match="corpus: checkpoint"):
    _iter(cfg, 16).set_state(state)
  other_vocab = train_spm([s for d in corpus.embedded_documents("eval") for s in d][::2], 500,
                          tmp_path / "spm")
  changed = _cfg(tiny, spm_model=str(other_vocab))
  with pytest.raises(order.StreamChanged, match="vocabulary: checkpoint"):
    _iter(changed, 16).set_state(_iter(_cfg(tiny), 16).get_state())


def test_a_hostile_corpus_gives_valid_deterministic_batches(tiny, tmp_path):
  """T18 through the pipeline: empty and blank documents, invalid UTF-8, NUL and control
  characters, lone surrogates, a 3 MB line, 2 MB without a space, literal special tokens,
  NFKC-changing text, a one-sentence document. No crash; every row holds real tokens within
  max_seq_length, never a control id from text; what was cleaned is counted; the same seed gives
  the same batches."""
  _, model = tiny
  good = [s for d in corpus.embedded_documents("eval") for s in d][:400]
  hostile = [
      b"\n\n   \n\t\n",  # empty and whitespace-only documents
      b"\x00\x07\x1b\n\x0c\n",  # a document of control characters only
      b"caf\xc3 au lait \xff\xfe with bytes that are not UTF-8.\nA second sentence here.\n",
      "NUL \x00 and bell \x07 and escape \x1b inside a sentence.\nMore text after it.\n".encode(),
      "A lone surrogate \ud800 here.\nAnd another line.\n".encode("utf-8", "surrogatepass"),
      b"word " * 600_000 + b"\n" + b"x" * 2_000_000 + b"\nThe end of a long document.\n",
      "Literal [MASK] and [SEP] and [CLS] and <pad> text.\nThe ﬁ ligature and ＡＢＣ widths.\n"
      .encode(),
      b"One sentence, one document.\n",
  ]
  blob = b"\n\n".join([*hostile, "\n".join(good).encode()]) + b"\n"
  (tmp_path / "hostile.txt").write_bytes(blob)
  cfg = _cfg(tiny, files=str(tmp_path / "hostile.txt"), max_seq_length=SEQ)
  it = _iter(cfg, 16)
  batches = _take(it, 4)
  stats = it.stats["corpus"]
  assert stats["invalid_utf8_lines"] >= 2  # a surrogate in a file is invalid UTF-8 too
  assert stats["long_sentences_cut"] >= 2
  specials = {AlbertTokenizer(model).convert_tokens_to_ids(t)
              for t in ("<pad>", "[CLS]", "[SEP]", "[MASK]")}
  for b in batches:
    assert b["input_ids"].shape == (16, SEQ)
    real = b["attention_mask"].sum(1)
    assert (real >= 4).all() and (real <= SEQ).all()  # [CLS] a [SEP] b [SEP] at least
    for row, n, positions, weights in zip(b["input_ids"], real, b["masked_lm_positions"],
                                          b["masked_lm_weights"]):
      text_positions = set(range(n)) - {0} - set(np.flatnonzero(row == 3))
      masked = set(positions[weights > 0])
      assert not {int(row[i]) for i in text_positions - masked} & specials
  again = _take(_iter(cfg, 16), 4)
  assert _same(batches, again)


# ----------------------------------------------------------------------------- the pinned batches

@pytest.fixture(scope="module")
def pinned(tmp_path_factory):
  """The synthetic corpus of tests/batch_hashes.py (prepared corpus and static files made on first
  use), and the reference it wrote."""
  return (batch_hashes.Workdir(tmp_path_factory.mktemp("pinned")),
          json.loads(batch_hashes.REFERENCE.read_text()))


@pytest.mark.parametrize("name", list(batch_hashes.CASES))
def test_batches_are_the_pinned_ones(pinned, name):
  """Every source and masking mode gives, bit for bit, the batches (first, across the end of
  epoch 0, eval, each process's rows), stream record and stats that the code before issue 19's
  data protocol gave (tests/batch_hashes.py computed them there)."""
  work, reference = pinned
  expected = batch_hashes.reference_of(name, reference)
  if expected is None:
    pytest.skip(f"No pinned batches of this Python's embedded corpus "
                f"({embedded.fingerprint()}); the others pin the same code")
  assert batch_hashes.compute(name, work) == expected
