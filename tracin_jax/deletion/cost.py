"""What a sweep costs on this machine: replica memory, replicas per program, step times, wall time.

Kept apart from the plan (``deletion.plan``, a pure function of rankings and settings):
everything here measures the hardware — XLA's memory analysis of a one-replica program,
the device's free memory, and timed training steps.
"""
from __future__ import annotations

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.deletion.replicas import ReplicaTrainer
from tracin_jax.deletion.schedule import ReplicaSpec

log = logging.getLogger(__name__)


def replica_bytes(trainer: ReplicaTrainer) -> int:
    """Estimated device bytes per replica: state twice (donated in/out) plus the step's
    temporaries, from XLA's memory analysis of a one-replica, one-step program."""
    specs = trainer._pad_specs([ReplicaSpec(seed=0, keep=np.ones(trainer.n, bool))])
    state = trainer.init_states(specs)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state)) // len(specs)
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    args = (shapes(state), shapes(trainer.device_data()),
            jax.ShapeDtypeStruct((1, len(specs), trainer.batch_size), jnp.int32),
            jax.ShapeDtypeStruct((1, len(specs)), jnp.bool_), jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((len(specs),), jnp.int32), jax.ShapeDtypeStruct((len(specs),), jnp.int32), None)
    try:
        analysis = trainer.train_program(False, len(specs), None).lower(*args).compile().memory_analysis()
        temp = int(getattr(analysis, "temp_size_in_bytes", 0)) // len(specs)
    except (AttributeError, NotImplementedError, RuntimeError, jax.errors.JaxRuntimeError) as e:
        log.warning("memory analysis unavailable (%s); sizing replicas from state size", e)
        temp = 4 * state_bytes  # backends without memory analysis: a generous multiple of the state
    return int(2 * state_bytes + temp)


def device_memory_bytes(device=None) -> int:
    """Usable memory of one device: the allocator limit on GPU/TPU, available RAM on CPU."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):  # CPU backends may not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 << 30
    return int(avail) // max(len(jax.local_devices()), 1)


def choose_num_replicas(trainer: ReplicaTrainer, *, num_jobs: int, requested: int = 0,
                        max_replicas: int = 64, memory_fraction: float = 0.5) -> int:
    """Replicas per program: ``requested`` if > 0, else as many as fit in
    ``memory_fraction`` of each device's memory (capped by ``max_replicas``), spread
    evenly so the last group is not mostly padding; a multiple of the device count."""
    ndev = trainer.num_devices
    if requested and requested > 0:
        r_max = int(requested)
    else:
        per_replica = max(replica_bytes(trainer), 1)
        data_bytes = sum(np.asarray(getattr(trainer.train_enc, k)).nbytes
                         for k in ("input_ids", "attention_mask", "token_type_ids", "labels"))
        budget = memory_fraction * device_memory_bytes() - data_bytes
        r_max = max(1, int(budget // per_replica)) * ndev
        log.info("replicas from memory: %.1f MB per replica, budget %.1f MB per device -> %d",
                 per_replica / 2**20, budget / 2**20, r_max)
    r_max = max(1, min(r_max, int(max_replicas) if max_replicas else r_max, max(num_jobs, 1)))
    groups = math.ceil(max(num_jobs, 1) / r_max)
    r = math.ceil(max(num_jobs, 1) / groups)
    return int(math.ceil(r / ndev) * ndev)


def measure_step_time(setup, replicas: int, *, mesh=None, vmap_width: int = 0, steps: int = 2,
                      repeats: int = 2) -> float:
    """Seconds per training step of an R-replica program on this machine.

    The slope between runs of ``steps`` and ``3 · steps`` steps (the same compiled programs,
    so compilation and per-run setup cancel), best of ``repeats``.
    """
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, mesh=mesh, steps_per_call=steps,
                             vmap_width=vmap_width)
    specs = [ReplicaSpec(seed=i, keep=np.ones(len(setup.train), bool)) for i in range(replicas)]

    def timed(n_steps: int) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.train(specs, max_steps=n_steps).params)
        return time.perf_counter() - t0

    timed(steps)  # compiles
    best = min(timed(3 * steps) - timed(steps) for _ in range(repeats))
    return max(best / (2 * steps), 1e-9)


def choose_vmap_width(setup, replicas: int, *, mesh=None, steps: int = 2) -> tuple[int, dict]:
    """Replicas vmapped together per device, by measurement on CPU (1 vs all: a vmap wins
    for small models, plain steps for larger ones); all of them on accelerators."""
    mesh = mesh or mesh_lib.make_local_mesh()
    local = max(1, replicas // len(mesh.local_devices))
    if mesh.devices.flat[0].platform != "cpu" or local == 1:
        return local, {}
    times = {w: measure_step_time(setup, replicas, mesh=mesh, vmap_width=w, steps=steps) for w in (1, local)}
    return min(times, key=times.get), {str(w): t for w, t in times.items()}


def estimate_cost(manifest: dict, setup, replicas: int, *, mesh=None, vmap_width: int = 0) -> dict:
    """Wall time of the whole sweep from measured replica step times (and the vmap width
    they select, when ``vmap_width`` is 0). A retraining is ``epochs · ceil(N / B)``
    steps; jobs run R at a time on this machine (divide by the number of shards)."""
    t0 = time.perf_counter()
    if vmap_width:
        width, by_width = int(vmap_width), {}
        step_s = measure_step_time(setup, replicas, mesh=mesh, vmap_width=width)
    else:
        width, by_width = choose_vmap_width(setup, replicas, mesh=mesh)
        step_s = by_width[str(width)] if by_width else measure_step_time(setup, replicas, mesh=mesh,
                                                                         vmap_width=width)
    n = manifest["num_train"]
    steps_per_retrain = int(manifest["epochs"]) * math.ceil(n / int(setup.cfg.train.batch_size))
    groups = math.ceil(len(manifest["jobs"]) / replicas)
    total_s = groups * steps_per_retrain * step_s
    devices = mesh.local_devices if mesh is not None else jax.local_devices()
    return {"replicas": int(replicas), "vmap_width": int(width), "step_time_s": step_s,
            "step_time_s_by_vmap_width": by_width, "steps_per_retrain": steps_per_retrain,
            "groups": groups, "retrain_s": steps_per_retrain * step_s / replicas, "total_s": total_s,
            "total_hours": total_s / 3600.0, "device": str(devices[0].device_kind),
            "num_devices": len(devices), "measured_in_s": time.perf_counter() - t0}
