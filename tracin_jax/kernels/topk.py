"""Streaming, exact top-K retrieval over blocks of scores.

Rankings are total orders so that streaming, sharding and a full sort agree
exactly: by score (descending for proponents, ``largest=True``; ascending for
opponents), ties broken by the smaller id. Unused slots hold id -1 and score
-inf (largest) or +inf (smallest) and always rank after real entries. Entries
whose id is -1 (e.g. the padded rows of a ragged last batch) are ignored, and a NaN
score ranks after the empty slots, so it is never kept (retrieval refuses non-finite
scores before they get here). Each id must be streamed at most once per row.

The running update is numpy on the host (scores are pulled from the devices once per
block): a filter against each row's current worst kept entry, then a sort of the few
survivors (XLA's comparator sort of every candidate was ~20x slower on CPU;
tools/bench_kernel.py). ``merge_topk`` combines per-shard results with the same update.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracin_jax.kernels.token_vectors import PAD_ID

_INT32_MAX = np.iinfo(np.int32).max


def _fill_value(largest: bool) -> float:
    return -np.inf if largest else np.inf


def init_topk(num_rows: int, k: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Empty running top-K: scores [M, K] float32 (∓inf), ids [M, K] int32 (-1)."""
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return (np.full((num_rows, k), _fill_value(largest), np.float32),
            np.full((num_rows, k), PAD_ID, np.int32))


def running_topk_update(best_scores, best_ids, new_scores, new_ids,
                        largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Merges a new block of scores into the running top-K of every row.

    Args:
      best_scores: [M, K] float32, best_ids: [M, K] int (from ``init_topk`` or a previous
        update).
      new_scores: [M, N] scores of the M queries against N candidates.
      new_ids: [N] (or [M, N]) candidate ids; -1 marks a slot to ignore.
      largest: True keeps the largest scores (proponents), False the smallest (opponents).

    Only new entries that beat or tie a row's current worst kept entry can enter,
    so they are filtered with one comparison first; the K kept entries and the
    few survivors are then sorted per row. Once the running top-K has filled, a
    block of N candidates costs O(M·N) comparisons plus a sort of ~K per row.
    Returns numpy arrays (scores [M, K] float32, ids [M, K] int32).
    """
    best_scores = np.asarray(best_scores, np.float32)
    best_ids = np.asarray(best_ids)
    new_scores = np.asarray(new_scores, np.float32)
    if best_scores.ndim != 2 or best_ids.shape != best_scores.shape:
        raise ValueError(
            f"best_scores/best_ids must both be [M, K], got {best_scores.shape} and {best_ids.shape}")
    num_rows, k = best_scores.shape
    if new_scores.ndim != 2 or new_scores.shape[0] != num_rows:
        raise ValueError(f"new_scores must be [{num_rows}, N], got {new_scores.shape}")
    new_ids = np.asarray(new_ids)
    if new_ids.shape not in ((new_scores.shape[1],), new_scores.shape):
        raise ValueError(
            f"new_ids must be [N] or [M, N] matching new_scores {new_scores.shape}, got {new_ids.shape}")
    if new_ids.size and (new_ids.max() > _INT32_MAX or new_ids.min() < PAD_ID):
        raise ValueError(f"ids must lie in [{PAD_ID}, {_INT32_MAX}] to be stored as int32, got "
                         f"range [{new_ids.min()}, {new_ids.max()}]")
    fill = _fill_value(largest)

    def sort_key(scores, invalid):  # ascending = best first; -0.0 == 0.0, NaN last (lax.sort)
        return np.where(invalid, np.float32(np.inf), -scores if largest else scores)

    best_ids = best_ids.astype(np.int32)
    best_invalid = best_ids == PAD_ID
    best_key = sort_key(best_scores, best_invalid)
    # The worst kept key of each row (NaN if any kept key is NaN: then NaN-free entries beat it).
    worst = best_key.max(axis=1, keepdims=True)
    new_ids = np.broadcast_to(new_ids.astype(np.int32), new_scores.shape)
    new_key = sort_key(new_scores, False)
    rows, cols = np.nonzero((new_ids != PAD_ID) & ((new_key <= worst) | np.isnan(worst)))
    counts = np.bincount(rows, minlength=num_rows)
    width = int(counts.max()) if rows.size else 0
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_key = np.full((num_rows, k + width), np.inf, np.float32)
    cand_ids = np.full((num_rows, k + width), PAD_ID, np.int32)
    cand_scores = np.full((num_rows, k + width), fill, np.float32)
    cand_key[:, :k], cand_ids[:, :k] = best_key, best_ids
    cand_scores[:, :k] = np.where(best_invalid, fill, best_scores)
    cand_key[rows, k + slot] = new_key[rows, cols]
    cand_ids[rows, k + slot] = new_ids[rows, cols]
    cand_scores[rows, k + slot] = new_scores[rows, cols]
    order = np.lexsort((cand_ids, cand_ids == PAD_ID, cand_key), axis=-1)[:, :k]
    return (np.take_along_axis(cand_scores, order, axis=1),
            np.take_along_axis(cand_ids, order, axis=1))


def merge_topk(
    scores: Sequence[np.ndarray] | np.ndarray,
    ids: Sequence[np.ndarray] | np.ndarray,
    k: int | None = None,
    largest: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly combines per-shard top-K results over disjoint candidate sets.

    Because every shard ranks with the same total order, the global top-K is the
    top-K of the union of the shards' top-Ks.

    Args:
      scores, ids: a sequence of P arrays [M, K_p], or stacked arrays [P, M, K]
        (e.g. from ``jax.lax.all_gather``).
      k: output size; default the first shard's K.
      largest: as in ``running_topk_update`` (must match how shards were built).
    Returns: (scores [M, k] float32, ids [M, k] int32).
    """
    if hasattr(scores, "shape"):  # stacked [P, M, K]
        scores, ids = list(scores), list(ids)
    if len(scores) == 0 or len(scores) != len(ids):
        raise ValueError(f"need ≥ 1 shard and as many id arrays as score arrays, got "
                         f"{len(scores)} and {len(ids)}")
    shapes = [(np.shape(s), np.shape(i)) for s, i in zip(scores, ids)]
    if any(s != i or len(s) != 2 or s[0] != shapes[0][0][0] for s, i in shapes):
        raise ValueError(f"every shard must hold scores and ids [M, K_p] with one M, got {shapes}")
    k = shapes[0][0][1] if k is None else k
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    all_scores = np.concatenate([np.asarray(s, np.float32) for s in scores], axis=-1)
    all_ids = np.concatenate([np.asarray(i) for i in ids], axis=-1)
    return running_topk_update(*init_topk(shapes[0][0][0], int(k), largest), all_scores, all_ids, largest)
