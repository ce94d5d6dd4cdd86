"""N-gram whole-word masking, the second step of making a pretraining example: a batch of segment
pairs (a `PairTable`, as every source gives them) becomes the model's features, as the original's
`create_masked_lm_predictions` makes them. Where the `fixed` and `faithful` modes differ here
(items 4-9) is in examples.py's module doc.

  batch = mask_examples(pairs.pairs_at(range(i, i + 256)), np.random.default_rng([seed, epoch, i]),
                        tables, config)
"""

from __future__ import annotations

import functools

import numpy as np

from albert_jax.data.examples import ExampleConfig, Seed, VocabTables, generator
from albert_jax.data.pairs import PairTable, SegmentPair

FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions",
                 "masked_lm_ids", "masked_lm_weights", "sentence_order_label")


@functools.lru_cache(maxsize=16)
def _ngram_cdfs(config: ExampleConfig) -> np.ndarray:
  """[ngram + 1, ngram - 1]: row m is the CDF of n over 1..m (renormalised) without its final 1,
  padded with inf; n = 1 + the number of entries <= a uniform draw."""
  p = config.ngram_probs()
  cdfs = np.full((config.ngram + 1, max(config.ngram - 1, 1)), np.inf)
  for m in range(1, config.ngram + 1):
    cdfs[m, :m - 1] = (np.cumsum(p[:m]) / p[:m].sum())[:-1]
  return cdfs


def _choose_spans(candidates: list[int], ends: list[int], bounds: list[int], budget: int,
                  covered: bytearray) -> list[int]:
  """The original's greedy loop over one pair's words in random order: token indices chosen.

  Candidate word w proposes words w..ends[w]-1 (its n-gram); shorter n-grams are tried while the
  span would exceed the budget; it is skipped if even one word would, or if it overlaps a span
  already chosen (`covered`, per word).
  """
  chosen, count = [], 0
  for w in candidates:
    if count >= budget:
      break
    end = ends[w]
    size = bounds[end] - bounds[w]
    while count + size > budget and end > w + 1:
      end -= 1
      size = bounds[end] - bounds[w]
    if count + size > budget or covered.find(1, w, end) >= 0:
      continue
    covered[w:end] = bytes([1]) * (end - w)
    count += size
    chosen.extend(range(bounds[w], bounds[end]))
  return chosen


def _choose_masked(body: np.ndarray, body_start: np.ndarray, b_start: np.ndarray,
                   length: np.ndarray, rng: np.random.Generator, tables: VocabTables,
                   config: ExampleConfig) -> tuple[np.ndarray, list[int]]:
  """Indices into `body` of the tokens to predict (sorted within each pair), and their counts."""
  faithful = config.mode == "faithful"
  batch = len(length)
  if config.do_whole_word_mask:
    starts = (tables.word_start_original if faithful else tables.word_start)[body]
    if not faithful:
      starts[b_start[b_start < body_start[1:]]] = True  # words never cross the middle [SEP]
  else:
    starts = np.ones(len(body), bool)
  starts[body_start[:-1][length > 3]] = True
  first = np.flatnonzero(starts)  # [words]: token index of each word's first piece
  n_words = len(first)
  word_start = np.searchsorted(first, body_start)  # pair i has words word_start[i:i + 2]
  pair_of_word = np.repeat(np.arange(batch), np.diff(word_start))
  # An n-gram may run to the pair's last word (faithful, where it is then cut short) or to its
  # segment's last word (fixed, and n is drawn among the lengths that fit: module doc, 6 and 7).
  words = np.arange(n_words)
  limit = word_start[1:][pair_of_word]
  if faithful:
    longest = np.full(n_words, config.ngram)
  else:
    b_word = np.searchsorted(first, b_start)[pair_of_word]
    limit = np.where(words < b_word, b_word, limit)
    longest = np.minimum(config.ngram, limit - words)
  cdfs, u = _ngram_cdfs(config), rng.random(n_words)
  n = 1 + np.searchsorted(cdfs[config.ngram, :config.ngram - 1], u, side="right")
  short = np.flatnonzero(longest < config.ngram)  # the last words of a segment (fixed)
  n[short] = 1 + (u[short, None] >= cdfs[longest[short]]).sum(axis=1)
  ends = np.minimum(words + n, limit).tolist()
  # Each pair's words in random order: sort by pair + a random key in [0, 0.5).
  order = np.argsort(pair_of_word + 0.5 * rng.random(n_words)).tolist()
  bounds = first.tolist() + [len(body)]  # word w is body[bounds[w]:bounds[w + 1]]
  word_start = word_start.tolist()
  # The original counts [CLS] and both [SEP] in the budget (module doc, 4).
  budgets = np.minimum(config.max_predictions, np.maximum(1, np.round(
      (length - 3 * (not faithful)) * config.masked_lm_prob))).astype(int).tolist()

  covered = bytearray(n_words)
  chosen, n_chosen = [], []
  for i in range(batch):
    picked = [] if config.masked_lm_prob == 0 else sorted(_choose_spans(
        order[word_start[i]:word_start[i + 1]], ends, bounds, budgets[i], covered))
    chosen.extend(picked)
    n_chosen.append(len(picked))
  return np.array(chosen, np.int64), n_chosen


