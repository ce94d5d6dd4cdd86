"""The device mesh (`data`, `fsdp`, `tensor`), the logical-axis rules that map the model onto it,
and placing batches and host arrays on it.

The model names axes only (`model.py`); which mesh axis each name uses is decided here, in one
table per strategy. `config.sharding` picks the table, `config.mesh` sizes the mesh.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical axis -> mesh axis (None: replicated). Every name the model uses appears in every table,
# so a new name cannot fall through silently (tests/test_sharding.py checks it).
_ACTIVATIONS = [("batch", BATCH), ("length", None), ("act_emb", None), ("act_hidden", None),
                ("act_kv", None)]
RULES: dict[str, list[tuple[str, Any]]] = {
    # Every device holds every weight; the batch is split.
    "data_parallel": _ACTIVATIONS + [
        ("act_heads", None), ("act_mlp", None), ("act_vocab", None),
        ("vocab", None), ("emb", None), ("hidden", None), ("heads", None), ("kv", None),
        ("mlp", None)],
    # ZeRO-3 style: weights split over `fsdp` on their largest axis, gathered for each matmul.
    "fsdp": _ACTIVATIONS + [
        ("act_heads", None), ("act_mlp", None), ("act_vocab", None),
        ("vocab", "fsdp"), ("emb", None), ("hidden", "fsdp"), ("heads", None), ("kv", None),
        ("mlp", None)],
    # fsdp plus Megatron-style tensor parallelism: heads, FFN width and vocabulary over `tensor`.
    "fsdp_tensor": _ACTIVATIONS + [
        ("act_heads", "tensor"), ("act_mlp", "tensor"), ("act_vocab", "tensor"),
        ("vocab", "tensor"), ("emb", None), ("hidden", "fsdp"), ("heads", "tensor"), ("kv", None),
        ("mlp", "tensor")],
}


def rules(name: str) -> list[tuple[str, Any]]:
  if name not in RULES:
    raise ValueError(f"config.sharding={name!r} is not one of {sorted(RULES)}")
  return RULES[name]


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) from `config.mesh`, where one size may be -1 (the rest of the devices)."""
  shape = [int(sizes[a]) for a in MESH_AXES]
  wild = [i for i, s in enumerate(shape) if s == -1]
  if len(wild) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, shape))}: sizes must be positive, "
                     "with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if wild:
    if num_devices % known:
      raise ValueError(f"config.mesh={dict(zip(MESH_AXES, shape))} does not divide "
                       f"{num_devices} devices")
    shape[wild[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                     f"devices; there are {num_devices}")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over all devices of all processes.

  On several slices (TPU multislice), `data` is laid over the slow inter-slice network (DCN)
  and `fsdp`/`tensor` stay within a slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ValueError(f"mesh data={shape[0]} must be a multiple of the {num_slices} slices")
    ici = (shape[0] // num_slices, shape[1], shape[2])
    array = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices)
    return Mesh(array, MESH_AXES)
  # Auto axes: GSPMD propagates shardings from the params' and the few activations' constraints.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_shardings(boxed_tree, mesh: Mesh, rule_table) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. `abstract_params`)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rule_table)


def put(host_array, target) -> jax.Array:
  """A host array as a global array with `target`'s shape, dtype and sharding (a
  ShapeDtypeStruct or a NamedSharding with the shape from the array); works on many hosts, each
  holding the whole array."""
  sharding_ = getattr(target, "sharding", target)
  shape = tuple(getattr(target, "shape", np.shape(host_array)))
  if tuple(np.shape(host_array)) != shape:
    raise ValueError(f"array of shape {np.shape(host_array)} where {shape} is expected")
  x = np.asarray(host_array, getattr(target, "dtype", None))
  return jax.make_array_from_callback(shape, sharding_, lambda index: x[index])


def to_host(tree) -> Any:
  """Global arrays as host numpy arrays on every process (gathered across hosts if needed)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batches -> global jax.Arrays split over the batch axes.

  Each process passes its own rows (global batch / process count of them).
  """
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
          for k, v in local.items()}
