"""ALBERT's tokenizer: SentencePiece plus the original text preprocessing, id for id with the
slow `transformers.AlbertTokenizer` of transformers 4.x (google-research/albert `tokenization.py`).

Special tokens are ALBERT's: `<pad>`=0, `<unk>`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4 in every
released vocabulary; their ids are read from the SentencePiece model. transformers is not imported.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm

from albert_jax import files

SPIECE_UNDERLINE = "▁"
VOCAB_FILE = "spiece.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
# transformers writes model_max_length=int(1e30) for "no limit".
_NO_LIMIT = 10**12


def preprocess_text(text: str, *, do_lower_case: bool = True, remove_space: bool = True,
                    keep_accents: bool = False) -> str:
  """google-research/albert's `preprocess_text`: squeeze spaces, ``/'' -> ", drop accents, lower."""
  if remove_space:
    text = " ".join(text.strip().split())
  text = text.replace("``", '"').replace("''", '"')
  if not keep_accents and not text.isascii():  # NFKD leaves ASCII as it is
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
  if do_lower_case:
    text = text.lower()
  return text


def lower_chars(text: str) -> str:
  """`str.lower` one character at a time, as transformers' `tokenize` lower-cases before splitting.

  The only difference from `text.lower()` is Greek final sigma: "ΟΔΟΣ" gives "οδοσ", not "οδος".
  """
  return text.lower() if "Σ" not in text else "".join(c.lower() for c in text)


def normalize(text: str, *, do_lower_case: bool = True, remove_space: bool = True,
              keep_accents: bool = False) -> str:
  """What SentencePiece is given for `text` (no special tokens in it); the trainer uses it too."""
  if do_lower_case:
    text = lower_chars(text)
  return preprocess_text(text, do_lower_case=do_lower_case, remove_space=remove_space,
                         keep_accents=keep_accents)


def _as_ids(ids: Any) -> int | list[int]:
  """Python ints from an int, a list, or a NumPy / JAX array."""
  if isinstance(ids, (list, tuple)):
    return [int(i) for i in ids]
  return np.asarray(ids).tolist()


