"""Inference pipelines with the inputs and outputs of `transformers.pipeline`: fill-mask and
feature extraction, batched with padded length buckets and one jitted forward per batch.

    python -m albert_jax.inference fill-mask --model DIR "Hello I'm a [MASK] model." [--top_k 5]
    python -m albert_jax.inference feature-extraction --model DIR "Hello." [--pooled] [--packed]

DIR is anything `from_pretrained` reads (an HF directory, an albert-jax model directory or training
run, an original TF1 release), with its vocabulary (or --tokenizer).
In Python: `albert_jax.pipeline("fill-mask", model=DIR)(text, top_k=5, targets=None)` and
`albert_jax.pipeline("feature-extraction", model=DIR)(texts, return_tensors=False, pooled=False,
packed=False)`; `packed=True` runs many short texts several to a row (`packing.py`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import files, init_from, packing
from albert_jax.data.tokenizer import VOCAB_FILE, AlbertTokenizer
from albert_jax.model import AlbertForMaskedLM, AlbertModel, make_model

log = logging.getLogger(__name__)

TASKS = ("fill-mask", "feature-extraction")
_MIN_BUCKET = 16
_MIN_PACKED_WIDTH = 128  # packed rows: at least this wide (a splash block), to hold many texts


def _bucket(n: int, cap: int | None = None, floor: int = 1) -> int:
  """The smallest power of two >= n (and >= floor), at most `cap`: few shapes, few compiles."""
  b = max(floor, 1 << max(0, n - 1).bit_length())
  return max(n, min(b, cap)) if cap else b


# Jitted with the module static, so pipelines on the same config share compiled shapes.
@functools.partial(jax.jit, static_argnums=0)
def _mlm_probs(module, params, ids, mask, types, positions):
  """Softmax over the vocabulary at `positions` [batch, masks] -> [batch, masks, vocab]."""
  out = module.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                     masked_lm_positions=positions)
  logits = out.logits if isinstance(module, AlbertForMaskedLM) else out.prediction_logits
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _features(module, params, ids, mask, types):
  """(last_hidden_state [batch, length, hidden], pooler_output [batch, hidden] or zeros [batch])."""
  out = module.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)
  pooled = jnp.zeros(ids.shape[:1]) if out.pooler_output is None else out.pooler_output
  return out.last_hidden_state.astype(jnp.float32), pooled.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _packed_features(module, params, ids, types, example_ids, cls_positions):
  """Packed rows: (last_hidden_state [rows, length, hidden], pooler_output [rows, max_examples,
  hidden] at each text's [CLS], or zeros [rows, max_examples] without a pooler)."""
  out = module.apply({"params": params}, ids, token_type_ids=types, example_ids=example_ids,
                     cls_positions=cls_positions if module.add_pooling_layer else None)
  pooled = jnp.zeros(cls_positions.shape) if out.pooler_output is None else out.pooler_output
  return out.last_hidden_state.astype(jnp.float32), pooled.astype(jnp.float32)


def _tokenizer(found: init_from.Found, tokenizer) -> AlbertTokenizer:
  """`tokenizer` (an AlbertTokenizer, a spiece.model file or a directory), else the model's own."""
  if isinstance(tokenizer, AlbertTokenizer):
    return tokenizer
  if tokenizer is None and found.vocabulary:
    return found.tokenizer()
  source = found.path if tokenizer is None else tokenizer
  if files.path(source).is_dir() and not (files.path(source) / VOCAB_FILE).is_file():
    raise FileNotFoundError(
        f"{source} has no {VOCAB_FILE}, so the pipeline has no tokenizer; pass tokenizer=... "
        "(an AlbertTokenizer, a spiece.model file or a directory holding one)")
  return AlbertTokenizer.from_pretrained(source)


def _at_least_one(name: str, value, what: str) -> None:
  if not isinstance(value, int) or value < 1:
    raise ValueError(f"{name}={value!r} (--{name}): {what}, at least 1")


def _shown(text: str, most: int = 40) -> str:
  """A text as an error message quotes it: its start, not a whole document."""
  return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"


class _Runner:
  """Tokenizes texts, pads them into length-sorted batches and runs `fn(module, params, ...)`."""

  def __init__(self, fn, module, params, tokenizer: AlbertTokenizer, batch_size: int):
    _at_least_one("batch_size", batch_size, "texts per forward pass")
    self.fn = functools.partial(fn, module)
    self.params = params
    self.tokenizer = tokenizer
    self.max_length = module.config.max_position_embeddings
    self.batch_size = batch_size

  def encode(self, texts: Sequence[str], tokenizer_kwargs: dict | None) -> list[list[int]]:
    for i, text in enumerate(texts):
      try:
        text.encode("utf-8")
      except UnicodeEncodeError as e:  # a lone surrogate: a non-UTF-8 byte from the command line
        raise ValueError(f"text {i + 1} ({_shown(text)}) is not valid Unicode at character "
                         f"{e.start} ({text[e.start]!r}): pass UTF-8 text") from None
    kwargs = dict(tokenizer_kwargs or {})
    if kwargs.get("truncation") and kwargs.get("max_length") is None:
      kwargs["max_length"] = min(self.tokenizer.model_max_length or self.max_length,
                                 self.max_length)
    rows = self.tokenizer(list(texts), **kwargs)["input_ids"]
    for text, ids in zip(texts, rows):
      if len(ids) > self.max_length:
        raise ValueError(f"{_shown(text)} has {len(ids)} tokens, more than the model's "
                         f"max_position_embeddings={self.max_length}; pass truncation=True")
    return rows

  def run(self, rows: list[list[int]], extra=None):
    """Yields (row index, outputs) per row; `extra(row indices, batch)` adds arguments to `fn`."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    pad = self.tokenizer.pad_token_id
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      width = _bucket(max(len(rows[i]) for i in idx), self.max_length, _MIN_BUCKET)
      batch = min(self.batch_size, _bucket(len(idx)))
      ids = np.full((batch, width), pad, np.int32)
      mask = np.zeros((batch, width), np.int32)
      mask[len(idx):] = 1  # filler rows: attend to something, results dropped
      for r, i in enumerate(idx):
        ids[r, :len(rows[i])] = rows[i]
        mask[r, :len(rows[i])] = 1
      args = () if extra is None else extra(idx, batch)
      # One text at a time, so token types are all 0, as transformers' pipelines give them.
      out = jax.device_get(self.fn(self.params, ids, mask, np.zeros_like(ids), *args))
      for r, i in enumerate(idx):
        yield i, jax.tree_util.tree_map(lambda x: x[r], out)

  def run_packed(self, rows: list[list[int]]):
    """Yields (row index, per-token outputs [its length, ...], per-text outputs) per row of
    `rows`, several texts to each of `batch_size` rows per call of `fn` (`_packed_features`).

    Longest first, so that first fit fills the rows well; rows at least _MIN_PACKED_WIDTH wide
    (at most the model's positions), rows and slots per call rounded up to powers of two.
    """
    for i, ids in enumerate(rows):
      if not ids:
        raise ValueError(f"text {i + 1} has no tokens: a packed row holds texts of 1 token or more")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    width = min(self.max_length, max(_MIN_PACKED_WIDTH, _bucket(len(rows[order[0]]))))
    while order:
      packed = packing.pack([{"input_ids": rows[i]} for i in order], self.batch_size, width,
                            width, pad_values={"input_ids": self.tokenizer.pad_token_id})
      # Only the rows and slots used, rounded up: few shapes, few compiles.
      n_rows, n_slots = _bucket(int(packed.row.max()) + 1), _bucket(int(packed.slot.max()) + 1)
      f = {k: v[:n_rows] for k, v in packed.features.items()}
      hidden, pooled = jax.device_get(self.fn(
          self.params, f["input_ids"], np.zeros_like(f["input_ids"]), f["example_ids"],
          f["cls_positions"][:, :n_slots]))
      for i, x, p in zip(order, packed.per_token(hidden), packed.per_example(pooled)):
        yield i, x, p
      order = order[packed.count:]


class FillMaskPipeline:
  """`transformers.pipeline("fill-mask")`: the top-k tokens for each [MASK], by softmax score."""

  def __init__(self, path, tokenizer=None, batch_size: int = 8, **runtime):
    found = init_from.identify(path)
    config, params, head = init_from.load(found)
    if head not in ("masked_lm", "pretraining"):
      raise ValueError(f"{path} holds an ALBERT {head} checkpoint, which has no masked-LM head; "
                       "fill-mask needs AlbertForMaskedLM or AlbertForPreTraining weights")
    self.tokenizer = _tokenizer(found, tokenizer)
    self.runner = _Runner(_mlm_probs, make_model(config, head, **runtime), params,
                          self.tokenizer, batch_size)

  def target_ids(self, targets: str | Sequence[str]) -> np.ndarray:
    """Vocabulary ids of `targets`; a word not in the vocabulary gives its first piece, as in HF."""
    tok = self.tokenizer
    vocab = tok.get_vocab()
    ids = []
    for target in [targets] if isinstance(targets, str) else targets:
      if target in vocab:
        ids.append(vocab[target])
        continue
      pieces = tok(target, add_special_tokens=False)["input_ids"]
      if not pieces:
        log.warning("Target %r is not in the vocabulary and tokenizes to nothing; ignoring it",
                    target)
        continue
      log.warning("Target %r is not in the vocabulary; using %r", target,
                  tok.convert_ids_to_tokens(pieces[0]))
      ids.append(pieces[0])
    if not ids:
      raise ValueError("At least one target must be provided when passed.")
    return np.array(sorted(set(ids)))

  def __call__(self, inputs: str | Sequence[str], top_k: int = 5, targets=None,
               tokenizer_kwargs: dict | None = None):
    """A list of {score, token, token_str, sequence} per text (per [MASK] with several)."""
    _at_least_one("top_k", top_k, "candidates per [MASK]")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    tok = self.tokenizer
    rows = self.runner.encode(texts, tokenizer_kwargs)
    masks = [[p for p, t in enumerate(ids) if t == tok.mask_token_id] for ids in rows]
    for text, m in zip(texts, masks):
      if not m:
        raise ValueError(f"No mask_token ({tok.mask_token}) found on the input {_shown(text)}")
    target_ids = None if targets is None else self.target_ids(targets)

    def positions(idx, batch):  # [batch, masks], padded with position 0
      out = np.zeros((batch, _bucket(max(len(masks[i]) for i in idx))), np.int32)
      for r, i in enumerate(idx):
        out[r, :len(masks[i])] = masks[i]
      return (out,)

    results = [None] * len(texts)
    for i, probs in self.runner.run(rows, positions):
      results[i] = self._postprocess(rows[i], masks[i], probs, top_k, target_ids)
    # transformers returns a one-text list's result unwrapped; so do we.
    return results[0] if isinstance(inputs, str) or len(texts) == 1 else results

  def _postprocess(self, ids, masks, probs, top_k, target_ids):
    """transformers' FillMaskPipeline.postprocess for one text; probs [>= len(masks), vocab]."""
    tok = self.tokenizer
    probs = probs[:len(masks)]
    if target_ids is not None:
      probs = probs[:, target_ids]
    top_k = min(top_k, probs.shape[-1])
    single = len(masks) == 1
    result = []
    for m, p in zip(masks, probs):
      row = []
      for k in np.argsort(-p, kind="stable")[:top_k]:
        token = int(k if target_ids is None else target_ids[k])
        filled = [token if j == m else t for j, t in enumerate(ids) if t != tok.pad_token_id]
        # With several masks the others stay in the sequence, so special tokens are kept.
        row.append({"score": float(p[k]), "token": token, "token_str": tok.decode([token]),
                    "sequence": tok.decode(filled, skip_special_tokens=single)})
      result.append(row)
    return result[0] if single else result


class FeatureExtractionPipeline:
  """`transformers.pipeline("feature-extraction")`: last_hidden_state, [1, length, hidden] per text.

  Any ALBERT checkpoint works: its backbone is used and its head ignored. `pooled=True` gives
  the pooler output, [1, hidden] per text, for checkpoints that have a pooler (not masked_lm).
  `packed=True` puts several texts in each row (attention within each text, positions from 0 in
  each), `batch_size` rows per forward: the same features with less padding for many short texts.
  """

  def __init__(self, path, tokenizer=None, batch_size: int = 8, **runtime):
    found = init_from.identify(path)
    config, params, head = init_from.load(found)
    if head != "base":
      params = params["albert"]
    self.path = path
    self.has_pooler = "pooler" in params
    module = AlbertModel(config=config, add_pooling_layer=self.has_pooler, **runtime)
    self.tokenizer = _tokenizer(found, tokenizer)
    self.runner = _Runner(_features, module, params, self.tokenizer, batch_size)
    self.packed_runner = _Runner(_packed_features, module, params, self.tokenizer, batch_size)

  def __call__(self, inputs: str | Sequence[str], return_tensors: bool = False,
               pooled: bool = False, truncation: bool | None = None,
               tokenize_kwargs: dict | None = None, packed: bool = False):
    """Nested lists (NumPy arrays with return_tensors=True), one per text, a list for a list."""
    if pooled and not self.has_pooler:
      raise ValueError(f"{self.path} has no pooler weights (a masked_lm or token-level "
                       "checkpoint); use the last hidden state, or a checkpoint with a pooler")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    kwargs = dict(tokenize_kwargs or {})
    if truncation is not None:
      kwargs["truncation"] = truncation
    rows = self.runner.encode(texts, kwargs)
    results = [None] * len(texts)
    if packed:
      outputs = self.packed_runner.run_packed(rows)
    else:
      outputs = ((i, hidden[:len(rows[i])], pooler)
                 for i, (hidden, pooler) in self.runner.run(rows))
    for i, hidden, pooler in outputs:
      x = pooler[None] if pooled else hidden[None]
      results[i] = x if return_tensors else x.tolist()
    return results[0] if isinstance(inputs, str) else results


def pipeline(task: str, model: str | os.PathLike, tokenizer=None, batch_size: int = 8,
             **runtime) -> FillMaskPipeline | FeatureExtractionPipeline:
  """The pipeline for `task` ("fill-mask" or "feature-extraction") on what `from_pretrained` reads.

  `tokenizer`: an AlbertTokenizer, a spiece.model file or a directory (default: the model's);
  `batch_size`: texts per forward; `runtime`: make_model's dtype, param_dtype, ...
  """
  if task == "fill-mask":
    return FillMaskPipeline(model, tokenizer, batch_size, **runtime)
  if task == "feature-extraction":
    return FeatureExtractionPipeline(model, tokenizer, batch_size, **runtime)
  raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}")


# ----------------------------------------------------------------------------- CLI

def _print_fill(text: str, result: list) -> None:
  print(text)
  per_mask = result if result and isinstance(result[0], list) else [result]
  for m, candidates in enumerate(per_mask):
    if len(per_mask) > 1:
      print(f"  [MASK] {m + 1} of {len(per_mask)}:")
    for rank, c in enumerate(candidates, 1):
      print(f"  {rank:2d}. {c['score']:.4f}  {c['token_str']!r:16} {c['sequence']}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m albert_jax.inference", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="task", required=True)
  for task in TASKS:
    p = sub.add_parser(task)
    p.add_argument("texts", nargs="+")
    p.add_argument("--model", required=True, help="HF or albert-jax model directory")
    p.add_argument("--tokenizer", default=None, help="spiece.model or a directory with one")
    p.add_argument("--batch_size", type=int, default=8)
    if task == "fill-mask":
      p.add_argument("--top_k", type=int, default=5)
      p.add_argument("--targets", nargs="+", default=None, help="score only these tokens")
    else:
      p.add_argument("--pooled", action="store_true", help="the pooler output instead")
      p.add_argument("--packed", action="store_true", help="several texts to a row")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    _at_least_one("batch_size", args.batch_size, "texts per forward pass")  # before loading
    if args.task == "fill-mask":
      _at_least_one("top_k", args.top_k, "candidates per [MASK]")
    pipe = pipeline(args.task, args.model, args.tokenizer, args.batch_size)
    if args.task == "fill-mask":
      results = pipe(args.texts, top_k=args.top_k, targets=args.targets)
      for text, result in zip(args.texts, [results] if len(args.texts) == 1 else results):
        _print_fill(text, result)
    else:
      for text, x in zip(args.texts, pipe(args.texts, return_tensors=True, pooled=args.pooled,
                                          packed=args.packed)):
        first = " ".join(f"{v:.4f}" for v in x.reshape(-1)[:5])
        print(f"{text}\n  shape {x.shape}  first values {first} ...")
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
