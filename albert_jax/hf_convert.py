"""Hugging Face <-> albert-jax checkpoints: one table of (Flax path, HF key, transform), with checks.

    python -m albert_jax.hf_convert hf-to-orbax HF_DIR OUT_DIR [--head=...] [--overwrite]
    python -m albert_jax.hf_convert orbax-to-hf CKPT_DIR OUT_DIR [--head=...] [--spm_model=...]
    python -m albert_jax.hf_convert tf-to-hf RELEASE_DIR OUT_DIR [--head=...] [--config=...]
    python -m albert_jax.hf_convert tf-to-orbax RELEASE_DIR OUT_DIR [--head=...] [--config=...]

An HF directory is `config.json` + `model.safetensors` (or `pytorch_model.bin`, read only with
`torch.load(weights_only=True)` and torch >= 2.6, or a sharded `*.index.json` whose shards must be
plain file names in the directory); local or in a bucket (`gs://...`), sources and destinations.
Sources are read through the one door (`init_from.load`), by the readers in
albert_jax/checkpoints/; this module is the command line and the names users call. Exports
write `config.json`, `model.safetensors` and, given a SentencePiece model, the tokenizer files,
loadable by `transformers.AlbertFor*.from_pretrained(dir)` with no missing or unused weights.
The `squad_v2_original` head has no such class: exporting it to HF is refused (it is kept as an
albert-jax model directory, `save_model`), while loading an HF or original checkpoint into it
keeps the backbone and initialises the head.
The original TF1 releases (RELEASE_DIR, a TF-Hub module or a checkpoint prefix) are read by
`checkpoints/tf1.py` without TensorFlow; `--config` (a preset such as base-v2, or an albert_config.json)
is needed only for a TF-Hub module, which carries no config.
An OUT_DIR that is the source, holds it or lies inside it (links followed) is refused before
anything is read or written: `--overwrite` would otherwise replace the source with its copy.
"""


from __future__ import annotations

import argparse
import logging
import sys

import jax
import numpy as np

from albert_jax import files, init_from
from albert_jax.checkpoints import model_dir
# The Python names of the conversion (docs/checkpoints.md), where they live now.
from albert_jax.checkpoints.hf import read_hf_config, read_hf_weights, read_safetensors, save
from albert_jax.checkpoints.table import (Row, check_finite, expected_hf_shapes, flatten,
                                          from_hf_state_dict, infer_head, param_table,
                                          to_hf_state_dict, unflatten)
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.init_from import from_pretrained
from albert_jax.init_from import load as load_any
from albert_jax.model import AlbertConfig, HEADS, has_hf_class

__all__ = ["Row", "check_finite", "expected_hf_shapes", "flatten", "from_hf_state_dict",
           "from_pretrained", "infer_head", "load", "load_any", "main", "param_table",
           "read_hf_config", "read_hf_weights", "read_safetensors", "save", "save_model",
           "to_hf_state_dict", "unflatten"]

log = logging.getLogger(__name__)


def load(path, head: str | None = None, seed: int = 0) -> init_from.Loaded:
  """(config, params, head) from an HF directory; `head` defaults to the saved architecture.
  Another head than the saved one keeps the backbone (`init_from.rehead`)."""
  return init_from.load(path, head, seed, format="hf")


def save_model(config: AlbertConfig, params, path, head: str, tokenizer=None,
               overwrite: bool = False, sources=()) -> str:
  """Writes `path` as an HF directory (`save`) or, for a head transformers has no class for
  (squad_v2_original), as an albert-jax model directory; returns "hf" or "albert-jax".
  `init_from.load`, `from_pretrained` and `config.init_from` read both."""
  if has_hf_class(head):
    save(config, params, path, head, tokenizer, overwrite, sources)
    return "hf"
  spm = tokenizer.vocab_file if isinstance(tokenizer, AlbertTokenizer) else tokenizer
  model_dir.save_model_dir(path, config, params, head, spm, overwrite, sources)
  return "albert-jax"


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m albert_jax.hf_convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_ in (("hf-to-orbax", "HF directory -> albert-jax model directory (Orbax)"),
                      ("orbax-to-hf", "albert-jax model directory (Orbax) -> HF directory"),
                      ("tf-to-hf", "original TF1 release or TF-Hub module -> HF directory"),
                      ("tf-to-orbax", "original TF1 release or TF-Hub module -> Orbax directory")):
    p = sub.add_parser(name, help=help_)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--head", choices=sorted(HEADS), default=None,
                   help="head to write (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--spm_model", default=None,
                   help="SentencePiece model to include (default: the source's)")
    if name.startswith("tf-"):
      p.add_argument("--config", default=None,
                     help="a preset (base-v2, ...) or an albert_config.json, for a TF-Hub module "
                          "(it carries no config)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    # Every path the command reads: the output may overlap none (checked before loading, and
    # again by the write).
    sources = [args.src, args.spm_model]
    if getattr(args, "config", None) and files.path(args.config).is_file():
      sources.append(args.config)
    files.check_apart(args.dst, sources)
    # What the source is read as: what the command names (orbax-to-hf: whatever it holds).
    found = init_from.identify(args.src, {"hf-to-orbax": "hf", "orbax-to-hf": None}.get(
        args.command, "tf1"))
    config, params, head = init_from.load(found, args.head, config=getattr(args, "config", None))
    spm = args.spm_model or found.vocabulary
    sources.append(spm)
    if spm is None and found.format == "tf1":
      log.warning("%s has no SentencePiece model (30k-clean.model): writing no tokenizer",
                  args.src)
    if args.command.endswith("-to-hf"):
      save(config, params, args.dst, head, spm, args.overwrite, sources)
    else:
      model_dir.save_model_dir(args.dst, config, params, head, spm, args.overwrite, sources)
  except (FileNotFoundError, FileExistsError, KeyError, ValueError, ImportError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 1
  n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  print(f"wrote {args.dst}: {head} head, {n:,} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
