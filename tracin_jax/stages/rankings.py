"""Stage "gradient stores → rankings, score matrices, self-influence" for one method.

The downstream stages (reports, sweeps) consume ``tracin_jax.rankings.Rankings`` and plain
arrays; this module is where they are computed from two gradient stores with the methods API.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tracin_jax.errors import UsageError
from tracin_jax.methods import get_method, score_matrix, self_influence, top_k
from tracin_jax.methods.explain import explain_retrieval
from tracin_jax.rankings import KINDS, NO_TOKEN, Rankings
from tracin_jax.store import GradientStore


# The control "method": each test point's k "proponents" and k other "opponents" drawn at
# random from the training set (seeded by the test id), so DEL± of a method can be read
# against removing as many examples at random.
RANDOM = "random"
_RANDOM_SALT = 7919


def store_ids(store: GradientStore) -> tuple[np.ndarray, np.ndarray]:
    """``(example_id [N] int64, label [N] int32)`` of a store, in store order."""
    step = store.checkpoints[0].step
    block = store.load(step, fields=("example_id", "label"))
    return np.asarray(block["example_id"], np.int64), np.asarray(block["label"], np.int32)


def random_control(test_ids, test_labels, train_ids, depth: int, *, per_test_candidates=None) -> Rankings:
    """The ``random`` control (see ``RANDOM``) from ids alone (no gradient store needed):
    per test id ``t``, the first ``2 · depth`` of ``default_rng([7919, t]).permutation(pool)``
    split into ``depth`` proponents and ``depth`` other opponents, ``pool`` being
    ``train_ids`` or, with ``per_test_candidates`` (``{test id: training ids}``, as the
    no-overlap experiment restricts every method), that test point's candidates: the control
    then removes random examples from the same pool the methods choose from."""
    train_ids = np.asarray(train_ids, np.int64)
    pools = [train_ids] * len(test_ids)
    if per_test_candidates is not None:
        missing = [int(t) for t in test_ids if int(t) not in per_test_candidates]
        if missing:
            raise UsageError(f"the candidate restriction has no entry for test ids {missing[:10]}")
        pools = [np.intersect1d(np.asarray(per_test_candidates[int(t)], np.int64), train_ids) for t in test_ids]
    picks = []
    for t, pool in zip(test_ids, pools):
        if len(pool) < 2 * depth:
            raise UsageError(f"the random control needs {2 * depth} training examples to choose from, "
                             f"test point {int(t)} has {len(pool)}", "lower the largest k of the sweep")
        picks.append(np.random.default_rng([_RANDOM_SALT, int(t)]).permutation(pool)[:2 * depth])
    picks = np.stack(picks) if picks else np.zeros((0, 2 * depth), np.int64)
    return Rankings.from_ids(RANDOM, test_ids, test_labels, picks[:, :depth], picks[:, depth:])


def method_options(name: str, store: GradientStore) -> tuple[str, dict]:
    """Registry name and options for a store: ``tracin_we_topk`` takes the store's k."""
    k = store.manifest.get("k")
    if name == "tracin_we_topk":
        if k is None:
            raise UsageError("tracin_we_topk needs a top-k gradient store; this one is exact (k=None)",
                             "use tracin_we, or extract with --k 10")
        return name, {"k": int(k)}
    return name, {}


def rank(method: str, test_store: GradientStore, train_store: GradientStore, depth: int, *,
         context=None, mesh=None, with_tokens: bool = False, per_test_candidates=None,
         allow_mismatch: bool = False) -> Rankings:
    """Top-``depth`` proponents/opponents via ``methods.top_k``; with ``with_tokens``, each
    neighbour's most negative token (decomposable methods; ``explain_retrieval``).
    ``method="random"`` is the random-removal control (``random_control``)."""
    if method == RANDOM:
        test_ids, test_labels = store_ids(test_store)
        return random_control(test_ids, test_labels, store_ids(train_store)[0], int(depth),
                              per_test_candidates=per_test_candidates)
    name, options = method_options(method, train_store)
    rankings = top_k(name, test_store, train_store, int(depth), context=context, mesh=mesh,
                     options=options, per_test_candidates=per_test_candidates, allow_mismatch=allow_mismatch)
    if with_tokens and get_method(name, **options).decomposable:
        reports = explain_retrieval(name, rankings, test_store, train_store, context=context,
                                    options=options, allow_mismatch=allow_mismatch)
        tokens = {kind: np.full(rankings.ranking(kind).ids.shape, NO_TOKEN, np.int32) for kind in KINDS}
        for i, report in enumerate(reports):
            for kind in KINDS:
                for j, n in enumerate(report.neighbors[kind]):
                    neg = n.explanation.most_negative
                    tokens[kind][i, j] = NO_TOKEN if neg is None else neg.token_id
        rankings = dataclasses.replace(rankings, negative_tokens=tokens)
    return rankings


def full_scores(method: str, test_store: GradientStore, train_store: GradientStore, *, context=None,
                mesh=None, allow_mismatch: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(test_ids [M], train_ids [N], scores [M, N] float32)`` of every pair."""
    name, options = method_options(method, train_store)
    m = score_matrix(name, test_store, train_store, context=context, mesh=mesh, options=options,
                     allow_mismatch=allow_mismatch)
    return np.asarray(m.test_ids), np.asarray(m.train_ids), np.asarray(m.scores, np.float32)


def self_scores(method: str, train_store: GradientStore, *, context=None,
                mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train_ids [N], self_influence [N] float32)``."""
    name, options = method_options(method, train_store)
    ids, scores = self_influence(name, train_store, context=context, mesh=mesh, options=options)
    return np.asarray(ids, np.int64), np.asarray(scores, np.float32)
