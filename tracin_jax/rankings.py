"""Rankings: each test point's top-K proponents and opponents — the artifact between scoring
and everything downstream (reports, case-deletion sweeps, targeted fixing).

One type, :class:`Rankings`, made by retrieval (``methods.retrieval.top_k``), saved by
``tracin-jax score`` as ``retrieval.npz`` (plus ``scores.jsonl`` with word-level
explanations) and read back by :func:`load_rankings`. Proponents are the largest scores,
opponents the most negative (score > 0 = proponent). Empty slots (fewer candidates than K)
hold id -1 and score ∓inf. ``negative_tokens[kind]`` (optional) holds, per neighbour, the
id of the token whose contribution to the pair's score is most negative (-1: none), for
targeted fixing (b), appendix L.

``retrieval.npz`` keys (``np.load(path, allow_pickle=False)``): ``method`` (str), ``k``,
``test_ids [M] int64``, ``test_labels [M] int32``, and for kind in proponents/opponents
``{kind}_positions [M, K] int64`` (rows of the training store; -1 unknown or empty),
``{kind}_ids [M, K] int64``, ``{kind}_scores [M, K] float32`` and optionally
``{kind}_negative_tokens [M, K] int32``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from tracin_jax.errors import DataError
from tracin_jax.files import atomic_save_npz

KINDS = ("proponents", "opponents")
NO_TOKEN = -1
_JSONL_KIND = {"proponent": "proponents", "opponent": "opponents"}


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Top-K of one kind for M test points."""

    positions: np.ndarray  # [M, K] int64, rows of the training store (-1: empty or unknown)
    ids: np.ndarray  # [M, K] int64, training example ids (-1: empty slot)
    scores: np.ndarray  # [M, K] float32


@dataclasses.dataclass(frozen=True)
class Rankings:
    """Proponents and opponents of every test point for one method (module docstring)."""

    method: str
    k: int
    test_ids: np.ndarray  # [M] int64, in test-store order
    test_labels: np.ndarray  # [M] int32
    proponents: Ranking
    opponents: Ranking
    negative_tokens: dict[str, np.ndarray] | None = None  # kind -> [M, K] int32

    @classmethod
    def from_ids(cls, method: str, test_ids, test_labels, proponents, opponents, *,
                 proponent_scores=None, opponent_scores=None, negative_tokens=None) -> Rankings:
        """Rankings from id arrays ``[M, K]`` (scores NaN and positions -1 when not given):
        e.g. a control that ranks at random, or rankings made by another tool."""
        def ranking(ids, scores):
            ids = np.asarray(ids, np.int64)
            scores = np.full(ids.shape, np.nan, np.float32) if scores is None else np.asarray(scores, np.float32)
            return Ranking(np.full(ids.shape, -1, np.int64), ids, scores)
        props = ranking(proponents, proponent_scores)
        return cls(method=str(method), k=int(props.ids.shape[1]), test_ids=np.asarray(test_ids, np.int64),
                   test_labels=np.asarray(test_labels, np.int32), proponents=props,
                   opponents=ranking(opponents, opponent_scores), negative_tokens=negative_tokens)

    @property
    def depth(self) -> int:
        return int(self.proponents.ids.shape[1])

    def ranking(self, kind: str) -> Ranking:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def row(self, test_id: int) -> int:
        where = np.flatnonzero(self.test_ids == int(test_id))
        if not len(where):
            raise KeyError(f"{self.method}: no ranking for test id {test_id}")
        return int(where[0])

    def top(self, test_id: int, kind: str, k: int) -> np.ndarray:
        """The first ``k`` training ids of ``kind`` for ``test_id`` (DataError if fewer)."""
        ids = self.ranking(kind).ids[self.row(test_id)]
        ids = ids[ids >= 0]
        if len(ids) < k:
            raise DataError(f"{self.method}: test id {test_id} has {len(ids)} {kind} ranked, k={k} "
                            "requested", f"score with --top >= {k}")
        return ids[:k].astype(np.int64)

    def save(self, path: str | Path) -> None:
        """Exact round trip through an ``.npz`` (no pickle), written atomically."""
        arrays = {"method": np.asarray(self.method), "k": np.asarray(self.k),
                  "test_ids": np.asarray(self.test_ids, np.int64),
                  "test_labels": np.asarray(self.test_labels, np.int32)}
        for kind in KINDS:
            r = self.ranking(kind)
            arrays.update({f"{kind}_positions": r.positions, f"{kind}_ids": r.ids,
                           f"{kind}_scores": r.scores})
            if self.negative_tokens is not None:
                arrays[f"{kind}_negative_tokens"] = np.asarray(self.negative_tokens[kind], np.int32)
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Rankings:
        try:
            with np.load(path, allow_pickle=False) as z:
                rankings = {kind: Ranking(z[f"{kind}_positions"].astype(np.int64),
                                          z[f"{kind}_ids"].astype(np.int64),
                                          z[f"{kind}_scores"].astype(np.float32)) for kind in KINDS}
                tokens = None
                if all(f"{kind}_negative_tokens" in z.files for kind in KINDS):
                    tokens = {kind: z[f"{kind}_negative_tokens"].astype(np.int32) for kind in KINDS}
                out = cls(method=str(z["method"]), k=int(z["k"]), test_ids=z["test_ids"].astype(np.int64),
                          test_labels=z["test_labels"].astype(np.int32), negative_tokens=tokens, **rankings)
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"rankings file {path} cannot be read ({type(e).__name__}: {e})",
                            "re-run tracin-jax score to rewrite it") from None
        out.validate(str(path))
        return out

    def validate(self, where: str = "rankings") -> None:
        """Shapes agree; the scores of filled slots are finite (or all NaN: no scores)."""
        m = len(self.test_ids)
        for kind in KINDS:
            r = self.ranking(kind)
            if not (r.ids.shape == r.scores.shape == r.positions.shape) or r.ids.ndim != 2 or r.ids.shape[0] != m:
                raise DataError(f"{where}: {kind} arrays have shapes {r.ids.shape}, {r.scores.shape}, "
                                f"{r.positions.shape} for {m} test points")
            scores = r.scores[r.ids >= 0]  # all finite, or all NaN (rankings without scores)
            if scores.size and not (np.isfinite(scores).all() or np.isnan(scores).all()):
                raise DataError(f"{where}: {kind} scores are not finite for some ranked neighbours",
                                "the scores were computed from non-finite gradients; re-extract them")


