"""fill-mask and feature extraction against `transformers.pipeline` on the same directories."""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

import albert_jax
from albert_jax import hf_convert, inference
from albert_jax.checkpoints import model_dir
from albert_jax import model as M
from helpers import random_params

WORDS = ("the cat dog bird fish model sat ran on under over a mat rug tree house is was big small "
         "red blue green happy sad quick slow brown fox jumps lazy hello world i am it this that "
         "simple test of with and to in my your we they river mountain yellow purple orange "
         "window garden kitchen library teacher student doctor farmer engineer musician painter "
         "quietly loudly yesterday tomorrow because although whenever jumped walked talked "
         "played watched cooked wrote read sang danced zebra giraffe elephant penguin kangaroo "
         "dolphin octopus butterfly crocodile vegetable chocolate sandwich breakfast dinner"
         ).split()
TEXTS = ["Hello I'm a [MASK] model.", "The [MASK] sat on the mat.", "[MASK]",
         "the quick brown fox jumps over the lazy [MASK]."]
LONG = "the quick brown fox jumps over the lazy [MASK] under a big red tree in the house."
TWO_MASKS = "The [MASK] sat on the [MASK]."
# Lengths 3 to 20 tokens (two length buckets): with batch_size=2, several batches and padding.
BATCH = TEXTS + [TWO_MASKS, LONG, "a [MASK] b"]


def _sentences(n=400, seed=0):
  rs = np.random.RandomState(seed)
  return [" ".join(rs.choice(WORDS, rs.randint(4, 12))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """A tiny SentencePiece model and random ALBERT weights, as HF and Orbax directories."""
  tmp = tmp_path_factory.mktemp("pipelines")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_sentences()), model_prefix=str(tmp / "sp"), vocab_size=240,
      pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols="[CLS],[SEP],[MASK]",
      minloglevel=2)
  spm_path = str(tmp / "sp.model")
  vocab = spm.SentencePieceProcessor(model_file=spm_path).get_piece_size()
  cfg = M.AlbertConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=40)
  # Noise of 0.5 spreads the logits, so no two of the top-k scores are within float error.
  mlm = random_params(cfg, "masked_lm", seed=1, scale=0.5)
  pre = random_params(cfg, "pretraining", seed=2, scale=0.5)
  hf_convert.save(cfg, mlm, tmp / "hf", head="masked_lm", tokenizer=spm_path)
  hf_convert.save(cfg, pre, tmp / "hf_pre", head="pretraining", tokenizer=spm_path)
  model_dir.save_model_dir(tmp / "orbax", cfg, mlm, "masked_lm", spm_model=spm_path)
  model_dir.save_model_dir(tmp / "orbax_no_spm", cfg, mlm, "masked_lm")
  return types.SimpleNamespace(hf=str(tmp / "hf"), hf_pre=str(tmp / "hf_pre"),
                               orbax=str(tmp / "orbax"), orbax_no_spm=str(tmp / "orbax_no_spm"),
                               spm=spm_path, cfg=cfg)


def _hf_pipeline(task, path):
  # The slow tokenizer: ours reproduces it id for id (the fast one is a separate conversion).
  return transformers.pipeline(task, model=path,
                               tokenizer=transformers.AlbertTokenizer.from_pretrained(path))


@pytest.fixture(scope="module")
def hf_fill(dirs):
  return _hf_pipeline("fill-mask", dirs.hf)


@pytest.fixture(scope="module")
def fill(dirs):
  return inference.pipeline("fill-mask", model=dirs.hf, batch_size=2)


def _assert_same(ours, theirs, path="result"):
  """Same nesting, tokens, order, token_str and sequence; scores to 1e-4."""
  assert type(ours) is type(theirs), path
  if isinstance(theirs, dict):
    assert ours.keys() == theirs.keys() == {"score", "token", "token_str", "sequence"}, path
    assert (ours["token"], ours["token_str"], ours["sequence"]) == (
        theirs["token"], theirs["token_str"], theirs["sequence"]), path
    assert isinstance(ours["score"], float) and isinstance(ours["token"], int), path
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4), path
    return
  assert len(ours) == len(theirs), path
  for i, (a, b) in enumerate(zip(ours, theirs)):
    _assert_same(a, b, f"{path}[{i}]")


# ----------------------------------------------------------------------------- fill-mask

def test_fill_mask_single_texts_match_transformers(fill, hf_fill):
  for text in TEXTS:
    for top_k in (1, 5):
      theirs = hf_fill(text, top_k=top_k)
      assert len(theirs) == top_k and isinstance(theirs[0], dict)
      _assert_same(fill(text, top_k=top_k), theirs)
  # Scores are softmax probabilities: distinct, and all of the vocabulary sums to one.
  everything = fill(TEXTS[0], top_k=10_000)
  assert len(everything) == fill.tokenizer.vocab_size
  assert sum(c["score"] for c in everything) == pytest.approx(1, abs=1e-4)
  assert min(-np.diff([c["score"] for c in everything[:6]])) > 1e-5  # no near-ties to flip


