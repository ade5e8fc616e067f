"""Many retrainings as one vmapped program: stacked states, per-replica removal and seed.

A retraining with seed ``s`` and keep mask ``keep [N]`` is exactly the run that
``train(cfg with seed=s, keep=keep)`` performs: initial parameters from ``s``
(:func:`initial_params`), data order ``iterate_batches(seed=s, epoch=e, keep=keep)``,
dropout key ``fold_in(key(s), step)``, and a learning-rate schedule over its own
number of updates ``epochs · ceil(n_kept / B)``. R such runs share one program:

    states [R, ...] ──loop over a call's steps──> vmap over replicas of trainer.apply_train_step

Who trains on which rows in which step, and how steps become device calls, is the
host-side plan of ``deletion.schedule``: a replica whose epoch is over is *inactive* in
the remaining slots of the shared timeline, its state carried through unchanged (a
select), so it sees each kept example once per epoch, never a removed one, and its step
counter, optimizer count, schedule and dropout stream are those of the single run.

Batches are gathered on the device from the training set (held once per device) by
per-replica index arrays ``[steps, R, B]`` (``-1`` = a padding row, as in
``iterate_batches``), so the host only ships indices. Replicas are split over the local
devices (``shard_map`` over the mesh's ``data`` axis); replicas never communicate, so this
scales to any number of local devices without collectives. On each device,
``vmap_width`` replicas are vmapped together: all of them on a GPU/TPU; one at a time on
CPU, where XLA's batched GEMMs of a vmapped BERT step are slower than R plain ones.

``train.group_by_length`` orders batches as ``train`` does (``batch_order``).
``train.pad_to_multiple`` trims every step to its batch's padded length: programs are
compiled per length (at most ``max_length / m`` of them). Replicas vmapped together share
a step's length, the longest of theirs; a replica alone (the CPU default, width 1) gets
exactly its own, so it equals ``train`` with dropout too (dropout masks are drawn at the
batch's shape). Compiled programs live in the shared, bounded ``programs.PROGRAMS``: one per
batch width, compiled ahead of time at its first call, whatever the calls' lengths.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracin_jax import mesh as mesh_lib
from tracin_jax.data import check_right_padded, iterate_batches, sequence_lengths
from tracin_jax.deletion.schedule import (NO_EDIT, ReplicaSpec, chunk_length, plan_calls, run_lengths,
                                          slot_plan, slot_widths)
from tracin_jax.models import init_params
from tracin_jax.models.hf_convert import load_hf_checkpoint
from tracin_jax.programs import PROGRAMS
from tracin_jax.train.trainer import (TrainState, apply_train_step, make_eval_step, make_optimizer,
                                      schedule_value)

log = logging.getLogger(__name__)

# Steps per device call: long scans amortise dispatch; bounded so one call of a
# large model stays well under typical watchdog limits.
DEFAULT_STEPS_PER_CALL = 256
# Training settings the device program does not read (run lengths are its arguments).
_HOST_SIDE_TRAIN_FIELDS = ("epochs", "max_steps", "log_every_steps", "eval_batch_size", "num_devices",
                           "checkpoint_every_epochs", "checkpoint_every_steps", "checkpoint_steps",
                           "group_by_length", "pad_to_multiple", "allow_nonfinite")
_EVAL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def initial_params(cfg: ml_collections.ConfigDict, model, seed: int) -> Any:
    """Initial parameters of a run with seed ``seed`` (as ``prepare_run`` with ``cfg.seed=seed``).

    From scratch: ``init_params(model, key(seed))``; from ``cfg.model.hf_dir``: the
    pretrained encoder with the parts it lacks (the classifier) initialised from ``seed``.
    """
    if cfg.model.hf_dir:
        _, params = load_hf_checkpoint(cfg.model.hf_dir, num_labels=int(cfg.model.num_labels),
                                       rng_seed=int(seed))
        return params
    return init_params(model, jax.random.key(int(seed)), int(cfg.tokenizer.max_length))


@dataclasses.dataclass
class ReplicaRun:
    """Trained replicas: stacked final params (device), updates and last-epoch mean loss."""

    params: Any  # pytree with leading axis R (padding replicas dropped only on the host side)
    steps: np.ndarray  # [R] int64 updates applied
    train_loss: np.ndarray  # [R] float32 mean loss over each replica's last epoch (nan: none)
    num_replicas: int  # R requested (the stacked arrays may hold extra padding replicas)


def gather_batch(data: dict[str, jax.Array], idx: jax.Array, pad_id: int,
                 edit_tokens: jax.Array | None = None, width: int | None = None) -> dict[str, jax.Array]:
    """Batch of rows ``idx [B]`` (``-1`` = padding) from device arrays ``data`` (``[N, ...]``).

    Padding rows are those of ``iterate_batches``: pad ids, zero mask, label 0, weight 0.
    ``width`` keeps the first ``width`` token columns (a trimmed batch).
    """
    valid = idx >= 0
    rows = jnp.maximum(idx, 0)
    if width is not None:
        data = {k: (v[:, :width] if v.ndim == 2 else v) for k, v in data.items()}
    input_ids = data["input_ids"][rows]
    if edit_tokens is not None:
        token = edit_tokens[rows][:, None]
        input_ids = jnp.where((token != NO_EDIT) & (input_ids == token), pad_id, input_ids)
    v = valid[:, None]
    return {"input_ids": jnp.where(v, input_ids, pad_id).astype(jnp.int32),
            "attention_mask": jnp.where(v, data["attention_mask"][rows], 0).astype(jnp.int32),
            "token_type_ids": jnp.where(v, data["token_type_ids"][rows], 0).astype(jnp.int32),
            "labels": jnp.where(valid, data["labels"][rows], 0).astype(jnp.int32),
            "weights": valid.astype(jnp.float32)}


def build_train_program(model, train_cfg, pad_id: int, mesh: Mesh, with_edits: bool, template,
                        vmap_width: int, local_replicas: int, width: int | None = None) -> Callable:
    """``(states, data, idx [C, R, B], active [C, R], num_steps, seeds, totals, edits) ->
    (states, loss [C, R])``: per replica, a loop over the call's first ``num_steps`` slots
    (``num_steps <= C``, an argument: one program serves calls of every length, and slots
    past ``num_steps`` are never computed; their loss is 0) of ``trainer.apply_train_step``.

    Each device runs its own ``local_replicas`` (``shard_map``, no collectives), in groups
    of ``vmap_width`` vmapped together (``lax.map(..., batch_size=width)``): width = local
    replicas is one vmapped program (accelerators), width 1 runs the replicas one after
    another inside the program (CPU, where batched GEMMs of a vmap are slower).
    """

    def replica_step(state, idx, active, seed, total, edits, data):
        batch = gather_batch(data, idx, pad_id, edits, width=width)
        tx = make_optimizer(train_cfg, lambda c: schedule_value(train_cfg, c, total), template)
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        new, metrics = apply_train_step(model, tx, state, batch, key)
        # An inactive replica carries its state unchanged. A select, not a cond: XLA fuses
        # it into the update (a cond made the CPU program copy the state every step).
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        return new, jnp.where(active, metrics["loss"], 0.0).astype(jnp.float32)

    def replica_chunk(xs, data, num_steps):
        """One replica through the call's steps: a loop over its own state only."""
        state, idx, active, seed, total, edit = xs  # idx [C, B], active [C]

        def body(i, carry):
            state, losses = carry
            new, loss = replica_step(state, idx[i], active[i], seed, total, edit, data)
            return new, losses.at[i].set(loss)
        return jax.lax.fori_loop(0, num_steps, body, (state, jnp.zeros(idx.shape[0], jnp.float32)))

    def local_chunk(states, data, idx, active, num_steps, seeds, totals, edits):
        # Replicas are independent, so the loop over replicas can sit outside the loop
        # over steps: each replica's state is sliced once per call, not once per step.
        per_replica = (states, jnp.swapaxes(idx, 0, 1), jnp.swapaxes(active, 0, 1), seeds, totals, edits)
        one = lambda xs: replica_chunk(xs, data, num_steps)
        if vmap_width >= local_replicas:
            states, loss = jax.vmap(one)(per_replica)
        else:
            states, loss = jax.lax.map(one, per_replica, batch_size=vmap_width if vmap_width > 1 else None)
        return states, jnp.swapaxes(loss, 0, 1)  # loss [C, R]

    rep, time_rep = P(mesh_lib.DATA_AXIS), P(None, mesh_lib.DATA_AXIS)
    sharded = jax.shard_map(local_chunk, mesh=mesh, check_vma=False,
                            in_specs=(rep, P(), time_rep, time_rep, P(), rep, rep, rep if with_edits else None),
                            out_specs=(rep, time_rep))
    return jax.jit(sharded, donate_argnums=(0,))


