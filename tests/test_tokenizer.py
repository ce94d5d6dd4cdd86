"""The tokenizer and its trainer, checked id for id against transformers 4's slow AlbertTokenizer.

Vocabularies are trained here, in seconds, from English text this file writes; the reference is
`transformers.AlbertTokenizer(vocab_file=...)` (the SentencePiece class, not the fast one).
"""

import gzip
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import transformers
from sentencepiece import sentencepiece_model_pb2

from albert_jax.data import tokenizer as tokenizer_lib
from albert_jax.data import train_tokenizer
from albert_jax.data.tokenizer import AlbertTokenizer

REPO = Path(__file__).resolve().parents[1]

# experiments/tokenizer_tf5_diff.py reads this list with ast.literal_eval: keep it a literal.
HARD_STRINGS = [
    "Hello world!",
    "The Quick BROWN fox, iPhone and McDonald's.",
    "Café naïve façade résumé Zoë Ångström Dvořák Łódź São Paulo",
    "crème brûlée at the CAFÉ in Zürich",
    "He said ``like this'' and ''that'' then `quote'.",
    "“Curly quotes” and ‘single ones’ — with dashes – too.",
    "1,000,000 people; 9, 10, 11; 9,9 and 2,345.67 or 1,000,",
    "It costs £1,200 or €3,50 (about 12%).",
    "In 2019,the rate was 3,5,7,9,",
    "東京 is Tokyo and 北京 is Beijing; 한국어 and русский текст.",
    "Emoji: 😀👍🏽 and ☃ snowman",
    "tabs\there\tand\nnew\nlines\r\nand  many   spaces",
    "",
    "   ",
    "\t\n ",
    "The capital of France is [MASK].",
    "[MASK] is the [MASK] of [MASK]",
    "a[MASK]b [SEP] c [CLS] d <pad> e <unk> f",
    "two  spaces   before [MASK]   and after",
    "[mask] lower-case is not special",
    "Visit https://www.example.com/path?query=1&x=2 or mail john.doe@example.org",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "ΟΔΟΣ ΣΑΣ Σ ΑΣ.",
    "Ǆemal İstanbul ﬁnance ℌ ⅀ ½ ² ²,",
    "¹,²,³, and 4², then 5,",
    "mIxEd CaSe WoRdS ThRoUgHoUt",
    "(parentheses) \"double\" - hyphen . dot – en £ €",
    "no-break\xa0space and\u3000ideographic space and zero\u200bwidth",
]


def _corpus(seed: int = 0, n: int = 700) -> list[str]:
  """Varied English sentences: numbers with commas, accents, quotes, URLs, a little CJK."""
  rng = random.Random(seed)
  names = ["José", "Zoë", "Müller", "François", "Chloé", "Søren", "Björk", "Ana", "John", "Mary",
           "Łukasz", "Dvořák", "Nguyễn", "Renée", "Smith", "O'Brien", "McDonald", "NASA", "iPhone"]
  places = ["São Paulo", "Zürich", "Montréal", "Kraków", "Málaga", "Reykjavík", "London", "Paris",
            "New York", "Tokyo", "Berlin", "Ålesund"]
  nouns = ["book", "car", "house", "river", "city", "computer", "student", "teacher", "song",
           "garden", "window", "letter", "company", "market", "price", "year", "island", "bridge",
           "café", "résumé", "piano", "theory", "language", "network", "history", "science"]
  verbs = ["bought", "sold", "built", "wrote", "found", "visited", "painted", "studied", "opened",
           "closed", "measured", "described", "reported", "announced", "translated"]
  adjs = ["old", "new", "small", "large", "naïve", "beautiful", "quiet", "famous", "strange",
          "modern", "ancient", "simple", "complex", "bright", "dark"]
  cjk = ["東京", "北京", "日本語", "中文", "한국어"]

  def num():
    return f"{rng.randint(1, rng.choice([99, 9999, 10**8])):,}"

  templates = [
      lambda: f"{rng.choice(names)} {rng.choice(verbs)} {num()} {rng.choice(nouns)}s in "
              f"{rng.choice(places)}.",
      lambda: f"The population of {rng.choice(places)} was {num()} in {rng.randint(1800, 2024)}, "
              f"up from {num()}.",
      lambda: f"``The {rng.choice(adjs)} {rng.choice(nouns)} is here,'' said {rng.choice(names)}.",
      lambda: f"\"{rng.choice(adjs).title()} {rng.choice(nouns)}s\" cost £{num()} or €{num()}.",
      lambda: f"“A {rng.choice(adjs)} {rng.choice(nouns)}” – {rng.choice(names)} "
              f"{rng.choice(verbs)} it (in {rng.randint(1900, 2024)}).",
      lambda: f"Visit https://www.example.com/{rng.choice(nouns)}?id={rng.randint(1, 999)} or mail "
              f"{rng.choice(names).lower()}@example.org.",
      lambda: f"The {rng.choice(adjs)} {rng.choice(nouns)} — {num()}, {num()}, and {num()} — was "
              f"{rng.choice(verbs)}.",
      lambda: f"{rng.choice(names)}'s {rng.choice(nouns)} and the {rng.choice(adjs)} "
              f"{rng.choice(nouns)} of {rng.choice(places)} ({rng.choice(cjk)}).",
      lambda: f"In {rng.randint(1900, 2024)}, {rng.randint(1, 99)}.{rng.randint(0, 9)}% of "
              f"{rng.choice(nouns)}s were {rng.choice(adjs)}; {rng.choice(names)} disagreed.",
      lambda: " ".join(rng.choice(nouns + adjs + verbs) for _ in range(rng.randint(3, 15))).upper(),
  ]
  return [rng.choice(templates)() for _ in range(n)]


