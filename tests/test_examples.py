"""SOP pairs and n-gram masking against hand-worked cases and the formulas they should follow, the
record formats, and the two CLIs on a tiny corpus with a tiny SentencePiece model."""

import collections
import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from albert_jax.data import corpus, examples, masking
from albert_jax.data import records
from albert_jax.data import report
from albert_jax.data.pairs import PairTable
from albert_jax.data.tokenizer import AlbertTokenizer

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in ALBERT
PAD, UNK, CLS, SEP, MASK = range(5)
pack = PairTable.pack  # masking reads pairs packed, as every source gives them


def _tables(n_pieces, word_start_share=1.0, seed=0):
  """A vocabulary of n_pieces after the specials; word_start_share of them start with "▁"."""
  rng = np.random.default_rng(seed)
  starts = rng.random(n_pieces) < word_start_share
  return examples.vocab_tables(SPECIALS + [("▁" if s else "") + f"p{i}" for i, s in enumerate(starts)])


def _documents(rng, n_docs, vocab_size, max_sentences=30):
  return [[rng.integers(5, vocab_size, size=rng.integers(3, 40)).astype(np.int32)
           for _ in range(rng.integers(1, max_sentences))] for _ in range(n_docs)]


def _unmasked(pair, seq_len):
  ids = np.zeros(seq_len, np.int32)
  seq = [CLS, *pair.tokens_a, SEP, *pair.tokens_b, SEP]
  ids[:len(seq)] = seq
  return ids, len(seq)


# ----------------------------------------------------------------------------- masking statistics

