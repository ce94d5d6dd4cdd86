"""Test setup: 8 simulated CPU devices (set before JAX is imported), quiet and offline references,
and one persistent XLA compilation cache for the session, shared with the subprocesses the
end-to-end tests start (each would otherwise compile the same train step again)."""

import atexit
import fcntl
import json
import os
import shutil
import tempfile

# The tests compile hundreds of tiny CPU programs, and code generation is most of each compile
# and nothing the tests check: XLA's HLO passes still run. LLVM at -O0 (it may not reorder float
# arithmetic at any level, so results are the same: ~30% off the suite), and, where jaxlib still
# has it (< 0.11), fusions emitted by XLA:CPU's classic elemental emitter instead of its MLIR
# fusion emitters (the tiny train step: 2.95 s instead of 4.44 s at -O0 alone; `python -m
# experiments.benchmarks.test_costs`); newer XLA refuses the flag. Subprocesses that compile for
# TPU drop both (`tpu_env`).
def _jaxlib_version() -> tuple[int, ...]:
  from importlib import metadata
  return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:3] if p.isdigit())


CPU_FAST_COMPILE = "--xla_backend_optimization_level=0" + (
    " --xla_cpu_use_fusion_emitters=false" if _jaxlib_version() < (0, 11) else "")


def cpu_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {CPU_FAST_COMPILE}"


os.environ.setdefault("XLA_FLAGS", cpu_flags(8))
# The CPU, even with libtpu installed (the TPU tests compile in subprocesses, for devices that
# are not here).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The session's compilation cache: made by the first process (pytest-xdist's controller, or a
# script importing this file), which removes it when it exits; workers and subprocesses inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="albert-jax-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from albert_jax import steps, train  # noqa: E402
from albert_jax.data import corpus  # noqa: E402
from albert_jax.data.train_tokenizer import train_spm  # noqa: E402

# ----------------------------------------------------------------------------- the tiny pretraining
# run that test_train checks end to end and test_finetune starts from.

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import pretrain  # noqa: E402  (configs/ is not a package)

# A model small enough that a step is milliseconds, on the 2x2x2 mesh of the 8 simulated devices,
# with the v1 presets' dropout (so resuming must restore the dropout keys too), logging every
# step (so resume tests compare every step's loss), and the loss-spike detector armed after 8
# steps (so every run here is judged: none may raise a false alarm).
OVERRIDES = {
    "model.embedding_size": 16, "model.hidden_size": 32, "model.num_hidden_layers": 2,
    "model.num_attention_heads": 4, "model.intermediate_size": 64,
    "model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1,
    "data.max_seq_length": 32, "data.eval_batches": 2, "batch_size": 16, "total_steps": 24,
    "optim.name": "lamb", "optim.lr": 0.01, "optim.warmup_steps": 4, "log_every_steps": 1,
    "eval_every_steps": 12,
    "checkpoint_every_steps": 6, "keep_checkpoints": 10, "spike.window": 8,
    "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "sharding": "fsdp_tensor",
}


