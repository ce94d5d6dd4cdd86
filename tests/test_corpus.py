"""Corpus readers: text files (globs, dirs, .gz), cleaning counts, the sentence splitter, TFDS
through its own mock data and a tiny prepared builder, and the embedded standard-library corpus."""

import gzip
import importlib.util

import pytest
import tensorflow_datasets as tfds

from albert_jax.data import corpus, embedded, sentences


def _write(path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".gz":
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


# ----------------------------------------------------------------------------- text files

@pytest.fixture
def text_tree(tmp_path):
  _write(tmp_path / "a.txt", b"A one.\nA two.\n\n\n\nB one.\n")  # no blank line at the end
  _write(tmp_path / "sub" / "b.txt.gz", b"C one.\nC two.\n\nD one.\n\n")
  _write(tmp_path / "sub" / "deeper" / "c.txt", b"  \n\nE one.\n")
  return tmp_path


def test_text_files_single_glob_comma_dir_gz(text_tree):
  read = lambda spec: list(corpus.text_file_documents(spec))
  a = [["A one.", "A two."], ["B one."]]
  b = [["C one.", "C two."], ["D one."]]
  c = [["E one."]]
  assert read(str(text_tree / "a.txt")) == a
  assert read(str(text_tree / "sub" / "*.gz")) == b
  assert read(f"{text_tree / 'sub' / 'b.txt.gz'},{text_tree / 'a.txt'}") == b + a
  # A directory: every file below it, sorted by path.
  assert read(str(text_tree)) == a + b + c
  assert read(str(text_tree / "**" / "*.txt")) == a + c
  with pytest.raises(FileNotFoundError, match="nothing.txt"):
    read(str(text_tree / "nothing.txt"))


def test_text_file_stats_count_what_was_read(text_tree):
  stats = corpus.CorpusStats()
  docs = list(corpus.text_file_documents(str(text_tree), stats))
  # Runs of blank lines are one document break, not empty documents.
  assert (stats.files, stats.documents, stats.sentences) == (3, 5, 7)
  assert stats.words == sum(len(s.split()) for d in docs for s in d) == 14
  assert stats.chars == sum(len(s) for d in docs for s in d)
  assert stats.empty_documents_dropped == 0


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
  # Latin-1 "é", a truncated 3-byte sequence, and an encoded surrogate (not UTF-8 either).
  path = _write(tmp_path / "bad.txt",
                b"caf\xe9 au lait.\nfine line.\ncut \xe2\x82 here.\nsur \xed\xa0\x80 rogate.\n")
  stats = corpus.CorpusStats()
  (doc,) = corpus.text_file_documents(str(path), stats)
  assert doc == ["caf\ufffd au lait.", "fine line.", "cut \ufffd here.",
                 "sur \ufffd\ufffd\ufffd rogate."]
  assert stats.invalid_utf8_lines == 3


def test_lone_surrogates_are_replaced_and_counted():
  stats = corpus.CorpusStats()
  # Such strings come from `surrogateescape` decoding, JSON "\ud800" escapes, or user iterators.
  cleaned = corpus.clean_sentence("a\ud800b \udfff c\U0001F600", stats)
  assert cleaned == "a\ufffdb \ufffd c\U0001F600"
  assert stats.surrogates_replaced == 2
  with pytest.raises(UnicodeEncodeError):  # what SentencePiece would hit: it encodes to UTF-8
    "a\ud800b".encode("utf-8")


def test_long_lines_are_cut(tmp_path):
  words = ("word " * 5000).strip()  # 24,999 characters
  blob = "x" * 20000
  path = _write(tmp_path / "long.txt", f"{words}\n{blob}\nshort.\n".encode())
  stats = corpus.CorpusStats()
  (doc,) = corpus.text_file_documents(str(path), stats, max_sentence_chars=1000)
  assert stats.long_sentences_cut == 2
  # Cut at the last space before the limit, or at the limit where there is none.
  assert doc[0] == ("word " * 200).strip() and len(doc[0]) == 999
  assert doc[1] == "x" * 1000
  assert doc[2] == "short."
  assert corpus.MAX_SENTENCE_CHARS == 8192


def test_split_sentences_rules():
  text = """Return the value.  If x is None, e.g. when unset, use Dr. Smith's default
(see J. Doe). It works!  Really? "Yes." (Version 3.11.) The end

    code_block = "is dropped"
    print(code_block)

>>> print("doctest dropped")
'doctest dropped'
Heading
=======
Next paragraph, wrapped
over lines."""
  assert sentences.split_sentences(text) == [
      "Return the value.",
      "If x is None, e.g. when unset, use Dr. Smith's default (see J. Doe).",
      "It works!", "Really?", '"Yes."', "(Version 3.11.)", "The end",
      "'doctest dropped' Heading",  # a doctest's output line is not recognisable as code
      "Next paragraph, wrapped over lines."]
  # Unwrapped (Wikipedia's text): each line is a paragraph; indentation is not code.
  assert sentences.split_sentences("Title\n  One. Two\nThree.", wrapped=False) == [
      "Title", "One.", "Two", "Three."]
  assert sentences.split_sentences("----\n\n  \n...\n") == []


def test_byte_ranges_tile_a_file_into_its_documents(tmp_path):
  """Ranges cut anywhere (mid-line, on blank lines, inside runs of blank or whitespace-only
  lines, CRLF, a non-breaking space line that str.strip() calls blank, invalid UTF-8, no final
  newline) give every document of the file exactly once, with the same counts."""
  text = (b"Doc one a.\nDoc one b.\r\n\r\n  \n\nDoc two \xff.\n\xc2\xa0\nDoc three.\n"
          b"Three b.\n\n\n\n" + b"Long " * 300 + b"\nx\n\n\t\nlast") 
  path = str(_write(tmp_path / "c.txt", text))
  whole_stats = corpus.CorpusStats()
  whole = list(corpus.text_file_documents(path, whole_stats))
  assert len(whole) == 5 and whole[1] == ["Doc two \ufffd."] and whole[4] == ["last"]
  rng = __import__("random").Random(0)
  cuts_list = [[0, k, None] for k in range(1, len(text) + 1)]  # every single cut
  cuts_list += [[0, *sorted(rng.sample(range(1, len(text)), 6)), None] for _ in range(200)]
  for cuts in cuts_list:
    stats = corpus.CorpusStats()
    docs = [d for a, b in zip(cuts[:-1], cuts[1:])
            for d in corpus.text_range_documents(path, a, b, stats)]
    assert docs == whole, cuts
    assert stats == whole_stats, cuts
  with pytest.raises(ValueError, match="whole"):
    list(corpus.text_range_documents(str(_write(tmp_path / "z.gz", b"a\n")), 1, None))


def test_units_give_the_documents_of_reading_the_space(tmp_path):
  _write(tmp_path / "a.txt", b"\n\n".join(b"Sentence %d.\nAnd more %d." % (i, i) for i in range(300)))
  _write(tmp_path / "b.txt.gz", b"\n\n".join(b"Gz %d." % i for i in range(50)))
  spec = corpus.CorpusSpec.parse(f"{tmp_path}/*")
  units = spec.units("all", unit_bytes=1000)
  assert len(units) > 5 and units[-1].kind == "file" and units[-1].stop is None
  assert sum(u.size for u in units) == sum(p.stat().st_size for p in tmp_path.iterdir())
  whole = list(spec.documents("all"))
  assert [d for u in units for d in spec.unit_documents(u)] == whole
  # The held-out split is a share of indices, fixed by the corpus.
  evals = [i for i, _ in spec.split_documents("eval")]
  assert evals == [i for i in range(len(whole)) if corpus.held_out(i)] and 5 <= len(evals) <= 35
  embedded = corpus.CorpusSpec("embedded")
  assert embedded.spaces == ("train", "eval")
  units = embedded.units("eval", unit_titles=7)
  assert [d for u in units for d in embedded.unit_documents(u)] == list(
      corpus.embedded_documents("eval"))
  assert corpus.CorpusSpec.parse("tfds:wiki:validation").tfds_eval_split == "validation"
  assert corpus.CorpusSpec.parse("a.txt", "b.txt").spaces == ("train", "eval")


def test_fingerprint_is_order_free_and_sees_every_change():
  docs = [["One.", "Two."], ["Three."], ["Four.", "Five."]]
  fp = lambda pairs: _fingerprint(pairs).hexdigest()
  base = fp(enumerate(docs))
  assert fp(reversed(list(enumerate(docs)))) == base  # combined in any order
  parts = [_fingerprint([(i, d)]) for i, d in enumerate(docs)]
  assert parts[0].merge(parts[1]).merge(parts[2]).hexdigest() == base
  changed = [fp([(0, ["One.", "Two"]), *list(enumerate(docs))[1:]]),  # a character
             fp([(0, ["One. Two."]), *list(enumerate(docs))[1:]]),  # a sentence break
             fp([(1, docs[0]), (0, docs[1]), (2, docs[2])]),  # the order
             fp(list(enumerate(docs))[:2])]  # a document fewer
  assert len({base, *changed}) == 5


def _fingerprint(pairs):
  fp = corpus.Fingerprint()
  for i, doc in pairs:
    fp.add(i, corpus.document_digest(doc))
  return fp


# ----------------------------------------------------------------------------- TFDS

def test_tfds_mock_data_random_examples():
  stats = corpus.CorpusStats()
  with tfds.testing.mock_data(num_examples=7):
    docs = list(corpus.tfds_documents("squad", "train", feature="context", stats=stats))
  # TFDS's mock contexts are random letters: each is one "sentence" of one document.
  assert len(docs) + stats.empty_documents_dropped == 7
  assert docs and all(len(d) >= 1 and all(isinstance(s, str) and s for s in d) for d in docs)


def test_tfds_mock_data_source_text_is_split_and_cleaned():
  contexts = [
      "First sentence here. Second one follows.\nA new paragraph.",
      b"Bytes text. With caf\xe9.",
      "   ",
      "Lone \ud800 surrogate.",
  ]

  def data_source(builder, split, **kwargs):
    del builder, kwargs
    assert split == "validation"
    return [{"context": c, "title": "t"} for c in contexts]

  stats = corpus.CorpusStats()
  with tfds.testing.mock_data(as_data_source_fn=data_source):
    docs = list(corpus.read_documents("tfds:squad", split="validation", tfds_feature="context",
                                      stats=stats))
  assert docs == [["First sentence here.", "Second one follows.", "A new paragraph."],
                  ["Bytes text.", "With caf\ufffd."],
                  ["Lone \ufffd surrogate."]]
  assert (stats.invalid_utf8_lines, stats.surrogates_replaced) == (1, 1)
  assert (stats.documents, stats.empty_documents_dropped) == (3, 1)

  with tfds.testing.mock_data(as_data_source_fn=data_source):
    grouped = list(corpus.tfds_documents("squad", "validation", feature="context",
                                         examples_per_document=2))
  assert grouped == [docs[0] + docs[1], docs[2]]
  # Read units of a TFDS split (examples [start, stop)) give the documents of reading it whole.
  spec = corpus.CorpusSpec("tfds", tfds_name="squad", tfds_feature="context",
                           tfds_eval_split="validation")
  with tfds.testing.mock_data(as_data_source_fn=data_source):
    units = spec.units("eval", unit_examples=3)
    assert [(u.start, u.stop) for u in units] == [(0, 3), (3, 4)]
    assert [d for u in units for d in spec.unit_documents(u)] == docs


class TinyWiki(tfds.core.GeneratorBasedBuilder):
  """A Wikipedia-shaped TFDS dataset (title, text) that needs no TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"title": tfds.features.Text(), "text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      text = f"Article {i} starts. It has {i} cats.\n\nEnd {i}."
      yield i, {"title": f"Article {i}", "text": text}


def test_tfds_prepared_array_record_builder(tmp_path):
  TinyWiki(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  docs = list(corpus.read_documents("tfds:tiny_wiki", tfds_data_dir=str(tmp_path)))
  assert sorted(docs) == [[f"Article {i} starts.", f"It has {i} cats.", f"End {i}."]
                          for i in range(3)]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed, so TFDS registers wikipedia")
def test_tfds_wikipedia_without_tensorflow_says_how_to_fix(tmp_path):
  with pytest.raises(ModuleNotFoundError, match=r"wikipedia.*albert-jax\[tf\].*tensorflow-cpu"):
    next(corpus.read_documents("tfds:wikipedia/20230601.en", tfds_data_dir=str(tmp_path)))


def test_tfds_bookcorpus_has_no_builder():
  with pytest.raises(ValueError, match="no BookCorpus builder"):
    next(corpus.read_documents("tfds:bookcorpus"))


# ----------------------------------------------------------------------------- embedded corpus

def test_embedded_corpus_is_large_split_and_deterministic():
  stats = {s: corpus.CorpusStats() for s in ("train", "eval")}
  docs = {s: list(corpus.embedded_documents(s, stats[s], with_titles=True)) for s in stats}
  train, evals = stats["train"], stats["eval"]
  assert train.documents > 500 and train.sentences > 15_000 and train.chars > 1_500_000
  assert 20 <= evals.documents <= 0.1 * train.documents
  titles = {s: [t for t, _ in docs[s]] for s in docs}
  assert not set(titles["train"]) & set(titles["eval"])
  assert all(embedded.split_of(t) == "eval" for t in titles["eval"])
  assert titles["train"] == sorted(titles["train"])
  # The language reference and module docstrings are both there, as English sentences.
  all_docs = dict(docs["train"] + docs["eval"])
  assert "topic:for" in all_docs and "module:json" in all_docs and "module:builtins" in all_docs
  assert 'The "for" statement is used to iterate over the elements of a sequence' in (
      " ".join(all_docs["topic:for"]))
  assert not any("print(i)" in s for s in all_docs["topic:for"])  # code blocks dropped
  # Deterministic: built again from scratch, the same documents.
  embedded.texts.cache_clear()
  assert list(corpus.embedded_documents("eval", with_titles=True)) == docs["eval"]
  with pytest.raises(ValueError, match="split"):
    next(corpus.embedded_documents("test"))


def test_embedded_corpus_does_not_depend_on_what_the_program_patched(monkeypatch):
  """A test runner or debugger replaces sys.excepthook & co: the corpus must not see it."""
  import hashlib
  import json
  import subprocess
  import sys

  def hook(*args):
    """A replacement hook. It has a docstring of its own."""
  monkeypatch.setattr(sys, "excepthook", hook)
  monkeypatch.setattr(sys, "displayhook", hook)
  embedded.texts.cache_clear()
  try:
    here = hashlib.md5(json.dumps(embedded.texts()).encode()).hexdigest()
  finally:
    embedded.texts.cache_clear()
  fresh = subprocess.run(
      [sys.executable, "-c", "import hashlib, json; from albert_jax.data import embedded; "
       "print(hashlib.md5(json.dumps(embedded.texts()).encode()).hexdigest())"],
      capture_output=True, text=True, check=True).stdout.strip()
  assert here == fresh
