"""ALBERT pretraining examples as google-research/albert's `create_pretraining_data.py` made them:
segment pairs for sentence-order prediction (SOP), cut here, then n-gram whole-word masking
(masking.py), with the settings (`ExampleConfig`) and vocabulary tables both steps read.

The two steps are separate so that masking can be redone each time a pair is seen (dynamic masking,
the default: RoBERTa found it as good or better, with no `dupe_factor` copies on disk):

  docs = tokenize_documents(corpus.read_documents("embedded"), tokenizer)
  tables = tokenizer_tables(tokenizer)
  pairs = PairTable.pack(make_segment_pairs(docs, seed, config, word_start=tables.word_start))
  batch = masking.mask_examples(pairs.pairs_at(range(i, i + 256)),
                                np.random.default_rng([seed, epoch, i]), tables, config)

`create_pretraining_data.py` writes statically masked copies instead, as the original did.

## `fixed` (default) and `faithful` modes

`faithful` keeps the original's quirks that change the data, for comparisons with it; `fixed`
corrects them. Both draw every random number from the generator they are given, so both are
reproducible from the seed (the original is not: see 1).

1. RNG. The original draws each n-gram length from NumPy's global RNG, which it never seeds, so its
   masks cannot be reproduced from `--random_seed`. Both modes here use the given Generator.
2. One-segment chunks (a one-sentence document, a document's lone last sentence, one sentence as
   long as the target): the original takes B from a random other document and labels it 1, the
   "swapped" label, even for SOP, so label 1 mixes order swaps with topic changes. `fixed` splits
   the sentence at a random word boundary into A and B, which then swap with probability 0.5 like
   every pair; a one-word sentence (no boundary) is dropped and counted.
3. Random documents: the original tries 10 times to draw one other than the current document and
   then keeps whatever it drew. `fixed` draws among the other documents (and refuses a corpus of one
   document when it needs a random one).
4. Mask budget: the original masks round(0.15 * len(tokens)) tokens, counting [CLS] and both [SEP]s.
   `fixed` counts the non-special tokens only.
5. Word boundaries: the original also starts a word at a piece starting with "<", at a one-character
   ASCII punctuation piece, and at any piece holding a character outside a-z and that punctuation
   (so "▁19" "95" is two words). `fixed` starts a word only at a piece starting with "▁"
   (SentencePiece's whitespace), plus at the first piece of each segment.
6. Segments: the original's words and n-grams run across the middle [SEP] (front truncation can
   leave B starting inside a word, which then joins A's last word). `fixed` keeps them within a
   segment.
7. N-gram lengths near the end: the original always draws n from all `ngram` lengths and silently
   shortens spans that run past the last word. `fixed` draws n only among the lengths that fit in
   the segment (probabilities renormalised).
8. `favor_shorter_ngram=False`: the original reverses the weights (p(n) prop. to 1/(ngram+1-n), so
   longer n-grams are favoured). `fixed` makes them uniform, as the flag's name implies.
9. Random replacement (10% of masked tokens): the original draws from the whole vocabulary,
   <pad>, <unk>, [CLS], [SEP] and [MASK] included. `fixed` never draws a special token.

Kept in both modes, because they are the algorithm rather than slips: one short target length (with
probability `short_seq_prob`) for a whole document; truncation one token at a time from the longer
segment, front or back at random (which can leave a gap between A and B); n-gram candidates skipped
when they overlap an earlier one; shorter n-grams tried when a span would exceed the budget; the
80/10/10 choice made per token. `random_next_sentence=True` gives NSP (B from a random document with
probability 0.5) with the meaning the original's code gives it (its flag help says the opposite).
Not here in either mode: the original's shuffling of documents and examples (the input pipeline's
job, or the CLI's, which also makes `dupe_factor` copies as the original did).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from albert_jax.data import corpus
from albert_jax.data.pairs import SegmentPair

MODES = ("fixed", "faithful")
WORD_START = "▁"  # SentencePiece's mark of a piece that starts after whitespace
Seed = int | Sequence[int] | np.random.Generator


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
  """How pairs are cut and masked; names and defaults are the original's flags."""

  max_seq_length: int = 512
  short_seq_prob: float = 0.1
  random_next_sentence: bool = False  # True: NSP with random-document negatives instead of SOP
  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int | None = None  # None: ceil(max_seq_length * masked_lm_prob)
  ngram: int = 3
  favor_shorter_ngram: bool = True
  do_whole_word_mask: bool = True
  mode: str = "fixed"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode={self.mode!r}: use one of {MODES}")
    if self.max_seq_length < 5:
      raise ValueError(f"max_seq_length={self.max_seq_length} leaves no room for two segments")
    if self.ngram < 1 or not 0 <= self.masked_lm_prob <= 1 or not 0 <= self.short_seq_prob <= 1:
      raise ValueError(f"Invalid ExampleConfig: {self}")

  @property
  def max_predictions(self) -> int:
    """`max_predictions_per_seq`, or the default: 20 at 128, 77 at 512."""
    if self.max_predictions_per_seq is not None:
      return self.max_predictions_per_seq
    return math.ceil(round(self.max_seq_length * self.masked_lm_prob, 6))  # 100 * .15 -> 15

  def ngram_probs(self) -> np.ndarray:
    """p(n) for n = 1..ngram: prop. to 1/n when favor_shorter_ngram, else see the module doc (8)."""
    p = 1.0 / np.arange(1, self.ngram + 1)
    if not self.favor_shorter_ngram:
      p = p[::-1] if self.mode == "faithful" else np.ones(self.ngram)
    return p / p.sum()


