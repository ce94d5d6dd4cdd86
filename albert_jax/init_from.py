"""The one door to checkpoints, and the model a job trains: one rule for pretraining and every task.

What a path holds (`identify`: its format and its vocabulary) is decided here and nowhere else;
`load` reads it with that format's reader (albert_jax/checkpoints/: `hf`, `model_dir`, `tf1`, each
returning the head it holds) and re-heads it here (`rehead`). `from_pretrained`, config.init_from
(train.py), `hf_convert`'s CLI and the inference pipelines all come in through `load`.

Without `config.init_from` the architecture is `config.model` (vocab_size -1: the tokenizer's).
With it (an HF directory, an albert-jax model directory or training run, or an original TF1
release), the architecture is the checkpoint's: only the dropout rates come from `config.model`,
and num_labels / id2label from the task. Its parameters are matched to the new head by path and
shape, in Flax: the backbone must be there; what the new head adds (a classifier) is initialised
fresh, what the checkpoint has beyond it (an MLM head) is dropped, both logged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from albert_jax import files
from albert_jax import model as M
from albert_jax.checkpoints import hf, model_dir, tf1
from albert_jax.checkpoints.table import flatten, unflatten
from albert_jax.data.tokenizer import VOCAB_FILE, AlbertTokenizer

log = logging.getLogger(__name__)

PyTree = Any
FROM_CONFIG = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")
BACKBONE = ("albert/embeddings/", "albert/encoder/")  # what any head's checkpoint must bring

# ----------------------------------------------------------------------------- what a path holds

FORMATS = ("albert-jax", "tf1", "hf")  # a model directory or training run; a release; HF


@dataclasses.dataclass(frozen=True)
class Found:
  """What a path holds: its format, and the SentencePiece model stored with it."""
  path: str
  format: str  # one of FORMATS
  vocabulary: str | None  # the .model file, or None
  release: tf1.Release | None = None  # a TF1 release as found (read without looking again)

  def tokenizer(self) -> AlbertTokenizer | None:
    """The model's own tokenizer, with the flags of a tokenizer_config.json beside spiece.model."""
    if self.vocabulary is None:
      return None
    vocabulary = files.path(self.vocabulary)
    return AlbertTokenizer.from_pretrained(
        vocabulary.parent if vocabulary.name == VOCAB_FILE else vocabulary)


def identify(path, format: str | None = None) -> Found:
  """What `path` holds: an albert-jax model directory or training run (a run's steps included),
  else (with no config.json) an original TF1 release, TF-Hub module or checkpoint prefix, else an
  HF directory (whose reader says what is missing). `format`: the one the caller knows it is (a
  CLI subcommand names it), for its vocabulary.

  The vocabulary: a TF1 release's (30k-clean.model, beside it or in assets/), else the
  spiece.model in the directory or, for a training run, in its workdir; never further up."""
  release = None
  if format is None:
    if model_dir.is_model_dir(path):
      format = "albert-jax"
    elif not (files.path(path) / hf.CONFIG_FILE).is_file() and _is_release(path):
      format = "tf1"
    else:
      format = "hf"
  elif format not in FORMATS:
    raise ValueError(f"Unknown checkpoint format {format!r}; choose one of {FORMATS}")
  if format == "tf1":
    release = _release(path)
  vocabulary = (str(release.spm_model) if release and release.spm_model
                else model_dir.spm_model_in(path))
  return Found(str(path), format, vocabulary, release)


def _release(path) -> tf1.Release | None:
  try:
    return tf1.find_release(path)
  except (ValueError, FileNotFoundError):
    return None  # a broken release: its reader says what is wrong


def _is_release(path) -> bool:
  try:
    return tf1.find_release(path) is not None
  except (ValueError, FileNotFoundError):
    return True  # a release, but a broken one: let its reader say what is wrong


# ----------------------------------------------------------------------------- loading

class Loaded(NamedTuple):
  config: M.AlbertConfig
  params: PyTree  # host arrays, the tree of `head`
  head: str


def load(path, head: str | None = None, seed: int = 0,
         config: M.AlbertConfig | str | None = None, format: str | None = None) -> Loaded:
  """(config, params, head) from what `identify` says `path` holds (or what it `Found` there;
  `format`: read it as that), by that format's reader. `head` defaults to the checkpoint's own;
  another keeps its backbone (`rehead`). `config` (an AlbertConfig, a preset name or an
  albert_config.json) only for a TF-Hub module, which carries none."""
  found = path if isinstance(path, Found) else identify(path, format)
  if found.format == "albert-jax":
    cfg, params, held = model_dir.load_model_dir(found.path)
  elif found.format == "tf1":
    cfg, params, held = tf1.load_release(found.release or found.path, head, seed, config)
  else:
    cfg, params, held = hf.load(found.path, head, seed)
  if head in (None, held):
    return Loaded(cfg, params, held)
  return Loaded(cfg, rehead(params, held, cfg, head, seed), head)


