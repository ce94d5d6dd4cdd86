r"""SQuAD fine-tuning: `--config=configs/finetune_squad.py:v1|v2[,model=SIZE[-v1]][,head=original]`.

Hyperparameters of the original ALBERT run_squad_v1.sh / run_squad_v2.sh: lr 5e-5 (v1) / 3e-5
(v2), batch 48, 3649 / 8144 steps, 10% warmup, sequence 384 / 512, doc stride 128, query 64
(the paper's table A.4; no dropout in the encoder, 0.1 on the output layer).

  python -m albert_jax.main --config=configs/finetune_squad.py:v2 \
      --config.init_from=/path/to/albert-large-v2 \
      --config.data.train_file=train-v2.0.json --config.data.eval_file=dev-v2.0.json \
      --workdir=/tmp/squad2

or `--config.data.source=tfds` (squad/v1.1, squad/v2.0: TFDS needs no TensorFlow for these).
Predictions (and for v2 the null odds) go to WORKDIR/predictions/step_N/eval/; exact match and
F1 are the official scripts'.

`v2,head=original` (or `--config.data.head=original`) trains the original ALBERT SQuAD 2.0 head
(google-research/albert `create_v2_model`: start, end given the start, an answer class; decoded
from the 5 x 5 beam, null threshold the eval set's best F1 one, as run_squad_v2.py). It has no
Hugging Face class: WORKDIR/best and the final export (WORKDIR/model) are albert-jax model
directories.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402

from albert_jax.tasks import squad  # noqa: E402

HYPERPARAMETERS = {1: dict(lr=5e-5, total_steps=3649, warmup_steps=365, batch_size=48),
                   2: dict(lr=3e-5, total_steps=8144, warmup_steps=814, batch_size=48)}


def get_config(arg: str = "v1"):
  args = common.parse_arg(arg, version="v1", model="large", head="span")
  version = int(args["version"].removeprefix("v"))
  config = common.finetune_config("squad", args["model"], args["version"],
                                  **HYPERPARAMETERS[version])
  config.data.head = args["head"]
  squad.head(config.data)  # an unknown head, or the original head with v1, fails here
  if version == 2:
    config.data.max_seq_length = 512
  return config


def get_sweep(arg: str = "v1"):
  del arg
  return [{"optim.lr": lr, "seed": seed} for lr in (2e-5, 3e-5, 5e-5) for seed in range(3)]