@dataclasses.dataclass
class PairStats:
  """Counts from `make_segment_pairs`, for the data report."""

  pairs: int = 0
  label_1: int = 0  # swapped (SOP) or random next (NSP)
  random_document_b: int = 0  # B from another document
  sentences_split: int = 0  # fixed: one-segment chunks split at a word boundary
  chunks_dropped: int = 0  # fixed: one-segment chunks of a single word
  tokens_truncated: int = 0


@dataclasses.dataclass(frozen=True)
class VocabTables:
  """Per-id lookups that masking needs, built once per vocabulary."""

  cls_id: int
  sep_id: int
  mask_id: int
  vocab_size: int
  word_start: np.ndarray  # [vocab] bool: the piece starts with "▁" (fixed mode)
  word_start_original: np.ndarray  # [vocab] bool: the original's `_is_start_piece_sp`
  replacement_ids: np.ndarray  # [n] int32: ids the fixed mode's random replacement draws from


# The original's `special_pieces` (it lists '"' twice and lacks "'"; its "€" and "£" were added as
# bytes, which never equal a str piece).
_ORIGINAL_PUNCTUATION = frozenset('!"#$%&"()*+,-./:;?@[\\]^_`{|}~')
_ORIGINAL_WORD_CHARS = _ORIGINAL_PUNCTUATION | frozenset("abcdefghijklmnopqrstuvwxyz")


def _is_start_piece_original(piece: str) -> bool:
  return (piece.startswith(WORD_START) or piece.startswith("<") or piece in _ORIGINAL_PUNCTUATION
          or not all(c.lower() in _ORIGINAL_WORD_CHARS for c in piece))


def vocab_tables(pieces: Sequence[str], *, pad_id: int = 0, unk_id: int = 1, cls_id: int = 2,
                 sep_id: int = 3, mask_id: int = 4) -> VocabTables:
  """Tables for a vocabulary given as its pieces in id order (ALBERT's special ids by default)."""
  special = {pad_id, unk_id, cls_id, sep_id, mask_id}
  return VocabTables(
      cls_id=cls_id, sep_id=sep_id, mask_id=mask_id, vocab_size=len(pieces),
      word_start=np.array([p.startswith(WORD_START) for p in pieces], bool),
      word_start_original=np.array([_is_start_piece_original(p) for p in pieces], bool),
      replacement_ids=np.array([i for i in range(len(pieces)) if i not in special], np.int32))


def tokenizer_tables(tokenizer: Any) -> VocabTables:
  """`vocab_tables` of an `AlbertTokenizer`."""
  pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
  return vocab_tables(pieces, pad_id=tokenizer.pad_token_id, unk_id=tokenizer.unk_token_id,
                      cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                      mask_id=tokenizer.mask_token_id)


def tokenize_documents(documents: Iterable[Sequence[str]], tokenizer: Any,
                       stats: Any = None) -> list[list[np.ndarray]]:
  """Token ids (int32 arrays) of each sentence, by `ids_raw` (those of `tokenize_raw`), so that a
  "[MASK]" written in the corpus stays text. Sentences and documents left without tokens are
  dropped; `stats` (a `corpus.CorpusStats`) counts them and the one-sentence documents."""
  out = []
  for doc in documents:
    sentences = []
    for ids in tokenizer.ids_raw(doc):
      if ids:
        sentences.append(np.asarray(ids, np.int32))
      elif stats is not None:
        stats.empty_sentences_dropped += 1
    if stats is not None:
      stats.empty_documents_dropped += not sentences
      stats.one_sentence_documents += len(sentences) == 1
    if sentences:
      out.append(sentences)
  return out


# ----------------------------------------------------------------------------- segment pairs

def generator(seed: Seed, *extra: int) -> np.random.Generator:
  """A Generator seeded from (*seed, *extra), or `seed` itself if it is one (and no `extra`)."""
  if isinstance(seed, np.random.Generator):
    if extra:
      raise TypeError("Pairs are cut with a generator per document: give the seed, not a Generator")
    return seed
  words = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
  return np.random.default_rng([*map(int, words), *extra])


