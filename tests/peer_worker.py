"""A light multi-process worker (no training) for the fault tests: main's jax.distributed set-up
(with its --initialization_timeout / --heartbeat_timeout flags), then one of

  PEER_MODE=collectives  a loop of all-reduces over every process's devices; with
                         PEER_EXIT=PROCESS:ITERATION that process dies (os._exit(1)) there
  PEER_MODE=restore      restore --workdir's newest checkpoint onto every device of every
                         process (verifying its fingerprints) and print the step and a digest

  python tests/peer_worker.py --config=configs/pretrain.py:tiny --workdir=RUN \
      --coordinator_address=localhost:PORT --num_processes=N --process_id=I [flags]
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from absl import app  # noqa: E402

from albert_jax import main  # noqa: E402


def collectives():
  import jax
  import jax.numpy as jnp
  exit_process, exit_at = map(int, (os.environ.get("PEER_EXIT") or "-1:-1").split(":"))
  total = jax.jit(lambda x: jnp.sum(x))
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  x = jax.make_array_from_process_local_data(sharding, jnp.ones(jax.local_device_count()))
  for i in range(600):
    if jax.process_index() == exit_process and i == exit_at:
      print("PEER exiting", flush=True)
      os._exit(1)
    assert float(total(x)) == jax.device_count()
    print(f"PEER iteration {i}", flush=True)
    time.sleep(0.1)


def restore():
  import jax
  from conftest import abstract_state
  from albert_jax import checkpointing, sharding
  workdir = Path(main.FLAGS.workdir)
  manager = checkpointing.make_manager(workdir, max_to_keep=None)
  step = manager.latest_step()
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  restored = checkpointing.restore_train_state(
      manager, *abstract_state(workdir, step, mesh, "data_parallel"))
  prints = checkpointing.fingerprints(restored[1])
  digest = hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()
  print(f"PEER restored step {restored[0]} on {jax.device_count()} devices of "
        f"{jax.process_count()} processes, params {digest}", flush=True)


def run(argv):
  del argv
  main.initialize_distributed()
  {"collectives": collectives, "restore": restore}[os.environ["PEER_MODE"]]()


if __name__ == "__main__":
  app.run(run)