def train_tiny(out_dir, vocab_size: int = 800, **flags) -> Path:
  """A tiny ALBERT vocabulary in out_dir (also used to make the transformers-5 comparison model)."""
  return train_tokenizer.train_spm(_corpus(), vocab_size, out_dir, num_threads=1, **flags)


@pytest.fixture(scope="session")
def uncased(tmp_path_factory):
  """ALBERT's setting: trained on lower-cased, accent-stripped text."""
  return str(train_tiny(tmp_path_factory.mktemp("uncased")))


@pytest.fixture(scope="session")
def cased(tmp_path_factory):
  """Trained on cased text with accents, for do_lower_case=False / keep_accents=True."""
  return str(train_tiny(tmp_path_factory.mktemp("cased"), do_lower_case=False, keep_accents=True))


_refs = {}


def reference(vocab_file, **flags):
  key = (vocab_file, tuple(sorted(flags.items())))
  if key not in _refs:
    _refs[key] = transformers.AlbertTokenizer(vocab_file=vocab_file, **flags)
  return _refs[key]


VARIANTS = [
    ("uncased", {}),
    ("uncased", {"keep_accents": True}),
    ("uncased", {"remove_space": False}),
    ("cased", {"do_lower_case": False, "keep_accents": True}),
    ("cased", {"do_lower_case": False}),
]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{'-'.join(v[1]) or 'default'}")
def pair_of_tokenizers(request):
  model, flags = request.param
  vocab_file = request.getfixturevalue(model)
  return AlbertTokenizer(vocab_file, **flags), reference(vocab_file, **flags)


def _long_word():
  return "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(600))


ALL_STRINGS = HARD_STRINGS + [_long_word(), " ".join(_corpus(seed=7, n=40))]


# ----------------------------------------------------------------------------- the vocabulary

