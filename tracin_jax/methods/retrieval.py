"""Retrieval at scale: each test point's top-k proponents and opponents among any number
of training examples, streamed from a gradient store.

``top_k`` reads the training store one shard at a time (per checkpoint), scores
the shard against every test point (``Σ_c w_c · method.score_block``, the block
split over the local devices), and folds it into a running top-k of the largest
(proponents) and smallest (opponents) scores (``running_topk_update``).
The next shard is read, sha256-checked and decoded in a background thread while
the current one is scored; on a multi-core CPU, methods whose host-side scoring is
thread-safe (``parallel_blocks``: the sparse TracIn-WE join) read and score two whole
shards at once in threads (``_scoring_workers``), the top-k still folding them in shard
order. Memory: the test store, the training shards in flight (two, or three with the
threads) and their score blocks, 8 bytes per training example (position → id) and the
``[M, k]`` results. The ranking is a total order — score,
then the smaller training *position* (row in the store, = dataset order) — so
streaming, host partitioning (``part=(i, n)``: shards ``s`` with ``s % n == i``,
merged exactly by ``merge``) and a full sort of ``score_matrix`` give identical
results. Positions are mapped to the store's ``example_id`` in the outputs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from tracin_jax.errors import NonFiniteError
from tracin_jax.kernels import init_topk, merge_topk, running_topk_update
from tracin_jax.methods.registry import get_method
from tracin_jax.methods.base import Block, Method
from tracin_jax.rankings import KINDS, Ranking, Rankings
from tracin_jax.store import GradientStore

log = logging.getLogger(__name__)


def _largest(kind: str) -> bool:
    return kind == "proponents"


# ----------------------------------------------------------------------------- reading

def _read_block(store: GradientStore, step: int, fields, shard_index: int | None = None) -> Block:
    """One shard (or, with ``shard_index=None``, the whole store) of one checkpoint + positions."""
    if shard_index is None:
        block = store.load(step, fields=fields)
        start, stop = 0, store.num_examples
    else:
        block = next(store.iter_shards(step, fields=fields, shard_indices=[shard_index]))
        start, stop = store.shard_range(shard_index)
    block["position"] = np.arange(start, stop, dtype=np.int64)
    return block


def _prefetched(load, items, depth: int = 1, workers: int = 1):
    """``load(item)`` for each item, in order, with the next ``depth`` loads running in
    ``workers`` background threads meanwhile: reading, sha256 checking and decoding a shard
    (which release the GIL) overlap the scoring of the previous one. Memory: depth + 1
    results."""
    items = list(items)
    if not items:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tracin-read") as pool:
        pending = [pool.submit(load, item) for item in items[:depth + 1]]
        for i in range(len(items)):
            result = pending.pop(0).result()
            if i + depth + 1 < len(items):
                pending.append(pool.submit(load, items[i + depth + 1]))
            yield result


def _scoring_workers(method: Method) -> int:
    """Threads that read and score whole shards at once: 2 on a multi-core CPU for methods
    whose host-side ``score_block`` is safe to run concurrently (``parallel_blocks``; the
    sparse join spends its time in numpy and BLAS, which release the GIL), else 1 (the
    reading still overlaps the scoring). The running top-k is updated in shard order either
    way, so the rankings are identical."""
    if getattr(method, "parallel_blocks", False) and jax.default_backend() == "cpu" and (os.cpu_count() or 1) > 1:
        return 2
    return 1


def _weighted_scores(method: Method, test_blocks: Mapping[int, Block], train_store, weights,
                     shard_index: int | None, mesh, blocks=None) -> tuple[Block, np.ndarray]:
    """``Σ_c w_c · method.score_block(test_c, train_c)`` ``[M, n]`` float32 for one shard.

    ``blocks``: an iterator yielding this shard's block for each of ``weights`` in order
    (prefetched); default: read them here."""
    total, block = None, None
    for w in weights:
        block = (next(blocks) if blocks is not None
                 else _read_block(train_store, w.step, method.read_fields(), shard_index))
        scores = np.asarray(method.score_block(test_blocks[w.step], block, w.step, mesh), np.float32)
        expected = (len(next(iter(test_blocks.values()))["position"]), len(block["position"]))
        if scores.shape != expected:
            raise RuntimeError(f"{method.name}.score_block returned {scores.shape}, expected {expected}")
        check_finite_scores(method.name, scores, test_blocks[w.step]["example_id"], block["example_id"], w.step)
        total = np.float32(w.weight) * scores if total is None else total + np.float32(w.weight) * scores
    return block, total


def check_finite_scores(method: str, scores: np.ndarray, test_ids, train_ids, step: int) -> None:
    """Non-finite scores are never ranked: ``NonFiniteError`` naming the pairs and checkpoint."""
    bad = ~np.isfinite(scores)
    if bad.any():
        rows, cols = np.nonzero(bad)
        pairs = ", ".join(f"({int(test_ids[r])}, {int(train_ids[c])})" for r, c in zip(rows[:5], cols[:5]))
        raise NonFiniteError(
            f"{method}: {int(bad.sum())} non-finite scores at checkpoint {step}, e.g. (test id, train id) {pairs}",
            "the gradient stores hold non-finite values or the method overflowed; re-extract the stores "
            "from finite checkpoints")


def _prepare(method, test_store, train_store, context, options, allow_mismatch=False):
    method = get_method(method, **(options or {})).prepare(test_store, train_store, context,
                                                           allow_mismatch=allow_mismatch)
    weights = method.checkpoint_weights(test_store, train_store)
    test_blocks = {w.step: _read_block(test_store, w.step, method.read_fields()) for w in weights}
    return method, weights, test_blocks


# ----------------------------------------------------------------------------- candidates

def _candidate_ids(test_ids: np.ndarray, candidates, per_test_candidates):
    """Normalises candidate restrictions to None, a shared id array, or one array per test point."""
    if candidates is not None and per_test_candidates is not None:
        raise ValueError("give candidates (shared) or per_test_candidates, not both")
    if candidates is not None:
        return np.unique(np.asarray(candidates, np.int64))
    if per_test_candidates is None:
        return None
    if isinstance(per_test_candidates, Mapping):
        missing = [int(t) for t in test_ids if int(t) not in per_test_candidates]
        if missing:
            raise ValueError(f"per_test_candidates has no entry for test ids {missing[:10]}")
        per_test_candidates = [per_test_candidates[int(t)] for t in test_ids]
    if len(per_test_candidates) != len(test_ids):
        raise ValueError(f"per_test_candidates has {len(per_test_candidates)} entries for "
                         f"{len(test_ids)} test points")
    return [np.unique(np.asarray(c, np.int64)) for c in per_test_candidates]


def _candidate_positions(restriction, example_ids: np.ndarray, positions: np.ndarray,
                         num_test: int) -> np.ndarray:
    """Ids for ``running_topk_update``: positions ``[n]`` or ``[M, n]``, -1 where excluded."""
    if restriction is None:
        return positions
    if isinstance(restriction, np.ndarray):
        return np.where(np.isin(example_ids, restriction), positions, -1)
    return np.stack([np.where(np.isin(example_ids, c), positions, -1) for c in restriction])


# ----------------------------------------------------------------------------- top-k

def _shards_of_part(num_shards: int, part: tuple[int, int] | None) -> list[int]:
    index, count = part if part is not None else (jax.process_index(), jax.process_count())
    if not 0 <= index < count:
        raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part}")
    return list(range(index, num_shards, count))


def top_k(method: str | Method, test_store: GradientStore, train_store: GradientStore, k: int, *,
          context=None, mesh: Mesh | None = None, candidates: Sequence[int] | None = None,
          per_test_candidates=None, part: tuple[int, int] | None = None,
          options: dict | None = None, gather: bool = True, progress: bool = False,
          allow_mismatch: bool = False) -> Rankings:
    """Top-``k`` proponents and opponents of every test point, streamed shard by shard.

    Args:
      method: a registry name (with ``options``) or a ``Method``.
      test_store, train_store: gradient stores over the same checkpoints.
      context: ``RunContext`` for methods that need the run (texts, parameters).
      mesh: local ``data`` mesh for block scoring (default: one device).
      candidates: training example ids every test point is restricted to.
      per_test_candidates: ``{test_id: train ids}`` (or one sequence per test point),
        e.g. ``lowest_tfidf_candidates`` for the no-overlap experiment.
      part: ``(i, n)`` scores only training shards ``s % n == i`` (merge the parts
        with ``merge``). Default ``(process_index, process_count)``; with several
        processes and ``gather``, every process returns the merged result.
      allow_mismatch: score stores of different models (``methods.base.check_same_model``).
    Returns: ``Rankings`` with ``[M, k]`` rankings (fewer candidates than k leave
      trailing -1 / ∓inf slots).
    """
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = int(k)
    method, weights, test_blocks = _prepare(method, test_store, train_store, context, options, allow_mismatch)
    first = test_blocks[weights[0].step]
    test_ids = first["example_id"].astype(np.int64)
    restriction = _candidate_ids(test_ids, candidates, per_test_candidates)
    num_test = len(test_ids)
    best = {kind: tuple(np.asarray(x) for x in init_topk(num_test, k, _largest(kind))) for kind in KINDS}
    # Training example id of every store position seen (8 bytes per example).
    position_ids = np.full(train_store.num_examples, -1, np.int64)
    shards = _shards_of_part(train_store.num_shards, part)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(shards), desc=f"score[{method.name}]", unit="shard", dynamic_ncols=True)
    workers = _scoring_workers(method)
    if workers > 1:  # whole shards (read + score) in parallel threads, results in shard order
        scored = _prefetched(lambda shard: _weighted_scores(method, test_blocks, train_store, weights, shard, mesh),
                             shards, depth=workers, workers=workers)
    else:  # the next shard read in a background thread while this one is scored
        fields = method.read_fields()
        blocks = _prefetched(lambda item: _read_block(train_store, item[1], fields, item[0]),
                             [(shard, w.step) for shard in shards for w in weights])
        scored = (_weighted_scores(method, test_blocks, train_store, weights, shard, mesh, blocks=blocks)
                  for shard in shards)
    for block, scores in scored:
        position_ids[block["position"]] = block["example_id"]
        ids = _candidate_positions(restriction, block["example_id"], block["position"], num_test)
        for kind in KINDS:
            best[kind] = running_topk_update(*best[kind], scores, ids, _largest(kind))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rankings = {kind: _ranking(best[kind], position_ids) for kind in KINDS}
    result = Rankings(method=method.name, k=k, test_ids=test_ids,
                       test_labels=first["label"].astype(np.int32), **rankings)
    if part is None and gather and jax.process_count() > 1:
        result = _allgather_merge(result)
    return result


def _ranking(best, example_ids: Mapping[int, int] | np.ndarray) -> Ranking:
    """``best`` (scores, positions) with positions mapped to example ids (-1 stays -1)
    through a ``{position: id}`` mapping or an array indexed by position."""
    scores, positions = (np.asarray(x) for x in best)
    positions = positions.astype(np.int64)
    if isinstance(example_ids, np.ndarray):
        ids = np.where(positions >= 0, example_ids[np.maximum(positions, 0)], -1) \
            if example_ids.size else np.full_like(positions, -1)
    else:
        ids = np.vectorize(lambda p: example_ids.get(int(p), -1), otypes=[np.int64])(positions) \
            if positions.size else positions.copy()
    return Ranking(positions=positions, ids=ids, scores=scores.astype(np.float32))


def merge(parts: Sequence[Rankings]) -> Rankings:
    """Exact merge of ``top_k`` results over disjoint training shards (``part=(i, n)``)."""
    if not parts:
        raise ValueError("nothing to merge")
    head = parts[0]
    for p in parts[1:]:
        if (p.method, p.k) != (head.method, head.k) or not np.array_equal(p.test_ids, head.test_ids):
            raise ValueError(f"cannot merge results of different runs: ({p.method}, k={p.k}) vs "
                             f"({head.method}, k={head.k}) or different test points")
    rankings = {}
    for kind in KINDS:
        rs = [p.ranking(kind) for p in parts]
        example_ids = {int(pos): int(i) for r in rs for pos, i in zip(r.positions.ravel(), r.ids.ravel())
                       if pos >= 0}
        merged = merge_topk([r.scores for r in rs], [r.positions for r in rs], head.k, _largest(kind))
        rankings[kind] = _ranking(merged, example_ids)
    return dataclasses.replace(head, **rankings)


def _allgather_merge(result: Rankings) -> Rankings:
    """Every process's partial top-k gathered and merged (multi-host, one shard set each)."""
    from jax.experimental import multihost_utils

    parts = []
    for kind in KINDS:
        r = result.ranking(kind)
        parts.append([multihost_utils.process_allgather(x) for x in (r.positions, r.ids, r.scores)])
    merged = []
    for p in range(jax.process_count()):
        rankings = {kind: Ranking(*(np.asarray(x[p]) for x in parts[i])) for i, kind in enumerate(KINDS)}
        merged.append(dataclasses.replace(result, **rankings))
    return merge(merged)


