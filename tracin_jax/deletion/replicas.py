"""Many retrainings as one vmapped program: stacked states, per-replica removal and seed.

A retraining with seed ``s`` and keep mask ``keep [N]`` is exactly the run that
``train(cfg with seed=s, keep=keep)`` performs: initial parameters from ``s``
(:func:`initial_params`), data order ``iterate_batches(seed=s, epoch=e, keep=keep)``,
dropout key ``fold_in(key(s), step)``, and a learning-rate schedule over its own
number of updates ``epochs · ceil(n_kept / B)``. R such runs share one program:

    states [R, ...] ──scan over steps──> vmap over replicas of trainer.apply_train_step

Replicas keep more or fewer examples, so their epochs have different lengths.
The program runs ``max_r ceil(n_kept_r / B)`` slots per epoch; a replica whose
epoch is over is *inactive* in the remaining slots: its state is carried
through unchanged (a select), so it sees each kept example
once per epoch, never a removed one, and its step counter, optimizer count,
schedule and dropout stream are those of the single run.

Batches are gathered on the device from the training set (held once per device)
by per-replica index arrays ``[steps, R, B]`` (``-1`` = a padding row, as in
``iterate_batches``), so the host only ships indices. Replicas are split over the
local devices (``shard_map`` over the mesh's ``data`` axis); replicas never
communicate, so this scales to any number of local devices without collectives.
On each device, ``vmap_width`` replicas are vmapped together: all of them on a
GPU/TPU; one at a time on CPU, where XLA's batched GEMMs of a vmapped BERT step are
slower than R plain ones (the program still saves R-1 dispatch loops and the host
batching of the ordinary trainer; see tools/bench_retrain.py).

``train.group_by_length`` orders batches as ``train`` does (``batch_order``).
``train.pad_to_multiple`` trims every step to its batch's padded length: the
program is compiled per length (at most ``max_length / m`` of them) and a call runs
consecutive steps of one length (``TRIMMED_CALL_STEPS`` at a time, then single
steps). Replicas vmapped together share a step's length, the longest of theirs; a
replica alone (the CPU default, width 1) gets exactly its own, so it equals ``train``
with dropout too (dropout masks are drawn at the batch's shape).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracin_jax import mesh as mesh_lib
from tracin_jax.data import (batch_order, batch_padded_length, check_right_padded, num_batches,
                             sequence_lengths)
from tracin_jax.train.trainer import (TrainState, apply_train_step, make_eval_step, make_optimizer,
                                      schedule_value)

log = logging.getLogger(__name__)

NO_EDIT = -1  # edit_tokens value: the example is used unchanged
# Steps per device call: long scans amortise dispatch; bounded so one call of a
# large model stays well under typical watchdog limits.
DEFAULT_STEPS_PER_CALL = 256
# With trimmed batches: steps per call of a run of equal-length steps (then single steps).
TRIMMED_CALL_STEPS = 8


@dataclasses.dataclass(frozen=True)
class ReplicaSpec:
    """One retraining: its seed, the kept training rows and optional token edits.

    Attributes:
      seed: initial parameters (classifier / whole model), data order and dropout.
      keep: ``[N]`` bool over training rows; False rows are removed (case deletion).
      edit_tokens: optional ``[N]`` int32; in row n every occurrence of token id
        ``edit_tokens[n]`` is replaced by the pad id (targeted fixing (b), appendix L;
        the attention mask is unchanged, as when the word is replaced by [PAD] in the
        text). ``-1`` leaves the row unchanged.
    """

    seed: int
    keep: np.ndarray
    edit_tokens: np.ndarray | None = None

    def __post_init__(self):
        keep = np.asarray(self.keep)
        if keep.dtype != bool or keep.ndim != 1:
            raise ValueError(f"ReplicaSpec.keep must be a 1-D bool mask, got {keep.dtype} {keep.shape}")
        if int(self.seed) < 0:
            raise ValueError(f"ReplicaSpec.seed must be >= 0, got {self.seed}")
        if self.edit_tokens is not None and np.shape(self.edit_tokens) != keep.shape:
            raise ValueError(f"edit_tokens shape {np.shape(self.edit_tokens)} != keep {keep.shape}")


def initial_params(cfg: ml_collections.ConfigDict, model, seed: int) -> Any:
    """Initial parameters of a run with seed ``seed`` (as ``prepare_run`` with ``cfg.seed=seed``).

    From scratch: ``init_params(model, key(seed))``; from ``cfg.model.hf_dir``: the
    pretrained encoder with the parts it lacks (the classifier) initialised from ``seed``.
    """
    from tracin_jax.models import init_params
    from tracin_jax.models.hf_convert import load_hf_checkpoint

    if cfg.model.hf_dir:
        _, params = load_hf_checkpoint(cfg.model.hf_dir, num_labels=int(cfg.model.num_labels),
                                       rng_seed=int(seed))
        return params
    return init_params(model, jax.random.key(int(seed)), int(cfg.tokenizer.max_length))


def run_lengths(n_kept: Sequence[int], batch_size: int, train_cfg) -> tuple[np.ndarray, np.ndarray]:
    """``(steps_per_epoch [R], total_steps [R])`` int64 of runs keeping ``n_kept`` examples.

    ``total = max_steps`` if set, else ``epochs · ceil(n_kept / B)`` (as ``train``);
    a replica keeping nothing makes no update.
    """
    spe = np.asarray([num_batches(int(n), batch_size) for n in n_kept], np.int64)
    if train_cfg.max_steps:
        total = np.where(spe > 0, int(train_cfg.max_steps), 0)
    else:
        total = spe * int(train_cfg.epochs)
    return spe, total.astype(np.int64)


def slot_plan(specs: Sequence[ReplicaSpec], batch_size: int, train_cfg, epoch: int,
              slots_per_epoch: int, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and activity of every replica in one epoch of the shared timeline.

    Returns ``idx [S, R, B]`` int32 (training rows, ``-1`` = padding row) and
    ``active [S, R]`` bool, ``S = slots_per_epoch``. Replica r's slot t of epoch e is
    its batch t of ``batch_order(seed=s_r, epoch=e, keep=keep_r)`` (grouped by
    ``lengths [N]`` when ``train_cfg.group_by_length``); it is active iff
    ``t < steps_per_epoch_r`` and ``e · steps_per_epoch_r + t < total_steps_r``.
    """
    group = int(train_cfg.get("group_by_length", 0) or 0)
    n_kept = [int(np.count_nonzero(s.keep)) for s in specs]
    spe, total = run_lengths(n_kept, batch_size, train_cfg)
    idx = np.full((slots_per_epoch, len(specs), batch_size), -1, np.int32)
    active = np.zeros((slots_per_epoch, len(specs)), bool)
    for r, spec in enumerate(specs):
        steps = int(min(spe[r], max(total[r] - epoch * spe[r], 0)))
        if steps == 0:
            continue
        order = batch_order(len(spec.keep), seed=int(spec.seed), epoch=epoch, keep=spec.keep,
                            lengths=lengths, group_by_length=group, batch_size=batch_size)
        rows = np.full(spe[r] * batch_size, -1, np.int64)
        rows[:len(order)] = order
        idx[:steps, r] = rows.reshape(spe[r], batch_size)[:steps]
        active[:steps, r] = True
    return idx, active


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


