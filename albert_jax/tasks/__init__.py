"""Every job the one training loop (`albert_jax.train`) runs is a task: pretraining and each
fine-tuning task are plain modules with the same names, picked from `TASKS` by `config.task`.

  METRIC: str | None         the eval metric that picks the best checkpoint (higher is better);
                             None keeps no best (pretraining)
  CONSOLE: tuple[str, ...]   the training metrics on the progress line
  data_config(arg="")        `config.data` for this task: its data and lengths ("sst2", "v2", ...)
  head(data_cfg) -> str      the `model.HEADS` key of its model
  num_labels(data_cfg) -> int
                             the model config's num_labels (2 where the head ignores it)
  example_spec(data_cfg)     one training row's features (no batch axis) as ShapeDtypeStructs:
                             what the step is compiled for, known without data (`albert_jax.aot`)
  tokenizer(config, workdir) the vocabulary: config.spm_model, else config.init_from's, else (for
                             pretraining) one trained on the corpus into WORKDIR
  data(config, tokenizer) -> (train iterator, [EvalSet])
                             this host's rows of every global batch (next(), get_state(),
                             set_state(): the position is saved with checkpoints) and the eval sets
  loss_sums(outputs, batch)  sums over the batch's rows: the loss terms and metric numerators
  counts(batch)              their denominators, from a whole global batch (before it is split
                             into micro-batches, so accumulation gives the whole batch's gradient)
  normalise(sums, counts)    "loss" (the objective) and the logged metrics; linear in `sums`
  predictions(outputs, batch)
                             what one eval batch sends back to the host
  score(predictions, eval_set, data_cfg, out_dir) -> dict[str, float]
                             an eval set's metrics from its batches' predictions (in order);
                             writes the task's prediction files into out_dir

`outputs` is what the head's module returns for the batch (`model.apply_to_batch`). Features are
named as Hugging Face names them (`input_ids`, `attention_mask`, `token_type_ids`, `labels`, ...)
from the example builders to the model.
"""

from albert_jax.tasks import glue, ner, pretraining, race, squad, squad_data, squad_v2_original

TASKS = {"pretraining": pretraining, "glue": glue, "squad": squad,
         "squad_v2_original": squad_v2_original, "race": race, "ner": ner}


def get(name: str):
  """The task module `config.task` names."""
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}: choose one of {sorted(TASKS)}")
  return TASKS[name]


def of(config):
  """The task `config` runs: config.task's, chosen here once. A SQuAD config's `data.head` names
  its task too, so `--config.data.head=original` on `finetune_squad.py:v2` runs
  squad_v2_original, as `finetune_squad.py:v2,head=original` does."""
  name = config.task
  if name == "squad":
    name = squad_data.task_name(config.data.get("head", "span"))
  return get(name)