def tokenize_split(spec: Any, split: str, tokenizer: Any, stats: Any,
                   on_document: Any = None) -> tuple[list, list[int], str]:
  """(token ids of each document with text, its index in the corpus, the split's fingerprint) for
  one split of a `corpus.CorpusSpec`; `on_document(documents read so far)` after each."""
  fingerprint = corpus.Fingerprint()
  docs, indices = [], []
  for index, doc in spec.split_documents(split, stats):
    fingerprint.add(index, corpus.document_digest(doc))
    for tokens in tokenize_documents([doc], tokenizer, stats):
      docs.append(tokens)
      indices.append(index)
    if on_document is not None:
      on_document(stats.documents)
  return docs, indices, fingerprint.hexdigest()


def truncate_seq_pair(tokens_a: np.ndarray, tokens_b: np.ndarray, max_num_tokens: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The original's truncation, vectorised: one token at a time from the longer segment (B on a
  tie), from its front or back with probability 0.5 each, until both fit in `max_num_tokens`."""
  len_a, len_b = len(tokens_a), len(tokens_b)
  excess = len_a + len_b - max_num_tokens
  if excess <= 0:
    return tokens_a, tokens_b
  # Which segment each step cuts: the longer one until the lengths meet, then B, A, B, A, ...
  first = min(abs(len_a - len_b), excess)
  from_a = np.zeros(excess, bool)
  from_a[:first] = len_a > len_b
  from_a[first + 1::2] = True
  front = rng.random(excess) < 0.5
  a_cuts, a_front, fronts = (int(np.count_nonzero(x)) for x in (from_a, from_a & front, front))
  a_back, b_front = a_cuts - a_front, fronts - a_front
  b_back = excess - a_cuts - b_front
  return tokens_a[a_front:len_a - a_back], tokens_b[b_front:len_b - b_back]


def _split_at_word(tokens: np.ndarray, rng: np.random.Generator,
                   word_start: np.ndarray | None) -> list[np.ndarray]:
  """[A, B] cut at a random word start inside `tokens` (anywhere if ids come without a table)."""
  cuts = np.arange(1, len(tokens))
  if tokens.dtype.kind == "U":  # pieces rather than ids
    cuts = cuts[np.char.startswith(tokens[1:], WORD_START)]
  elif word_start is not None:
    cuts = cuts[word_start[tokens[1:]]]
  if not len(cuts):
    return []
  k = int(cuts[rng.integers(len(cuts))])
  return [tokens[:k], tokens[k:]]


class Candidates:
  """The documents a random segment B may come from: indices [0, n) of a document space that
  `__contains__` (those of the split being cut, with tokens), `count` of them."""

  def __init__(self, n: int, members: Any, count: int):
    self.n, self.members, self.count = n, members, count

  def __contains__(self, index: int) -> bool:
    return index in self.members


def draw_other_document(rng: np.random.Generator, index: int, candidates: Candidates,
                        faithful: bool) -> int:
  """A uniformly drawn candidate other than `index`, by drawing indices of the space until one is
  a candidate. `faithful`: the original's 10 tries at a document other than `index`, after which
  it keeps the last one drawn (even `index`)."""

  def draw():
    while True:
      other = int(rng.integers(candidates.n))
      if other in candidates:
        return other

  if faithful:
    for _ in range(10):
      other = draw()
      if other != index:
        break
    return other
  if candidates.count < 2:
    raise ValueError("A random-document segment B needs a split of at least two documents")
  while (other := draw()) == index:
    pass
  return other


class PendingPair(NamedTuple):
  """A pair whose B comes from another document: finished by `complete_pair` with that one."""

  tokens_a: np.ndarray
  sentence_order_label: int
  target_b_length: int
  other: int  # index of the document B comes from
  rng_state: dict  # the pair's own generator (after drawing `other`)


def complete_pair(pending: PendingPair, other_document: Sequence[np.ndarray],
                  config: ExampleConfig, stats: "PairStats | None" = None) -> SegmentPair:
  """B: sentences of `other_document` from a random one until `target_b_length` tokens; then the
  pair truncated to fit, both with the pair's own generator."""
  rng = np.random.default_rng()
  rng.bit_generator.state = pending.rng_state
  out, length = [], 0
  for sentence in other_document[int(rng.integers(len(other_document))):]:
    out.append(sentence)
    length += len(sentence)
    if length >= pending.target_b_length:
      break
  return _truncated(pending.tokens_a, np.concatenate(out), pending.sentence_order_label, rng,
                    config, stats)


def _truncated(tokens_a, tokens_b, label, rng, config, stats) -> SegmentPair:
  total = len(tokens_a) + len(tokens_b)
  tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, config.max_seq_length - 3, rng)
  if stats is not None:
    stats.tokens_truncated += total - len(tokens_a) - len(tokens_b)
  return SegmentPair(tokens_a, tokens_b, label)