@dataclasses.dataclass
class ReplicaRun:
    """Trained replicas: stacked final params (device), updates and last-epoch mean loss."""

    params: Any  # pytree with leading axis R (padding replicas dropped only on the host side)
    steps: np.ndarray  # [R] int64 updates applied
    train_loss: np.ndarray  # [R] float32 mean loss over each replica's last epoch (nan: none)
    num_replicas: int  # R requested (the stacked arrays may hold extra padding replicas)


class ReplicaTrainer:
    """Trains R retrainings of one configuration at once (see the module docstring).

    Args:
      cfg: the run's resolved config (``setup.cfg``); ``cfg.train`` drives the optimizer
        and schedule, ``epochs`` overrides ``cfg.train.epochs`` when given.
      model: the Flax module.
      train_enc: the training ``EncodedDataset`` (row order = ``keep`` order).
      mesh: local ``data`` mesh the replicas are split over (default: one device).
      steps_per_call: training steps per device call (``lax.scan`` length).
      vmap_width: replicas vmapped together per device; 0 = all on accelerators, 1 on CPU.
      init_fn: ``seed -> params`` (default :func:`initial_params`).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, model, train_enc, *, mesh: Mesh | None = None,
                 epochs: int | None = None, steps_per_call: int = DEFAULT_STEPS_PER_CALL,
                 vmap_width: int = 0, init_fn: Callable[[int], Any] | None = None):
        self.cfg = cfg
        self.train_cfg = ml_collections.ConfigDict(cfg.train.to_dict())
        if epochs is not None:
            self.train_cfg.epochs = int(epochs)
        self.model = model
        self.train_enc = train_enc
        self.n = len(train_enc.labels)
        self.batch_size = int(self.train_cfg.batch_size)
        self.pad_id = int(train_enc.pad_id)
        self.mesh = mesh or mesh_lib.make_mesh(1)
        self.num_devices = len(self.mesh.local_devices)
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.steps_per_call = int(steps_per_call)
        self.vmap_width = int(vmap_width or 0)
        self.max_length = int(np.shape(train_enc.input_ids)[1])
        self.pad_to_multiple = int(self.train_cfg.get("pad_to_multiple", 0) or 0)
        self.lengths = sequence_lengths(train_enc)
        if self.pad_to_multiple:
            check_right_padded(train_enc)
        self._init_fn = init_fn or (lambda seed: initial_params(cfg, model, seed))
        self._init_cache: dict[int, Any] = {}
        self._data = None
        self._template = None

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
        if seed not in self._init_cache:
            self._init_cache[seed] = jax.tree.map(np.asarray, jax.device_get(self._init_fn(int(seed))))
        return self._init_cache[seed]

    def _optimizer(self, total_steps):
        return make_optimizer(self.train_cfg, lambda c: schedule_value(self.train_cfg, c, total_steps),
                              self._template_params())

    def _template_params(self):
        if self._template is None:
            self._template = self.params_for(0)
        return self._template

    def init_states(self, specs: Sequence[ReplicaSpec]) -> TrainState:
        """Stacked fresh states ``[R, ...]`` (host numpy)."""
        tx = self._optimizer(1)
        states = []
        for spec in specs:
            params = self.params_for(int(spec.seed))
            states.append(TrainState(step=np.zeros((), np.int32), params=params,
                                     opt_state=jax.tree.map(np.asarray, tx.init(params))))
        return jax.tree.map(lambda *xs: np.stack(xs), *states)

    # -- the device program
    def _chunk_fn(self, with_edits: bool, num_replicas: int, length: int | None = None) -> Callable:
        """The jitted program ``(states, data, idx, active, seeds, totals, edits) -> (states, loss)``.

        Cached per (model, training settings, pad id, mesh, width, batch length): trainers
        of the same configuration (reruns in one process, tests) share one compilation.
        ``length``: token columns per batch (None: all).
        """
        import json
        local = num_replicas // self.num_devices
        width = self.vmap_width_for(local)
        traced = {k: v for k, v in self.train_cfg.to_dict().items() if k not in _HOST_SIDE_TRAIN_FIELDS}
        key = (self.model, json.dumps(traced, sort_keys=True, default=list),
               self.pad_id, self.mesh, bool(with_edits), width, local, length)
        if key not in _PROGRAMS:
            _PROGRAMS[key] = _build_chunk_fn(self.model, self.train_cfg, self.pad_id, self.mesh,
                                             with_edits, _shapes(self._template_params()), width, local,
                                             length)
        return _PROGRAMS[key]

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

    def train(self, specs: Sequence[ReplicaSpec], *, progress: Callable[[int, int], None] | None = None
              ) -> ReplicaRun:
        """Trains every replica to completion; ``progress(done_calls, total_calls)`` per call.

        With a vmap width of 1 on a single device (CPU), the replicas run one after
        another through the one-replica program: as fast as a loop inside one program
        and faster than XLA:CPU's nested loops (measured), with the same results.
        """
        if not specs:
            raise ValueError("train() needs at least one ReplicaSpec")
        for s in specs:
            if len(s.keep) != self.n:
                raise ValueError(f"keep mask of {len(s.keep)} rows for a training set of {self.n}")
        if len(specs) > 1 and self.num_devices == 1 and self.vmap_width_for(len(specs)) == 1:
            runs = [self._train_group([spec], progress) for spec in specs]
            return ReplicaRun(params=jax.tree.map(lambda *xs: jnp.concatenate(xs), *[r.params for r in runs]),
                              steps=np.concatenate([r.steps for r in runs]),
                              train_loss=np.concatenate([r.train_loss for r in runs]),
                              num_replicas=len(specs))
        return self._train_group(specs, progress)

    def _train_group(self, specs: Sequence[ReplicaSpec], progress) -> ReplicaRun:
        padded = self._pad_specs(specs)
        r_total = len(padded)
        n_kept = [int(np.count_nonzero(s.keep)) for s in padded]
        spe, total = run_lengths(n_kept, self.batch_size, self.train_cfg)
        slots = int(spe.max())
        epochs = int(max(math.ceil(t / s) for t, s in zip(total, spe) if s > 0)) if slots else 0
        # From the full training set, not this group: every group (and every replica run
        # alone) then has the same shapes and shares one compilation.
        chunk_len = max(1, min(self.steps_per_call, num_batches(self.n, self.batch_size)))
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
        programs: dict = {}
        for epoch in range(epochs):  # planned epoch by epoch: index arrays of one epoch at a time
            idx, active = slot_plan(padded, self.batch_size, self.train_cfg, epoch, slots, self.lengths)
            epoch_calls = self._calls(idx, active, chunk_len)
            calls = calls or len(epoch_calls) * epochs  # progress total, from the first epoch
            pending = []  # (device loss, active): read back after the epoch, no sync per call
            for start, stop, length in epoch_calls:
                c_idx, c_active = idx[start:stop], active[start:stop]
                if length is None and len(c_idx) < chunk_len:  # constant shapes: one compilation
                    fill = chunk_len - len(c_idx)
                    c_idx = np.concatenate([c_idx, np.full((fill,) + c_idx.shape[1:], -1, np.int32)])
                    c_active = np.concatenate([c_active, np.zeros((fill, r_total), bool)])
                if length not in programs:
                    programs[length] = self._chunk_fn(with_edits, r_total, length)
                states, loss = programs[length](states, data, self._put_replicas(c_idx, axis=1),
                                                 self._put_replicas(c_active, axis=1), seeds, totals, edits)
                pending.append((loss, c_active))
                done += 1
                if progress is not None:
                    progress(done, max(calls, done))
            for loss, c_active in pending:
                loss = np.asarray(loss)
                for r in range(r_total):
                    losses[r].extend(loss[c_active[:, r], r].tolist())
        steps = np.asarray(jax.device_get(states.step), np.int64)
        expected = total
        if not np.array_equal(steps, expected):
            raise RuntimeError(f"replica step counts {steps.tolist()} != planned {expected.tolist()}")
        train_loss = np.asarray([np.mean(l[-int(spe[r]):]) if l and spe[r] else np.nan
                                 for r, l in enumerate(losses)], np.float32)
        return ReplicaRun(params=states.params, steps=steps[:len(specs)],
                          train_loss=train_loss[:len(specs)], num_replicas=len(specs))

    def _calls(self, idx: np.ndarray, active: np.ndarray, chunk_len: int) -> list[tuple]:
        """One epoch's device calls ``(start, stop, length)`` over its slots.

        Untrimmed: ``chunk_len`` slots a call (``length`` None), skipping calls in which
        no replica is active. Trimmed: runs of consecutive active slots of one padded
        length, ``TRIMMED_CALL_STEPS`` slots a call and the rest one by one.
        """
        slots = len(idx)
        if not self.pad_to_multiple:
            return [(s, min(s + chunk_len, slots), None) for s in range(0, slots, chunk_len)
                    if active[s:s + chunk_len].any()]
        tokens = np.where(idx >= 0, self.lengths[np.maximum(idx, 0)], 0)  # [S, R, B]
        longest = np.where(active, tokens.max(axis=2), 0).max(axis=1)  # [S]
        lengths = [batch_padded_length(int(t), self.pad_to_multiple, self.max_length) for t in longest]
        calls, start = [], 0
        while start < slots:
            if not active[start].any():
                start += 1
                continue
            stop = start + 1
            while stop < slots and active[stop].any() and lengths[stop] == lengths[start]:
                stop += 1
            run = start
            while stop - run >= TRIMMED_CALL_STEPS:
                calls.append((run, run + TRIMMED_CALL_STEPS, lengths[start]))
                run += TRIMMED_CALL_STEPS
            calls.extend((i, i + 1, lengths[start]) for i in range(run, stop))
            start = stop
        return calls

    # -- evaluation
    def predict(self, run: ReplicaRun, enc, rows: np.ndarray | None = None,
                batch_size: int | None = None) -> np.ndarray:
        """Softmax probabilities ``[R, M, C]`` float32 of every replica on ``enc``'s ``rows``."""
        key = ("eval", self.model, self.mesh)
        if key not in _PROGRAMS:
            # shard_map, like training: each device vmaps over its own replicas. (Leaving the
            # replica axis to GSPMD auto-partitioning miscompiled the vmapped CNN conv on
            # XLA:CPU with 8 devices: probabilities off by up to 0.99; see the test.)
            local = jax.vmap(make_eval_step(self.model), in_axes=(0, None))
            _PROGRAMS[key] = jax.jit(jax.shard_map(
                local, mesh=self.mesh, in_specs=(P(mesh_lib.DATA_AXIS), P()),
                out_specs=P(mesh_lib.DATA_AXIS), check_vma=False))
        eval_fn = _PROGRAMS[key]
        rows = np.arange(len(enc.labels)) if rows is None else np.asarray(rows, np.int64)
        bs = int(batch_size or self.cfg.train.eval_batch_size)
        # Trimmed training trims evaluation too: rows longest first, each batch cut to its
        # padded length (the same probabilities; order restored below).
        lengths = sequence_lengths(enc)
        if self.pad_to_multiple:
            check_right_padded(enc)
        order = np.argsort(-lengths[rows], kind="stable") if self.pad_to_multiple else np.arange(len(rows))
        out = []
        for start in range(0, len(rows), bs):
            part = rows[order[start:start + bs]]
            pad = bs - len(part)
            batch = {}
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                x = np.asarray(getattr(enc, key), np.int32)[part]
                fill = int(enc.pad_id) if key == "input_ids" else 0
                batch[key] = np.concatenate([x, np.full((pad, x.shape[1]), fill, np.int32)])
            if self.pad_to_multiple:
                width = batch_padded_length(int(lengths[part].max()), self.pad_to_multiple,
                                            batch["input_ids"].shape[1])
                batch = {k: v[:, :width] for k, v in batch.items()}
            batch["labels"] = np.zeros(bs, np.int32)
            batch["weights"] = np.zeros(bs, np.float32)
            probs = np.asarray(eval_fn(run.params, mesh_lib.replicate(batch, self.mesh)))
            out.append(probs[:, :len(part)])
        if not out:
            return np.zeros((0, 0, 0), np.float32)
        probs = np.empty_like(np.concatenate(out, axis=1))
        probs[:, order] = np.concatenate(out, axis=1)
        return probs[:run.num_replicas]

    # -- sizing
    def replica_bytes(self) -> int:
        """Estimated device bytes per replica: state twice (donated in/out) plus the
        step's temporaries, from XLA's memory analysis of a one-replica program."""
        spec = ReplicaSpec(seed=0, keep=np.ones(self.n, bool))
        specs = self._pad_specs([spec])
        state = self.init_states(specs)
        state_bytes = sum(x.nbytes for x in jax.tree.leaves(state)) // len(specs)
        temp = 0
        try:
            fn = self._chunk_fn(False, len(specs))
            args = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
                    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.device_data()),
                    jax.ShapeDtypeStruct((1, len(specs), self.batch_size), jnp.int32),
                    jax.ShapeDtypeStruct((1, len(specs)), jnp.bool_),
                    jax.ShapeDtypeStruct((len(specs),), jnp.int32),
                    jax.ShapeDtypeStruct((len(specs),), jnp.int32), None)
            analysis = fn.lower(*args).compile().memory_analysis()
            temp = int(getattr(analysis, "temp_size_in_bytes", 0)) // len(specs)
        except Exception as e:  # memory analysis is best-effort (backend dependent)
            log.warning("memory analysis unavailable (%s); sizing replicas from state size", e)
            temp = 4 * state_bytes
        return int(2 * state_bytes + temp)


