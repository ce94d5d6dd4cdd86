r"""RACE fine-tuning (4-way multiple choice): `--config=configs/finetune_race.py[:all|middle|high]`.

Hyperparameters of the original ALBERT run_race.py, from their one home,
`albert_jax/tasks/race.py:HYPERPARAMETERS`: lr 1e-5, batch 32, 12000 steps, 1000 warmup;
sequence 512, question + option 128 (`race.data_config`), dropout 0.1 on the output layer only
(the v2 presets': the ALBERT README says v2 models diverge with the paper's v1 settings, which
had dropout in the encoder).

  python -m albert_jax.main --config=configs/finetune_race.py \
      --config.init_from=/path/to/albert-large-v2 --config.data.data_dir=/path/to/RACE \
      --workdir=/tmp/race
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402

from albert_jax.tasks import race  # noqa: E402


def get_config(arg: str = "all"):
  args = common.parse_arg(arg, levels="all", model="large")
  return common.finetune_config("race", args["model"], args["levels"], **race.HYPERPARAMETERS)


def get_sweep(arg: str = "all"):
  del arg
  return [{"optim.lr": lr, "seed": seed} for lr in (1e-5, 2e-5) for seed in range(3)]
