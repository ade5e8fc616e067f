"""Word-level explanations (paper sec. 4.3): which shared tokens drive a pair's score.

For the TracIn-WE family the score of (x', x) is a sum over shared tokens w of

    contribution(w) = Σ_c η_c ⟨G_w(x), G_w(x')⟩

(restricted to the tokens the variant keeps), so the pair score equals the sum of
its token contributions exactly. ``explain_pair`` decomposes one pair;
``explain_retrieval`` decomposes every proponent and opponent of a ``Rankings``
for the JSONL/HTML outputs, reading only the shards that hold them.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from tracin_jax.errors import UsageError
from tracin_jax.methods.base import Block, Method, MethodError
from tracin_jax.methods.registry import get_method
from tracin_jax.methods.retrieval import check_finite_scores
from tracin_jax.rankings import KINDS, Rankings
from tracin_jax.store import GradientStore


@dataclasses.dataclass(frozen=True)
class TokenContribution:
    token_id: int
    token: str  # decoded with the run's tokenizer, or "#<id>" without one
    contribution: float


@dataclasses.dataclass(frozen=True)
class PairExplanation:
    """One (test, train) pair: its score and its shared tokens, most positive first."""

    test_id: int
    train_id: int
    score: float
    tokens: tuple[TokenContribution, ...]  # empty for methods without a decomposition

    @property
    def most_positive(self) -> TokenContribution | None:
        return self.tokens[0] if self.tokens and self.tokens[0].contribution > 0 else None

    @property
    def most_negative(self) -> TokenContribution | None:
        return self.tokens[-1] if self.tokens and self.tokens[-1].contribution < 0 else None

    def to_json(self, top: int | None = None) -> dict:
        tokens = self.tokens if top is None else _top_by_magnitude(self.tokens, top)
        def one(t):
            return None if t is None else {"token": t.token, "id": t.token_id,
                                           "contribution": t.contribution}
        return {"score": self.score, "tokens": [one(t) for t in tokens],
                "most_positive_token": one(self.most_positive),
                "most_negative_token": one(self.most_negative)}


def _top_by_magnitude(tokens, top):
    keep = sorted(tokens, key=lambda t: -abs(t.contribution))[:top]
    return tuple(sorted(keep, key=lambda t: -t.contribution))


# ----------------------------------------------------------------------------- reading records

def positions_of(store: GradientStore, example_ids: Sequence[int]) -> np.ndarray:
    """Store rows of ``example_ids`` (UsageError naming ids the store does not hold)."""
    step = store.checkpoints[0].step
    all_ids = np.concatenate([s["example_id"] for s in store.iter_shards(step, fields=("example_id",))])
    index = {int(e): i for i, e in enumerate(all_ids)}
    missing = [int(e) for e in example_ids if int(e) not in index]
    if missing:
        lo, hi = int(all_ids.min()), int(all_ids.max())
        raise UsageError(f"example ids {missing[:10]} are not in store {store.directory} "
                         f"({len(all_ids)} examples, ids {lo}..{hi})",
                         "pick ids from the store's split (scores.jsonl lists test_id / train_id)")
    return np.asarray([index[int(e)] for e in example_ids], np.int64)


def gather_records(store: GradientStore, positions: Sequence[int], fields: Sequence[str],
                   steps: Sequence[int]) -> dict[int, Block]:
    """Records at store rows ``positions`` (in that order) for each checkpoint in ``steps``.

    Reads only the shards holding them, one at a time. Returns ``{step: block}``,
    each block with a ``position`` entry.
    """
    positions = np.asarray(positions, np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= store.num_examples):
        raise ValueError(f"positions outside [0, {store.num_examples}) of {store.directory}")
    shard_of = positions // store.shard_size
    out = {}
    for step in steps:
        block: dict[str, np.ndarray] = {}
        for shard, data in zip(np.unique(shard_of), store.iter_shards(
                step, fields=fields, shard_indices=[int(s) for s in np.unique(shard_of)])):
            where = np.flatnonzero(shard_of == shard)
            local = positions[where] - store.shard_range(int(shard))[0]
            for name, values in data.items():
                if name not in block:
                    block[name] = np.zeros((len(positions),) + values.shape[1:], values.dtype)
                block[name][where] = values[local]
        if not block:
            block = {name: np.zeros((0,), np.int64) for name in fields}
        block["position"] = positions
        out[step] = block
    return out


# ----------------------------------------------------------------------------- decomposition

def _rows(block: Block, index) -> Block:
    return {k: v[index] for k, v in block.items()}


def pair_contributions(method: Method, test_records: Mapping[int, Block],
                       train_records: Mapping[int, Block], weights) -> tuple[np.ndarray, np.ndarray]:
    """``Σ_c w_c`` token contributions of one pair: ``(token_ids [U], contributions [U] float64)``.

    ``*_records`` hold one record per checkpoint (blocks of one row).
    """
    total: dict[int, float] = defaultdict(float)
    for w in weights:
        ids, contributions = method.token_contributions(test_records[w.step], train_records[w.step], w.step)
        for t, c in zip(ids.tolist(), np.asarray(contributions, np.float64).tolist()):
            total[int(t)] += w.weight * c
    ids = np.asarray(list(total), np.int64)
    values = np.asarray([total[t] for t in total.keys()], np.float64)
    order = np.lexsort((ids, -values))
    return ids[order], values[order]


def _decode(context, ids) -> list[str]:
    if context is None or len(ids) == 0:
        return [f"#{int(i)}" for i in ids]
    return context.decode(ids)


def _explanation(method, context, test_records, train_records, weights, test_id, train_id,
                 score) -> PairExplanation:
    tokens: tuple[TokenContribution, ...] = ()
    if method.decomposable:
        ids, values = pair_contributions(method, test_records, train_records, weights)
        tokens = tuple(TokenContribution(int(i), s, float(v))
                       for i, s, v in zip(ids, _decode(context, ids), values))
    return PairExplanation(int(test_id), int(train_id), float(score), tokens)


def explain_pair(method: str | Method, test_store: GradientStore, test_id: int,
                 train_store: GradientStore, train_id: int, *, context=None,
                 options: dict | None = None, allow_mismatch: bool = False) -> PairExplanation:
    """Score of one (test, train) pair and the contribution of each shared token."""
    method = get_method(method, **(options or {})).prepare(test_store, train_store, context,
                                                           allow_mismatch=allow_mismatch)
    weights = method.checkpoint_weights(test_store, train_store)
    steps = [w.step for w in weights]
    test = gather_records(test_store, positions_of(test_store, [test_id]), method.read_fields(), steps)
    train = gather_records(train_store, positions_of(train_store, [train_id]), method.read_fields(), steps)
    score = np.float32(0.0)
    for w in weights:
        block = np.asarray(method.score_block(test[w.step], train[w.step], w.step), np.float32)
        check_finite_scores(method.name, block, [test_id], [train_id], w.step)
        score += np.float32(w.weight) * block[0, 0]
    return _explanation(method, context, test, train, weights, test_id, train_id, score)


# ----------------------------------------------------------------------------- retrieval

@dataclasses.dataclass(frozen=True)
class Neighbor:
    """One proponent or opponent of a test point, with its word-level explanation."""

    kind: str  # "proponents" | "opponents"
    rank: int  # 1-based
    train_id: int
    train_position: int
    label: int
    explanation: PairExplanation


@dataclasses.dataclass(frozen=True)
class ExplainedTestPoint:
    test_id: int
    test_position: int
    label: int
    prediction: int | None
    neighbors: dict[str, list[Neighbor]]  # kind -> ranked list


def explain_retrieval(method: str | Method, retrieval: Rankings, test_store: GradientStore,
                      train_store: GradientStore, *, context=None, options: dict | None = None,
                      top: int | None = None, allow_mismatch: bool = False) -> list[ExplainedTestPoint]:
    """Word-level explanations of the first ``top`` (default all) proponents and opponents.

    The method must be the one that produced ``retrieval``; scores are taken from it.
    """
    method = get_method(method, **(options or {}))
    if method.name != retrieval.method:
        raise MethodError(f"retrieval was computed with {retrieval.method!r}, not {method.name!r}")
    method = method.prepare(test_store, train_store, context, allow_mismatch=allow_mismatch)
    weights = method.checkpoint_weights(test_store, train_store)
    steps = [w.step for w in weights]
    top = retrieval.k if top is None else min(int(top), retrieval.k)
    fields = tuple(dict.fromkeys(method.read_fields() + ("prediction",)))
    test = gather_records(test_store, np.arange(test_store.num_examples), fields, steps)
    if not np.array_equal(test[steps[0]]["example_id"], retrieval.test_ids):
        raise MethodError(f"retrieval test ids do not match test store {test_store.directory}")
    wanted = sorted({int(p) for kind in KINDS for p in retrieval.ranking(kind).positions[:, :top].ravel()
                     if p >= 0})
    train = gather_records(train_store, wanted, fields, steps)
    row_of = {p: i for i, p in enumerate(wanted)}
    last = max(steps)
    reports = []
    for m, test_id in enumerate(retrieval.test_ids):
        test_one = {s: _rows(test[s], slice(m, m + 1)) for s in steps}
        neighbors = {}
        for kind in KINDS:
            ranking = retrieval.ranking(kind)
            items = []
            for j in range(top):
                pos = int(ranking.positions[m, j])
                if pos < 0:
                    break
                r = row_of[pos]
                train_one = {s: _rows(train[s], slice(r, r + 1)) for s in steps}
                explanation = _explanation(method, context, test_one, train_one, weights, test_id,
                                           ranking.ids[m, j], ranking.scores[m, j])
                items.append(Neighbor(kind, j + 1, int(ranking.ids[m, j]), pos,
                                      int(train[last]["label"][r]), explanation))
            neighbors[kind] = items
        reports.append(ExplainedTestPoint(int(test_id), m, int(retrieval.test_labels[m]),
                                       int(test[last]["prediction"][m]), neighbors))
    return reports