_PROGRAMS: dict[tuple, Callable] = {}
# Training settings the device program does not read (run lengths are its arguments).
_HOST_SIDE_TRAIN_FIELDS = ("epochs", "max_steps", "log_every_steps", "eval_batch_size", "num_devices",
                           "checkpoint_every_epochs", "checkpoint_every_steps", "checkpoint_steps",
                           "group_by_length", "pad_to_multiple")  # batch length: a program argument


def _shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _build_chunk_fn(model, train_cfg, pad_id: int, mesh: Mesh, with_edits: bool, template,
                    vmap_width: int, local_replicas: int, length: int | None = None) -> Callable:
    """Per replica, ``lax.scan`` over the chunk's steps of ``trainer.apply_train_step``.

    Each device runs its own ``local_replicas`` (``shard_map``, no collectives), in
    groups of ``vmap_width`` vmapped together (``lax.map(..., batch_size=width)``):
    width = local replicas is one vmapped program (accelerators), width 1 runs the
    replicas one after another inside the program (CPU, where batched GEMMs of a
    vmap are slower than the plain ones).
    """

    def replica_step(state, idx, active, seed, total, edits, data):
        batch = gather_batch(data, idx, pad_id, edits, width=length)
        tx = make_optimizer(train_cfg, lambda c: schedule_value(train_cfg, c, total), template)
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        new, metrics = apply_train_step(model, tx, state, batch, key)
        # An inactive replica carries its state unchanged. A select, not a cond: XLA fuses
        # it into the update (a cond made the CPU program copy the state every step).
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        return new, jnp.where(active, metrics["loss"], 0.0).astype(jnp.float32)

    def replica_chunk(xs, data):
        """One replica through the chunk's steps: ``lax.scan`` over its own state only."""
        state, idx, active, seed, total, edit = xs  # idx [S, B], active [S]

        def body(carry, step_xs):
            return replica_step(carry, step_xs[0], step_xs[1], seed, total, edit, data)
        return jax.lax.scan(body, state, (idx, active))

    def local_chunk(states, data, idx, active, seeds, totals, edits):
        # Replicas are independent, so the loop over replicas can sit outside the loop
        # over steps: each replica's state is sliced once per chunk, not once per step.
        per_replica = (states, jnp.swapaxes(idx, 0, 1), jnp.swapaxes(active, 0, 1), seeds, totals, edits)
        one = lambda xs: replica_chunk(xs, data)
        if vmap_width >= local_replicas:
            states, loss = jax.vmap(one)(per_replica)
        else:
            states, loss = jax.lax.map(one, per_replica, batch_size=vmap_width if vmap_width > 1 else None)
        return states, jnp.swapaxes(loss, 0, 1)  # loss [S, R]

    rep, time_rep = P(mesh_lib.DATA_AXIS), P(None, mesh_lib.DATA_AXIS)
    sharded = jax.shard_map(local_chunk, mesh=mesh, check_vma=False,
                            in_specs=(rep, P(), time_rep, time_rep, rep, rep, rep if with_edits else None),
                            out_specs=(rep, time_rep))
    return jax.jit(sharded, donate_argnums=(0,))


def device_memory_bytes(device=None) -> int:
    """Usable memory of one device: the allocator limit on GPU/TPU, available RAM on CPU."""
    device = device or jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # CPU backends may not implement it
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
        per_replica = max(trainer.replica_bytes(), 1)
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
