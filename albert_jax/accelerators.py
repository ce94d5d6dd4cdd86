"""The accelerators our users run on, as tables: Cloud TPU slices and NVIDIA GPU systems.

For each: what XLA needs to compile for it on any host without owning it (libtpu's topology for
a TPU slice; a GPU target description for `jax-cuda13-plugin`'s compile-only devices), its memory
and its dense bf16 peak. `parse_target("v5p-128")` / `parse_target("h100-8")` read the names
`python -m albert_jax.aot --topology=` takes; `compiler_options` holds the XLA options our
programs compile with on each platform.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Union

from jax.experimental import topologies

GiB = 2**30


# ----------------------------------------------------------------------------- Cloud TPU

@dataclasses.dataclass(frozen=True)
class Generation:
  """Per chip: libtpu's topology name, the TensorCores the accelerator type counts per chip (v4-8
  is 4 chips), the devices libtpu makes of a chip (one per chip with megacore; Ironwood's two
  TensorCores are two devices), the HBM XLA may use per device (libtpu 0.0.42's "available
  HBM", read from its out-of-memory message), the dense bf16 peak per device in FLOP/s, and
  whether chips form a 3D torus."""
  libtpu: str
  cores_per_chip: int
  hbm_bytes: int
  peak_flops: float
  dims: int
  devices_per_chip: int = 1


GENERATIONS = {
    "v4": Generation("v4", 2, int(30.75 * GiB), 275e12, 3),
    "v5p": Generation("v5p", 2, int(95.74 * GiB), 459e12, 3),
    "v5e": Generation("v5e", 1, int(15.75 * GiB), 197e12, 2),
    "v6e": Generation("v6e", 1, int(31.25 * GiB), 918e12, 2),
    # Ironwood: 192 GB of HBM and 2,307 TFLOP/s (bf16) per chip, which libtpu presents as two
    # devices (one per TensorCore), each with half.
    "tpu7x": Generation("tpu7x", 2, int(94.75 * GiB), 2307e12 / 2, 3, devices_per_chip=2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p", "v7": "tpu7x",
           "ironwood": "tpu7x"}

# Chip grids of the standard slices (Cloud TPU's accelerator types), by number of chips.
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice (or several, over the data-center network) as libtpu describes it."""
  name: str
  generation: str
  grid: tuple[int, ...]
  num_slices: int = 1
  platform = "tpu"

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.grid) * self.num_slices

  @property
  def devices(self) -> int:
    return self.chips * self.gen.devices_per_chip

  @property
  def hbm_bytes(self) -> int:
    return self.gen.hbm_bytes

  @property
  def peak_flops(self) -> float:
    return self.gen.peak_flops

  @property
  def topology_name(self) -> str:
    return f"{self.gen.libtpu}:{'x'.join(map(str, self.grid))}"

  @property
  def accelerator_type(self) -> str:
    """Cloud TPU's name for one of the slices (v5p-8, v5litepod-8, tpu7x-8, ...)."""
    prefix = {"v5e": "v5litepod"}.get(self.generation, self.generation)
    return f"{prefix}-{math.prod(self.grid) * self.gen.cores_per_chip}"

  def topology_kwargs(self) -> dict[str, Any]:
    """`jax.experimental.topologies.get_topology_desc` arguments: one device per chip (megacore
    on v4/v5p; two on Ironwood), 4 chips per host (2x4 for a single-host v5e/v6e slice of 8),
    torus links on full-size dimensions."""
    grid3 = tuple(self.grid) + (1,) * (3 - len(self.grid))
    if self.gen.dims == 3:
      hosts, wrap = (2, 2, 1), tuple(d >= 4 for d in grid3) if min(grid3) >= 4 else (False,) * 3
    else:
      hosts = grid3 if math.prod(grid3) <= 8 else (2, 2, 1)
      wrap = (grid3[0] >= 16, grid3[1] >= 16, False)
    chip_config = "default"
    if self.generation in ("v4", "v5p"):
      chip_config = "megacore"
    return dict(topology_name=self.topology_name, platform="tpu", chip_config_name=chip_config,
                chips_per_host_bounds=hosts, num_slices=self.num_slices, wrap=wrap)

  def compile_devices(self) -> list:
    """The slice's devices, compile-only: programs for them build here and never run."""
    # Off Cloud TPU there is no metadata server to ask what this host is; say it, or libtpu warns.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", self.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside another libtpu process
    try:
      return list(topologies.get_topology_desc(**self.topology_kwargs()).devices)
    except Exception as e:  # noqa: BLE001  (libtpu missing, unknown topology)
      raise RuntimeError(f"libtpu cannot describe {self.name} ({type(e).__name__}: {e}); install "
                         "it with `pip install -e .[tpu]` (jax[tpu] at the pinned jax)") from e


