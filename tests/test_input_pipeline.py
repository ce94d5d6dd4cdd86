"""The Grain input pipeline: shapes, determinism, exact resume, rows per process, masks per epoch,
the held-out eval set, the cached vocabulary, pre-masked files, worker processes, config errors."""

import collections
import json

import ml_collections
import numpy as np
import pytest

from albert_jax.data import corpus, examples, input_pipeline
from albert_jax.tasks import pretraining
from albert_jax.data import create_pretraining_data as cpd
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm

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
  assert (first[0]["masked_lm_weights"].sum(1) > 0).all()
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
  states.update({k: {"next_batch": k} for k in (int(per_epoch) - 1, int(per_epoch) + 1)})
  for k, state in states.items():  # the last two batches cross the end of epoch 0
    fresh = _iter(cfg, 16)
    fresh.set_state(json.loads(json.dumps(state)))
    assert _same(_take(fresh, 3), run[k:k + 3])
  # set_state on a running iterator, backwards.
  it.set_state({"next_batch": 2})
  assert _same(_take(it, 2), run[2:4]) and it.get_state()["next_batch"] == 4


def test_orbax_saves_and_restores_the_state(tiny, tmp_path):
  """The way the trainer stores it: Grain's Orbax handler, next to the train state."""
  import grain
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
  assert restored.get_state()["next_batch"] == 3 and _same(_take(restored, 2), expected)


@pytest.mark.parametrize("masking,batch,count", [("dynamic", 128, 2), ("dynamic", 96, 3),
                                                 ("dynamic", 12, 4), ("static", 12, 2)])
def test_processes_split_the_global_batch(tiny, masking, batch, count):
  cfg = _cfg(tiny, masking=masking, dupe_factor=1)
  whole = _take(_iter(cfg, batch), 3)
  parts = [_take(_iter(cfg, batch, p=p, n=count), 3) for p in range(count)]
  for g in range(3):
    assert all(len(part[g]["input_ids"]) == batch // count for part in parts)
    joined = {k: np.concatenate([part[g][k] for part in parts]) for k in examples.FEATURE_NAMES}
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
  records = list(cpd.read_examples(out))
  it = _iter(_cfg(tiny, static_examples=out), 16)
  assert it.stats["examples_per_epoch"] == len(records) and it.stats["pairs"]["pairs"] > 0
  epoch = _rows(_take(it, -(-len(records) // 16)))[:len(records)]
  key = lambda r: b"".join(r[k].tobytes() for k in examples.FEATURE_NAMES)
  assert collections.Counter(map(key, epoch)) == collections.Counter(map(key, records))
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
