"""Deterministic, fixed-shape batches of an `EncodedDataset`.

Shuffling is a pure function of `(n, seed, epoch)`. A `keep` mask removes
examples exactly (case deletion, paper sec. 2.2; docs/method.md): the batches are the full
epoch order with removed examples filtered out, so a removed example never
appears, every kept one appears exactly once per epoch, and kept examples keep
their relative order.

Every batch has `batch_size` rows; the last ragged one is padded with rows of
`weights = 0`, `ids = -1`, `labels = 0`, `input_ids = pad_id`, `token_type_ids = 0`
and an all-zero `attention_mask`. Models must not produce NaN on such rows
(softmax over fully masked keys); losses and metrics weight them by 0.

Short texts waste most of a batch padded to `tokenizer.max_length` (SST-2: 13 of 48
tokens on average). Two training options cut that (`train.group_by_length`,
`train.pad_to_multiple`; both off by default):

- *Length grouping* (`group_by_length=G`, the megabatch scheme of Hugging Face's
  `LengthGroupedSampler`): the shuffled, filtered order is cut into megabatches of
  `G · batch_size` examples and each megabatch is sorted by length, longest first
  (stable), so a batch holds texts of similar length. It changes the data order (a
  different, equally random recipe); removal still filters before grouping.
- *Trimming* (`pad_to_multiple=m`): a batch is cut to `batch_padded_length` columns,
  its longest text rounded up to a multiple of `m`. Only trailing all-padding columns
  go, and every model here ignores padding (attention / pooling masks), so outputs
  are unchanged up to float rounding; dropout masks are drawn at the batch's shape,
  so a run's dropout stream depends on it (the same in `train` and the retraining
  engine on one replica).
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
                keep: np.ndarray | None = None, lengths: np.ndarray | None = None,
                group_by_length: int = 0, batch_size: int = 1) -> np.ndarray:
    """Dataset positions in the order `iterate_batches` visits them, `[n_kept] int64`.

    `seed=None`: dataset order; else `epoch_permutation(n, seed, epoch)`. `keep` (`[n]`
    bool) filters that order. `group_by_length=G > 0` (needs `lengths [n]`, e.g.
    `sequence_lengths(enc)`) then sorts each megabatch of `G · batch_size` consecutive
    positions by length, longest first, ties in order (module docstring).
    """
    order = np.arange(n, dtype=np.int64) if seed is None else epoch_permutation(n, seed, epoch)
    if keep is not None:
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (n,):
            raise ValueError(f"keep must be a boolean mask of shape ({n},), got {keep.dtype} "
                             f"{keep.shape}")
        order = order[keep[order]]
    if group_by_length:
        if int(group_by_length) < 0 or int(batch_size) < 1:
            raise ValueError(f"group_by_length must be >= 0 and batch_size >= 1, got "
                             f"{group_by_length}, {batch_size}")
        if lengths is None or np.shape(lengths) != (n,):
            raise ValueError(f"group_by_length needs lengths of shape ({n},), got "
                             f"{None if lengths is None else np.shape(lengths)}")
        lengths = np.asarray(lengths)
        mega = int(group_by_length) * int(batch_size)
        parts = [order[i:i + mega] for i in range(0, len(order), mega)]
        order = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in parts]
                               ) if parts else order
    return order


def sequence_lengths(enc) -> np.ndarray:
    """Tokens per example, `[N] int64`: the count of nonzero `attention_mask` entries."""
    return np.asarray(enc.attention_mask).astype(bool).sum(axis=1).astype(np.int64)


def right_padded_lengths(attention_mask) -> np.ndarray | None:
    """Tokens per row, `[N] int64`, if every row's tokens come first (``attention_mask`` 1s,
    then 0s); else None. Trimming drops trailing columns, which must be padding."""
    mask = np.asarray(attention_mask).astype(bool)
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        return None
    return lengths.astype(np.int64)


def check_right_padded(enc) -> None:
    """Raises unless every row's tokens come first (see ``right_padded_lengths``)."""
    if right_padded_lengths(enc.attention_mask) is None:
        raise ValueError("pad_to_multiple needs right-padded inputs (attention_mask 1s first)")


def batch_padded_length(max_tokens: int, multiple: int, max_length: int) -> int:
    """Columns a trimmed batch keeps: `max_tokens` rounded up to a multiple of `multiple`,
    at least `multiple`, at most `max_length` (`multiple=0`: `max_length`, no trimming)."""
    if multiple < 0 or max_length < 1:
        raise ValueError(f"pad_to_multiple must be >= 0 and max_length >= 1, got {multiple}, {max_length}")
    if not multiple:
        return int(max_length)
    return int(min(max_length, max(multiple, -(-int(max_tokens) // multiple) * multiple)))


def iterate_batches(enc, batch_size: int, *, seed: int | None = None, epoch: int = 0,
                    keep: np.ndarray | None = None, group_by_length: int = 0,
                    pad_to_multiple: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields dicts of numpy arrays: `input_ids, attention_mask, token_type_ids [B, L] int32`,
    `labels [B] int32`, `ids [B] int64`, `weights [B] float32` (1 real row, 0 padding).

    Args:
      enc: an `EncodedDataset` (anything with those arrays and `pad_id`).
      batch_size: B, rows of every batch including the padded last one.
      seed: shuffle with `epoch_permutation(N, seed, epoch)`; None keeps dataset order.
      epoch: selects the permutation.
      keep: optional `[N]` bool mask; False rows are left out (see module docstring).
      group_by_length: G > 0 sorts megabatches of G batches by length (module docstring).
      pad_to_multiple: m > 0 trims each batch to `batch_padded_length(longest, m, L)` columns.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(enc.labels)
    lengths = sequence_lengths(enc) if (group_by_length or pad_to_multiple) else None
    if pad_to_multiple:
        check_right_padded(enc)
    order = batch_order(n, seed=seed, epoch=epoch, keep=keep, lengths=lengths,
                        group_by_length=group_by_length, batch_size=batch_size)
    pad_id = int(getattr(enc, "pad_id", 0))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        batch = {key: np.asarray(getattr(enc, key))[idx] for key in _TOKEN_KEYS}
        if pad_to_multiple:
            width = batch_padded_length(int(lengths[idx].max()) if real else 0, int(pad_to_multiple),
                                        batch["input_ids"].shape[1])
            batch = {key: value[:, :width] for key, value in batch.items()}
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