class AlbertTokenizer:
  """ALBERT's SentencePiece tokenizer with the API (and outputs) of transformers 4's slow class."""

  pad_token = "<pad>"
  unk_token = "<unk>"
  cls_token = "[CLS]"
  sep_token = "[SEP]"
  mask_token = "[MASK]"
  bos_token = cls_token  # transformers' aliases
  eos_token = sep_token

  def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True,
               remove_space: bool = True, keep_accents: bool = False,
               model_max_length: int | None = None):
    self.vocab_file = str(vocab_file)
    self.do_lower_case = do_lower_case
    self.remove_space = remove_space
    self.keep_accents = keep_accents
    self.model_max_length = model_max_length
    if not files.path(self.vocab_file).is_file():
      raise FileNotFoundError(f"SentencePiece model {self.vocab_file} not found")
    self._load(files.path(self.vocab_file).read_bytes())

  def _load(self, proto: bytes) -> None:
    sp = self.sp_model = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(proto)
    except RuntimeError as e:  # SentencePiece names neither the file nor the problem
      raise ValueError(f"{self.vocab_file} is not a SentencePiece model ({str(e).strip()}): "
                       "name the spiece.model (30k-clean.model in a release) the vocabulary "
                       "was saved as") from None
    self.all_special_tokens = [self.cls_token, self.sep_token, self.unk_token, self.pad_token,
                               self.mask_token]
    missing = [t for t in self.all_special_tokens if sp.id_to_piece(sp.piece_to_id(t)) != t]
    if missing:
      raise ValueError(
          f"{self.vocab_file} lacks ALBERT's special tokens {missing}; train the vocabulary with "
          "`python -m albert_jax.data.train_tokenizer` (pad_id=0, unk_id=1, "
          "control_symbols=[CLS],[SEP],[MASK])")
    self.all_special_ids = [sp.piece_to_id(t) for t in self.all_special_tokens]
    (self.cls_token_id, self.sep_token_id, self.unk_token_id, self.pad_token_id,
     self.mask_token_id) = self.all_special_ids
    self.bos_token_id, self.eos_token_id = self.cls_token_id, self.sep_token_id
    self._special_ids = frozenset(self.all_special_ids)
    self._special_tokens = frozenset(self.all_special_tokens)
    self._special_re = re.compile("(" + "|".join(map(re.escape, self.all_special_tokens)) + ")")
    # In ALBERT's vocabularies these are control symbols, which SentencePiece never emits for
    # text. A model that made one a user-defined symbol would match it in raw text.
    self._matchable = frozenset(i for i in (self.pad_token_id, self.cls_token_id, self.sep_token_id,
                                            self.mask_token_id) if not sp.is_control(i))
    # Ids `ids_raw` cannot take from SentencePiece as they are: pieces `_tokenize` splits again
    # (a digit then ",") and the matchable ones.
    self._respelled = frozenset(self._matchable) | frozenset(
        i for i in range(sp.get_piece_size())
        if len(p := sp.id_to_piece(i)) > 1 and p[-1] == "," and p[-2].isdigit())

  def __getstate__(self):
    state = self.__dict__.copy()
    state["sp_model"] = self.sp_model.serialized_model_proto()
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load(state["sp_model"])

  def __repr__(self):
    return (f"AlbertTokenizer({self.vocab_file!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, remove_space={self.remove_space}, "
            f"keep_accents={self.keep_accents})")

  @property
  def vocab_size(self) -> int:
    return self.sp_model.get_piece_size()

  def __len__(self) -> int:
    return self.vocab_size

  def get_vocab(self) -> dict[str, int]:
    return {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}

  # --------------------------------------------------------------------------- text -> pieces

  def preprocess_text(self, text: str) -> str:
    return preprocess_text(text, do_lower_case=self.do_lower_case, remove_space=self.remove_space,
                           keep_accents=self.keep_accents)

  def _tokenize(self, text: str) -> list[str]:
    """transformers' `_tokenize`: preprocess, encode, re-split pieces ending in digit + ','."""
    pieces = self.sp_model.encode(self.preprocess_text(text), out_type=str)
    out = []
    for piece in pieces:
      if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
        # The original's rule: "9,9" gives "▁9" "," "9", never "▁9," "9".
        sub = self.sp_model.encode(piece[:-1].replace(SPIECE_UNDERLINE, ""), out_type=str)
        if piece[0] != SPIECE_UNDERLINE and sub[0][0] == SPIECE_UNDERLINE:
          sub = sub[1:] if len(sub[0]) == 1 else [sub[0][1:]] + sub[1:]
        out.extend(sub)
        out.append(piece[-1])
      else:
        out.append(piece)
    return out

  def tokenize(self, text: str) -> list[str]:
    """Pieces of `text`; special tokens written in it (a fill-mask "[MASK]") stay one piece each."""
    parts = self._special_re.split(text)  # [text, special, text, ..., special, text]
    pieces = []
    for i, part in enumerate(parts):
      if i % 2:
        pieces.append(part)
        continue
      if i + 1 < len(parts) and parts[i + 1] == self.mask_token:
        part = part.rstrip()  # transformers' [MASK] is lstrip=True: it takes the spaces before it
      if part:
        pieces.extend(self._tokenize(lower_chars(part) if self.do_lower_case else part))
    return pieces

  def tokenize_raw(self, text: str) -> list[str]:
    """Pieces of corpus text, where "[MASK]" or "[SEP]" is ordinary text and never a special id."""
    pieces = self._tokenize(lower_chars(text) if self.do_lower_case else text)
    if self._matchable:
      # Spell such a piece out character by character (unknown characters become <unk>).
      pieces = [q for p in pieces
                for q in (list(p) if self.sp_model.piece_to_id(p) in self._matchable else [p])]
    return pieces

  def ids_raw(self, texts: Sequence[str]) -> list[list[int]]:
    """`convert_tokens_to_ids(tokenize_raw(text))` of each text, taking the ids from SentencePiece
    (twice as fast on a corpus) unless a piece is one `tokenize_raw` spells otherwise."""
    lower = lower_chars if self.do_lower_case else str
    out = []
    for text in texts:
      ids = self.sp_model.encode(self.preprocess_text(lower(text)), out_type=int)
      out.append(ids if self._respelled.isdisjoint(ids)
                 else self.convert_tokens_to_ids(self.tokenize_raw(text)))
    return out

  def convert_tokens_to_ids(self, tokens: str | Sequence[str] | None) -> int | list[int] | None:
    if tokens is None:
      return None
    if isinstance(tokens, str):
      return self.sp_model.piece_to_id(tokens)
    return [self.sp_model.piece_to_id(t) for t in tokens]

  def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
    ids = _as_ids(ids)
    if isinstance(ids, int):
      return self.sp_model.id_to_piece(ids)
    return [self.sp_model.id_to_piece(i) for i in ids
            if not (skip_special_tokens and i in self._special_ids)]

  # --------------------------------------------------------------------------- pieces -> text

  def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
    """SentencePiece decoding, with special tokens written as themselves between spaces."""
    out, run, prev_special = "", [], False
    for token in tokens:
      if token in self._special_tokens:
        out += ("" if prev_special else " ") + self.sp_model.decode(run) + token
        run, prev_special = [], True
      else:
        run.append(token)
        prev_special = False
    return (out + self.sp_model.decode(run)).strip()

  def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
    tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
    return self.convert_tokens_to_string([tokens] if isinstance(tokens, str) else tokens)

  def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
    return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

  # --------------------------------------------------------------------------- model inputs

  def build_inputs_with_special_tokens(self, ids_a: list[int],
                                       ids_b: list[int] | None = None) -> list[int]:
    """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
    out = [self.cls_token_id] + list(ids_a) + [self.sep_token_id]
    return out if ids_b is None else out + list(ids_b) + [self.sep_token_id]

  def create_token_type_ids_from_sequences(self, ids_a: list[int],
                                           ids_b: list[int] | None = None) -> list[int]:
    """0 over `[CLS] A [SEP]`, 1 over `B [SEP]`."""
    types = [0] * (len(ids_a) + 2)
    return types if ids_b is None else types + [1] * (len(ids_b) + 1)

  def _resolve(self, padding, truncation, max_length):
    """transformers' padding / truncation arguments -> (padding, strategy or None, max_length)."""
    if truncation is None:  # transformers' default: a max_length alone truncates, unless padding
      truncation = max_length is not None and padding is False
    pads = {"do_not_pad": None, "longest": "longest", "max_length": "max_length"}
    if not (isinstance(padding, bool) or padding in pads):
      raise ValueError(f"padding={padding!r}: use False, True, 'longest' or 'max_length'")
    pad = ("longest" if padding else None) if isinstance(padding, bool) else pads[padding]
    if isinstance(truncation, bool):
      strategy = "longest_first" if truncation else None
    elif truncation == "do_not_truncate" or truncation in TRUNCATION_STRATEGIES:
      strategy = None if truncation == "do_not_truncate" else truncation
    else:
      raise ValueError(f"truncation={truncation!r}: use a bool or one of {TRUNCATION_STRATEGIES}")
    if max_length is None and (pad == "max_length" or strategy):
      if self.model_max_length is None:
        raise ValueError(f"padding={padding!r}, truncation={truncation!r} need max_length "
                         "(this tokenizer has no model_max_length)")
      max_length = self.model_max_length
    return pad, strategy, max_length

  def _truncate(self, ids_a, ids_b, excess, strategy):
    """Removes `excess` ids from the right, as transformers' `truncate_sequences` does."""
    too_short = ValueError(
        f"truncation={strategy!r} cannot remove {excess} tokens from sequences of lengths "
        f"{len(ids_a)} and {None if ids_b is None else len(ids_b)}")
    if strategy == "only_first" or (strategy == "longest_first" and ids_b is None):
      if len(ids_a) <= excess:
        raise too_short
      return ids_a[:-excess], ids_b
    if strategy == "only_second":
      if ids_b is None or len(ids_b) <= excess:
        raise too_short
      return ids_a, ids_b[:-excess]
    if excess > len(ids_a) + len(ids_b):
      raise too_short
    # longest_first on a pair: one token at a time from the longer one (ties: from B).
    first = min(abs(len(ids_a) - len(ids_b)), excess)
    rest = excess - first
    cut_a, cut_b = rest // 2, rest - rest // 2
    if len(ids_a) > len(ids_b):
      cut_a += first
    else:
      cut_b += first
    return ids_a[:len(ids_a) - cut_a], ids_b[:len(ids_b) - cut_b]

  def _prepare(self, ids_a, ids_b, add_special_tokens, strategy, max_length):
    """(input_ids, token_type_ids) of one example, truncated to max_length if a strategy is set."""
    n_special = (2 if ids_b is None else 3) if add_special_tokens else 0
    excess = len(ids_a) + len(ids_b or ()) + n_special - (max_length or 0)
    if strategy and max_length and excess > 0:
      ids_a, ids_b = self._truncate(ids_a, ids_b, excess, strategy)
    if not add_special_tokens:  # transformers gives B type 0 here too
      ids = ids_a + (ids_b or [])
      return ids, [0] * len(ids)
    return (self.build_inputs_with_special_tokens(ids_a, ids_b),
            self.create_token_type_ids_from_sequences(ids_a, ids_b))

  def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
               add_special_tokens: bool = True, padding: bool | str = False,
               truncation: bool | str | None = False, max_length: int | None = None,
               return_tensors: str | None = None) -> dict[str, Any]:
    """input_ids, token_type_ids and attention_mask for a text, a pair, or lists of them."""
    batched = not isinstance(text, str)
    if text_pair is not None and isinstance(text_pair, str) == batched:
      raise TypeError("text and text_pair must both be strings or both be lists of strings")
    texts = list(text) if batched else [text]
    pairs = None if text_pair is None else (list(text_pair) if batched else [text_pair])
    if pairs is not None and len(pairs) != len(texts):
      raise ValueError(f"{len(texts)} texts but {len(pairs)} text_pairs")
    pad, strategy, max_length = self._resolve(padding, truncation, max_length)
    ids_of = lambda t: self.convert_tokens_to_ids(self.tokenize(t))
    rows = [self._prepare(ids_of(a), None if pairs is None else ids_of(pairs[i]),
                          add_special_tokens, strategy, max_length) for i, a in enumerate(texts)]
    width = {"longest": max((len(ids) for ids, _ in rows), default=0), "max_length": max_length,
             None: 0}[pad]
    out = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    for ids, types in rows:
      n = max(0, width - len(ids))
      out["input_ids"].append(ids + [self.pad_token_id] * n)
      out["token_type_ids"].append(types + [0] * n)
      out["attention_mask"].append([1] * len(ids) + [0] * n)
    if return_tensors == "np":
      if len({len(ids) for ids in out["input_ids"]}) > 1:
        raise ValueError("Sequences have different lengths; pass padding=True or "
                         "padding='max_length' to get arrays")
      # int32: what JAX uses for indices; transformers would give int64.
      return {k: np.asarray(v, np.int32).reshape(len(v), -1) for k, v in out.items()}
    if return_tensors is not None:
      raise ValueError(f"return_tensors={return_tensors!r}: only None and 'np' are supported")
    return out if batched else {k: v[0] for k, v in out.items()}

  def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
             truncation: bool | str | None = False, max_length: int | None = None) -> list[int]:
    if not isinstance(text, str) or not (text_pair is None or isinstance(text_pair, str)):
      raise TypeError("encode takes strings; call the tokenizer on lists")
    return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                max_length=max_length)["input_ids"]

  # --------------------------------------------------------------------------- files

  def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
    """spiece.model, tokenizer_config.json and special_tokens_map.json, as transformers reads them.

    The model is written last, so a directory with spiece.model is whole.
    """
    out = files.path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    special = {"bos_token": self.bos_token, "eos_token": self.eos_token,
               "unk_token": self.unk_token, "sep_token": self.sep_token,
               "pad_token": self.pad_token, "cls_token": self.cls_token,
               "mask_token": {"content": self.mask_token, "lstrip": True, "rstrip": False,
                              "normalized": False, "single_word": False}}
    config = {**special, "tokenizer_class": "AlbertTokenizer", "do_lower_case": self.do_lower_case,
              "remove_space": self.remove_space, "keep_accents": self.keep_accents}
    if self.model_max_length is not None:
      config["model_max_length"] = self.model_max_length
    paths = (out / CONFIG_FILE, out / SPECIAL_TOKENS_MAP_FILE, out / VOCAB_FILE)
    for path, obj in zip(paths, (config, special)):
      files.write_json(path, obj)
    files.write_bytes(paths[2], self.sp_model.serialized_model_proto())
    return tuple(map(str, paths))

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "AlbertTokenizer":
    """From a directory with spiece.model (and tokenizer_config.json's flags), or a .model file."""
    path = files.path(path)
    if path.is_file():
      return cls(path, **overrides)
    if not (path / VOCAB_FILE).is_file():
      raise FileNotFoundError(f"{path} has no {VOCAB_FILE}")
    config = {}
    if (path / CONFIG_FILE).is_file():
      config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    kwargs = {k: config[k] for k in ("do_lower_case", "remove_space", "keep_accents")
              if config.get(k) is not None}
    if config.get("model_max_length") is not None and config["model_max_length"] < _NO_LIMIT:
      kwargs["model_max_length"] = int(config["model_max_length"])
    return cls(path / VOCAB_FILE, **{**kwargs, **overrides})