def build_eval_program(model, mesh: Mesh) -> Callable:
    """``(stacked params [R, ...], batch) -> probabilities [R, B, C]``, replicas split over ``mesh``.

    shard_map, like training: each device vmaps over its own replicas. (Leaving the replica
    axis to GSPMD auto-partitioning miscompiled the vmapped CNN conv on XLA:CPU with 8
    devices: probabilities off by up to 0.99; tests/test_deletion_replicas.py.)
    """
    local = jax.vmap(make_eval_step(model), in_axes=(0, None))
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(mesh_lib.DATA_AXIS), P()),
                                 out_specs=P(mesh_lib.DATA_AXIS), check_vma=False))


class ReplicaTrainer:
    """Trains R retrainings of one configuration at once (see the module docstring).

    Args:
      cfg: the run's resolved config (``setup.cfg``); ``cfg.train`` drives the optimizer
        and schedule, ``epochs`` overrides ``cfg.train.epochs`` when given.
      model: the Flax module.
      train_enc: the training ``EncodedDataset`` (row order = ``keep`` order).
      mesh: local ``data`` mesh the replicas are split over (default: one device).
      steps_per_call: training steps per device call (``lax.scan`` length) at most.
      vmap_width: replicas vmapped together per device; 0 = all on accelerators, 1 on CPU.
      init_fn: ``seed -> params`` (default :func:`initial_params`).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, model, train_enc, *, mesh: Mesh | None = None,
                 epochs: int | None = None, steps_per_call: int = DEFAULT_STEPS_PER_CALL,
                 vmap_width: int = 0, init_fn: Callable[[int], Any] | None = None):
        train_cfg = ml_collections.ConfigDict(cfg.train.to_dict())
        if epochs is not None:
            train_cfg.epochs = int(epochs)
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.cfg, self.train_cfg, self.model, self.train_enc = cfg, train_cfg, model, train_enc
        self.n = len(train_enc.labels)
        self.batch_size = int(train_cfg.batch_size)
        self.eval_batch_size = int(train_cfg.eval_batch_size)
        self.pad_id = int(train_enc.pad_id)
        self.mesh = mesh or mesh_lib.make_mesh(1)
        self.num_devices = len(self.mesh.local_devices)
        self.steps_per_call = int(steps_per_call)
        self.vmap_width = int(vmap_width or 0)
        self.max_length = int(np.shape(train_enc.input_ids)[1])
        self.pad_to_multiple = int(train_cfg.get("pad_to_multiple", 0) or 0)
        self.lengths = sequence_lengths(train_enc)
        if self.pad_to_multiple:
            check_right_padded(train_enc)
        self._init_fn = init_fn or (lambda seed: initial_params(cfg, model, seed))
        self._init_cache: dict[int, Any] = {}
        self._data = None
        # What the last ``train`` call did: ``steps_s`` seconds in device calls for training
        # steps (with their loss read-back), ``compile_s`` of those spent compiling new
        # programs, ``calls`` device calls and ``slots`` loop iterations they ran (a call of
        # R replicas runs each of its slots once for all R).
        self.last_timing: dict[str, float] = {}
        # What the compiled programs depend on besides shapes (the cache key).
        traced = {k: v for k, v in train_cfg.to_dict().items() if k not in _HOST_SIDE_TRAIN_FIELDS}
        self._program_key = (model, json.dumps(traced, sort_keys=True, default=list), self.pad_id, self.mesh)

    # -- placement
    def _put_replicas(self, tree, axis: int = 0):
        sharding = NamedSharding(self.mesh, P(*([None] * axis), mesh_lib.DATA_AXIS))
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)

    def device_data(self) -> dict[str, jax.Array]:
        """The training set on every device of the mesh (uploaded once)."""
        if self._data is None:
            enc = self.train_enc
            arrays = {k: np.asarray(getattr(enc, k), np.int32)
                      for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
            self._data = mesh_lib.replicate(arrays, self.mesh)
        return self._data

    def params_for(self, seed: int):
        """Initial parameters of ``seed`` (host arrays, cached: every job of a sweep reuses them)."""
        if seed not in self._init_cache:
            self._init_cache[seed] = jax.tree.map(np.asarray, jax.device_get(self._init_fn(int(seed))))
        return self._init_cache[seed]

    def init_states(self, specs: Sequence[ReplicaSpec]) -> TrainState:
        """Stacked fresh states ``[R, ...]`` (host numpy)."""
        tx = make_optimizer(self.train_cfg, lambda c: schedule_value(self.train_cfg, c, 1), self.params_for(0))
        states = []
        for spec in specs:
            params = self.params_for(int(spec.seed))
            states.append(TrainState(step=np.zeros((), np.int32), params=params,
                                     opt_state=jax.tree.map(np.asarray, tx.init(params))))
        return jax.tree.map(lambda *xs: np.stack(xs), *states)

    # -- programs
    def train_program(self, with_edits: bool, num_replicas: int, width: int | None) -> Callable:
        """The jitted training program for a group of ``num_replicas`` and batch ``width``."""
        local = num_replicas // self.num_devices
        vmap_width = self.vmap_width_for(local)
        key = ("replica_train", *self._program_key, bool(with_edits), vmap_width, local, width)
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                                self.params_for(0))
        return PROGRAMS.get(key, lambda: build_train_program(
            self.model, self.train_cfg, self.pad_id, self.mesh, with_edits, template, vmap_width, local, width))

    def train_executable(self, with_edits: bool, num_replicas: int, width: int | None, chunk: int,
                         args) -> Callable:
        """``train_program`` compiled ahead of time for ``args`` (a call's arguments: index
        arrays of ``chunk`` slots), once per process: every later group, job and call length
        reuses it. Its compilation is timed into ``last_timing['compile_s']``."""
        key = ("replica_train_compiled", *self._program_key, bool(with_edits), num_replicas, width,
               int(chunk), self.batch_size, self.n, self.max_length)

        def build():
            t0 = time.perf_counter()
            compiled = self.train_program(with_edits, num_replicas, width).lower(*args).compile()
            self.last_timing["compile_s"] = self.last_timing.get("compile_s", 0.0) + time.perf_counter() - t0
            return compiled
        return PROGRAMS.get(key, build)

    def eval_program(self) -> Callable:
        return PROGRAMS.get(("replica_eval", self.model, self.mesh),
                            lambda: build_eval_program(self.model, self.mesh))

    def vmap_width_for(self, local_replicas: int) -> int:
        """Replicas vmapped together on a device: ``vmap_width`` if set, else all of them on
        accelerators and 1 on CPU (measured: tools/bench_retrain.py)."""
        if self.vmap_width:
            return max(1, min(int(self.vmap_width), local_replicas))
        return 1 if self.mesh.devices.flat[0].platform == "cpu" else local_replicas

    def _pad_specs(self, specs: Sequence[ReplicaSpec]) -> list[ReplicaSpec]:
        """Pads to a multiple of the device count with replicas that never update."""
        extra = (-len(specs)) % self.num_devices
        dummy = ReplicaSpec(seed=int(specs[0].seed), keep=np.zeros(self.n, bool))
        return list(specs) + [dummy] * extra

    # -- training
    def train(self, specs: Sequence[ReplicaSpec], *, max_steps: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> ReplicaRun:
        """Trains every replica to completion; ``progress(done_calls, total_calls)`` per call.

        ``max_steps`` overrides ``train.max_steps`` (e.g. to time a few steps). With a vmap
        width of 1 on a single device (CPU), the replicas run one after another through the
        one-replica program: as fast as a loop inside one program and faster than XLA:CPU's
        nested loops (measured), with the same results.
        """
        if not specs:
            raise ValueError("train() needs at least one ReplicaSpec")
        for s in specs:
            if len(s.keep) != self.n:
                raise ValueError(f"keep mask of {len(s.keep)} rows for a training set of {self.n}")
        self.last_timing = {"steps_s": 0.0, "compile_s": 0.0, "calls": 0, "slots": 0}
        if len(specs) > 1 and self.num_devices == 1 and self.vmap_width_for(len(specs)) == 1:
            runs = [self._train_group([spec], max_steps, progress) for spec in specs]
            return ReplicaRun(params=jax.tree.map(lambda *xs: jnp.concatenate(xs), *[r.params for r in runs]),
                              steps=np.concatenate([r.steps for r in runs]),
                              train_loss=np.concatenate([r.train_loss for r in runs]),
                              num_replicas=len(specs))
        return self._train_group(specs, max_steps, progress)

    def _train_group(self, specs: Sequence[ReplicaSpec], max_steps, progress) -> ReplicaRun:
        padded = self._pad_specs(specs)
        r_total = len(padded)
        n_kept = [int(np.count_nonzero(s.keep)) for s in padded]
        spe, total = run_lengths(n_kept, self.batch_size, self.train_cfg, max_steps)
        slots = int(spe.max())
        epochs = int(max(math.ceil(t / s) for t, s in zip(total, spe) if s > 0)) if slots else 0
        chunk = chunk_length(self.n, self.batch_size, self.steps_per_call, bool(self.pad_to_multiple))
        with_edits = any(s.edit_tokens is not None for s in padded)

        states = self._put_replicas(self.init_states(padded))
        seeds = self._put_replicas(np.asarray([s.seed for s in padded], np.int32))
        totals = self._put_replicas(total.astype(np.int32))
        edits = None
        if with_edits:
            edits = self._put_replicas(np.stack([
                np.full(self.n, NO_EDIT, np.int32) if s.edit_tokens is None
                else np.asarray(s.edit_tokens, np.int32) for s in padded]))
        data = self.device_data()
        losses: list[list[float]] = [[] for _ in range(r_total)]
        done, calls = 0, None
        for epoch in range(epochs):  # planned epoch by epoch: index arrays of one epoch at a time
            idx, active = slot_plan(padded, self.batch_size, self.train_cfg, epoch, slots, self.lengths,
                                    max_steps)
            widths = slot_widths(idx, active, self.lengths, self.pad_to_multiple, self.max_length)
            epoch_calls = plan_calls(active, widths, chunk)
            calls = calls or len(epoch_calls) * epochs  # progress total, from the first epoch
            pending = []  # (device loss, active): read back after the epoch, no sync per call
            t_epoch = time.perf_counter()
            for start, stop, width in epoch_calls:
                n = stop - start  # index arrays of ``chunk`` slots; the program runs the first n
                c_idx = np.full((chunk, r_total, self.batch_size), -1, np.int32)
                c_active = np.zeros((chunk, r_total), bool)
                c_idx[:n], c_active[:n] = idx[start:stop], active[start:stop]
                trip = np.int32(n)  # loop iterations the device runs (counted below)
                args = (states, data, self._put_replicas(c_idx, axis=1), self._put_replicas(c_active, axis=1),
                        mesh_lib.replicate(trip, self.mesh), seeds, totals, edits)
                program = self.train_executable(with_edits, r_total, width, chunk, args)
                states, loss = program(*args)
                pending.append((loss, active[start:stop]))
                self.last_timing["calls"] += 1
                self.last_timing["slots"] += int(trip)
                done += 1
                if progress is not None:
                    progress(done, max(calls, done))
            for loss, act in pending:
                loss = np.asarray(loss)[:len(act)]
                for r in range(r_total):
                    losses[r].extend(loss[act[:, r], r].tolist())
            self.last_timing["steps_s"] += time.perf_counter() - t_epoch
        steps = np.asarray(jax.device_get(states.step), np.int64)
        if not np.array_equal(steps, total):
            raise RuntimeError(f"replica step counts {steps.tolist()} != planned {total.tolist()}")
        train_loss = np.asarray([np.mean(l[-int(spe[r]):]) if l and spe[r] else np.nan
                                 for r, l in enumerate(losses)], np.float32)
        return ReplicaRun(params=states.params, steps=steps[:len(specs)],
                          train_loss=train_loss[:len(specs)], num_replicas=len(specs))

    # -- evaluation
    def predict(self, run: ReplicaRun, enc, rows: np.ndarray | None = None,
                batch_size: int | None = None) -> np.ndarray:
        """Softmax probabilities ``[R, M, C]`` float32 of every replica on ``enc``'s ``rows``.

        Batches come from ``iterate_batches`` (padded like training's); when training trims
        batches, rows go longest first so each batch is cut to its own padded length (the
        same probabilities; the order is restored).
        """
        rows = np.arange(len(enc.labels)) if rows is None else np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((run.num_replicas, 0, 0), np.float32)
        order = np.arange(len(rows))
        if self.pad_to_multiple:
            order = np.argsort(-sequence_lengths(enc)[rows], kind="stable")
        program = self.eval_program()
        out = []
        for batch in iterate_batches(enc.subset(rows[order]), int(batch_size or self.eval_batch_size),
                                     pad_to_multiple=self.pad_to_multiple):
            probs = program(run.params, mesh_lib.replicate({k: batch[k] for k in _EVAL_KEYS}, self.mesh))
            out.append(np.asarray(probs)[:, batch["weights"] > 0])
        probs = np.empty_like(np.concatenate(out, axis=1))
        probs[:, order] = np.concatenate(out, axis=1)
        return probs[:run.num_replicas]