@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_masking_statistics(mode):
  tables = _tables(3000, word_start_share=0.6)
  config = examples.ExampleConfig(max_seq_length=128, mode=mode)
  docs = _documents(np.random.default_rng(1), 800, tables.vocab_size)
  pairs = examples.make_segment_pairs(docs, 0, config, word_start=tables.word_start)
  assert len(pairs) > 2000
  f = masking.mask_examples(pack(pairs), 1, tables, config)
  assert {k: (v.shape, v.dtype) for k, v in f.items()} == {
      **{k: ((len(pairs), 128), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")},
      **{k: ((len(pairs), 20), np.int32) for k in ("masked_lm_positions", "masked_lm_ids")},
      "masked_lm_weights": ((len(pairs), 20), np.float32),
      "sentence_order_label": ((len(pairs),), np.int32)}

  counts = collections.Counter()
  for i, pair in enumerate(pairs):
    original, length = _unmasked(pair, 128)
    n = int(f["masked_lm_weights"][i].sum())
    assert (f["masked_lm_weights"][i] == (np.arange(20) < n)).all()
    pos, labels = f["masked_lm_positions"][i, :n], f["masked_lm_ids"][i, :n]
    # (A short pair can get none: a budget of 1 and only multi-piece words, as in the original.)
    assert (np.diff(pos) > 0).all() and ((pos >= 1) & (pos <= length - 2)).all()
    counts["none"] += n == 0
    assert (labels == original[pos]).all()
    assert not np.isin(labels, [PAD, CLS, SEP, MASK]).any()  # never a special token
    ids = f["input_ids"][i]
    unmasked = np.setdiff1d(np.arange(128), pos)
    assert (ids[unmasked] == original[unmasked]).all()  # padding (0) included
    # (faithful's random replacements may be any id, <pad> included: module doc, 9)
    assert (original[:length] > 0).all()
    assert (ids[:length] >= (mode == "fixed")).all() and (ids[:length] < tables.vocab_size).all()
    assert (f["attention_mask"][i] == (np.arange(128) < length)).all()
    assert (f["token_type_ids"][i] == ((np.arange(128) >= len(pair.tokens_a) + 2)
                                    & (np.arange(128) < length))).all()
    assert f["sentence_order_label"][i] == pair.sentence_order_label
    counts["tokens"] += length - 3
    counts["masked"] += n
    counts["mask"] += int((ids[pos] == MASK).sum())
    counts["same"] += int((ids[pos] == labels).sum())
  assert abs(counts["masked"] / counts["tokens"] - 0.15) < 0.01
  assert counts["none"] < 0.01 * len(pairs)
  assert abs(counts["mask"] / counts["masked"] - 0.8) < 0.02
  assert abs(counts["same"] / counts["masked"] - 0.1) < 0.02
  assert abs(1 - (counts["mask"] + counts["same"]) / counts["masked"] - 0.1) < 0.02


def _run_lengths(features):
  """Per example, the sorted lengths of runs of consecutive masked positions."""
  out = []
  for pos, w in zip(features["masked_lm_positions"], features["masked_lm_weights"]):
    p = pos[w > 0]
    breaks = np.flatnonzero(np.diff(p) != 1)
    out.append(tuple(sorted(np.diff(np.r_[0, breaks + 1, len(p)]).tolist())))
  return out


@pytest.mark.parametrize("mode,favor_shorter,p", [
    ("fixed", True, [6 / 11, 3 / 11, 2 / 11]),  # p(n) prop. to 1/n
    ("fixed", False, [1 / 3, 1 / 3, 1 / 3]),  # uniform
    ("faithful", False, [2 / 11, 3 / 11, 6 / 11]),  # the original reverses 1/n
])
def test_ngram_lengths_follow_the_formula(mode, favor_shorter, p):
  # Every word one piece, 509 words, a budget of 3 tokens. The first n-gram drawn always fits:
  #   n1 = 3 (p3)                        -> runs {3}
  #   n1 = 2 (p2), then any n falls back to a 1-gram        -> {1, 2}
  #   n1 = 1 (p1), then n2 = 2 or 3 (cut to 2) -> {1, 2}; n2 = 1 -> a third 1-gram -> {1, 1, 1}
  # (adjacent spans would merge, but that has probability ~1%).
  tables = _tables(5000)
  config = examples.ExampleConfig(max_seq_length=512, max_predictions_per_seq=3, mode=mode,
                           favor_shorter_ngram=favor_shorter)
  rng = np.random.default_rng(0)
  pairs = [examples.SegmentPair(rng.integers(5, 5005, 254), rng.integers(5, 5005, 255), 0)
           for _ in range(4000)]
  runs = collections.Counter(_run_lengths(masking.mask_examples(pack(pairs), 1, tables, config)))
  p1, p2, p3 = p
  expected = {(3,): p3, (1, 2): p2 + p1 * (p2 + p3), (1, 1, 1): p1 * p1}
  observed = {k: runs[k] / len(pairs) for k in expected}
  assert all(abs(observed[k] - expected[k]) < 0.025 for k in expected), (observed, expected)


def test_ngram_lengths_in_long_sequences():
  # With a budget far below the sequence, spans rarely overlap or hit the budget: the realised
  # lengths stay within a few points of p(n) prop. to 1/n (overlaps reject longer ones a bit more).
  tables = _tables(5000)
  config = examples.ExampleConfig(max_seq_length=4096, max_predictions_per_seq=60)
  rng = np.random.default_rng(2)
  pairs = [examples.SegmentPair(rng.integers(5, 5005, 2046), rng.integers(5, 5005, 2047), 0)
           for _ in range(200)]
  masked = masking.mask_examples(pack(pairs), 3, tables, config)
  lengths = collections.Counter(n for runs in _run_lengths(masked) for n in runs)
  total = sum(lengths.values())
  for n, p in zip((1, 2, 3), (6 / 11, 3 / 11, 2 / 11)):
    assert abs(lengths[n] / total - p) < 0.03, (n, lengths)


def test_whole_words_are_masked_together_within_a_segment():
  tables = _tables(3000, word_start_share=0.4)
  config = examples.ExampleConfig(max_seq_length=128)
  docs = _documents(np.random.default_rng(4), 100, tables.vocab_size)
  pairs = examples.make_segment_pairs(docs, 0, config, word_start=tables.word_start)
  f = masking.mask_examples(pack(pairs), 5, tables, config)
  for i, pair in enumerate(pairs):
    original, length = _unmasked(pair, 128)
    masked = np.zeros(128, bool)
    masked[f["masked_lm_positions"][i][f["masked_lm_weights"][i] > 0]] = True
    # A word: a piece starting with "▁" or the first piece of a segment, and what follows it.
    starts = tables.word_start[original] | np.isin(np.arange(128), [1, len(pair.tokens_a) + 2])
    starts[[0, len(pair.tokens_a) + 1, length - 1]] = True  # specials end words
    word = np.cumsum(starts)
    for w in np.unique(word[masked]):
      assert masked[word == w].all()


def test_a_word_never_crosses_the_middle_sep_in_fixed_mode():
  # B starts with a continuation piece (as front truncation can leave it). The original joins it to
  # A's last word, a 2-piece word that a budget of 1 never takes; fixed makes it a word of its own.
  tables = examples.vocab_tables(SPECIALS + ["▁x", "y"])
  pair = examples.SegmentPair(np.full(10, 5), np.array([6] + [5] * 9), 0)
  config = examples.ExampleConfig(max_seq_length=32, max_predictions_per_seq=1)
  for mode, can_mask in (("fixed", True), ("faithful", False)):
    f = masking.mask_examples(pack([pair] * 500), 0, tables,
                               dataclasses.replace(config, mode=mode))
    masked = set(f["masked_lm_positions"][:, 0].tolist())
    assert f["masked_lm_weights"].sum() == 500
    assert (10 in masked and 12 in masked) == can_mask  # A's last token, B's first
    assert len(masked) == (20 if can_mask else 18)


def test_mask_budget_counts_as_each_mode_says():
  tables = _tables(5000)
  pair = examples.SegmentPair(np.arange(5, 20), np.arange(20, 35), 0)  # 30 one-piece words
  for mode, expected in (("fixed", 4), ("faithful", 5)):  # round(30 * .15), round(33 * .15)
    f = masking.mask_example(pair, 0, tables, examples.ExampleConfig(max_seq_length=64, mode=mode))
    assert f["masked_lm_weights"].sum() == expected
  config = examples.ExampleConfig(max_seq_length=64, masked_lm_prob=0.5, max_predictions_per_seq=7)
  assert masking.mask_example(pair, 0, tables, config)["masked_lm_weights"].sum() == 7
  assert examples.ExampleConfig(max_seq_length=128).max_predictions == 20
  assert examples.ExampleConfig(max_seq_length=512).max_predictions == 77


def test_random_replacements_never_special_in_fixed_mode():
  tables = _tables(15)  # 20 ids: a quarter of random draws would be special in the original
  rng = np.random.default_rng(5)
  pairs = [examples.SegmentPair(rng.integers(5, 20, 60), rng.integers(5, 20, 60), 0) for _ in range(300)]
  drawn = {}
  for mode in ("fixed", "faithful"):
    f = masking.mask_examples(pack(pairs), 6, tables,
                               examples.ExampleConfig(max_seq_length=128, mode=mode))
    rows, cols = np.nonzero(f["masked_lm_weights"])
    now = f["input_ids"][rows, f["masked_lm_positions"][rows, cols]]
    drawn[mode] = now[(now != MASK) & (now != f["masked_lm_ids"][rows, cols])]
  assert len(drawn["fixed"]) > 300 and (drawn["fixed"] >= 5).all()
  assert np.isin(drawn["faithful"], [PAD, UNK, CLS, SEP]).any()


def test_word_start_rules():
  pieces = ["▁the", "ing", ".", "..", "95", "ïve", "<unk>", "'", "s", "▁", "A"]
  tables = examples.vocab_tables(SPECIALS + pieces)
  assert tables.word_start[5:].tolist() == [True] + [False] * 8 + [True, False]
  # google-research/albert `_is_start_piece_sp`, worked by hand for each piece.
  assert tables.word_start_original[5:].tolist() == [
      True, False, True, False, True, True, True, True, False, True, False]
  assert tables.replacement_ids.tolist() == list(range(5, 5 + len(pieces)))


# ----------------------------------------------------------------------------- segment pairs

def test_hand_checked_document():
  # max_seq_length 11 leaves 8 tokens for A + B; short_seq_prob 0 keeps the target at 8.
  s1, s2, s3 = [10, 11, 12], [13, 14, 15, 16, 17], [18, 19]
  s4, s5 = [20, 21, 22, 23, 24, 25, 26], [27, 28]
  t1, t2, t3 = [40], [41], [42, 43, 44, 45, 46, 47]
  doc1 = [np.array(s, np.int32) for s in (s1, s2, s3, s4, s5)]
  doc2 = [np.array(s, np.int32) for s in (t1, t2, t3)]
  # Worked through `create_instances_from_document`:
  # doc1: s1 (3) + s2 (5) reach 8: chunk [s1, s2], A = s1, B = s2, no truncation.
  #       s3 (2) + s4 (7) reach 9: chunk [s3, s4], A = s3, B = s4, one token cut from the longer
  #       (s4), from its front or its back.
  #       s5 is the last sentence: a one-segment chunk. The original takes B from another
  #       document (label 1); fixed splits it at its only word boundary: [27] | [28].
  # doc2: t1 + t2 + t3 (1 + 1 + 6) reach 8: chunk of 3, A = t1 or t1 + t2 (a_end in {1, 2}).
  # Each pair is kept (label 0) or swapped (label 1).
  def both(a, b):
    return {(tuple(a), tuple(b), 0), (tuple(b), tuple(a), 1)}
  expected_doc1 = [both(s1, s2), both(s3, s4[1:]) | both(s3, s4[:-1]), both([27], [28])]
  expected_doc2 = [both(t1, t2 + t3) | both(t1 + t2, t3)]
  config = examples.ExampleConfig(max_seq_length=11, short_seq_prob=0.0)
  tables = _tables(50)
  seen = [set() for _ in range(4)]
  for seed in range(40):
    pairs = examples.make_segment_pairs([doc1, doc2], seed, config, word_start=tables.word_start)
    assert len(pairs) == 4
    for k, (pair, allowed) in enumerate(zip(pairs, expected_doc1 + expected_doc2)):
      got = (tuple(pair.tokens_a.tolist()), tuple(pair.tokens_b.tolist()),
             pair.sentence_order_label)
      assert got in allowed, (seed, k, got)
      seen[k].add(got)
  # Over 40 seeds every variant shows up: both labels, both cut ends, both a_end.
  assert [len(s) for s in seen] == [2, 4, 2, 4]

  # faithful: the lone s5 gets B from doc2, from a random sentence to the end of the target.
  stats = examples.PairStats()
  faithful = examples.ExampleConfig(max_seq_length=11, short_seq_prob=0.0, mode="faithful")
  for seed in range(10):
    third = examples.make_segment_pairs([doc1, doc2], seed, faithful, stats=stats)[2]
    assert third.tokens_a.tolist() == s5 and third.sentence_order_label == 1
    assert third.tokens_b.tolist() in ([40, 41, 42, 43, 44, 45], [41, 42, 43, 44, 45, 46], t3)
  assert stats.random_document_b == 10

  # A one-word sentence cannot be split (fixed: dropped); the original pairs it with doc1.
  word = [np.array([50, 51], np.int32)]
  tables = examples.vocab_tables(SPECIALS + ["▁x"] * 46 + ["x"] * 10)  # 51 is a continuation piece
  stats = examples.PairStats()
  assert examples.make_segment_pairs([doc1, word], 0, config, word_start=tables.word_start,
                              stats=stats)[3:] == []
  assert stats.chunks_dropped == 1


def test_sop_pairs_are_in_document_order_and_balanced():
  # Token ids are positions in one running text, so order is visible: B follows A <=> B > A.
  rng = np.random.default_rng(7)
  docs, doc_of, start = [], [], 5
  for d in range(1000):
    lengths = rng.integers(3, 40, size=rng.integers(1, 30))
    docs.append([np.arange(start + o, start + o + n, dtype=np.int32)
                 for o, n in zip(np.r_[0, np.cumsum(lengths)[:-1]], lengths)])
    doc_of += [d] * int(lengths.sum())
    start += int(lengths.sum())
  doc_of = np.array([-1] * 5 + doc_of)
  tables = examples.vocab_tables(SPECIALS + ["▁x"] * (start - 5))
  for nsp in (False, True):
    config = examples.ExampleConfig(max_seq_length=128, random_next_sentence=nsp)
    pairs = examples.make_segment_pairs(docs, 8, config, word_start=tables.word_start)
    labels = np.array([p.sentence_order_label for p in pairs])
    assert len(pairs) > 2500 and abs(labels.mean() - 0.5) < 0.03
    for p in pairs:
      a, b = p.tokens_a, p.tokens_b
      assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # contiguous text
      same_doc = doc_of[a[0]] == doc_of[b[0]]
      if p.sentence_order_label == 0:
        assert same_doc and b[0] > a[-1]
      elif nsp:
        assert not same_doc  # NSP: B from another document
      else:
        assert same_doc and a[0] > b[-1]  # SOP: the same text, swapped


def test_truncation_matches_the_original_loop():
  def original(a, b, max_num_tokens, coins):
    a, b, coins = list(a), list(b), iter(coins)
    while len(a) + len(b) > max_num_tokens:
      trunc = a if len(a) > len(b) else b
      if next(coins) < 0.5:
        del trunc[0]
      else:
        trunc.pop()
    return a, b

  rng = np.random.default_rng(9)
  for _ in range(300):
    la, lb, limit = rng.integers(1, 60), rng.integers(1, 60), rng.integers(2, 80)
    a, b = np.arange(la), np.arange(100, 100 + lb)
    seed = int(rng.integers(1 << 30))
    got = examples.truncate_seq_pair(a, b, limit, np.random.default_rng(seed))
    coins = np.random.default_rng(seed).random(max(0, la + lb - limit))
    assert [x.tolist() for x in got] == list(original(a, b, limit, coins))


def test_same_seed_same_examples_other_seed_differs():
  tables = _tables(3000, word_start_share=0.6)
  config = examples.ExampleConfig(max_seq_length=128)
  docs = _documents(np.random.default_rng(10), 60, tables.vocab_size)

  def make(pair_seed, mask_seed, documents=docs):
    pairs = examples.make_segment_pairs(documents, pair_seed, config, word_start=tables.word_start)
    return pairs, masking.mask_examples(pack(pairs), mask_seed, tables, config)

  pairs, f = make(1, 2)
  pairs2, f2 = make(1, 2)
  assert all((f[k] == f2[k]).all() for k in f)
  assert all((p.tokens_a == q.tokens_a).all() and (p.tokens_b == q.tokens_b).all()
             for p, q in zip(pairs, pairs2))
  _, f3 = make(1, 3)  # the same pairs, other masks
  assert (f["masked_lm_positions"] != f3["masked_lm_positions"]).any()
  assert all((f[k] == f3[k]).all() for k in ("attention_mask", "token_type_ids", "sentence_order_label"))
  pairs4, _ = make(4, 2)
  assert [len(p.tokens_a) for p in pairs4] != [len(p.tokens_a) for p in pairs]
  # A document's pairs depend on its own seed (seed, index), not on the documents around it.
  more, _ = make(1, 2, docs + _documents(np.random.default_rng(11), 5, tables.vocab_size))
  assert [p.tokens_a.tolist() for p in more[:len(pairs)]] == [p.tokens_a.tolist() for p in pairs]
  # One pair masked alone with a seed is reproducible too.
  one = masking.mask_example(pairs[0], 5, tables, config)
  assert all((one[k] == masking.mask_example(pairs[0], 5, tables, config)[k]).all() for k in one)


# ----------------------------------------------------------------------------- records and CLIs

def test_records_round_trip(tmp_path):
  tables = _tables(3000, word_start_share=0.6)
  config = examples.ExampleConfig(max_seq_length=64)
  docs = _documents(np.random.default_rng(12), 20, tables.vocab_size)
  f = masking.mask_examples(pack(examples.make_segment_pairs(docs, 0, config)), 0, tables,
                             config)
  rows = [{k: v[i] for k, v in f.items()} for i in range(len(f["input_ids"]))]
  for row in rows:
    back = records.decode_example(records.encode_example(row))
    assert all(back[k].dtype == row[k].dtype and (back[k] == row[k]).all() for k in row)
  for name in ("x.array_record", "x.jsonl"):
    assert records.write_examples(rows, tmp_path / name) == len(rows)
    back = list(records.read_examples(tmp_path / name))
    assert len(back) == len(rows)
    assert all((b[k] == r[k]).all() and b[k].dtype == r[k].dtype
               for b, r in zip(back, rows) for k in r)
  assert sorted(os.listdir(tmp_path)) == ["x.array_record", "x.jsonl"]  # no temporary left


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
  """Text files from the embedded corpus's eval split (one .gz, one bad line) and an SPM model."""
  from albert_jax.data.train_tokenizer import train_spm
  root = tmp_path_factory.mktemp("tiny")
  docs = list(corpus.embedded_documents("eval"))
  text = "\n\n".join("\n".join(d) for d in docs[:25]).encode()
  (root / "text").mkdir()
  (root / "text" / "a.txt").write_bytes(text + b"\n\nbad \xff byte here.\nnext line.\n")
  (root / "text" / "b.txt.gz").write_bytes(
      gzip.compress("\n\n".join("\n".join(d) for d in docs[25:]).encode()))
  model = train_spm([s for d in docs for s in d], 400, root / "spm")
  return root / "text", str(model)


def _cli(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_create_pretraining_data_cli(tiny_corpus, tmp_path):
  root, model = tiny_corpus
  common = [f"--input={root}", f"--spm_model={model}", "--max_seq_length=64", "--dupe_factor=2",
            "--seed=3"]
  _cli("albert_jax.data.create_pretraining_data", *common, f"--output={tmp_path / 'a.jsonl'}")
  _cli("albert_jax.data.create_pretraining_data", *common,
       f"--output={tmp_path / 'out' / 'b.array_record'}")
  jsonl = list(records.read_examples(tmp_path / "a.jsonl"))
  arrays = list(records.read_examples(tmp_path / "out" / "b.array_record"))
  # Same seed, same examples, whichever the format.
  assert len(jsonl) == len(arrays) > 50
  assert all((x[k] == y[k]).all() for x, y in zip(jsonl, arrays) for k in masking.FEATURE_NAMES)
  assert arrays[0]["input_ids"].shape == (64,) and arrays[0]["masked_lm_ids"].shape == (10,)
  stats = json.loads((tmp_path / "a.jsonl.stats.json").read_text())
  assert stats["examples"] == len(jsonl) and stats["corpus"]["files"] == 2
  assert stats["corpus"]["invalid_utf8_lines"] == 1
  assert stats["pairs"]["pairs"] == len(jsonl)
  assert sorted(os.listdir(tmp_path / "out")) == ["b.array_record", "b.array_record.stats.json"]

  out = _cli("albert_jax.data.report", f"--examples={tmp_path / 'out' / 'b.array_record'}",
             f"--spm_model={model}").stdout
  assert f"Examples: {len(arrays):,}" in out and "masked spans, in words" in out
  assert "checks: 0 special tokens masked, 0 positions outside" in out
  assert "1 lines with invalid UTF-8" in out


def test_report_on_a_corpus(tiny_corpus):
  root, model = tiny_corpus
  text = report.report_corpus(str(root), AlbertTokenizer(model), examples.ExampleConfig(128), seed=1)
  masked = float(text.split("masked: ")[1].split("%")[0])
  assert 14 < masked < 16 and "Corpus: " in text and "sequence lengths" in text
  assert "checks: 0 special tokens masked, 0 positions outside the sequence, 0 examples" in text


def test_a_pair_table_holds_and_gathers_the_pairs_it_packs():
  """The packed form every source gives: pairs at any indices (repeats, any order, none) are the
  pairs packed, token for token; masking a gather equals masking the pairs packed directly."""
  rng = np.random.default_rng(13)
  pairs = [examples.SegmentPair(rng.integers(5, 99, rng.integers(1, 9)).astype(np.int32),
                                rng.integers(5, 99, rng.integers(0, 9)).astype(np.int32),
                                int(rng.integers(2))) for _ in range(40)]
  table = pack(pairs)
  assert len(table) == 40 and [p.tokens_a.tolist() for p in table] == [
      p.tokens_a.tolist() for p in pairs]
  for indices in ([3, 1, 3, 39], [], list(range(40))[::-1]):
    got = table.pairs_at(indices)
    want = pack([pairs[i] for i in indices])
    assert all(np.array_equal(getattr(got, f), getattr(want, f))
               for f in ("tokens", "starts", "len_a", "labels"))
    assert got.tokens.dtype == np.int32 and got.starts.dtype == np.int64
  tables = _tables(100)
  config = examples.ExampleConfig(max_seq_length=24)
  a = masking.mask_examples(table.pairs_at([5, 2, 7]), 4, tables, config)
  b = masking.mask_examples(pack([pairs[5], pairs[2], pairs[7]]), 4, tables, config)
  assert all(np.array_equal(a[k], b[k]) for k in masking.FEATURE_NAMES)
  assert table.tokens[table.starts[5]:table.starts[6]].tolist() == [
      *pairs[5].tokens_a, *pairs[5].tokens_b]  # masking wrote into a copy
  with pytest.raises(ValueError, match="PairTable"):
    PairTable(table.tokens[:-1], table.starts, table.len_a, table.labels)
