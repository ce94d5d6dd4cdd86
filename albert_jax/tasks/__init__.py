"""Every job the one training loop (`albert_jax.train`) runs is a task: pretraining and each
fine-tuning task are plain modules that implement `Task`, chosen once from `TASKS` where the
config is read (`of(config)`); the loop never asks which task it runs.

`outputs` is what the head's module returns for the batch (`model.apply_to_batch`). Features are
named as Hugging Face names them (`input_ids`, `attention_mask`, `token_type_ids`, `labels`, ...)
from the example builders to the model. A task's config argument is always `data_cfg`, the
run's `config.data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np

from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.tasks import common, glue, ner, pretraining, race, squad, squad_data
from albert_jax.tasks import squad_v2_original

Arrays = dict[str, jax.Array]


class TrainIterator(Protocol):
  """This host's rows of every global batch; its position is saved with the checkpoints."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Task(Protocol):
  """What the loop asks of a task: a module with these names at its top level."""

  # The eval metric that keeps the best checkpoint (higher is better); None: none (pretraining).
  METRIC: str | None
  CONSOLE: tuple[str, ...]  # the training metrics on the progress line

  def data_config(self, arg: str = "") -> ml_collections.ConfigDict:
    """`config.data` for this task: its data and lengths (arg: "sst2", "v2", ...)."""

  def head(self, data_cfg: ml_collections.ConfigDict) -> str:
    """The `model.HEADS` key of its model."""

  def num_labels(self, data_cfg: ml_collections.ConfigDict) -> int:
    """The model config's num_labels (2 where the head ignores it)."""

  def example_spec(self, data_cfg: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """One training row's features (no batch axis): what the step is compiled for, known without
    data (`albert_jax.aot`)."""

  def tokenizer(self, config: ml_collections.ConfigDict, workdir: Path) -> AlbertTokenizer:
    """The vocabulary: config.spm_model, else config.init_from's, else (pretraining) one trained
    on the corpus into WORKDIR."""

  def data(self, config: ml_collections.ConfigDict, tokenizer: AlbertTokenizer
           ) -> tuple[TrainIterator, list[common.EvalSet]]:
    """The training batches and the eval sets."""

  def loss_sums(self, outputs: Any, batch: Arrays) -> Arrays:
    """Sums over the batch's rows: the loss terms and the metrics' numerators."""

  def counts(self, batch: Arrays) -> Arrays:
    """Their denominators, from a whole global batch (before it is split into micro-batches, so
    accumulation gives the whole batch's gradient)."""

  def normalise(self, sums: Arrays, counts: Arrays) -> Arrays:
    """"loss" (the objective) and the logged metrics; linear in `sums`."""

  def predictions(self, outputs: Any, batch: Arrays) -> Arrays:
    """What one eval batch sends back to the host."""

  def score(self, predictions: list[dict[str, np.ndarray]], eval_set: common.EvalSet,
            data_cfg: ml_collections.ConfigDict, out_dir: Path) -> dict[str, float]:
    """An eval set's metrics from its batches' predictions (in order); writes the task's
    prediction files into out_dir."""


TASKS: dict[str, Task] = {
    "pretraining": pretraining, "glue": glue, "squad": squad,
    "squad_v2_original": squad_v2_original, "race": race, "ner": ner}


def get(name: str) -> Task:
  """The task `config.task` names."""
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}: choose one of {sorted(TASKS)}")
  return TASKS[name]


def of(config: ml_collections.ConfigDict) -> Task:
  """The task `config` runs: config.task's, chosen here once. A SQuAD config's `data.head` names
  its task too, so `--config.data.head=original` on `finetune_squad.py:v2` runs
  squad_v2_original, as `finetune_squad.py:v2,head=original` does."""
  name = config.task
  if name == "squad":
    name = squad_data.task_name(config.data.get("head", "span"))
  return get(name)
