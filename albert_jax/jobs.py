"""What differs between pretraining and each fine-tuning task, gathered for the one train loop.

`make_job(config, workdir)` reads `config.task.name` ("pretraining" when the config has no task)
and returns a `Job`: the data, the model config and head, the loss as summed parts, and the eval
sets with how to score them. `train.train_and_evaluate` runs every job the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from albert_jax import checkpointing, hf_convert, tf1_release
from albert_jax import model as M
from albert_jax.data import arrays, pipeline
from albert_jax.data.tokenizer import AlbertTokenizer
from albert_jax.tasks import pretraining

PyTree = Any
FINETUNING_TASKS = ("glue", "squad", "race", "ner")


@dataclasses.dataclass
class EvalSet:
  name: str  # metrics are logged as NAME/metric
  batches: list[dict[str, np.ndarray]]  # this host's part of each global batch
  score: Callable[[list[PyTree], Path], dict[str, float]]  # (host outputs per batch, out dir)


@dataclasses.dataclass(frozen=True)
class Loss:
  """The loss as summed parts, so micro-batches add up to exactly the whole batch's gradient."""
  # (module, params, batch, dropout rng or None) -> summed losses and counts, incl. "tokens" and
  # "examples".
  sums: Callable
  objective: Callable  # (sums of a micro-batch, the whole batch) -> its part of the loss
  grad_divisor: Callable  # (sums of the whole batch) -> what the summed gradients are divided by
  normalise: Callable  # sums -> per-example metrics ("loss", accuracies)


def _pretraining_sums(module, params, batch, rng):
  mlm, sop = pretraining.forward(module, params, batch, deterministic=rng is None, rng=rng)
  return pretraining.loss_sums(mlm, sop, batch)


PRETRAINING_LOSS = Loss(
    sums=_pretraining_sums,
    objective=lambda sums, batch: pretraining.objective(sums, *pretraining.denominators(batch)),
    grad_divisor=lambda sums: 1.0, normalise=pretraining.normalise)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What a job's train step is made of, known from the config alone (no data, vocabulary or
  checkpoint): enough to compile it (`train.compile_train_step`, `albert_jax.aot`)."""
  task: str
  head: str
  model_config: M.AlbertConfig
  loss: Loss
  example: dict[str, jax.ShapeDtypeStruct]  # one row of a training batch (no batch axis)
  flops_per_example: float  # forward FLOPs, what actually runs (see model.py)


def step_spec(config: ml_collections.ConfigDict, cfg: M.AlbertConfig | None = None) -> StepSpec:
  """The train step of `config`'s job. Without `cfg`, the architecture is
  `config.model`'s, with vocab_size -1 read as `config.data.vocab_size` (pretraining)."""
  name = task_name(config)
  if name == "pretraining":
    cfg = cfg or model_config(config, config.data.vocab_size)
    examples = pipeline.example_config(config.data)
    return StepSpec(
        task=name, head="pretraining", model_config=cfg, loss=PRETRAINING_LOSS,
        example=pretraining.example_spec(examples.max_seq_length, examples.max_predictions),
        flops_per_example=M.pretraining_flops_per_example(cfg, examples.max_seq_length,
                                                          examples.max_predictions))
  task = _task_module(name)
  if cfg is None:
    labels = task.num_labels(config.task)
    id2label = tuple(config.task.get("label_names", ()) or ())
    cfg = model_config(config, config.model.vocab_size, num_labels=labels,
                       id2label=id2label if len(id2label) == labels else ())
  example = {**task.example_spec(config.task),
             arrays.WEIGHT: jax.ShapeDtypeStruct((), jnp.float32)}
  inputs = example["input_ids"].shape  # [length] or [choices, length]
  flops = math.prod(inputs[:-1]) * M.pretraining_flops_per_example(cfg, inputs[-1], 0)
  return StepSpec(task=name, head=task_head(task, config.task), model_config=cfg,
                  loss=finetuning_loss(task), example=example, flops_per_example=flops)


@dataclasses.dataclass
class Job:
  task: str
  head: str
  model_config: M.AlbertConfig
  tokenizer: AlbertTokenizer
  train_iter: Any  # next(), get_state(), set_state()
  loss: Loss
  eval_outputs: Callable  # (module, params, batch) -> what an eval batch gives `EvalSet.score`
  evals: list[EvalSet]
  flops_per_example: float  # forward FLOPs, what actually runs (see model.py)
  console: tuple[str, ...]  # the metrics on the progress line
  best_metric: str | None = None  # keep the best checkpoint by this eval metric (fine-tuning)
  init_params: PyTree | None = None  # host params from config.init_from