def load_rankings(path: str | Path) -> Rankings:
    """Rankings written by ``tracin-jax score``: its output directory, ``retrieval.npz`` or
    ``scores.jsonl``. A directory with both uses the exact npz for ids and scores and, if
    the npz has none, the JSONL for each neighbour's most negative token."""
    path = Path(path)
    if path.is_dir():
        npz, jsonl = path / "retrieval.npz", path / "scores.jsonl"
        if not npz.exists() and not jsonl.exists():
            raise DataError(f"{path} holds neither retrieval.npz nor scores.jsonl",
                            "pass the output directory of tracin-jax score")
        if not npz.exists():
            return _from_jsonl(jsonl)
        base = Rankings.load(npz)
        if base.negative_tokens is None and jsonl.exists():
            tokens = _from_jsonl(jsonl)
            if np.array_equal(tokens.test_ids, base.test_ids):
                base = dataclasses.replace(base, negative_tokens=_aligned_tokens(base, tokens))
        return base
    if not path.exists():
        raise DataError(f"rankings file {path} not found", "pass a tracin-jax score output directory")
    if path.suffix == ".npz":
        return Rankings.load(path)
    if path.suffix in (".jsonl", ".json"):
        return _from_jsonl(path)
    raise DataError(f"{path}: expected a tracin-jax score directory, .npz or .jsonl")


def _from_jsonl(path: Path) -> Rankings:
    """Parses ``scores.jsonl`` rows ``{method, test_id, test_label, kind, rank, train_id,
    score, most_negative_token}`` (kind ``proponent``/``opponent``, rank 1-based)."""
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {line_no} is not JSON ({e})", "re-run tracin-jax score") from None
    if not rows:
        raise DataError(f"{path}: no rankings")
    methods = {r["method"] for r in rows}
    if len(methods) != 1:
        raise DataError(f"{path}: rows of several methods {sorted(methods)}", "one file per method")
    test_ids = list(dict.fromkeys(int(r["test_id"]) for r in rows))
    labels = {int(r["test_id"]): int(r.get("test_label", -1)) for r in rows}
    depth = max(int(r["rank"]) for r in rows)
    row_of = {t: i for i, t in enumerate(test_ids)}
    shape = (len(test_ids), depth)
    ids = {k: np.full(shape, -1, np.int64) for k in KINDS}
    scores = {k: np.full(shape, np.nan, np.float32) for k in KINDS}
    tokens = {k: np.full(shape, NO_TOKEN, np.int32) for k in KINDS}
    for r in rows:
        kind = _JSONL_KIND.get(r["kind"], r["kind"])
        if kind not in KINDS:
            raise DataError(f"{path}: unknown kind {r['kind']!r}")
        i, j = row_of[int(r["test_id"])], int(r["rank"]) - 1
        ids[kind][i, j] = int(r["train_id"])
        scores[kind][i, j] = float(r["score"])
        neg = r.get("most_negative_token")
        if neg:
            tokens[kind][i, j] = int(neg["id"])
    rankings = {k: Ranking(np.full(shape, -1, np.int64), ids[k], scores[k]) for k in KINDS}
    return Rankings(method=methods.pop(), k=depth, test_ids=np.asarray(test_ids, np.int64),
                    test_labels=np.asarray([labels[t] for t in test_ids], np.int32),
                    negative_tokens=tokens, **rankings)


def _aligned_tokens(base: Rankings, jsonl: Rankings) -> dict:
    """Most-negative tokens of the JSONL (which may list fewer ranks) at ``base``'s shape."""
    out = {}
    for kind in KINDS:
        full = np.full(base.ranking(kind).ids.shape, NO_TOKEN, np.int32)
        src_ids, src_tok = jsonl.ranking(kind).ids, jsonl.negative_tokens[kind]
        depth = min(full.shape[1], src_ids.shape[1])
        same = src_ids[:, :depth] == base.ranking(kind).ids[:, :depth]
        full[:, :depth] = np.where(same, src_tok[:, :depth], NO_TOKEN)
        out[kind] = full
    return out