def top_k_proponents(test_store, train_store, method, k, **kwargs) -> Ranking:
    """The ``k`` largest scores of every test point (see ``top_k``)."""
    return top_k(method, test_store, train_store, k, **kwargs).proponents


def top_k_opponents(test_store, train_store, method, k, **kwargs) -> Ranking:
    """The ``k`` most negative scores of every test point (see ``top_k``)."""
    return top_k(method, test_store, train_store, k, **kwargs).opponents


# ----------------------------------------------------------------------------- matrices

@dataclasses.dataclass(frozen=True)
class ScoreMatrix:
    test_ids: np.ndarray  # [M] int64
    train_ids: np.ndarray  # [N] int64
    scores: np.ndarray  # [M, N] float32


def score_matrix(method: str | Method, test_store: GradientStore, train_store: GradientStore, *,
                 context=None, mesh: Mesh | None = None, options: dict | None = None,
                 allow_mismatch: bool = False) -> ScoreMatrix:
    """Every score at once (small sets): the whole training store scored as one block."""
    method, weights, test_blocks = _prepare(method, test_store, train_store, context, options, allow_mismatch)
    block, scores = _weighted_scores(method, test_blocks, train_store, weights, None, mesh)
    return ScoreMatrix(test_ids=test_blocks[weights[0].step]["example_id"].astype(np.int64),
                       train_ids=block["example_id"].astype(np.int64), scores=scores)


