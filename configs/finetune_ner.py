r"""Token classification on CoNLL-style files: `--config=configs/finetune_ner.py[:model=SIZE]`.

  python -m albert_jax.main --config=configs/finetune_ner.py \
      --config.init_from=/path/to/albert-base-v2 \
      --config.data.train_file=conll2003/train.txt --config.data.eval_file=conll2003/valid.txt \
      --workdir=/tmp/ner

First sub-word labelling; entity-level F1 as seqeval/conlleval compute it.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # configs/ is not a package
import common  # noqa: E402


def get_config(arg: str = ""):
  args = common.parse_arg(arg, model="base")
  return common.finetune_config("ner", args["model"], "", lr=5e-5, total_steps=3000,
                                warmup_steps=300, batch_size=32)


def get_sweep(arg: str = ""):
  del arg
  return [{"optim.lr": lr, "seed": seed} for lr in (3e-5, 5e-5) for seed in range(3)]