def document_pairs(document: Sequence[np.ndarray], index: int, seed: int | Sequence[int],
                   config: ExampleConfig, *, candidates: Candidates,
                   word_start: np.ndarray | None = None,
                   stats: "PairStats | None" = None) -> list[SegmentPair | PendingPair]:
  """The pairs of document `index` of its space: `create_instances_from_document` without the
  masking, with a generator seeded from (*seed, index). A pair whose B comes from a random other
  document (NSP, and faithful's one-segment chunks) draws it, B and its truncation from its own
  generator (*seed, index, 1, k), k its place among the document's pairs, and is returned as a
  `PendingPair`: so no draw of this document depends on another document's content."""
  stats = PairStats() if stats is None else stats
  rng = generator(seed, index)
  faithful = config.mode == "faithful"
  max_num_tokens = config.max_seq_length - 3  # [CLS] A [SEP] B [SEP]
  target = max_num_tokens
  if rng.random() < config.short_seq_prob:
    target = int(rng.integers(2, max_num_tokens, endpoint=True))
  pairs: list[SegmentPair | PendingPair] = []
  chunk, length, i = [], 0, 0
  while i < len(document):
    chunk.append(document[i])
    length += len(document[i])
    if i == len(document) - 1 or length >= target:
      split = len(chunk) == 1 and not faithful
      if split:
        chunk = _split_at_word(chunk[0], rng, word_start)
        stats.sentences_split += bool(chunk)
        stats.chunks_dropped += not chunk
      if chunk:
        a_end = 1 if len(chunk) == 1 else int(rng.integers(1, len(chunk) - 1, endpoint=True))
        tokens_a = np.concatenate(chunk[:a_end])
        stats.pairs += 1
        if len(chunk) == 1 or (config.random_next_sentence and rng.random() < 0.5):
          own = generator(seed, index, 1, len(pairs))
          other = draw_other_document(own, index, candidates, faithful)
          pairs.append(PendingPair(tokens_a, 1, target - len(tokens_a), other,
                                   own.bit_generator.state))
          stats.random_document_b += 1
          stats.label_1 += 1
          if not split:  # the sentences of B not used go back to the document
            i -= len(chunk) - a_end
        else:
          label = 0
          tokens_b = np.concatenate(chunk[a_end:])
          if not config.random_next_sentence and rng.random() < 0.5:
            label, tokens_a, tokens_b = 1, tokens_b, tokens_a
          stats.label_1 += label
          pairs.append(_truncated(tokens_a, tokens_b, label, rng, config, stats))
      chunk, length = [], 0
    i += 1
  return pairs


def make_segment_pairs(documents: Sequence[Sequence[np.ndarray]], seed: int | Sequence[int],
                       config: ExampleConfig = ExampleConfig(), *,
                       indices: Sequence[int] | None = None, space_size: int | None = None,
                       word_start: np.ndarray | None = None,
                       stats: PairStats | None = None) -> list[SegmentPair]:
  """Segment pairs of every document, in document order, as the original cuts them.

  `documents` are non-empty lists of non-empty sentences of token ids (`tokenize_documents`; pieces
  work too, as arrays or lists of str, for inspection); `indices` their indices in their space
  (default 0, 1, ...) of `space_size` documents (default: up to the last index), the others being
  other splits' or empty. Sentences accumulate into a chunk until it reaches the target length
  (`max_seq_length - 3`, or with probability `short_seq_prob` a random length from 2, for the whole
  document); A is the chunk's first 1..k-1 sentences (uniformly), B the rest; A and B swap with
  probability 0.5 (label 1); the longer one is truncated until both fit. `word_start`
  (`VocabTables.word_start`) is where the fixed mode may split a one-sentence chunk (anywhere
  without it). Pairs depend on the seed and each document's index only (`document_pairs`): the
  same whichever documents are cut together, in whichever order, by whichever process.
  """
  if not all(documents):
    raise ValueError("Empty document: drop them first (tokenize_documents does)")
  stats = PairStats() if stats is None else stats
  indices = list(range(len(documents))) if indices is None else [int(i) for i in indices]
  by_index = {i: [np.asarray(s) for s in doc] for i, doc in zip(indices, documents)}
  if len(by_index) != len(documents):
    raise ValueError("Two documents with one index")
  space_size = max(indices, default=-1) + 1 if space_size is None else space_size
  candidates = Candidates(space_size, by_index, len(by_index))
  pairs = []
  for index, doc in by_index.items():
    for pair in document_pairs(doc, index, seed, config, candidates=candidates,
                               word_start=word_start, stats=stats):
      if isinstance(pair, PendingPair):
        pair = complete_pair(pair, by_index[pair.other], config, stats)
      pairs.append(pair)
  return pairs