def once_per_session(tmp_path_factory, name, make):
  """`make(directory)`'s JSON result, made once per test session: with pytest-xdist the first
  worker to ask makes it in the session's shared temporary root, the others wait and reuse it.
  What it writes in `directory` must not be changed by the tests that use it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # pytest-of-USER/pytest-N: the workers' common root
  done = root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if done.exists():
      return json.loads(done.read_text())
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)  # a worker that failed half-way
    directory.mkdir()
    result = make(directory)
    done.write_text(json.dumps(result, default=float))
    return result


def _vocabulary(tmp_path_factory) -> str:
  """A 500-piece vocabulary of every fourth sentence of the embedded corpus, trained once for
  both workers: 1.2 s (the whole corpus took 10.4 s, for nothing a test here checks)."""
  def make(directory):
    sentences = [s for doc in corpus.embedded_documents("train") for s in doc][::4]
    return str(train_spm(sentences, 500, directory))
  return once_per_session(tmp_path_factory, "spm", make)


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
  """The vocabulary of every run here (a path)."""
  return Path(_vocabulary(tmp_path_factory))


def tiny_config(spm_model, **changes):
  config = pretrain.get_config("tiny")
  for key, value in {**OVERRIDES, "spm_model": str(spm_model), **changes}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def stop_after(steps: int):
  """A stand-in for train._StopFlag that "receives SIGTERM" once `steps` steps have run."""
  class StopAfter:
    def __init__(self):
      self._checks = 0

    @property
    def set(self):
      self._checks += 1
      return self._checks >= steps

  return StopAfter


def tensorboard_scalars(logdir) -> dict[str, dict[int, float]]:
  """Scalars of TFRecord event files, read with the Event proto (not with our writer)."""
  from tensorboardX.proto import event_pb2  # test-side reader of what metrics.py wrote
  out = {}
  for path in Path(logdir).glob("events.out.tfevents.*"):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def abstract_state(workdir, step, mesh, rule_name):
  """The train state's (params, rest) shapes for the run in `workdir`, laid out on `mesh`."""
  import json
  from albert_jax import model as M, optimizer, sharding
  config = json.loads((Path(workdir) / "config.json").read_text())
  cfg = M.AlbertConfig.from_hf_dict(json.loads(
      (Path(workdir) / "checkpoints" / str(step) / "albert_config" / "metadata").read_text()
  )["config"])
  optim = pretrain.get_config("tiny").optim
  optim.update(config["optim"])
  tx = optimizer.make_optimizer(optim, config["total_steps"])
  layout = steps.state_layout(M.AlbertForPreTraining(cfg), tx, mesh, sharding.rules(rule_name))
  return steps.checkpoint_parts(layout.abstract)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, spm_model):
  """An uninterrupted in-process run: (workdir, summary)."""
  def make(workdir):
    return train.train_and_evaluate(tiny_config(spm_model), str(workdir))
  workdir, summary = once_per_session(tmp_path_factory, "reference", lambda d: (str(d), make(d)))
  return Path(workdir), summary


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  """spm_model's vocabulary as a tokenizer, for the task tests' feature conversion."""
  from albert_jax.data.tokenizer import AlbertTokenizer
  return AlbertTokenizer(_vocabulary(tmp_path_factory))


# ----------------------------------------------------------------------------- Cloud Storage

def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_bucket():
  """A real local Cloud Storage server (gcp-storage-emulator, in memory, tests/gcs_emulator.py)
  with a bucket, and the
  environment that points this process and its subprocesses at it: gcsfs (etils.epath) reads
  STORAGE_EMULATOR_HOST, Orbax's tensorstore TENSORSTORE_GCS_HTTP_URL, both with a test token
  instead of credentials. Yields "gs://BUCKET"."""
  pytest.importorskip("gcp_storage_emulator")
  port = free_port()
  bucket = "albert-test"
  proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "gcs_emulator.py"), str(port),
                           bucket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None and time.time() < deadline, "the storage emulator did not start"
      time.sleep(0.1)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "GOOGLE_CLOUD_PROJECT": "test",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield f"gs://{bucket}"
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def tpu_env(**extra) -> dict:
  """The environment for a subprocess that compiles for a TPU topology: this one's, without the
  session's CPU compile cache and CPU-only compile flags."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(CPU_FAST_COMPILE, "").strip()
  env.update(extra)
  return env


def pytest_collection_modifyitems(items):
  """Order for two workers (pytest-xdist gives each half of the list, then they steal): first one
  test that makes the shared `reference` run, then the slow tests that do not need it, the
  others, and last the slow tests that use it, so no worker waits on the other's reference run
  and the long tests do not start at the very end alone."""
  uses_reference = [item for item in items if "reference" in getattr(item, "fixturenames", ())]
  first = uses_reference[0] if uses_reference else None
  uses_reference = set(uses_reference)

  def group(item):
    if item is first:
      return 0
    if item.get_closest_marker("slow") is None:
      return 2
    return 3 if item in uses_reference else 1
  items.sort(key=group)
