"""What a sweep consumes from scoring: rankings, score matrices, self-influence.

Rankings come from ``tracin-jax score`` outputs (a directory with ``retrieval.npz``
and ``scores.jsonl``, either file alone) via :func:`load_rankings`, or are computed
in-process from gradient stores with the methods API (:func:`compute_rankings`).
Either way the sweep sees :class:`Rankings`: per test point, its top-K proponents
(largest scores) and opponents (most negative), as *training example ids*, plus
each opponent's most negatively contributing token where the method has a
word-level decomposition (targeted fixing (b), appendix L).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("proponents", "opponents")
NO_TOKEN = -1


@dataclasses.dataclass(frozen=True)
class Rankings:
    """Top-K proponents and opponents of M test points for one method (``-1`` = empty slot).

    ``negative_tokens[kind]``: ``[M, K]`` token id of the most negative token
    contribution of each neighbor (``-1``: none / no decomposition), or absent.
    """

    method: str
    test_ids: np.ndarray  # [M] int64
    test_labels: np.ndarray  # [M] int32
    proponents: np.ndarray  # [M, K] int64 train ids, best first
    opponents: np.ndarray  # [M, K] int64
    proponent_scores: np.ndarray  # [M, K] float32
    opponent_scores: np.ndarray  # [M, K] float32
    negative_tokens: dict | None = None  # kind -> [M, K] int32

    @property
    def depth(self) -> int:
        return int(self.proponents.shape[1])

    def row(self, test_id: int) -> int:
        where = np.flatnonzero(self.test_ids == int(test_id))
        if not len(where):
            raise KeyError(f"{self.method}: no ranking for test id {test_id}")
        return int(where[0])

    def top(self, test_id: int, kind: str, k: int) -> np.ndarray:
        """The first ``k`` training ids of ``kind`` for ``test_id`` (ValueError if fewer)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        ids = getattr(self, kind)[self.row(test_id)]
        ids = ids[ids >= 0]
        if len(ids) < k:
            raise ValueError(f"{self.method}: test id {test_id} has {len(ids)} {kind} ranked, "
                             f"k={k} requested; score with --top >= {k}")
        return ids[:k].astype(np.int64)


def from_retrieval(retrieval, negative_tokens: dict | None = None) -> Rankings:
    """``Rankings`` of a ``methods.Retrieval``."""
    return Rankings(method=retrieval.method, test_ids=np.asarray(retrieval.test_ids, np.int64),
                    test_labels=np.asarray(retrieval.test_labels, np.int32),
                    proponents=np.asarray(retrieval.proponents.ids, np.int64),
                    opponents=np.asarray(retrieval.opponents.ids, np.int64),
                    proponent_scores=np.asarray(retrieval.proponents.scores, np.float32),
                    opponent_scores=np.asarray(retrieval.opponents.scores, np.float32),
                    negative_tokens=negative_tokens)


