"""The order of an endless stream of examples: epoch e is every example once, in a permutation
drawn from (seed, e), so place k of the stream is a pure function of (seed, k) and resuming at a
batch index needs no other state. The pretraining pipeline and the fine-tuning arrays share it,
and the check that a resumed run's stream is the one its checkpoint was saved with."""

from __future__ import annotations

import functools
import json
import logging

import numpy as np

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """[n]: the example at each place of `epoch`, a permutation drawn from (seed, epoch)."""
  # One NumPy permutation per epoch costs ~0.03 us per example; grain's per-element index shuffle
  # (MapDataset.shuffle) costs 20-70 us, as much as masking the example.
  return np.random.default_rng([seed, 2, epoch]).permutation(
      np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))


def examples_at(positions: range, n: int, seed: int) -> np.ndarray:
  """Indices of the examples at stream `positions`: place k % n of epoch k // n."""
  epochs, places = np.divmod(np.arange(positions.start, positions.stop), n)
  out = np.empty_like(places)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = epoch_order(seed, int(epoch), n)[places[here]]
  return out


# ----------------------------------------------------------------------------- resuming a stream
#
# Every training iterator's state is {"next_batch": g, "stream": {...}}: the next global batch,
# and a flat JSON dict of what determines the stream of batches (seed, global batch size, lengths,
# masking, the source, fingerprints of the corpus and the vocabulary; for fine-tuning a
# fingerprint of the arrays and the task's data settings). Resuming checks the stream is the same.

ALLOW_CHANGE = "--config.allow_data_change=True"
# Fields a later version added to the record: a checkpoint saved before is resumed without them
# compared, with a warning.
ADDED_LATER = ("prepared_shards",)


class StreamChanged(ValueError):
  """The data of a resumed run would not continue the stream its checkpoint was saved with."""


def canonical(stream: dict) -> dict:
  """`stream` as it reads back from a checkpoint's JSON (tuples become lists), to compare."""
  return json.loads(json.dumps(stream, sort_keys=True))


def resume_position(state: dict, stream: dict, *, allow_change: bool,
                    what: str = "training data") -> int:
  """The global batch to continue from, `state["next_batch"]`, once `state["stream"]` (what the
  checkpoint's batches were made from) is checked against `stream` (what this run makes them
  from). A difference raises StreamChanged naming each field with both values, unless
  `allow_change` (config.allow_data_change), which continues from that batch with a loud warning.
  A state saved before streams were recorded is accepted with a warning."""
  next_batch = int(state["next_batch"])
  saved = state.get("stream")
  if saved is None:
    log.warning("The checkpoint's data state does not say what its stream was made from (an "
                "older run): continuing from batch %d without checking the %s", next_batch, what)
    return next_batch
  saved, stream = canonical(saved), canonical(stream)
  unrecorded = [k for k in ADDED_LATER if k in stream and k not in saved]
  if unrecorded:
    log.warning("The checkpoint's data state predates %s: continuing from batch %d without "
                "comparing them", ", ".join(unrecorded), next_batch)
    stream = {k: v for k, v in stream.items() if k not in unrecorded}
  changed = "; ".join(_differences(saved, stream))
  if not changed:
    return next_batch
  if not allow_change:
    raise StreamChanged(
        f"The {what} differ from what the run's checkpoint was trained on, so resuming would "
        f"not continue its stream of batches ({changed}). Set them back, or pass "
        f"{ALLOW_CHANGE} to continue from batch {next_batch} with the new stream anyway.")
  log.warning("!!! %s: the %s differ from the checkpoint's (%s); continuing from batch %d of "
              "the NEW stream as asked", ALLOW_CHANGE, what, changed, next_batch)
  return next_batch


def _differences(saved: dict, stream: dict, most: int = 5) -> list[str]:
  """Each field that differs with both values; a dict field (a prepared corpus's shards) entry
  by entry, the first `most` of them."""
  missing, out = "(absent)", []
  for k in sorted(saved.keys() | stream.keys()):
    a, b = saved.get(k, missing), stream.get(k, missing)
    if a == b:
      continue
    if not (isinstance(a, dict) and isinstance(b, dict)):
      out.append(f"{k}: checkpoint {a!r}, now {b!r}")
      continue
    entries = [f"{k}[{e}]: checkpoint {a.get(e, missing)!r}, now {b.get(e, missing)!r}"
               for e in sorted(a.keys() | b.keys()) if a.get(e, missing) != b.get(e, missing)]
    out += entries[:most] + ([f"{k}: {len(entries) - most} more"] if len(entries) > most else [])
  return out