def task_name(config: ml_collections.ConfigDict) -> str:
  task = config.get("task")
  return task.name if task is not None else "pretraining"


def task_head(task, task_cfg) -> str:
  """The task's `model.HEADS` key: `task.head(task_cfg)` where the config picks one (SQuAD's
  `task.head`), else `task.HEAD`."""
  return task.head(task_cfg) if hasattr(task, "head") else task.HEAD


def _task_module(name: str):
  if name not in FINETUNING_TASKS:
    raise ValueError(f"config.task.name={name!r}: choose 'pretraining' or one of "
                     f"{FINETUNING_TASKS}")
  return importlib.import_module(f"albert_jax.tasks.{name}")


def make_job(config: ml_collections.ConfigDict, workdir: Path) -> Job:
  name = task_name(config)
  if name == "pretraining":
    return _pretraining_job(config, workdir)
  return _finetuning_job(config, workdir, _task_module(name))


def model_config(config: ml_collections.ConfigDict, vocab_size: int, **changes
                  ) -> M.AlbertConfig:
  """AlbertConfig from `config.model`; vocab_size -1 means the tokenizer's."""
  fields = {**dict(config.model), **changes}
  if fields.get("vocab_size", -1) in (-1, None):
    fields["vocab_size"] = vocab_size
  if fields["vocab_size"] < vocab_size:
    raise ValueError(f"config.model.vocab_size={fields['vocab_size']} is smaller than the "
                     f"tokenizer's {vocab_size} pieces")
  fields["id2label"] = tuple(fields.get("id2label") or ())
  return M.AlbertConfig(**fields)


def _load_init(config, head: str) -> tuple[M.AlbertConfig | None, PyTree | None]:
  """(config, host params) of config.init_from for `head`, or (None, None)."""
  if not config.init_from:
    return None, None
  loaded_cfg, params, _ = hf_convert.load_any(config.init_from, head=head, seed=config.seed)
  return loaded_cfg, params


# ----------------------------------------------------------------------------- pretraining

def _pretraining_job(config, workdir: Path) -> Job:
  t = pretraining
  tokenizer = pipeline.build_tokenizer(config.data, workdir)
  if config.data.spm_model and jax.process_index() == 0:  # a run is self-contained: keep a copy
    checkpointing.copy_atomic(config.data.spm_model, workdir / "spiece.model")
  train_iter = pipeline.train_iterator(config.data, tokenizer, global_batch_size=config.batch_size,
                                       seed=config.seed)
  eval_batches = pipeline.eval_batches(config.data, tokenizer, global_batch_size=config.batch_size,
                                       seed=config.seed + 1)
  cfg = model_config(config, tokenizer.vocab_size)
  init_cfg, init_params = _load_init(config, "pretraining")
  if init_cfg is not None:
    changed = {f.name: (getattr(init_cfg, f.name), getattr(cfg, f.name))
               for f in dataclasses.fields(cfg) if getattr(init_cfg, f.name) != getattr(cfg, f.name)}
    if changed:  # e.g. a deeper model from a shallower one: legal with shared layers
      logging.warning("config.init_from differs from config.model in (theirs, ours): %s", changed)

  def score(outputs, out_dir):
    del out_dir
    sums = jax.tree_util.tree_map(lambda *x: np.sum(x, axis=0), *outputs)
    return {k: float(v) for k, v in t.normalise(sums).items()}

  spec = step_spec(config, cfg)
  return Job(
      task="pretraining", head="pretraining", model_config=cfg, tokenizer=tokenizer,
      train_iter=train_iter, loss=spec.loss,
      eval_outputs=lambda module, params, batch: _pretraining_sums(module, params, batch, None),
      evals=[EvalSet("eval", eval_batches, score)] if eval_batches else [],
      flops_per_example=spec.flops_per_example,
      console=("loss", "mlm_accuracy", "sop_accuracy"), init_params=init_params)


# ----------------------------------------------------------------------------- fine-tuning

