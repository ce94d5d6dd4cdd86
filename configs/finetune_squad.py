r"""SQuAD fine-tuning: `--config=configs/finetune_squad.py:v1|v2[,model=SIZE[-v1]][,head=original]`.

Hyperparameters of the original ALBERT run_squad_v1.sh / run_squad_v2.sh, from their one home,
`albert_jax/tasks/squad_data.py:HYPERPARAMETERS`: lr 5e-5 (v1) / 3e-5 (v2), batch 48, 3649 / 8144
steps, 10% warmup, sequence 384 / 512, doc stride 128, query 64.

  python -m albert_jax.main --config=configs/finetune_squad.py:v2 \
      --config.init_from=/path/to/albert-large-v2 \
      --config.data.train_file=train-v2.0.json --config.data.eval_file=dev-v2.0.json \
      --workdir=/tmp/squad2

or `--config.data.source=tfds` (squad/v1.1, squad/v2.0: TFDS needs no TensorFlow for these).
`--config.data.pack=True` packs several windows to a row (span head; its loss leaves out the
padding positions: docs/finetuning.md "Packed rows").
Predictions (and for v2 the null odds) go to WORKDIR/predictions/step_N/eval/; exact match and
F1 are the official scripts'.

`v2,head=original` (or `--config.data.head=original`) trains the original ALBERT SQuAD 2.0 head,
the task `squad_v2_original` (google-research/albert `create_v2_model`: start, end given the
start, an answer class; decoded from the 5 x 5 beam, null threshold the eval set's best F1 one,
as run_squad_v2.py). It has no Hugging Face class: WORKDIR/best and the final export
(WORKDIR/model) are albert-jax model directories.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402

from albert_jax.tasks import squad_data  # noqa: E402


def get_config(arg: str = "v1"):
  args = common.parse_arg(arg, version="v1", model="large", head="span")
  hp = squad_data.HYPERPARAMETERS[squad_data.version(args["version"])]
  # The head is a task of its own: an unknown head, or the original head with v1, fails here.
  config = common.finetune_config(squad_data.task_name(args["head"]), args["model"],
                                  args["version"], lr=hp["lr"], total_steps=hp["total_steps"],
                                  warmup_steps=hp["warmup_steps"], batch_size=hp["batch_size"])
  config.data.max_seq_length = hp["max_seq_length"]
  return config


def get_sweep(arg: str = "v1"):
  del arg
  return [{"optim.lr": lr, "seed": seed} for lr in (2e-5, 3e-5, 5e-5) for seed in range(3)]
