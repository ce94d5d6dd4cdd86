"""What each task contributes to the one training loop (`albert_jax.train`).

`pretraining` is the MLM + SOP task. Every fine-tuning task module (`glue`, `squad`, `race`,
`ner`) is a plain module with these names, nothing to subclass or register:

  HEAD: str                  the `model.HEADS` key of its model ("sequence_classification", ...)
  head(task_cfg) -> str      optional: the `model.HEADS` key when the config picks the head
                             (SQuAD's `task.head`: "span" or "original"); else HEAD
  METRIC: str                the `evaluate_task` key picking the best checkpoint (higher is better)
  default_config(arg) -> ml_collections.ConfigDict
                             `config.task`: `name` (the module's name), the data source and
                             paths, lengths; `arg` picks a preset (e.g. "sst2", "v2")
  num_labels(task_cfg) -> int
                             the model config's num_labels (2 where the head ignores it)
  load(task_cfg, tokenizer, split) -> common.Dataset
                             split "train" or "eval": model inputs as numpy arrays with one row
                             per feature (`input_ids`, `attention_mask`, `token_type_ids`, and the
                             labels the loss needs), plus `meta` for post-processing
  loss_sums(outputs, batch) -> dict[str, jax.Array]
                             summed over rows weighted by batch["weight"] (0 for padding rows):
                             "loss" (summed per-row loss), "weight" (sum of weights), and any
                             sums `normalise` turns into training metrics
  normalise(sums) -> dict[str, jax.Array]
                             per-row means: "loss" and e.g. "accuracy"
  prediction_arrays(outputs, batch) -> dict[str, jax.Array]
                             per-row arrays gathered on the host for `evaluate_task` (e.g. "logits")
  evaluate_task(predictions, dataset, task_cfg, output_dir) -> dict[str, float]
                             the task's metrics from the eval set's gathered predictions (numpy,
                             padding rows removed, in `dataset` order); writes its prediction
                             files into output_dir

`outputs` is what the HEAD's module returns for batch["input_ids"], batch["attention_mask"],
batch["token_type_ids"] and the batch features its `batch_inputs(training)` names (`logits`, or
`start_logits` / `end_logits`, or the original SQuAD 2.0 head's `SquadV2Output`).
"""
