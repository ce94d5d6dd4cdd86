r"""GLUE fine-tuning: `--config=configs/finetune_glue.py:task=TASK[,model=SIZE[-v1]]`.

TASK is cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli; the learning rate, steps, warmup,
batch and sequence length are the original ALBERT run_glue.sh's for that task. From an HF or
albert-jax model directory and the task's GLUE TSV files (`GLUE/SST-2/{train,dev}.tsv`):

  python -m albert_jax.main --config=configs/finetune_glue.py:task=sst2,model=large \
      --config.init_from=/path/to/albert-large-v2 --config.data.data_dir=/path/to/GLUE/SST-2 \
      --workdir=/tmp/sst2

or from TFDS (`--config.data.source=tfds`; TFDS registers glue only with the `[tf]` extra).
The run keeps the best checkpoint by the task's GLUE score in WORKDIR/best (HF format) and
writes WORKDIR/eval_results.json. A sweep over lr x seed:

  python -m experiments.sweep --config=configs/finetune_glue.py:task=rte --workdir_root=DIR
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402

from albert_jax.tasks import glue  # noqa: E402


def get_config(arg: str = "task=sst2"):
  args = common.parse_arg(arg, task="sst2", model="large")
  hp = glue.HYPERPARAMETERS[glue.canonical_task(args["task"])]
  return common.finetune_config("glue", args["model"], args["task"], lr=hp["lr"],
                                total_steps=hp["train_steps"], warmup_steps=hp["warmup_steps"],
                                batch_size=hp["batch_size"])


def get_sweep(arg: str = "task=sst2"):
  del arg
  return [{"optim.lr": lr, "seed": seed} for lr in (1e-5, 2e-5, 3e-5) for seed in range(3)]