def mask_examples(pairs: PairTable, rng: Seed, tables: VocabTables,
                  config: ExampleConfig = ExampleConfig()) -> dict[str, np.ndarray]:
  """The model's features for a batch of `[CLS] A [SEP] B [SEP]`, with n-gram whole-word masking.

  `pairs` is the packed form every source gives (`PairTable.pack` packs a list of SegmentPairs).

  Of each pair's tokens (never [CLS], [SEP] or padding) about `masked_lm_prob` are chosen, in
  n-gram spans of whole words with p(n) prop. to 1/n for n in 1..ngram, at most `max_predictions`;
  each becomes [MASK] (80%), a random token (10%) or stays (10%). Names and padding are the
  original's: int32 (masked_lm_weights float32), [batch, max_seq_length] and
  [batch, max_predictions], positions sorted; the label is `sentence_order_label` ([batch]; the
  original stored it as `next_sentence_labels`). The numbers drawn for a pair depend on the whole
  batch: the same pairs in the same batches with the same seed give the same features.
  """
  rng = generator(rng)
  batch, seq_len, max_pred = len(pairs), config.max_seq_length, config.max_predictions
  len_a = pairs.len_a.astype(np.int64, copy=False)
  length = pairs.lengths + 3
  if batch and length.max() > seq_len:
    raise ValueError(f"A pair of {length.max() - 3} tokens does not fit in {seq_len}")
  # Every pair's tokens without the special ones (A then B), back to back: [tokens]. A copy, as
  # masking writes into it.
  body = pairs.tokens.astype(np.int32)
  body_start = pairs.starts  # [batch + 1]
  chosen, n_chosen = _choose_masked(body, body_start, body_start[:-1] + len_a, length, rng, tables,
                                    config)
  labels = body[chosen]

  draw = rng.random(len(chosen))
  replaced = labels.copy()
  replaced[draw < 0.8] = tables.mask_id
  randomised = draw >= 0.9
  if config.mode == "faithful":  # any id, special ones included (module doc, 9)
    replaced[randomised] = rng.integers(tables.vocab_size, size=int(randomised.sum()))
  else:
    pool = tables.replacement_ids
    replaced[randomised] = pool[rng.integers(len(pool), size=int(randomised.sum()))]
  body[chosen] = replaced

  # Sequence position of every body token: after [CLS], and after the middle [SEP] in B.
  pair_of_token = np.repeat(np.arange(batch), length - 3)
  local = np.arange(len(body)) - body_start[pair_of_token]
  position = local + 1 + (local >= len_a[pair_of_token])
  rows = np.arange(batch)
  input_ids = np.zeros((batch, seq_len), np.int32)
  input_ids[pair_of_token, position] = body
  input_ids[:, 0] = tables.cls_id
  input_ids[rows, len_a + 1] = tables.sep_id
  input_ids[rows, length - 1] = tables.sep_id
  # The k-th prediction of pair i goes to slot k of row i.
  pair_of = np.repeat(rows, n_chosen)
  slot = np.arange(len(chosen)) - np.repeat(np.cumsum(n_chosen) - n_chosen, n_chosen)
  masked_lm_positions = np.zeros((batch, max_pred), np.int32)
  masked_lm_positions[pair_of, slot] = position[chosen]
  masked_lm_ids = np.zeros((batch, max_pred), np.int32)
  masked_lm_ids[pair_of, slot] = labels
  index = np.arange(seq_len)
  return {
      "input_ids": input_ids,
      "attention_mask": (index < length[:, None]).astype(np.int32),
      "token_type_ids": ((index >= len_a[:, None] + 2) & (index < length[:, None])).astype(np.int32),
      "masked_lm_positions": masked_lm_positions,
      "masked_lm_ids": masked_lm_ids,
      "masked_lm_weights": (np.arange(max_pred) < np.array(n_chosen)[:, None]).astype(np.float32),
      "sentence_order_label": pairs.labels.astype(np.int32),
  }


def mask_example(pair: SegmentPair, rng: Seed, tables: VocabTables,
                 config: ExampleConfig = ExampleConfig()) -> dict[str, np.ndarray]:
  """`mask_examples` of one pair: [max_seq_length] and [max_predictions] features, scalar label.

  One call costs ~0.5 ms of NumPy overhead; batches through `mask_examples` are 4-10x faster.
  """
  return {k: v[0] for k, v in mask_examples(PairTable.pack([pair]), rng, tables, config).items()}
