"""The one device mesh and the one batch-sharding helper of tracin_jax.

Every data-parallel path (training, gradient extraction, scoring) uses a 1-D mesh
with axis ``"data"``: the batch is split over devices, parameters are replicated.
On many hosts, call :func:`initialize_distributed` first; each process then feeds
its own slice of the global batch (``jax.make_array_from_process_local_data``).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
log = logging.getLogger(__name__)


def initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when running as a multi-process job.

    Detected from the environment: a cluster that JAX auto-detects (SLURM with more
    than one task, a TPU pod, Open MPI, Kubernetes), or an explicit
    ``JAX_COORDINATOR_ADDRESS=host:port``. For a hand-launched job (no cluster
    manager) also set ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0..N-1) in each
    process; JAX itself reads only the address, so without them it would have to
    detect a cluster. A no-op for a single process, and safe to call twice.
    """
    if jax.distributed.is_initialized():
        return
    num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = _env_int("JAX_PROCESS_ID")
    if (num_processes is None) != (process_id is None):
        raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither")
    if num_processes == 1:
        return
    multi = num_processes is not None or any(
        os.environ.get(v)
        for v in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")
    ) or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if multi:
        if num_processes is not None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise ValueError("JAX_NUM_PROCESSES/JAX_PROCESS_ID need JAX_COORDINATOR_ADDRESS=host:port")
        jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
        log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def make_mesh(num_devices: int | None = None) -> Mesh:
    """1-D mesh over the first ``num_devices`` devices (default: all), axis ``"data"``.

    Axis type Auto, so jitted code with sharded inputs is partitioned automatically
    and ``shard_map(in_specs=P('data'))`` accepts inputs placed by :func:`shard_batch`.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def make_local_mesh() -> Mesh:
    """1-D ``data`` mesh over this process's own devices.

    For embarrassingly parallel work (gradient extraction, scoring, sweep replicas)
    each host runs its own mesh and writes its own output shards: no cross-host
    collectives, so hosts never wait for each other.
    """
    return Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def local_rows(x) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (all rows on one host)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, parts = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            parts.append(np.asarray(s.data))
    return np.concatenate(parts)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
    """Places a pytree of host arrays ``[local_batch, ...]`` sharded on the data axis.

    ``local_batch`` is this process's slice; the global batch is the concatenation
    over processes. The per-device batch must divide evenly: pad ragged batches
    upstream (``iterate_batches`` does, with weight 0).
    """
    sharding = batch_sharding(mesh)
    n_local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n_local:
            raise ValueError(
                f"local batch of {x.shape[0]} rows does not split over {n_local} local devices;"
                " use a batch size divisible by the device count")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
    """Replicates a pytree (parameters, optimizer state) over the mesh."""
    return jax.device_put(tree, replicated(mesh))


def pad_to_multiple(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