def self_influence(method: str | Method, store: GradientStore, *, context=None,
                   mesh: Mesh | None = None, options: dict | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``score(x, x)`` for every example of ``store``: ``(ids [N] int64, scores [N] float32)``."""
    method = get_method(method, **(options or {})).prepare(store, store, context)
    weights = method.checkpoint_weights(store, store)
    ids, scores = [], []
    for shard in range(store.num_shards):
        total = None
        for w in weights:
            block = _read_block(store, w.step, method.read_fields(), shard)
            s = np.asarray(method.self_scores(block, w.step, mesh), np.float32)
            check_finite_scores(method.name, s[None], [-1], block["example_id"], w.step)
            s = np.float32(w.weight) * s
            total = s if total is None else total + s
        ids.append(block["example_id"].astype(np.int64))
        scores.append(total)
    return np.concatenate(ids), np.concatenate(scores)


def topk_of_matrix(matrix: ScoreMatrix, k: int, largest: bool = True,
                   candidate_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k of a full matrix by numpy sorting: ``(positions, scores)`` ``[M, k]``.

    Same total order as streaming (score, then smaller position); ``candidate_mask
    [M, N]`` excludes entries. Used to check streaming against everything-at-once.
    """
    m, n = matrix.scores.shape
    positions = np.full((m, k), -1, np.int64)
    scores = np.full((m, k), -np.inf if largest else np.inf, np.float32)
    for row in range(m):
        cols = np.arange(n) if candidate_mask is None else np.flatnonzero(candidate_mask[row])
        vals = matrix.scores[row, cols]
        order = np.lexsort((cols, -vals if largest else vals))[:k]
        positions[row, :len(order)] = cols[order]
        scores[row, :len(order)] = vals[order]
    return positions, scores


def precision_at_k(retrieval: Rankings, relevant: Mapping[int, Sequence[int]], k: int = 10,
                   kind: str = "proponents") -> dict[int, float]:
    """Share of each test point's top-``k`` (of ``kind``) that is in ``relevant[test_id]``.

    Only test points with an entry in ``relevant`` are scored; returns ``{test_id: precision}``.
    """
    if not 1 <= k <= retrieval.k:
        raise ValueError(f"k must be in [1, {retrieval.k}] (the retrieval's k), got {k}")
    ranking = retrieval.ranking(kind)
    out = {}
    for row, test_id in enumerate(retrieval.test_ids):
        if int(test_id) in relevant:
            truth = {int(i) for i in relevant[int(test_id)]}
            out[int(test_id)] = float(np.mean([int(i) in truth for i in ranking.ids[row, :k]]))
    return out
