"""Deterministic, fixed-shape batches of an `EncodedDataset`.

Shuffling is a pure function of `(n, seed, epoch)`. A `keep` mask removes
examples exactly (case deletion, SPEC sec. 2.2): the batches are the full
epoch order with removed examples filtered out, so a removed example never
appears, every kept one appears exactly once per epoch, and kept examples keep
their relative order.

Every batch has `batch_size` rows; the last ragged one is padded with rows of
`weights = 0`, `ids = -1`, `labels = 0`, `input_ids = pad_id`, `token_type_ids = 0`
and an all-zero `attention_mask`. Models must not produce NaN on such rows
(softmax over fully masked keys); losses and metrics weight them by 0.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of `range(n)` for `(seed, epoch)`, `[n] int64`; the same on every call."""
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"epoch_permutation needs n, seed, epoch >= 0, got {n}, {seed}, {epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def num_batches(n_kept: int, batch_size: int) -> int:
    """Batches per epoch for `n_kept` examples: `ceil(n_kept / batch_size)`."""
    if batch_size < 1 or n_kept < 0:
        raise ValueError(f"num_batches needs n_kept >= 0 and batch_size >= 1, got {n_kept}, {batch_size}")
    return -(-int(n_kept) // int(batch_size))


def batch_order(n: int, *, seed: int | None = None, epoch: int = 0,
                keep: np.ndarray | None = None) -> np.ndarray:
    """Dataset positions in the order `iterate_batches` visits them, `[n_kept] int64`.

    `seed=None`: dataset order; else `epoch_permutation(n, seed, epoch)`. `keep` (`[n]`
    bool) filters that order.
    """
    order = np.arange(n, dtype=np.int64) if seed is None else epoch_permutation(n, seed, epoch)
    if keep is not None:
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (n,):
            raise ValueError(f"keep must be a boolean mask of shape ({n},), got {keep.dtype} "
                             f"{keep.shape}")
        order = order[keep[order]]
    return order


def iterate_batches(enc, batch_size: int, *, seed: int | None = None, epoch: int = 0,
                    keep: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields dicts of numpy arrays: `input_ids, attention_mask, token_type_ids [B, L] int32`,
    `labels [B] int32`, `ids [B] int64`, `weights [B] float32` (1 real row, 0 padding).

    Args:
      enc: an `EncodedDataset` (anything with those arrays and `pad_id`).
      batch_size: B, rows of every batch including the padded last one.
      seed: shuffle with `epoch_permutation(N, seed, epoch)`; None keeps dataset order.
      epoch: selects the permutation.
      keep: optional `[N]` bool mask; False rows are left out (see module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(enc.labels)
    order = batch_order(n, seed=seed, epoch=epoch, keep=keep)
    pad_id = int(getattr(enc, "pad_id", 0))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        batch = {key: np.asarray(getattr(enc, key))[idx] for key in _TOKEN_KEYS}
        batch["labels"] = np.asarray(enc.labels, np.int32)[idx]
        batch["ids"] = np.asarray(enc.ids, np.int64)[idx]
        batch["weights"] = np.ones(real, np.float32)
        if real < batch_size:
            fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": 0,
                    "ids": -1, "weights": 0}
            for key, value in batch.items():
                pad = np.full((batch_size - real,) + value.shape[1:], fill[key], value.dtype)
                batch[key] = np.concatenate([value, pad])
        for key in _TOKEN_KEYS:
            batch[key] = batch[key].astype(np.int32, copy=False)
        yield batch
