"""An ALBERT architecture (`AlbertConfig`, what a Hugging Face config.json holds) and the released
presets: sizes base to xxlarge (and `tiny`), versions v1 and v2."""

from __future__ import annotations

import dataclasses

from albert_jax.layers import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
  """The model's hyperparameters; field names and defaults are Hugging Face's `AlbertConfig`."""

  vocab_size: int = 30000
  embedding_size: int = 128
  hidden_size: int = 4096
  num_hidden_layers: int = 12
  num_hidden_groups: int = 1
  num_attention_heads: int = 64
  intermediate_size: int = 16384
  inner_group_num: int = 1
  hidden_act: str = "gelu_new"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  classifier_dropout_prob: float = 0.1
  pad_token_id: int = 0
  bos_token_id: int = 2
  eos_token_id: int = 3
  # Classification heads (HF keeps these on PretrainedConfig): `num_labels` outputs, named by
  # `id2label` when the checkpoint names them. num_labels == 1 means regression.
  num_labels: int = 2
  id2label: tuple[str, ...] = ()

  def __post_init__(self):
    problems = []
    if self.hidden_size % self.num_attention_heads:
      problems.append(f"hidden_size={self.hidden_size} is not divisible by "
                      f"num_attention_heads={self.num_attention_heads}")
    if self.num_hidden_groups < 1 or self.num_hidden_layers % self.num_hidden_groups:
      problems.append(f"num_hidden_layers={self.num_hidden_layers} is not a multiple of "
                      f"num_hidden_groups={self.num_hidden_groups}")
    if self.inner_group_num < 1:
      problems.append(f"inner_group_num={self.inner_group_num} must be >= 1")
    if self.hidden_act not in ACTIVATIONS:
      problems.append(f"hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
    if self.id2label and len(self.id2label) != self.num_labels:
      problems.append(f"id2label has {len(self.id2label)} names but num_labels={self.num_labels}")
    if problems:
      raise ValueError("Invalid AlbertConfig: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes) -> "AlbertConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, d: dict) -> "AlbertConfig":
    """Builds a config from a Hugging Face `config.json` dict; unknown keys are ignored."""
    model_type = d.get("model_type", "albert")
    if model_type != "albert":
      raise ValueError(f"config.json has model_type={model_type!r}; only 'albert' is supported")
    pet = d.get("position_embedding_type", "absolute")
    if pet != "absolute":
      raise ValueError(f"config.json has position_embedding_type={pet!r}; only 'absolute' is "
                       "supported (every released ALBERT checkpoint uses it)")
    names = {f.name for f in dataclasses.fields(cls)} - {"num_labels", "id2label"}
    kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
    if d.get("id2label"):
      labels = {int(k): v for k, v in d["id2label"].items()}
      if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"config.json id2label keys {sorted(labels)} are not 0..n-1")
      kwargs["num_labels"] = len(labels)
      names_ = tuple(labels[i] for i in range(len(labels)))
      if names_ != tuple(f"LABEL_{i}" for i in range(len(labels))):
        kwargs["id2label"] = names_
    elif "num_labels" in d:
      kwargs["num_labels"] = int(d["num_labels"])
    return cls(**kwargs)

  def to_hf_dict(self) -> dict:
    """The `config.json` dict Hugging Face writes for this config (without `architectures`)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d.pop("num_labels")
    labels = d.pop("id2label") or tuple(f"LABEL_{i}" for i in range(self.num_labels))
    d["id2label"] = {str(i): name for i, name in enumerate(labels)}
    d["label2id"] = {name: i for i, name in enumerate(labels)}
    d["model_type"] = "albert"
    d["position_embedding_type"] = "absolute"
    return d


def _preset(hidden, layers, heads, intermediate):
  return dict(embedding_size=128, hidden_size=hidden, num_hidden_layers=layers,
              num_attention_heads=heads, intermediate_size=intermediate)


# The released ALBERT sizes (paper, Table 1), and `tiny`: minutes on a laptop CPU (`make demo`).
# v2 differs from v1 only in these settings.
SIZES = {
    "tiny": dict(embedding_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512),
    "base": _preset(768, 12, 12, 3072),
    "large": _preset(1024, 24, 16, 4096),
    "xlarge": _preset(2048, 24, 16, 8192),
    "xxlarge": _preset(4096, 12, 64, 16384),
}
VERSIONS = {
    "v1": dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
    "v2": dict(hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


def preset(name: str, **overrides) -> AlbertConfig:
  """`preset("large")`, `preset("large-v1")`, `preset("albert-base-v2", vocab_size=...)`."""
  key = name.removeprefix("albert-").replace(",", "-")
  size, _, version = key.partition("-")
  version = version or "v2"
  if size not in SIZES or version not in VERSIONS:
    raise ValueError(f"Unknown ALBERT preset {name!r}: sizes {sorted(SIZES)}, versions "
                     f"{sorted(VERSIONS)} (e.g. 'large' or 'large-v1')")
  return AlbertConfig(**{**SIZES[size], **VERSIONS[version], **overrides})