def from_pretrained(path, head: str | None = None, seed: int = 0,
                    config: M.AlbertConfig | str | None = None, **runtime):
  """(module, params) for an HF, Orbax or TF1 release directory; `runtime`: dtype, remat_policy..."""
  config, params, head = load(path, head, seed, config)
  return M.make_model(config, head, **runtime), params


# ----------------------------------------------------------------------------- the job's model

def model_config(config, task, vocab_size: int, checkpoint: M.AlbertConfig | None = None,
                 resumed: bool = False) -> M.AlbertConfig:
  """The architecture the job trains (see the module doc). `checkpoint`: the architecture of
  config.init_from, or of the run's own checkpoints when it resumes (`resumed`): then a
  config.model that asks for another one is refused, naming the fields."""
  labels = task.num_labels(config.data)
  names = tuple(config.data.get("label_names", ()) or ())
  heading = dict(num_labels=labels, id2label=names if len(names) == labels else ())
  if checkpoint is None:
    fields = dict(config.model)
    if fields.get("vocab_size", -1) in (-1, None):
      fields["vocab_size"] = vocab_size
    if fields["vocab_size"] < vocab_size:
      raise ValueError(f"config.model.vocab_size={fields['vocab_size']} is smaller than the "
                       f"tokenizer's {vocab_size} pieces")
    return M.AlbertConfig(**{**fields, **heading})
  differ = {k: (v, getattr(checkpoint, k)) for k, v in dict(config.model).items()
            if k not in FROM_CONFIG + ("num_labels", "id2label") and hasattr(checkpoint, k)
            and not (k == "vocab_size" and v in (-1, None)) and getattr(checkpoint, k) != v}
  if differ and resumed and not config.init_from:
    raise ValueError(
        "config.model asks for another architecture than the run's checkpoints hold ("
        + ", ".join(f"config.model.{k}={a!r}, checkpoints {b!r}" for k, (a, b) in differ.items())
        + "): set it back, or start a new workdir")
  if differ:
    log.warning("The architecture is the checkpoint's; config.model differs in "
                    "(config.model, checkpoint): %s", differ)
  fields = {k: config.model[k] for k in FROM_CONFIG if k in config.model}
  return dataclasses.replace(checkpoint, **fields, **heading)


# ----------------------------------------------------------------------------- re-heading

def _rooted(path: str, head: str) -> str:
  """A path as it is under a head with the `albert/` backbone scope (the base head has none)."""
  return f"albert/{path}" if head == "base" else path


def matching(params: PyTree, from_head: str, target: PyTree, to_head: str
             ) -> tuple[dict[str, Any], list[str]]:
  """({path in `target`: the checkpoint's array}, [target paths initialised fresh]).

  `target` holds the new head's parameters or their shapes. Refuses a checkpoint whose backbone
  is missing or shaped otherwise, naming the parameters."""
  source = {_rooted(k, from_head): v for k, v in flatten(params).items()}
  kept, fresh, bad = {}, [], []
  for path, leaf in flatten(target).items():
    shape = tuple(nn.unbox(leaf).shape)
    have = source.get(_rooted(path, to_head))
    if have is not None and tuple(np.shape(have)) == shape:
      kept[path] = have
    elif _rooted(path, to_head).startswith(BACKBONE):
      bad.append(f"{path} {shape}: " + ("missing" if have is None else
                                        f"the checkpoint has {tuple(np.shape(have))}"))
    else:
      fresh.append(path)
  if bad:
    raise ValueError("config.init_from does not fit the model's backbone: " + "; ".join(bad[:5])
                     + (" ..." if len(bad) > 5 else ""))
  used = {_rooted(k, to_head) for k in kept}
  dropped = sorted(k.removeprefix("albert/") if from_head == "base" else k
                   for k in source if k not in used)  # as the checkpoint's head names them
  if fresh:
    log.warning("Newly initialised %s weights (not in the checkpoint; train them): %s", to_head,
                fresh)
  if dropped:
    log.warning("Checkpoint weights not used by the %s head: %s", to_head, dropped)
  return kept, fresh


def merge(params: PyTree, kept: dict[str, Any]) -> PyTree:
  """`params` (plain or boxed with logical names) with the leaves at `kept`'s paths replaced."""
  leaves = flatten(params)
  for path, value in kept.items():
    leaf = leaves[path]
    leaves[path] = leaf.replace_boxed(value) if isinstance(leaf, nn.Partitioned) else value
  return unflatten(leaves)


def rehead(params: PyTree, from_head: str, cfg: M.AlbertConfig, to_head: str,
           seed: int = 0) -> PyTree:
  """Host parameters of `to_head` from a checkpoint of `from_head` (see `matching`)."""
  if to_head == from_head:
    return params
  module = M.make_model(cfg, to_head)
  kept, fresh = matching(params, from_head, nn.unbox(M.abstract_params(module)), to_head)
  new = M.init_params(module, seed) if fresh else nn.unbox(M.abstract_params(module))
  return jax.tree_util.tree_map(np.asarray, merge(new, kept))
