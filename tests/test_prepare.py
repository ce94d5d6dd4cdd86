"""`prepare` (Apache Beam, local runner) and training on what it writes: the same batches, stats
and held-out set as the raw corpus with the same seed, in every way pairs are cut; the same bytes
from one worker or two processes (the CLI); the manifest and its fingerprints; what training
refuses; a tiny training run's losses equal on both sources; a mistaken or failed --overwrite
leaves the corpus that was there byte for byte."""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from albert_jax.data import corpus, examples, input_pipeline, order, prepare, prepared
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.data.train_tokenizer import train_spm

REPO = Path(__file__).resolve().parents[1]
SEQ = 64
UNIT_BYTES = 20_000  # 8 read units of the tiny corpus, so ranges cut its files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """Two text files of ~240 documents (the embedded eval split in 8-sentence documents), a
  500-piece vocabulary, and the corpus prepared once (fixed mode, seed 0)."""
  root = tmp_path_factory.mktemp("prepare")
  docs = [d[i:i + 8] for d in corpus.embedded_documents("eval") for i in range(0, len(d), 8)]
  (root / "text").mkdir()
  for name, part in (("a.txt", docs[:120]), ("b.txt", docs[120:])):
    (root / "text" / name).write_text("\n\n".join("\n".join(d) for d in part) + "\n")
  model = str(train_spm([s for d in docs for s in d], 500, root / "spm"))
  out = str(root / "prepared")
  _prepare(f"{root}/text/*.txt", model, out)
  return root, model, out


def _prepare(files, model, out, eval_files="", seed=0, group_size=1, **config):
  return prepare.run(corpus.CorpusSpec.parse(files, eval_files), model, out,
                     config=examples.ExampleConfig(max_seq_length=SEQ, **config), seed=seed,
                     unit_bytes=UNIT_BYTES, group_size=group_size)


def _cfg(**overrides):
  return ml_collections.ConfigDict({**input_pipeline.default_data_config().to_dict(),
                                    "max_seq_length": SEQ, "prefetch": 0, "eval_batches": 3,
                                    **overrides})


def _iterators(files_cfg, prepared_cfg, tok, seed=0, batch=16):
  make = lambda cfg: input_pipeline.train_iterator(cfg, tok, global_batch_size=batch, seed=seed,
                                                   process_index=0, process_count=1)
  return make(files_cfg), make(prepared_cfg)


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _assert_same_data(files_cfg, prepared_cfg, tok):
  raw, ready = _iterators(files_cfg, prepared_cfg, tok)
  assert raw.stats == ready.stats  # corpus counts, documents, pair statistics, pairs
  steps = int(raw.stats["batches_per_epoch"]) + 3  # across the end of epoch 0
  for g in range(steps):
    assert _same(next(raw), next(ready)), g
  evals = [input_pipeline.eval_batches(cfg, tok, global_batch_size=8, seed=1, pair_seed=0,
                                       process_index=0, process_count=1)
           for cfg in (files_cfg, prepared_cfg)]
  assert len(evals[0]) == 3 and all(map(_same, *evals))
  return raw, ready


def test_prepared_pairs_give_the_batches_of_the_raw_files(tiny):
  root, model, out = tiny
  tok = AlbertTokenizer(model)
  raw, ready = _assert_same_data(_cfg(source="files", files=f"{root}/text/*.txt"),
                                 _cfg(source="prepared", prepared=out), tok)
  # The stream the checkpoint records: the same corpus and vocabulary fingerprints.
  manifest = prepared.load_manifest(out)
  shards = {s["file"]: f"{s['pairs']} pairs, sha256 {s['sha256'][:16]}"
            for s in manifest["splits"]["train"]["shards"]}
  assert ready.get_state() == {"next_batch": raw.get_state()["next_batch"], "stream": {
      **raw.stream, "source": "prepared", "prepared": manifest["fingerprint"],
      "prepared_shards": shards}}
  assert raw.stream["corpus"] == manifest["splits"]["train"]["fingerprint"]
  assert raw.stream["vocabulary"] == manifest["vocabulary"]
  # Grain worker processes get the source pickled: readers reopen there.
  source = prepared.PairSource(out, "train")
  again = pickle.loads(pickle.dumps(source))
  assert all(np.array_equal(a, b) for i in (0, 5, len(source) - 1)
             for a, b in zip(source[i][:2], again.pairs_at([i])[0][:2]))


@pytest.mark.parametrize("kind", ["faithful", "nsp", "eval_files"])
def test_every_way_of_cutting_pairs_gives_the_raw_files_batches(tiny, tmp_path, kind):
  """faithful (one-segment chunks take B from a random document) and NSP go through the join of
  pending pairs with their documents; named eval files make two document spaces (and the shards
  there hold 16 records a chunk)."""
  root, model, _ = tiny
  changes = {"faithful": {"mode": "faithful"}, "nsp": {"random_next_sentence": True},
             "eval_files": {}}[kind]
  files, eval_files = f"{root}/text/*.txt", ""
  if kind == "eval_files":
    files, eval_files = f"{root}/text/a.txt", f"{root}/text/b.txt"
  manifest = _prepare(files, model, str(tmp_path), eval_files,
                      group_size=16 if kind == "eval_files" else 1, **changes)
  if kind != "eval_files":
    assert manifest["splits"]["train"]["pair_stats"]["random_document_b"] > 50
  else:
    assert manifest["corpus"]["spaces"] == ["train", "eval"]
  _assert_same_data(_cfg(source="files", files=files, eval_files=eval_files, **changes),
                    _cfg(source="prepared", prepared=str(tmp_path), **changes), AlbertTokenizer(model))


@pytest.mark.slow
def test_cli_with_two_worker_processes_writes_the_same_bytes(tiny, tmp_path):
  root, model, out = tiny
  result = subprocess.run(
      [sys.executable, "-m", "albert_jax.data.prepare", f"--input={root}/text/*.txt",
       f"--spm_model={model}", f"--output={tmp_path}", f"--max_seq_length={SEQ}",
       f"--unit_mb={UNIT_BYTES / (1 << 20)}", "--direct_num_workers=2",
       "--direct_running_mode=multi_processing"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Tokenized all unit 8/8" in result.stderr and "Prepared" in result.stderr
  names = sorted(os.listdir(out))
  assert names == sorted(os.listdir(tmp_path))  # no temporary file left either
  for name in names:
    assert (Path(out) / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_manifest_and_fingerprints(tiny, tmp_path):
  root, model, out = tiny
  manifest = prepared.load_manifest(out)
  train, evals = manifest["splits"]["train"], manifest["splits"]["eval"]
  assert manifest["settings"] == {"seed": 0, "max_seq_length": SEQ, "short_seq_prob": 0.1,
                                  "random_next_sentence": False, "mode": "fixed",
                                  "max_sentence_chars": 8192, "holdout_percent": 5}
  assert manifest["token_dtype"] == "<u2" and manifest["vocab_size"] == 500
  assert manifest["corpus"]["read_units"] == {"all": 8}
  assert manifest["corpus"]["text_bytes"] == sum(
      p.stat().st_size for p in (root / "text").iterdir())
  assert train["corpus"]["files"] == 2 and train["corpus"]["documents"] == (
      train["documents"] + evals["documents"])  # both splits read from one space
  assert train["pairs"] == len(prepared.PairSource(out, "train")) > 700
  assert train["pairs"] == sum(s["pairs"] for s in train["shards"])
  assert 0.45 < train["label_1_share"] < 0.55 and 40 < train["mean_pair_tokens"] <= SEQ - 3
  assert [s["file"] for s in train["shards"]] == [
      prepared.shard_name("train", u, 8) for u in range(8)]
  assert (Path(out) / "spiece.model").read_bytes() == Path(model).read_bytes()
  # Another seed: other pairs, the same corpus.
  other = _prepare(f"{root}/text/*.txt", model, str(tmp_path / "seed1"), seed=1)
  assert other["fingerprint"] != manifest["fingerprint"]
  assert other["splits"]["train"]["fingerprint"] == train["fingerprint"]
  assert [s["pairs"] for s in other["splits"]["train"]["shards"]] != [
      s["pairs"] for s in train["shards"]]
  with pytest.raises(FileExistsError, match="overwrite"):
    _prepare(f"{root}/text/*.txt", model, out)


def test_training_refuses_what_does_not_match_the_prepared_pairs(tiny, tmp_path):
  root, model, out = tiny
  tok = AlbertTokenizer(model)
  sentences = [s for d in corpus.embedded_documents("eval") for s in d][:3000]
  other_vocab = AlbertTokenizer(train_spm(sentences, 300, tmp_path / "spm"))
  cases = [
      (_cfg(source="prepared", prepared=out, max_seq_length=128), tok, ValueError,
       "max_seq_length 64"),
      (_cfg(source="prepared", prepared=out, mode="faithful"), tok, ValueError, "mode"),
      (_cfg(source="prepared", prepared=out), other_vocab, ValueError, "another vocabulary"),
      (_cfg(source="prepared", prepared=out, masking="static"), tok, ValueError, "dynamic"),
      (_cfg(source="prepared", prepared=str(tmp_path)), tok, FileNotFoundError, "manifest"),
      (_cfg(source="prepared"), tok, ValueError, "data.prepared"),
  ]
  for cfg, t, error, match in cases:
    with pytest.raises(error, match=match):
      input_pipeline.train_iterator(cfg, t, global_batch_size=8, seed=0, process_index=0,
                                    process_count=1)
  # Without config.spm_model the job takes the prepared vocabulary.
  assert input_pipeline.prepared_vocabulary(_cfg(source="prepared", prepared=out)).vocab_size == 500


@pytest.mark.heavy  # two training runs; test_prepare's other tests compare the batches
def test_tiny_training_run_has_the_same_losses_on_prepared_data(tiny, tmp_path, spm_model):
  """train_and_evaluate on the raw files and on the prepared pairs: the same losses, step by step,
  and the same held-out eval."""
  from albert_jax import metrics, train
  from conftest import tiny_config
  root, _, _ = tiny
  out = str(tmp_path / "prepared")
  prepare.run(corpus.CorpusSpec.parse(f"{root}/text/*.txt"), str(spm_model), out,
              config=examples.ExampleConfig(max_seq_length=32), seed=0, unit_bytes=UNIT_BYTES)
  changes = {"total_steps": 6, "log_every_steps": 2, "eval_every_steps": 6,
             "checkpoint_every_steps": 6, "export_hf": False}
  runs = {}
  for name, data in (("files", {"data.source": "files", "data.files": f"{root}/text/*.txt"}),
                     ("prepared", {"data.source": "prepared", "data.prepared": out})):
    train.train_and_evaluate(tiny_config(spm_model, **changes, **data), str(tmp_path / name))
    runs[name] = [{k: v for k, v in row.items() if "loss" in k or "accuracy" in k}
                  for row in metrics.read_metrics(tmp_path / name)]
  assert len(runs["files"]) == 5 and runs["files"] == runs["prepared"]
  assert any("eval/loss" in row for row in runs["files"])


def test_a_prepared_directory_in_a_bucket_is_refused_saying_what_to_do():
  from albert_jax.data import prepared
  with pytest.raises(ValueError, match="ArrayRecord.*local files.*FUSE"):
    prepared.PairSource("gs://bucket/prepared", "train")


@pytest.mark.slow  # a local Cloud Storage server
def test_a_corpus_in_a_bucket_prepares_to_the_same_bytes(tiny, tmp_path, gcs_bucket):
  """prepare --input='gs://...': the corpus read through files.path (gcsfs), the same pairs."""
  from albert_jax import files
  root, model, out = tiny
  for name in ("a.txt", "b.txt"):
    files.copy(root / "text" / name, f"{gcs_bucket}/prepare/{name}")
  manifest = _prepare(f"{gcs_bucket}/prepare/*.txt", model, str(tmp_path / "from_bucket"))
  local = json.loads((Path(out) / "manifest.json").read_text())
  assert manifest["fingerprint"] == local["fingerprint"]
  shards = sorted(p.name for p in Path(out).glob("*.array_record"))
  assert shards and shards == sorted(p.name for p in (tmp_path / "from_bucket").glob("*.array_record"))
  for name in shards:
    assert (tmp_path / "from_bucket" / name).read_bytes() == (Path(out) / name).read_bytes(), name


# ----------------------------------------------------------------------------- a failed --overwrite

def _listing(root):
  return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir"
          for p in sorted(Path(root).rglob("*"))}


@pytest.fixture
def finished(tiny, tmp_path):
  """A copy of the finished prepared corpus, alone in its parent (so leftovers show)."""
  import shutil
  out = tmp_path / "corpus" / "prepared"
  shutil.copytree(tiny[2], out)
  return out, _listing(out.parent)


def test_prepare_overwrite_with_a_missing_input_leaves_the_corpus_as_it_was(tiny, finished):
  """`prepare --input=typo.txt --overwrite` deleted manifest.json before it read its inputs."""
  root, model, _ = tiny
  out, before = finished
  result = subprocess.run(
      [sys.executable, "-m", "albert_jax.data.prepare", f"--input={root}/typo.txt",
       f"--spm_model={model}", f"--output={out}", f"--max_seq_length={SEQ}", "--overwrite"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "typo.txt" in result.stderr, result.stderr[-3000:]
  assert _listing(out.parent) == before


@pytest.mark.parametrize("mistake", ["no_such_input", "empty_input", "garbage_vocabulary",
                                     "unit_bytes_0", "group_size_0", "output_holds_the_input",
                                     "output_holds_other_files"])
def test_prepare_validates_everything_before_touching_the_output(tiny, finished, mistake):
  root, model, _ = tiny
  out, before = finished
  inputs, kwargs = f"{root}/text/*.txt", {}
  if mistake == "no_such_input":
    inputs = f"{root}/text/a.txt,{root}/typo.txt"
  if mistake == "garbage_vocabulary":
    model = out.parent / "garbage.model"
    model.write_bytes(b"not a SentencePiece model")
    before = _listing(out.parent)
  if mistake in ("unit_bytes_0", "group_size_0"):
    kwargs = {mistake.rsplit("_", 1)[0]: 0}
  if mistake == "empty_input":
    inputs = str(out.parent / "empty")
    (out.parent / "empty").mkdir()
  if mistake == "output_holds_the_input":
    inputs = str(out / "spiece.model")
  if mistake == "output_holds_other_files":  # the swap would delete them
    (out / "notes.txt").write_text("mine")
  if mistake in ("empty_input", "output_holds_other_files"):
    before = _listing(out.parent)
  with pytest.raises((ValueError, FileNotFoundError, OSError, RuntimeError)):
    prepare.run(corpus.CorpusSpec.parse(inputs), str(model), str(out),
                config=examples.ExampleConfig(max_seq_length=SEQ), overwrite=True,
                **{"unit_bytes": UNIT_BYTES, **kwargs})
  assert _listing(out.parent) == before


def test_prepare_that_fails_midway_leaves_the_corpus_and_no_staging(tiny, finished, monkeypatch,
                                                                    caplog):
  """A shard written, then a failure: the previous manifest and shards byte for byte, no staging
  directory left; a staging directory a killed run left is no obstacle to the next run."""
  root, model, _ = tiny
  out, before = finished
  written = []

  def fail_after_one(*args, **kwargs):
    if written:
      raise OSError("planted: disk full after one shard")
    written.append(real(*args, **kwargs))
    return written[-1]
  real = prepare._write_shard
  monkeypatch.setattr(prepare, "_write_shard", fail_after_one)
  spec = corpus.CorpusSpec.parse(f"{root}/text/*.txt")
  run = lambda: prepare.run(spec, model, str(out), config=examples.ExampleConfig(
      max_seq_length=SEQ), seed=1, unit_bytes=UNIT_BYTES, overwrite=True)
  with pytest.raises(Exception, match="planted"):
    run()
  assert written and _listing(out.parent) == before
  monkeypatch.undo()
  killed = out.parent / f".{out.name}.tmp-killed"  # as a SIGKILLed run would leave it
  killed.mkdir()
  (killed / "train-00000-of-00008.array_record").write_bytes(b"half")
  manifest = run()
  assert manifest["settings"]["seed"] == 1 and prepared.load_manifest(out) == manifest
  assert sorted(p.name for p in out.parent.iterdir()) == [killed.name, "prepared"]
  assert str(killed) in caplog.text  # named, for whoever wants the space back


# ----------------------------------------------------------------------------- shards that are not
# what the manifest says (issue 21, items 3, 4, 8)

@pytest.fixture(scope="module")
def seed1(tiny, tmp_path_factory):
  """The same corpus prepared with seed 1: shards of the same names, other pairs."""
  root, model, _ = tiny
  out = str(tmp_path_factory.mktemp("seed1") / "prepared")
  _prepare(f"{root}/text/*.txt", model, out, seed=1)
  return out


def _corpus_copy(tiny, tmp_path):
  import shutil
  out = tmp_path / "prepared"
  shutil.copytree(tiny[2], out)
  return out


def _edit_manifest(out, edit):
  manifest = json.loads((out / "manifest.json").read_text())
  edit(manifest)
  (out / "manifest.json").write_text(json.dumps(manifest))


def _train(out, model, **kw):
  return input_pipeline.train_iterator(_cfg(source="prepared", prepared=str(out), **kw),
                                       AlbertTokenizer(model), global_batch_size=16, seed=0,
                                       process_index=0, process_count=1)


SHARD = "train-00003-of-00008.array_record"


def _flip_middle(path):
  blob = bytearray(path.read_bytes())
  blob[1000] ^= 0x01  # inside the first records (the file is 128 KiB of which ~22 KiB records)
  path.write_bytes(bytes(blob))


def _set_pairs(manifest, delta):
  manifest["splits"]["train"]["shards"][3]["pairs"] += delta


MISMATCHES = {
    "another preparation's shard": (lambda out, seed1: __import__("shutil").copyfile(
        Path(seed1) / SHARD, out / SHARD), "records, the manifest says"),
    "one flipped byte": (lambda out, _: _flip_middle(out / SHARD), "manifest's sha256"),
    "truncated": (lambda out, _: (out / SHARD).write_bytes((out / SHARD).read_bytes()[:5000]),
                  "5000 bytes, the manifest says 131072"),
    "pairs lowered in the manifest": (
        lambda out, _: _edit_manifest(out, lambda m: _set_pairs(m, -5)), "records, the manifest"),
    "pairs above the real ones": (
        lambda out, _: _edit_manifest(out, lambda m: _set_pairs(m, 50)), "records, the manifest"),
    "missing": (lambda out, _: (out / SHARD).unlink(), "not found: manifest.json lists it"),
}


@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_a_shard_that_is_not_the_manifests_is_refused_at_start_naming_it(tiny, seed1, tmp_path,
                                                                       mismatch):
  """Issue 21, 3 and 8: a shard from another preparation, a flipped byte, a truncated shard,
  counts below or above the real ones: each trained on other data without a word, or died at
  the batch that read it with a Grain traceback naming no file. Now the start-up check (sizes,
  ArrayRecord's record counts, sha256s against the manifest) refuses it before step 1, naming
  the shard, what differs and the fix."""
  root, model, _ = tiny
  out = _corpus_copy(tiny, tmp_path)
  change, message = MISMATCHES[mismatch]
  change(out, seed1)
  with pytest.raises(prepared.CorruptShard, match=message) as e:
    _train(out, model)
  assert str(out / SHARD) in str(e.value) and "--verify" in str(e.value)


def test_the_manifest_holds_each_shards_digests(tiny):
  """sha256 of the whole file, and of its size, first and last 64 KiB (computed here with
  hashlib, apart from prepared.shard_digests)."""
  import hashlib
  _, _, out = tiny
  manifest = prepared.load_manifest(out)
  for split in ("train", "eval"):
    for shard in manifest["splits"][split]["shards"]:
      blob = (Path(out) / shard["file"]).read_bytes()
      assert shard["bytes"] == len(blob) and shard["sha256"] == hashlib.sha256(blob).hexdigest()
      edges = blob[:65536] + blob[max(len(blob) - 65536, 65536):]
      assert shard["edges"] == hashlib.sha256(f"{len(blob)}\n".encode() + edges).hexdigest()


def test_a_damaged_record_the_start_up_check_misses_is_named_when_read(tiny, tmp_path,
                                                                      monkeypatch):
  """Past FULL_HASH_BYTES only each shard's ends are hashed at start: a byte flipped in the
  middle of a large shard shows when its record is read, as an error naming the shard (it was
  ArrayRecord's "Corrupted Riegeli/records file", naming none, at the same step every restart)."""
  _, model, _ = tiny
  out = _corpus_copy(tiny, tmp_path)
  _flip_middle(out / SHARD)
  monkeypatch.setattr(prepared, "FULL_HASH_BYTES", 0)
  monkeypatch.setattr(prepared, "EDGE_BYTES", 16)  # this shard's ends: not its records
  _edit_manifest(out, lambda m: m["splits"]["train"]["shards"][3].update(
      prepared.shard_digests(out / SHARD)))  # (digests of the damaged file: the ends agree)
  it = _train(out, model, prefetch=2)
  with pytest.raises(prepared.CorruptShard, match=rf"{SHARD}: pair \d+ of its \d+ cannot be read "
                     r"\(RuntimeError: Corrupted Riegeli"):
    for _ in range(int(it.stats["batches_per_epoch"]) + 1):
      next(it)


def test_a_resume_onto_other_shards_is_refused_naming_them(tiny, tmp_path, caplog):
  """Issue 21, 3: a shard prepared again (here: its last 5 pairs gone, the manifest updated to
  agree, so the start-up check passes) changes the stream; the checkpoint's stream record holds
  every shard's count and sha256, so the resume is refused naming the shard. A checkpoint from
  before shards were recorded resumes, with a warning."""
  _, model, _ = tiny
  out = _corpus_copy(tiny, tmp_path)
  state = json.loads(json.dumps({**_train(out, model).get_state(), "next_batch": 3}))
  source = prepared.PairSource(out, "train")
  start = sum(s["pairs"] for s in prepared.load_manifest(out)["splits"]["train"]["shards"][:3])
  keep = [source[start + k] for k in range(
      prepared.load_manifest(out)["splits"]["train"]["shards"][3]["pairs"] - 5)]
  (out / SHARD).unlink()
  size = prepared.write_pairs(str(out / SHARD), keep, "<u2")
  _edit_manifest(out, lambda m: m["splits"]["train"]["shards"][3].update(
      pairs=len(keep), bytes=size, **prepared.shard_digests(out / SHARD)))
  with pytest.raises(order.StreamChanged, match=rf"prepared_shards\[{SHARD}\]: checkpoint "
                     rf"'{len(keep) + 5} pairs, sha256 \w+', now '{len(keep)} pairs"):
    _train(out, model).set_state(state)
  del state["stream"]["prepared_shards"]
  _train(out, model).set_state(state)
  assert "predates prepared_shards" in caplog.text


def test_an_old_manifest_without_digests_is_read_with_a_warning(tiny, tmp_path, caplog):
  _, model, _ = tiny
  out = _corpus_copy(tiny, tmp_path)
  _edit_manifest(out, lambda m: [s.pop(k) for split in m["splits"].values()
                                 for s in split["shards"] for k in ("sha256", "edges")])
  assert next(_train(out, model))["input_ids"].shape == (16, SEQ)
  assert "prepared before shards had digests" in caplog.text
  assert _train(out, model).stream["prepared_shards"][SHARD].endswith(" bytes")


@pytest.mark.parametrize("damage,message", [
    ("shard ../x", r"'\.\./prepared/train-00003-of-00008.array_record' is not a file name in"),
    ("truncated", r"manifest.json is not valid JSON .*copy it again"),
    ("pairs -1", "has pairs=-1; the manifest is damaged")])
def test_a_damaged_manifest_is_refused_naming_it(tiny, tmp_path, damage, message):
  """Issue 21, 4 and 10: a shard `file` of ../... was read outside the directory; a truncated
  manifest.json gave a bare JSONDecodeError."""
  _, model, _ = tiny
  out = _corpus_copy(tiny, tmp_path)
  if damage == "truncated":
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[:len(text) // 2])
  else:
    _edit_manifest(out, lambda m: m["splits"]["train"]["shards"][3].update(
        {"shard ../x": {"file": f"../prepared/{SHARD}"}, "pairs -1": {"pairs": -1}}[damage]))
  with pytest.raises(ValueError, match=message) as e:
    _train(out, model)
  assert "manifest.json" in str(e.value)


def test_prepare_verify_checks_every_record(tiny, tmp_path):
  """`prepare --verify`: exit 0 on the corpus as written; on a flipped byte, exit 1 naming the
  shard, its digests and the record that cannot be read."""
  _, _, out = tiny
  verify = lambda d: subprocess.run(
      [sys.executable, "-m", "albert_jax.data.prepare", "--verify", f"--output={d}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  good = verify(out)
  assert good.returncode == 0 and "every shard and record" in good.stderr, good.stderr[-2000:]
  damaged = _corpus_copy(tiny, tmp_path)
  _flip_middle(damaged / SHARD)
  bad = verify(damaged)
  assert bad.returncode == 1, bad.stderr[-2000:]
  assert f"{damaged / SHARD}: sha256" in bad.stderr
  assert re.search(rf"{SHARD}: record \d+ cannot be read \(Corrupted Riegeli", bad.stderr)
  assert int(re.search(r"(\d+) problem\(s\) above", bad.stderr)[1]) >= 3
