"""The host-side plan of a replica group: who trains on which rows in which step, and how the
steps are cut into device calls. Pure numpy; nothing here touches a device.

A retraining with seed ``s`` and keep mask ``keep [N]`` makes ``run_lengths`` updates:
``epochs · ceil(n_kept / B)`` (or ``max_steps``). R retrainings share one timeline of
*slots*: per epoch ``max_r ceil(n_kept_r / B)`` of them; replica r is active in slot t of
epoch e iff ``t < steps_per_epoch_r`` and ``e · steps_per_epoch_r + t < total_r``, and then
trains on its batch t of ``batch_order(seed=s_r, epoch=e, keep=keep_r)``.

Device calls (``plan_calls``) cover runs of consecutive active slots of equal batch width,
at most ``chunk`` slots a call. A call's length is an argument of the device program (a
loop with a dynamic trip count over index arrays of ``chunk`` slots), so one compiled
program per batch width serves calls of every length. Slots in which no replica is active
are never computed, and no call runs idle slots, so a retraining on half the data takes
half the steps (and about half the time: tools/bench_retrain.py --end-to-end).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tracin_jax.data import batch_order, batch_padded_length, num_batches

NO_EDIT = -1  # edit_tokens value: the example is used unchanged
# Slots per call when batches are trimmed (runs of one width are short: grouped batches
# change width every few steps).
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


def run_lengths(n_kept: Sequence[int], batch_size: int, train_cfg,
                max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(steps_per_epoch [R], total_steps [R])`` int64 of runs keeping ``n_kept`` examples.

    ``total = max_steps`` (the argument, else ``train_cfg.max_steps``) if set, else
    ``epochs · ceil(n_kept / B)`` (as ``train``); a replica keeping nothing makes no update.
    """
    spe = np.asarray([num_batches(int(n), batch_size) for n in n_kept], np.int64)
    limit = max_steps if max_steps is not None else train_cfg.get("max_steps")
    if limit:
        total = np.where(spe > 0, int(limit), 0)
    else:
        total = spe * int(train_cfg.epochs)
    return spe, total.astype(np.int64)


def slot_plan(specs: Sequence[ReplicaSpec], batch_size: int, train_cfg, epoch: int,
              slots_per_epoch: int, lengths: np.ndarray | None = None,
              max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and activity of every replica in one epoch of the shared timeline.

    Returns ``idx [S, R, B]`` int32 (training rows, ``-1`` = padding row) and
    ``active [S, R]`` bool, ``S = slots_per_epoch`` (module docstring); batches are
    grouped by ``lengths [N]`` when ``train_cfg.group_by_length``.
    """
    group = int(train_cfg.get("group_by_length", 0) or 0)
    n_kept = [int(np.count_nonzero(s.keep)) for s in specs]
    spe, total = run_lengths(n_kept, batch_size, train_cfg, max_steps)
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


def slot_widths(idx: np.ndarray, active: np.ndarray, lengths: np.ndarray, pad_to_multiple: int,
                max_length: int) -> list[int | None]:
    """Token columns of each slot's batches: ``None`` (all ``max_length``) without trimming,
    else the longest active text of the slot rounded up to ``pad_to_multiple``."""
    if not pad_to_multiple:
        return [None] * len(idx)
    tokens = np.where(idx >= 0, lengths[np.maximum(idx, 0)], 0)  # [S, R, B]
    longest = np.where(active, tokens.max(axis=2), 0).max(axis=1)  # [S]
    return [batch_padded_length(int(t), pad_to_multiple, max_length) for t in longest]


def plan_calls(active: np.ndarray, widths: Sequence[int | None], chunk: int) -> list[tuple[int, int, int | None]]:
    """Device calls ``(start, stop, width)`` over one epoch's slots (module docstring).

    Every active slot is in exactly one call, and no idle slot is in any; a call's slots are
    consecutive, all active for some replica and of one width, at most ``chunk`` of them.
    """
    chunk = max(int(chunk), 1)
    slots = len(active)
    busy = active.any(axis=1)
    calls, start = [], 0
    while start < slots:
        if not busy[start]:
            start += 1
            continue
        stop = start + 1
        while stop < slots and busy[stop] and widths[stop] == widths[start] and stop - start < chunk:
            stop += 1
        calls.append((start, stop, widths[start]))
        start = stop
    return calls


def chunk_length(num_train: int, batch_size: int, steps_per_call: int, trimmed: bool) -> int:
    """Slots a call holds at most (the index arrays' length): ``steps_per_call`` bounded by
    one full epoch (so every group shares the same programs); ``TRIMMED_CALL_STEPS`` when
    batches are trimmed (runs of one width are short)."""
    if trimmed:
        return TRIMMED_CALL_STEPS
    return max(1, min(int(steps_per_call), num_batches(num_train, batch_size)))