def test_fill_mask_batch_matches_transformers(fill, hf_fill):
  compiled = inference._mlm_probs._cache_size()
  _assert_same(fill(BATCH, top_k=3), hf_fill(BATCH, top_k=3))
  # A list of one comes back unwrapped, as transformers does it.
  _assert_same(fill([TEXTS[1]]), hf_fill([TEXTS[1]]))
  assert isinstance(fill([TEXTS[1]])[0], dict)
  # Shapes are bucketed: a few compiles for all of the above, none when run again.
  assert inference._mlm_probs._cache_size() - compiled <= 4
  compiled = inference._mlm_probs._cache_size()
  fill(BATCH, top_k=2)
  assert inference._mlm_probs._cache_size() == compiled


def test_fill_mask_two_masks_matches_transformers(fill, hf_fill):
  ours, theirs = fill(TWO_MASKS, top_k=4), hf_fill(TWO_MASKS, top_k=4)
  assert len(theirs) == 2 and all(len(r) == 4 for r in theirs)
  assert "[MASK]" in theirs[0][0]["sequence"]  # the other mask stays, special tokens kept
  _assert_same(ours, theirs)


def test_fill_mask_targets_match_transformers(fill, hf_fill):
  targets = ["▁the", "▁cat", "dog", "▁mat"]  # "dog" is no piece: its first piece is used
  for text in (TEXTS[1], TWO_MASKS):
    _assert_same(fill(text, targets=targets), hf_fill(text, targets=targets))
    _assert_same(fill(text, targets="▁the", top_k=5), hf_fill(text, targets="▁the", top_k=5))


def test_fill_mask_pretraining_checkpoint(dirs):
  # transformers loads AlbertForMaskedLM from it (dropping SOP and the pooler); we keep its head.
  texts = [TEXTS[0], TWO_MASKS]
  _assert_same(inference.pipeline("fill-mask", model=dirs.hf_pre)(texts),
               _hf_pipeline("fill-mask", dirs.hf_pre)(texts))


def test_fill_mask_errors(fill, dirs, tmp_path):
  with pytest.raises(ValueError, match=r"No mask_token \(\[MASK\]\)"):
    fill("no mask here")
  with pytest.raises(ValueError, match="max_position_embeddings=40"):
    fill("the cat sat " * 20 + "[MASK]")
  with pytest.raises(ValueError, match="Unknown task 'summarization'"):
    inference.pipeline("summarization", model=dirs.hf)
  base = tmp_path / "base"
  hf_convert.save(dirs.cfg, random_params(dirs.cfg, "base", 0), base, tokenizer=dirs.spm)
  with pytest.raises(ValueError, match="base checkpoint, which has no masked-LM head"):
    inference.pipeline("fill-mask", model=base)


def test_bad_arguments_are_refused_naming_them(fill, dirs):
  """Issue 21, 10: top_k -1 returned every token but one, batch_size 0 failed inside range(), a
  text with a lone surrogate (a non-UTF-8 byte from the command line) failed in SentencePiece's
  C++ cast, and a text without [MASK] was echoed whole in the error."""
  for top_k in (0, -1):
    with pytest.raises(ValueError, match=rf"top_k={top_k} \(--top_k\): candidates per \[MASK\], "
                       "at least 1"):
      fill("the [MASK] sat", top_k=top_k)
  for batch_size in (0, -1):
    with pytest.raises(ValueError, match=rf"batch_size={batch_size} \(--batch_size\)"):
      inference.pipeline("fill-mask", model=dirs.hf, batch_size=batch_size)
  with pytest.raises(ValueError, match=r"text 2 \('caf\\udce9 \[MASK\]'\) is not valid Unicode "
                     r"at character 3 \('\\udce9'\): pass UTF-8 text"):
    fill(["the [MASK] sat", "caf\udce9 [MASK]"])
  with pytest.raises(ValueError) as e:
    fill("no mask here " * 1000)
  assert len(str(e.value)) < 200 and "(13000 characters)" in str(e.value)


def test_cli_refuses_a_non_utf8_argument(dirs):
  """What the command line makes of a Latin-1 byte (a lone surrogate), refused by name."""
  proc = subprocess.run([sys.executable, "-c", _CLI, "fill-mask", "--model", dirs.orbax,
                         b"caf\xe9 [MASK]"], capture_output=True, text=True, timeout=120,
                        cwd=Path(__file__).resolve().parents[1])
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "error: text 1 ('caf\\udce9 [MASK]') is not valid Unicode" in proc.stderr


# ----------------------------------------------------------------------------- Orbax directories

def test_orbax_dir_matches_transformers(dirs, hf_fill):
  ours = inference.pipeline("fill-mask", model=dirs.orbax, batch_size=2)
  _assert_same(ours(BATCH, top_k=5), hf_fill(BATCH, top_k=5))


