"""What packing would give RACE (an estimate: no RACE data here): the padding share of its rows
at max_seq_length 512 and the packed rows a step would need, from RACE's published lengths.

    python -m experiments.race_padding [--batch=32] [--steps=1000]

RACE (Lai et al., 2017): passages of 321.9 words on average, questions of 10.0 and options of
5.3. Assumed here: passage words lognormal around that mean (sigma 0.35), 1.3 SentencePiece
pieces a word, question + option around 15.3 words (sigma 0.3, at most 128 pieces, as
`race.convert_examples` keeps), `[CLS] article [SEP] qa [SEP]` cut at 512. A question is four
rows, one per option, of nearly the same length (the passage is shared). The packed rows are
sized as `data/packed_batches.py` sizes them for fine-tuning (the fullest of the steps).
"""

import argparse

import ml_collections
import numpy as np

from albert_jax.data import packed_batches


def race_like_lengths(questions: int, seed: int = 0) -> np.ndarray:
  """[questions, 4] tokens a row."""
  rs = np.random.RandomState(seed)
  passage = np.clip(rs.lognormal(np.log(321.9), 0.35, questions) * 1.3, 20, None).astype(int)
  qa = np.minimum((rs.lognormal(np.log(15.3), 0.3, questions) * 1.3).astype(int), 128)
  options = rs.randint(-2, 3, (questions, 4))  # the options differ by a few pieces
  return np.minimum(passage[:, None] + qa[:, None] + 3 + options, 512)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32, help="questions a step (run_race.py's)")
  parser.add_argument("--steps", type=int, default=1000)
  args = parser.parse_args()
  lengths = race_like_lengths(args.batch * args.steps).reshape(-1)
  rows = args.batch * 4
  steps = np.split(np.arange(len(lengths)), args.steps)
  layout = packed_batches.size_layout(
      lengths, steps, max_seq_length=512, processes=1, row_multiple=1,
      data_cfg=ml_collections.ConfigDict(dict(pack_length=0, pack_rows=0, pack_max_examples=0)))
  mean_rows = np.mean([packed_batches.fit(lengths[s], 512)[0] for s in steps])
  print(f"tokens a row: mean {lengths.mean():.0f}, median {np.median(lengths):.0f}; "
        f"padding {1 - lengths.mean() / 512:.1%} of the row tokens")
  print(f"packed: {layout.rows} rows of {layout.length} a step (unpacked {rows}; the mean step "
        f"needs {mean_rows:.1f}): {rows * 512 / (layout.rows * layout.length):.2f}x fewer tokens")


if __name__ == "__main__":
  main()