@pytest.mark.parametrize("model", ["uncased", "cased"])
def test_trained_vocabulary_has_albert_ids(model, request):
  sp = spm.SentencePieceProcessor(model_file=request.getfixturevalue(model))
  assert [sp.id_to_piece(i) for i in range(13)] == [
      "<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "(", ")", '"', "-", ".", "–", "£", "€"]
  assert [sp.is_control(i) for i in range(5)] == [True, False, True, True, True]
  assert sp.unk_id() == 1 and sp.pad_id() == 0 and sp.bos_id() == -1 and sp.eos_id() == -1
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(Path(request.getfixturevalue(model)).read_bytes())
  spec = proto.trainer_spec  # the rest of the original's spm_train command
  assert spec.model_type == spec.UNIGRAM and spec.shuffle_input_sentence
  assert spec.character_coverage == pytest.approx(0.99995)
  assert proto.normalizer_spec.name == "nmt_nfkc"


def test_trainer_saw_preprocessed_text(uncased, cased):
  """do_lower_case: no piece of the uncased vocabulary has a capital or an accent."""
  sp = spm.SentencePieceProcessor(model_file=uncased)
  normal = [sp.id_to_piece(i) for i in range(5, len(sp))]
  assert all(p == p.lower() for p in normal)
  assert not any(c in p for p in normal for c in "éèüöçñ")
  sp = spm.SentencePieceProcessor(model_file=cased)
  cased_pieces = {sp.id_to_piece(i) for i in range(len(sp))}
  assert any(p != p.lower() for p in cased_pieces) and any("é" in p for p in cased_pieces)


def test_special_ids(uncased):
  tok = AlbertTokenizer(uncased)
  ref = reference(uncased)
  for name in ("pad", "unk", "cls", "sep", "mask"):
    assert getattr(tok, f"{name}_token") == getattr(ref, f"{name}_token")
    assert getattr(tok, f"{name}_token_id") == getattr(ref, f"{name}_token_id")
  assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
          tok.mask_token_id] == [0, 1, 2, 3, 4]
  assert tok.vocab_size == len(tok) == ref.vocab_size == len(ref) == 800
  assert tok.get_vocab() == ref.get_vocab()


def test_a_model_without_albert_specials_is_rejected(tmp_path):
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus(n=200)), vocab_size=200,
                                 model_prefix=str(tmp_path / "m"), minloglevel=2)
  with pytest.raises(ValueError, match=r"m\.model lacks .*\[CLS\]"):
    AlbertTokenizer(tmp_path / "m.model")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    AlbertTokenizer(tmp_path / "nope.model")


# ----------------------------------------------------------------------------- text -> ids

@pytest.mark.parametrize("blob", [b"not a SentencePiece model", b""])
def test_a_file_that_is_no_sentencepiece_model_is_refused_naming_it(tmp_path, blob):
  """Issue 21, 10: a garbage 30k-clean.model gave SentencePiece's RuntimeError, naming no file."""
  path = tmp_path / "30k-clean.model"
  path.write_bytes(blob)
  with pytest.raises(ValueError, match=f"{path} is not a SentencePiece model .*name the "
                     "spiece.model"):
    AlbertTokenizer(path)


def test_tokenize_and_encode_match_transformers(pair_of_tokenizers):
  tok, ref = pair_of_tokenizers
  for text in ALL_STRINGS:
    assert tok.preprocess_text(text) == ref.preprocess_text(text), text
    assert tok.tokenize(text) == ref.tokenize(text), text
    assert tok.encode(text) == ref.encode(text), text
    assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    assert tok.convert_tokens_to_ids(tok.tokenize(text)) == ref.convert_tokens_to_ids(
        ref.tokenize(text))


def test_the_hard_strings_are_hard(uncased):
  """The comparison above exercises the digit-comma split, final sigma and <unk>."""
  tok = AlbertTokenizer(uncased)
  sp = tok.sp_model
  # Which digit-comma pieces the trained vocabulary has depends on SentencePiece's trainer: some
  # string of the comparison must hold one, so the split is compared, not only plain encoding.
  split = [s for s in HARD_STRINGS
           if tok.tokenize(s) != sp.encode(tok.preprocess_text(s), out_type=str)]
  assert any("," in s for s in split), split
  assert "σ" in "".join(tok.tokenize("ΟΔΟΣ")) and "ς" not in "".join(tok.tokenize("ΟΔΟΣ"))
  assert tok.unk_token_id in tok.encode("東京 😀")
  assert tok.tokenize("a [MASK] b").count("[MASK]") == 1  # one token, not pieces of it


def test_mask_takes_the_spaces_before_it(tmp_path):
  """Seen only with remove_space=False on a model that keeps runs of spaces (ALBERT's drop them)."""
  vocab_file = str(train_tokenizer.train_spm(_corpus(n=300), 300, tmp_path, num_threads=1,
                                             remove_space=False, remove_extra_whitespaces=False))
  tok = AlbertTokenizer(vocab_file, remove_space=False)
  ref = reference(vocab_file, remove_space=False)
  text = "two  spaces   before [MASK]   and after [SEP]  [MASK]"
  assert tok.tokenize(text) == ref.tokenize(text)
  assert tok.tokenize("x  [MASK]") == tok.tokenize("x[MASK]")
  assert tok.tokenize("x  [SEP]") != tok.tokenize("x[SEP]")  # [SEP] leaves them to SentencePiece


