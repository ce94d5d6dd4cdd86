"""Entry point: flags in, `train.train_and_evaluate(config, workdir)` out.

  python -m albert_jax.main --config=configs/pretrain.py:large --workdir=DIR [--config.x=...]

DIR may be a bucket (gs://BUCKET/run). Several hosts: on Cloud TPU `jax.distributed.initialize()`
finds its peers by itself; elsewhere pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every host. A peer that dies makes the others exit within
--heartbeat_timeout seconds, a host that never starts within --initialization_timeout.

Exit codes: 0 done, or preempted with its checkpoint saved (rerun to resume); 1 a refusal (a
config, data or checkpoint that does not fit the run, a workdir another run holds) or any other
error, its message on stderr; 74 (EX_IOERR) a checkpoint that could not be written: rerun to
resume from the last committed step once storage works; 75 the step watchdog (watchdog.py).
After an error the process ends at once, whatever threads are left (Orbax waits up to 300 s on
a save whose directory could not be created).
"""

import json
import os
import sys
import logging as std_logging
import socket
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from albert_jax import checkpointing, lease, overrides, train
from albert_jax.data import order, prepared

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
      # One GPU host: be our own coordinator.
      with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
      jax.distributed.initialize(f"localhost:{port}", 1, 0, **timeouts)
    else:
      jax.distributed.initialize(**timeouts)


def _quiet_libraries() -> None:
  """Orbax and Grain log every file they write at INFO; keep their warnings and errors only."""
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
  config = FLAGS.config
  logging.info("JAX %s, process %d of %d, %d devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind)
  try:
    summary = train.train_and_evaluate(config, FLAGS.workdir)
  except checkpointing.CheckpointNotWritten as e:
    _exit(EXIT_NOT_WRITTEN, f"error: {e}")
  except (FloatingPointError, checkpointing.CheckpointMismatch, order.StreamChanged,
          prepared.CorruptShard, lease.WorkdirInUse) as e:
    _exit(1, f"error: {e}")
  except Exception as e:  # noqa: BLE001  (a traceback, then the same prompt exit)
    logging.exception("The job failed")
    _exit(1, f"error: {type(e).__name__}: {e}")
  logging.info("Done: %s", json.dumps(summary, default=str))


EXIT_NOT_WRITTEN = 74  # EX_IOERR


def _exit(code: int, message: str) -> None:
  """Logs `message` and ends the process now: threads a failed save left behind (Orbax's wait
  for a step directory that was never created: 300 s) would keep it alive, and a SIGTERM in
  that time would be taken for a preemption request."""
  logging.error("%s", message)
  logging.flush()
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=overrides.parse_flags)