def _parse_slice(name: str, text: str, num_slices: int) -> Slice:
  def fail(why):
    raise ValueError(f"--topology={name!r}: {why} ({KNOWN})")
  if ":" in text:
    gen, _, dims = text.partition(":")
    gen = ALIASES.get(gen, gen)
    if gen not in GENERATIONS:
      fail(f"unknown TPU generation {gen!r}")
    try:
      grid = tuple(int(d) for d in dims.split("x"))
    except ValueError:
      fail(f"cannot read the chip grid {dims!r}")
    if len(grid) != GENERATIONS[gen].dims or min(grid) < 1:
      fail(f"{gen} chips form a {GENERATIONS[gen].dims}D grid")
    return Slice(name, gen, grid, num_slices)
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
  if not match:
    fail("expected GENERATION-SIZE")
  gen = ALIASES.get(match[1], match[1])
  if gen not in GENERATIONS:
    fail(f"unknown TPU generation {match[1]!r}")
  size, cores = int(match[2]), GENERATIONS[gen].cores_per_chip
  grids = GRIDS_3D if GENERATIONS[gen].dims == 3 else GRIDS_2D
  if size % cores or size // cores not in grids:
    sizes = ", ".join(f"{gen}-{c * cores}" for c in grids)
    fail(f"no standard {gen} slice of that size ({sizes})")
  return Slice(name, gen, grids[size // cores], num_slices)


# ----------------------------------------------------------------------------- NVIDIA GPUs

@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """One GPU model as NVIDIA's datasheet and its driver describe it: what XLA:GPU's compiler
  reads to choose fusions and tiles, and the dense bf16 peak."""
  device_kind: str  # what the driver calls it (jax's device_kind)
  compute_capability: tuple[int, int]
  sm_count: int
  clock_ghz: float
  memory_bytes: int  # what the driver reports as total
  memory_bandwidth: float  # bytes/s
  l2_bytes: int
  peak_flops: float  # dense bf16 tensor-core FLOP/s
  gpus_per_host: int = 8  # HGX/DGX baseboards

  def target_config(self) -> str:
    """The `stream_executor.GpuTargetConfigProto` (text) that makes compile-only devices of it."""
    major, minor = self.compute_capability
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
        "  shared_memory_per_block: 49152", "  shared_memory_per_core: 233472",
        "  shared_memory_per_block_optin: 232448", "  threads_per_core_limit: 2048",
        f"  core_count: {self.sm_count}", "  fpus_per_core: 128",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535",
        "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(self.memory_bandwidth)}", f"  l2_cache_size: {self.l2_bytes}",
        f"  clock_rate_ghz: {self.clock_ghz}", f"  device_memory_size: {self.memory_bytes}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info { major: 9 minor: 10 }",
        f'device_description_str: "{self.device_kind}"',
    ])


GPUS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 84_942_979_072, 3.35e12,
                    50 * 2**20, 989e12),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 1.98, 150_754_820_096, 4.8e12, 50 * 2**20,
                    989e12),
    "b200": GpuSpec("NVIDIA B200", (10, 0), 148, 1.965, 191_514_411_008, 8.0e12, 126.5 * 2**20,
                    2250e12),
}
GPU_ALIASES = {"h100-sxm": "h100", "h100sxm": "h100", "gh200": "h200"}


def gpu_memory_fraction() -> float:
  """The share of a GPU's memory jax gives XLA: XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75."""
  return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))


