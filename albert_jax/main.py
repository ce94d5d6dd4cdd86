"""Entry point: flags in, `train.train_and_evaluate(config, workdir)` out.

  python -m albert_jax.main --config=configs/pretrain.py:large --workdir=DIR [--config.x=...]

DIR may be a bucket (gs://BUCKET/run). Several hosts: on Cloud TPU `jax.distributed.initialize()`
finds its peers by itself; elsewhere pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every host. A peer that dies makes the others exit within
--heartbeat_timeout seconds, a host that never starts within --initialization_timeout.
"""

import json
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:tiny",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the export go")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host)")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host)")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Call jax.distributed.initialize(): auto = on TPU/GPU VMs and when the "
                  "coordinator flags are given")
flags.DEFINE_integer("initialization_timeout", 300,
                     "Seconds to wait for every process to join (a host that never starts)")
flags.DEFINE_integer("heartbeat_timeout", 100,
                     "Seconds without a peer's heartbeat before it is taken for dead and every "
                     "process exits")
flags.mark_flags_as_required(["config", "workdir"])


def _on_accelerator_vm() -> bool:
  """A Cloud TPU VM, a GPU host, or a cluster scheduler that jax.distributed understands."""
  env = os.environ
  return (any(k in env for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "SLURM_JOB_ID",
                                 "OMPI_COMM_WORLD_SIZE"))
          or Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()
          or Path("/dev/nvidia0").exists())


def initialize_distributed() -> None:
  """jax.distributed.initialize, also on a single TPU/GPU host: without it Orbax's preemption
  sync never fires and a SIGTERM from the scheduler kills the job with nothing saved."""
  import jax
  if FLAGS.distributed == "off":
    return
  timeouts = dict(initialization_timeout=FLAGS.initialization_timeout,
                  heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  if FLAGS.coordinator_address:
    # CPU processes (tests, simulations) need a collectives backend to talk to each other.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               **timeouts)
  elif FLAGS.distributed == "on" or _on_accelerator_vm():
    if Path("/dev/nvidia0").exists() and not any(
        k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")):
      import socket  # one GPU host: be our own coordinator
      with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
      jax.distributed.initialize(f"localhost:{port}", 1, 0, **timeouts)
    else:
      jax.distributed.initialize(**timeouts)


def _quiet_libraries() -> None:
  """Orbax and Grain log every file they write at INFO; keep their warnings and errors only."""
  import logging as std_logging

  class Filter(std_logging.Filter):
    def filter(self, record):
      return record.levelno >= std_logging.WARNING or not any(
          f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "tensorstore"))

  logging.get_absl_handler().addFilter(Filter())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _quiet_libraries()
  initialize_distributed()
  import jax
  from albert_jax import checkpointing, train
  from albert_jax.data import order
  config = FLAGS.config
  logging.info("JAX %s, process %d of %d, %d devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind)
  try:
    summary = train.train_and_evaluate(config, FLAGS.workdir)
  except (FloatingPointError, checkpointing.CheckpointMismatch, checkpointing.CheckpointNotWritten,
          order.StreamChanged) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  logging.info("Done: %s", json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main)