def _rankings_from_jsonl(path: Path) -> Rankings:
    """Parses ``scores.jsonl`` rows ``{method, test_id, test_label, kind, rank, train_id,
    score, most_negative_token}`` (kind ``proponent``/``opponent``, rank 1-based)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no rankings")
    methods = {r["method"] for r in rows}
    if len(methods) != 1:
        raise ValueError(f"{path}: rows of several methods {sorted(methods)}; one file per method")
    test_ids = list(dict.fromkeys(int(r["test_id"]) for r in rows))
    labels = {int(r["test_id"]): int(r.get("test_label", -1)) for r in rows}
    depth = max(int(r["rank"]) for r in rows)
    m = len(test_ids)
    row_of = {t: i for i, t in enumerate(test_ids)}
    ids = {k: np.full((m, depth), -1, np.int64) for k in KINDS}
    scores = {k: np.full((m, depth), np.nan, np.float32) for k in KINDS}
    tokens = {k: np.full((m, depth), NO_TOKEN, np.int32) for k in KINDS}
    for r in rows:
        kind = {"proponent": "proponents", "opponent": "opponents"}.get(r["kind"], r["kind"])
        if kind not in KINDS:
            raise ValueError(f"{path}: unknown kind {r['kind']!r}")
        i, j = row_of[int(r["test_id"])], int(r["rank"]) - 1
        ids[kind][i, j] = int(r["train_id"])
        scores[kind][i, j] = float(r["score"])
        neg = r.get("most_negative_token")
        if neg:
            tokens[kind][i, j] = int(neg["id"])
    return Rankings(method=methods.pop(), test_ids=np.asarray(test_ids, np.int64),
                    test_labels=np.asarray([labels[t] for t in test_ids], np.int32),
                    proponents=ids["proponents"], opponents=ids["opponents"],
                    proponent_scores=scores["proponents"], opponent_scores=scores["opponents"],
                    negative_tokens=tokens)


def load_rankings(path: str | Path) -> Rankings:
    """Rankings written by ``tracin-jax score``: its output directory, ``retrieval.npz`` or
    ``scores.jsonl``. A directory with both uses the exact npz for ids and the JSONL
    for the most negative token of each neighbor."""
    path = Path(path)
    if path.is_dir():
        npz, jsonl = path / "retrieval.npz", path / "scores.jsonl"
        if not npz.exists() and not jsonl.exists():
            raise FileNotFoundError(f"{path} holds neither retrieval.npz nor scores.jsonl "
                                    "(the outputs of tracin-jax score)")
        if not npz.exists():
            return _rankings_from_jsonl(jsonl)
        base = load_rankings(npz)
        if jsonl.exists():
            tokens = _rankings_from_jsonl(jsonl)
            if np.array_equal(tokens.test_ids, base.test_ids):
                base = dataclasses.replace(base, negative_tokens=_aligned_tokens(base, tokens))
        return base
    if not path.exists():
        raise FileNotFoundError(f"rankings file {path} not found")
    if path.suffix == ".npz":
        from tracin_jax.methods.retrieval import Retrieval
        return from_retrieval(Retrieval.load(path))
    if path.suffix in (".jsonl", ".json"):
        return _rankings_from_jsonl(path)
    raise ValueError(f"{path}: expected a tracin-jax score directory, .npz or .jsonl")


def _aligned_tokens(base: Rankings, jsonl: Rankings) -> dict:
    """Most-negative tokens of the JSONL (which may list fewer ranks) at ``base``'s shape."""
    out = {}
    for kind in KINDS:
        full = np.full(getattr(base, kind).shape, NO_TOKEN, np.int32)
        src_ids, src_tok = getattr(jsonl, kind), jsonl.negative_tokens[kind]
        depth = min(full.shape[1], src_ids.shape[1])
        same = src_ids[:, :depth] == getattr(base, kind)[:, :depth]
        full[:, :depth] = np.where(same, src_tok[:, :depth], NO_TOKEN)
        out[kind] = full
    return out


# ----------------------------------------------------------------------------- in-process

def method_options(name: str, train_store) -> tuple[str, dict]:
    """Registry name and options for a store: tracin_we_topk takes the store's k."""
    k = train_store.manifest.get("k")
    if name == "tracin_we_topk":
        if k is None:
            raise ValueError("tracin_we_topk needs a top-k gradient store; this one is exact (k=None)")
        return name, {"k": int(k)}
    return name, {}


def compute_rankings(method: str, test_store, train_store, depth: int, *, context=None, mesh=None,
                     with_tokens: bool = False) -> Rankings:
    """Top-``depth`` proponents/opponents via ``methods.top_k``; with ``with_tokens``, each
    neighbor's most negative token (decomposable methods; ``explain_retrieval``)."""
    from tracin_jax.methods import get_method, top_k
    from tracin_jax.methods.explain import explain_retrieval

    name, options = method_options(method, train_store)
    retrieval = top_k(name, test_store, train_store, int(depth), context=context, mesh=mesh,
                      options=options)
    tokens = None
    if with_tokens and get_method(name, **options).decomposable:
        reports = explain_retrieval(name, retrieval, test_store, train_store, context=context,
                                    options=options)
        tokens = {kind: np.full(getattr(retrieval, kind).ids.shape, NO_TOKEN, np.int32) for kind in KINDS}
        for i, report in enumerate(reports):
            for kind in KINDS:
                for j, n in enumerate(report.neighbors[kind]):
                    neg = n.explanation.most_negative
                    tokens[kind][i, j] = NO_TOKEN if neg is None else neg.token_id
    return from_retrieval(retrieval, tokens)


def compute_score_matrix(method: str, test_store, train_store, *, context=None, mesh=None):
    """``(test_ids [M], train_ids [N], scores [M, N] float32)`` of every pair."""
    from tracin_jax.methods import score_matrix

    name, options = method_options(method, train_store)
    m = score_matrix(name, test_store, train_store, context=context, mesh=mesh, options=options)
    return np.asarray(m.test_ids), np.asarray(m.train_ids), np.asarray(m.scores, np.float32)


def compute_self_influence(method: str, train_store, *, context=None, mesh=None):
    """``(train_ids [N], self_influence [N] float32)``."""
    from tracin_jax.methods import self_influence

    name, options = method_options(method, train_store)
    ids, scores = self_influence(name, train_store, context=context, mesh=mesh, options=options)
    return np.asarray(ids, np.int64), np.asarray(scores, np.float32)


def group_by_label(ids: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    out = defaultdict(list)
    for i, label in zip(ids, labels):
        out[int(label)].append(int(i))
    return {k: np.asarray(v, np.int64) for k, v in sorted(out.items())}