def _as_lists(encoding):
  return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(encoding).items()}


PAIRS = [
    ("The capital of France is [MASK].", "Paris is a city, population 2,102,650."),
    ("short", "a much longer second sequence " * 6),
    ("a much longer first sequence with 1,000,000 words " * 5, "short"),
    ("equal length one", "equal length two"),
    ("", "empty first"),
    ("Café naïve ``quoted''", ""),
]
SETTINGS = [
    dict(),
    dict(padding=True),
    dict(padding="max_length", max_length=40),
    dict(truncation=True, max_length=16),
    dict(truncation="longest_first", max_length=11, padding="max_length"),
    dict(truncation="only_first", max_length=20, padding="longest"),
    dict(truncation="only_second", max_length=24),
    dict(truncation=True, max_length=9, add_special_tokens=False),
    dict(max_length=12),  # truncation=None: a max_length alone truncates, as in transformers
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=str)
def test_pairs_and_batches_match_transformers(pair_of_tokenizers, kwargs):
  tok, ref = pair_of_tokenizers
  if kwargs == {"max_length": 12}:
    kwargs = dict(kwargs, truncation=None)
  first, second = map(list, zip(*PAIRS))
  for a, b in PAIRS:
    if kwargs.get("truncation") == "only_first" and len(ref.tokenize(a)) < 20:
      continue  # transformers can't truncate these; we raise (tested below)
    if kwargs.get("truncation") == "only_second" and len(ref.tokenize(b)) < 24:
      continue
    assert _as_lists(tok(a, b, **kwargs)) == _as_lists(ref(a, b, **kwargs)), (a, b)
  if kwargs.get("truncation") in ("only_first", "only_second"):
    return
  assert _as_lists(tok(first, second, **kwargs)) == _as_lists(ref(first, second, **kwargs))
  assert _as_lists(tok(first, **kwargs)) == _as_lists(ref(first, **kwargs))
  assert _as_lists(tok(ALL_STRINGS, **kwargs)) == _as_lists(ref(ALL_STRINGS, **kwargs))


def test_encode_with_truncation_matches_transformers(uncased):
  tok, ref = AlbertTokenizer(uncased), reference(uncased)
  for max_length in (3, 4, 7, 30):
    for a, b in PAIRS:
      assert tok.encode(a, b, truncation=True, max_length=max_length) == ref.encode(
          a, b, truncation=True, max_length=max_length)
      assert len(tok.encode(a, b, truncation=True, max_length=max_length)) <= max_length


def test_numpy_tensors_match_transformers(uncased):
  tok, ref = AlbertTokenizer(uncased), reference(uncased)
  ours = tok(ALL_STRINGS, padding="max_length", truncation=True, max_length=32, return_tensors="np")
  theirs = ref(ALL_STRINGS, padding="max_length", truncation=True, max_length=32,
               return_tensors="np")
  assert set(ours) == {"input_ids", "token_type_ids", "attention_mask"}
  for k in ours:
    assert ours[k].shape == (len(ALL_STRINGS), 32)
    np.testing.assert_array_equal(ours[k], theirs[k])
  single = tok("one text", "and a pair", return_tensors="np")
  for k, v in ref("one text", "and a pair", return_tensors="np").items():
    np.testing.assert_array_equal(single[k], v)


def test_what_transformers_does_silently_is_an_error_here(uncased):
  tok = AlbertTokenizer(uncased)
  with pytest.raises(ValueError, match="cannot remove"):
    tok("short", "a much longer second sequence " * 6, truncation="only_first", max_length=10)
  with pytest.raises(ValueError, match="cannot remove"):
    tok("just one sequence", truncation="only_second", max_length=3)
  with pytest.raises(ValueError, match="need max_length"):
    tok("text", padding="max_length")
  with pytest.raises(ValueError, match="different lengths"):
    tok(["a", "a b c d e"], return_tensors="np")
  with pytest.raises(TypeError):
    tok(["a", "b"], "c")
  limited = AlbertTokenizer(uncased, model_max_length=6)
  padded = limited("a b c d e f g h", truncation=True, padding="max_length")
  assert padded["attention_mask"] == [1] * 6