@dataclasses.dataclass(frozen=True)
class GpuSystem:
  """`gpus` GPUs of one model, `gpus_per_host` to a host (h100-16: two HGX H100 hosts)."""
  name: str
  model: str
  gpus: int
  platform = "gpu"
  num_slices = 1

  @property
  def spec(self) -> GpuSpec:
    return GPUS[self.model]

  @property
  def devices(self) -> int:
    return self.gpus

  @property
  def chips(self) -> int:
    return self.gpus

  @property
  def hosts(self) -> int:
    return max(1, self.gpus // self.spec.gpus_per_host)

  @property
  def hbm_bytes(self) -> int:
    """What XLA may use: the GPU's memory times jax's memory fraction."""
    return int(self.spec.memory_bytes * gpu_memory_fraction())

  @property
  def peak_flops(self) -> float:
    return self.spec.peak_flops

  @property
  def topology_name(self) -> str:
    """The compile-only plugin's topology: partitions x hosts x GPUs per host."""
    return f"1x{self.hosts}x{self.gpus // self.hosts}"

  def compile_devices(self) -> list:
    """The system's GPUs, compile-only (jax-cuda13-plugin: `pip install -e .[gpu-aot]`)."""
    try:
      return list(topologies.get_topology_desc(
          platform="cuda", topology=self.topology_name,
          target_config=self.spec.target_config()).devices)
    except Exception as e:  # noqa: BLE001  (plugin missing, or a jaxlib that refuses the spec)
      raise RuntimeError(
          f"jax cannot describe {self.name} ({type(e).__name__}: {str(e).splitlines()[0]}); "
          "install the compile-only CUDA plugin with `pip install -e .[gpu-aot]`") from e


def _parse_gpus(name: str, text: str) -> GpuSystem:
  match = re.fullmatch(r"([a-z0-9\-]+?)-(\d+)", text)
  model = GPU_ALIASES.get(match[1], match[1]) if match else None
  if model not in GPUS:
    raise ValueError(f"--topology={name!r}: unknown GPU {match[1] if match else text!r} ({KNOWN})")
  gpus = int(match[2])
  per_host = GPUS[model].gpus_per_host
  if gpus < 1 or (gpus > per_host and gpus % per_host):
    raise ValueError(f"--topology={name!r}: {gpus} GPUs do not fill hosts of {per_host} "
                     f"({model}-1 ... {model}-{per_host}, or a multiple of {per_host})")
  if gpus > MAX_DEVICES:
    raise ValueError(f"--topology={name!r}: at most {MAX_DEVICES} GPUs")
  return GpuSystem(name, model, gpus)


# ----------------------------------------------------------------------------- any target

Target = Union[Slice, GpuSystem]
MAX_DEVICES = 16384  # a compile for more devices than the largest pod is a typo
KNOWN = ("TPU accelerator types: " + ", ".join(f"{g}-N" for g in GENERATIONS)
         + ", e.g. v5p-8, v4-32, v5e-8, v5litepod-16, v6e-8, tpu7x-8, or a libtpu topology like "
         "v5p:2x2x1; GPUs: " + ", ".join(f"{m}-N" for m in GPUS) + ", e.g. h100-8, h200-16")


def parse_target(name: str, num_slices: int = 1) -> Target:
  """A TPU slice (`v5p-8`, `v4-32`, `v5e-8` / `v5litepod-16`, `v6e-8`, `tpu7x-8`, a libtpu
  topology such as `v5p:2x2x1`) or GPUs (`h100-8`, `h200-8`, `h100-16`: N GPUs, 8 to a host)."""
  if not 1 <= num_slices <= 64:
    raise ValueError(f"--num_slices={num_slices} must be between 1 and 64 (slices joined over "
                     "the data-center network)")
  text = name.strip().lower()
  if re.match(r"(h100|h200|b200|gh200)", text):
    if num_slices != 1:
      raise ValueError(f"--num_slices={num_slices} is for TPU slices; name more GPUs instead "
                       f"(e.g. {text.split('-')[0]}-16 for two hosts)")
    return _parse_gpus(name, text)
  target = _parse_slice(name, text, num_slices)
  if target.devices > MAX_DEVICES:
    raise ValueError(f"--topology={name!r} x --num_slices={num_slices} is {target.devices} "
                     f"devices; at most {MAX_DEVICES}")
  return target


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 FLOP/s of one device of this jax `device_kind`, or None if unknown."""
  kind = device_kind.lower()
  for gpu in GPUS.values():
    if gpu.device_kind.lower() == kind:
      return gpu.peak_flops
  table = [("tpu7x", GENERATIONS["tpu7x"].peak_flops), ("v4", 275e12), ("v5 lite", 197e12),
           ("v5e", 197e12), ("v5p", 459e12), ("tpu v5", 459e12), ("v6", 918e12),
           ("h100", 989e12), ("h200", 989e12), ("a100", 312e12), ("b200", 2250e12),
           ("gb200", 2500e12)]
  for name, flops in table:
    if name in kind:
      return flops
  return None


# ----------------------------------------------------------------------------- compiling

# XLA options our programs compile with on a GPU (`jax.jit(..., compiler_options=...)`): matmuls
# through cuBLAS(Lt), whose epilogues add the bias, the GELU (keeping its input for the backward
# pass) and the residual in the GEMM itself; a Triton GEMM fusion adds the bias but writes the
# GELU's input and output in a kernel of their own (`census.py` on albert-large, README "On a
# GPU"). An option named in XLA_FLAGS is left to XLA_FLAGS.
GPU_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def compiler_options(devices) -> dict[str, Any] | None:
  """The XLA options for a program on `devices` (None: XLA's defaults)."""
  devices = list(devices)
  if not devices or devices[0].platform not in ("gpu", "cuda"):
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in GPU_OPTIONS.items() if f"--{k}=" not in flags} or None