def test_missing_spiece_model_is_a_clear_error(dirs):
  with pytest.raises(FileNotFoundError, match=f"{dirs.orbax_no_spm} has no spiece.model"):
    inference.pipeline("fill-mask", model=dirs.orbax_no_spm)
  with pytest.raises(FileNotFoundError, match="orbax_no_spm has no spiece.model"):
    inference.pipeline("feature-extraction", model=dirs.orbax_no_spm)
  # tokenizer= supplies one: a spiece.model file, a directory, or an AlbertTokenizer.
  reference = inference.pipeline("fill-mask", model=dirs.hf)(TEXTS[1])
  for tok in (dirs.spm, dirs.hf, albert_jax.AlbertTokenizer.from_pretrained(dirs.hf)):
    pipe = inference.pipeline("fill-mask", model=dirs.orbax_no_spm, tokenizer=tok)
    assert pipe(TEXTS[1]) == reference


# ----------------------------------------------------------------------------- feature extraction

def test_features_match_transformers(dirs):
  theirs = _hf_pipeline("feature-extraction", dirs.hf)
  ours = inference.pipeline("feature-extraction", model=dirs.hf, batch_size=4)
  texts = ["Hello world.", "The cat sat on the mat.", "a", "the quick brown fox jumps over it."]
  for text in texts[:2]:
    mine, ref = ours(text), theirs(text)
    assert isinstance(mine, list) and np.shape(mine) == np.shape(ref)
    np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=0)
  mine, ref = ours(texts), theirs(texts)
  assert len(mine) == len(ref) == 4
  for a, b in zip(mine, ref):
    assert np.shape(a) == np.shape(b) and np.shape(a)[0] == 1
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  arrays = ours(texts, return_tensors=True)
  for a, b in zip(arrays, theirs(texts, return_tensors=True)):
    assert isinstance(a, np.ndarray) and a.shape == tuple(b.shape) and a.dtype == np.float32
    np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0)
  # Truncation to the model's 40 positions, as transformers does it.
  long = "the cat sat on the mat " * 10
  with pytest.raises(ValueError, match="pass truncation=True"):
    ours(long)
  mine, ref = ours(long, truncation=True), theirs(long, truncation=True)
  assert np.shape(mine) == np.shape(ref) == (1, 40, 32)
  np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=0)


def test_pooled_features_match_transformers_albert_model(dirs):
  # transformers' feature-extraction pipeline only returns the first output (last_hidden_state),
  # so the pooled output is compared with AlbertModel's pooler_output directly.
  ours = inference.pipeline("feature-extraction", model=dirs.hf_pre)
  ref = transformers.AlbertModel.from_pretrained(dirs.hf_pre).eval()
  tok = transformers.AlbertTokenizer.from_pretrained(dirs.hf_pre)
  texts = ["Hello world.", "The cat sat on the very big mat."]
  pooled = ours(texts, pooled=True, return_tensors=True)
  hidden = ours(texts, return_tensors=True)
  for text, mine, states in zip(texts, pooled, hidden, strict=True):
    with torch.no_grad():
      out = ref(**tok(text, return_tensors="pt"))
    assert mine.shape == (1, 32)
    np.testing.assert_allclose(mine, out.pooler_output.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(states, out.last_hidden_state.numpy(), atol=1e-5, rtol=0)
  assert [np.shape(x) for x in ours(texts, pooled=True)] == [(1, 32)] * 2
  with pytest.raises(ValueError, match="has no pooler weights"):
    inference.pipeline("feature-extraction", model=dirs.hf)("hello", pooled=True)


def test_packed_features_equal_one_text_to_a_row(dirs):
  """Many short texts, several to a row (rows of the model's 40 positions, 2 rows per forward,
  so several forwards): each text's last hidden state and pooled output are those it has alone."""
  pipe = inference.pipeline("feature-extraction", model=dirs.hf_pre, batch_size=2)
  texts = _sentences(14, seed=3) + ["a", "The cat sat on the very big mat by the big red tree."]
  for pooled in (False, True):
    alone = pipe(texts, pooled=pooled, return_tensors=True)
    packed = pipe(texts, pooled=pooled, return_tensors=True, packed=True)
    for a, b in zip(packed, alone, strict=True):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert np.shape(pipe(texts[:2], packed=True)[1]) == np.shape(pipe(texts[1]))


# ----------------------------------------------------------------------------- CLI

# `python -m albert_jax.inference ARGS`, then a check that neither torch nor transformers was loaded.
_CLI = """import runpy, sys
try:
  runpy.run_module("albert_jax.inference", run_name="__main__", alter_sys=True)
except SystemExit as e:
  rc = e.code
assert not {"torch", "transformers"} & set(sys.modules), "imported torch or transformers"
sys.exit(rc)
"""


def test_cli_prints_the_top_candidates(dirs, hf_fill):
  top = hf_fill(TEXTS[1], top_k=3)
  proc = subprocess.run(
      [sys.executable, "-c", _CLI, "fill-mask", "--model", dirs.orbax, TEXTS[1], "--top_k", "3"],
      capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0] == TEXTS[1] and len(lines) == 4
  for line, c in zip(lines[1:], top):
    assert repr(c["token_str"]) in line and c["sequence"] in line and f"{c['score']:.4f}" in line