# ----------------------------------------------------------------------------- ids -> text

def test_decode_matches_transformers(pair_of_tokenizers):
  tok, ref = pair_of_tokenizers
  for a, b in [(t, None) for t in ALL_STRINGS] + PAIRS:
    ids = ref.encode(a, b)
    for skip in (False, True):
      assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
      assert tok.convert_ids_to_tokens(ids, skip) == ref.convert_ids_to_tokens(ids, skip)
  rng = np.random.RandomState(0)
  batch = rng.randint(0, tok.vocab_size, (20, 30))
  batch[:, ::7] = rng.randint(0, 5, batch[:, ::7].shape)  # special tokens among the pieces
  for skip in (False, True):
    assert tok.batch_decode(batch, skip_special_tokens=skip) == ref.batch_decode(
        batch.tolist(), skip_special_tokens=skip)
  assert tok.decode(5) == ref.decode(5) and tok.decode(np.int64(4)) == ref.decode(4)


# ----------------------------------------------------------------------------- raw corpus text

RAW = ["a [MASK] b [SEP] c [CLS] d <pad> e", "[MASK][SEP][CLS]", "The [MASK] sat. [SEP]"]


@pytest.mark.parametrize("model,flags", [("uncased", {}), ("cased", {"do_lower_case": False})])
def test_tokenize_raw_never_yields_control_ids(model, flags, request):
  vocab_file = request.getfixturevalue(model)
  tok, ref = AlbertTokenizer(vocab_file, **flags), reference(vocab_file, **flags)
  controls = {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id}
  for text in RAW + HARD_STRINGS:
    pieces = tok.tokenize_raw(text)
    assert pieces == ref.tokenize(text, split_special_tokens=True), text
    assert not controls & set(tok.convert_tokens_to_ids(pieces)), text
  assert tok.mask_token_id in tok.convert_tokens_to_ids(tok.tokenize(RAW[0]))


def test_ids_raw_are_transformers_ids_of_raw_text(pair_of_tokenizers):
  """The corpus path: ids straight from SentencePiece where they are the pieces' ids, the piece by
  piece way for texts holding a digit-comma piece (some here must, or the comparison is weak)."""
  tok, ref = pair_of_tokenizers
  texts = RAW + ALL_STRINGS + _corpus(seed=3, n=200)
  expected = [ref.convert_tokens_to_ids(ref.tokenize(t, split_special_tokens=True)) for t in texts]
  assert tok.ids_raw(texts) == expected
  lower = tokenizer_lib.lower_chars if tok.do_lower_case else str
  respelled = [t for t, ids in zip(texts, expected)
               if ids != tok.sp_model.encode(tok.preprocess_text(lower(t)), out_type=int)]
  assert any("," in t for t in respelled), respelled