def finetuning_tokenizer(config) -> AlbertTokenizer:
  """config.spm_model (a spiece.model or a directory holding one), else config.init_from's."""
  for source in (config.get("spm_model"), config.init_from):
    if not source:
      continue
    path = Path(source)
    if path.is_dir() and (path / "spiece.model").is_file():
      return AlbertTokenizer.from_pretrained(path)  # with its tokenizer_config.json
    found = (str(path) if path.is_file()
             else checkpointing.spm_model_in(path) or tf1_release.spm_model_of(path))
    if found:
      return AlbertTokenizer(found)
  raise FileNotFoundError(
      "No vocabulary: set --config.spm_model=PATH/spiece.model, or --config.init_from to a "
      "model directory (HF, albert-jax or an original release) that has its SentencePiece model")


def _apply(module, params, batch, rng):
  rngs = None if rng is None else {"dropout": rng}
  # A head may read more of the batch (squad_v2_original: p_mask, and the gold start in training).
  extra = {k: batch[k] for k in module.batch_inputs(training=rng is not None)}
  return module.apply({"params": params}, batch["input_ids"],
                      attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], deterministic=rng is None,
                      rngs=rngs, **extra)


def _finetuning_job(config, workdir: Path, task) -> Job:
  task_cfg = config.task
  head = task_head(task, task_cfg)
  tokenizer = finetuning_tokenizer(config)
  train_set = task.load(task_cfg, tokenizer, "train")
  logging.info("%s: %d training rows", task_cfg.name, len(train_set))
  train_iter = arrays.ArrayIterator(train_set, global_batch_size=config.batch_size,
                                    seed=config.seed)
  eval_size = config.get("eval_batch_size") or config.batch_size

  # The model: config.model, or config.init_from's architecture with config.model's dropout.
  labels = task.num_labels(task_cfg)
  id2label = tuple(task_cfg.get("label_names", ()) or ())
  changes = dict(num_labels=labels, id2label=id2label if len(id2label) == labels else ())
  init_cfg = init_params = None
  if config.init_from:
    init_cfg, src_params, src_head = hf_convert.load_any(config.init_from)
    keep = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")
    fields = {**init_cfg.to_hf_dict(), **{k: config.model[k] for k in keep if k in config.model}}
    fields.pop("id2label", None)
    cfg = dataclasses.replace(M.AlbertConfig.from_hf_dict(fields), **changes)
    tensors = hf_convert.to_hf_state_dict(init_cfg, src_params, src_head)
    init_params = hf_convert.from_hf_state_dict(cfg, tensors, head, src_head, config.seed)
  else:
    cfg = model_config(config, tokenizer.vocab_size, **changes)

  def eval_set(name, dataset):
    def score(outputs, out_dir):
      preds = {k: np.concatenate([o[k] for o in outputs])[:len(dataset)] for k in outputs[0]}
      out_dir.mkdir(parents=True, exist_ok=True)
      return {k: float(v) for k, v in task.evaluate_task(preds, dataset, task_cfg, out_dir).items()
              if np.ndim(v) == 0}
    return EvalSet(name, arrays.eval_batches(dataset, global_batch_size=eval_size), score)

  evals = [eval_set("eval", task.load(task_cfg, tokenizer, "eval"))]
  for split in task_cfg.get("extra_eval_splits", ()) or ():
    evals.append(eval_set(f"eval_{split}", task.load(task_cfg, tokenizer, split)))
  if task_cfg.get("predict_split"):  # unlabelled (e.g. GLUE test): prediction files only
    evals.append(eval_set("predict", task.load(task_cfg, tokenizer, "predict")))

  spec = step_spec(config, cfg)
  return Job(
      task=task_cfg.name, head=head, model_config=cfg, tokenizer=tokenizer,
      train_iter=train_iter, loss=spec.loss,
      eval_outputs=lambda module, params, batch: task.prediction_arrays(
          _apply(module, params, batch, None), batch),
      evals=evals, flops_per_example=spec.flops_per_example, console=("loss", "accuracy"),
      best_metric=f"eval/{task.METRIC}", init_params=init_params)


def finetuning_loss(task) -> Loss:
  """A fine-tuning task's loss: its sums over weighted rows, divided by the summed weight."""
  def sums(module, params, batch, rng):
    out = dict(task.loss_sums(_apply(module, params, batch, rng), batch))
    out["tokens"] = jnp.sum(batch["attention_mask"]).astype(jnp.float32)
    out["examples"] = jnp.sum(batch[arrays.WEIGHT]).astype(jnp.float32)
    return out
  return Loss(sums=sums, objective=lambda sums, batch: sums["loss"],
              grad_divisor=lambda sums: jnp.maximum(sums["weight"], 1e-9),
              normalise=task.normalise)


def read_json(path: Path) -> dict | None:
  return json.loads(path.read_text()) if path.is_file() else None