def test_tokenize_raw_spells_out_user_defined_specials(tmp_path):
  """A model that made [MASK] a user-defined symbol would match it in text; raw text must not."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus(n=200)), model_prefix=str(tmp_path / "m"), vocab_size=200,
      pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
      minloglevel=2)
  tok = AlbertTokenizer(tmp_path / "m.model", do_lower_case=False)
  specials = {tok.cls_token_id, tok.sep_token_id, tok.mask_token_id}
  assert specials & set(tok.sp_model.encode("a [MASK] b"))  # SentencePiece alone would
  for text in RAW:
    assert not specials & set(tok.convert_tokens_to_ids(tok.tokenize_raw(text))), text
  assert tok.ids_raw(RAW) == [tok.convert_tokens_to_ids(tok.tokenize_raw(t)) for t in RAW]


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("model,flags", [("uncased", {}), ("cased", {"do_lower_case": False,
                                                                      "keep_accents": True})])
def test_save_pretrained_loads_in_transformers(model, flags, request, tmp_path):
  tok = AlbertTokenizer(request.getfixturevalue(model), **flags)
  files = tok.save_pretrained(tmp_path)
  assert sorted(Path(f).name for f in files) == sorted(p.name for p in tmp_path.iterdir())
  ref = transformers.AlbertTokenizer.from_pretrained(tmp_path)
  assert type(ref) is transformers.AlbertTokenizer
  assert (ref.do_lower_case, ref.keep_accents) == (tok.do_lower_case, tok.keep_accents)
  again = AlbertTokenizer.from_pretrained(tmp_path)
  for text in ALL_STRINGS:
    assert tok.encode(text) == ref.encode(text) == again.encode(text), text
  ids = tok.encode("The capital of France is [MASK].")
  assert tok.decode(ids) == ref.decode(ids)


def test_from_pretrained_reads_flags_written_by_transformers(cased, tmp_path):
  reference(cased, do_lower_case=False).save_pretrained(tmp_path)
  tok = AlbertTokenizer.from_pretrained(tmp_path)
  assert tok.do_lower_case is False and tok.keep_accents is False and tok.model_max_length is None
  assert tok.tokenize("Hello Café") == reference(cased, do_lower_case=False).tokenize("Hello Café")


def test_pickles(uncased):
  tok = AlbertTokenizer(uncased, do_lower_case=True)
  again = pickle.loads(pickle.dumps(tok))
  assert again.encode(HARD_STRINGS[6]) == tok.encode(HARD_STRINGS[6])


# ----------------------------------------------------------------------------- the trainer

def test_cli_trains_from_text_and_gzip(tmp_path):
  lines = _corpus(seed=3, n=300)
  (tmp_path / "a.txt").write_text("\n".join(s + " Жuk" for s in lines[:150]) + "\n\n",
                                  encoding="utf-8")
  with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n".join(s + " Ξon" for s in lines[150:]) + "\n")
  out = tmp_path / "vocab"
  subprocess.run([sys.executable, "-m", "albert_jax.data.train_tokenizer",
                  f"--input={tmp_path}/a.txt,{tmp_path}/*.gz", "--vocab_size=300", f"--out={out}"],
                 check=True, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert sorted(p.name for p in out.iterdir()) == [
      "special_tokens_map.json", "spiece.model", "spiece.vocab", "tokenizer_config.json"]
  sp = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
  assert len(sp) == 300
  assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
  assert all(sp.is_control(i) for i in (0, 2, 3, 4)) and sp.is_unknown(1)
  vocab = (out / "spiece.vocab").read_text(encoding="utf-8").splitlines()
  assert [line.split("\t")[0] for line in vocab] == [sp.id_to_piece(i) for i in range(300)]
  # Both files were read, through the lower-casing preprocessing: each one's letter is known.
  assert sp.unk_id() not in sp.encode("ж ξ")
  assert sp.unk_id() in sp.encode("Ж") and sp.unk_id() in sp.encode("Ξ")
  assert transformers.AlbertTokenizer.from_pretrained(out).encode("hello") == AlbertTokenizer(
      out / "spiece.model").encode("hello")


def test_cli_missing_input_is_an_error(tmp_path):
  run = subprocess.run([sys.executable, "-m", "albert_jax.data.train_tokenizer",
                        f"--input={tmp_path}/none*.txt", f"--out={tmp_path}/o"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode != 0 and "matches no file" in run.stderr
  assert not (tmp_path / "o" / "spiece.model").exists()


def test_failed_training_leaves_no_model(tmp_path, monkeypatch):
  with pytest.raises(RuntimeError, match="Vocabulary size too high"):
    train_tokenizer.train_spm(["tiny corpus", "of two lines"], 5000, tmp_path)
  assert list(tmp_path.iterdir()) == []

  def replace(src, dst):  # the disk fills up as the model is renamed into place
    if Path(dst).name == "spiece.model":
      raise OSError("No space left on device")
    return real_replace(src, dst)

  real_replace = tokenizer_lib.os.replace
  monkeypatch.setattr(tokenizer_lib.os, "replace", replace)
  with pytest.raises(OSError, match="No space"):
    train_tokenizer.train_spm(_corpus(n=300), 300, tmp_path)
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "special_tokens_map.json", "spiece.vocab", "tokenizer_config.json"]


def test_training_is_reproducible_and_samples(tmp_path):
  a = train_tokenizer.train_spm(_corpus(n=300), 300, tmp_path / "a", input_sentence_size=200)
  b = train_tokenizer.train_spm(iter(_corpus(n=300)), 300, tmp_path / "b", input_sentence_size=200)
  assert a.read_bytes() == b.read_bytes()
