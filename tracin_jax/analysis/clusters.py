"""Mislabel clustering by influence distance (paper appendix A).

1. Hard examples: train N models (replicas with different seeds, all data kept, early
   stopped: ``epochs``); an example is *hard* if at least ``min_error_rate`` (0.4) of
   them misclassify it ("classified incorrectly at least 40% ... after training 20
   models", appendix A).
2. Influence distance between hard examples a, b (TracIn-WE by default):

       d(a, b) = max(1 − I(a, b) / sqrt(I(a, a) · I(b, b)), 0)            (docs/method.md "Analyses")

   small when b is a strong proponent of a (d = 0 for identical gradients).
   TracIn scores are symmetric in exact arithmetic; the matrix is symmetrised
   (½(D + Dᵀ)) to remove float round-off before clustering.
3. Agglomerative clustering (scikit-learn, precomputed distances, ``distance_threshold``
   0.8, average linkage by default); clusters with ≥ ``min_size`` (3) members are kept.
4. Per cluster, the words that explain it: for every pair of members, the top-5 tokens by
   contribution to the pair's TracIn-WE score (word-level decomposition, sec. 4.3;
   start/end tokens left out); tokens ranked by how many pairs have them in their top 5.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import jax
import numpy as np
from sklearn.cluster import AgglomerativeClustering

from tracin_jax.deletion.replicas import ReplicaTrainer
from tracin_jax.deletion.schedule import ReplicaSpec
from tracin_jax.files import atomic_write_json, atomic_write_text
from tracin_jax.mesh import make_local_mesh
from tracin_jax.methods.explain import gather_records, pair_contributions
from tracin_jax.train import predict_proba

log = logging.getLogger(__name__)

# Appendix A: misclassified by >= 40% of the models; threshold 0.8; clusters of >= 3.
MIN_ERROR_RATE = 0.4
DISTANCE_THRESHOLD = 0.8
MIN_CLUSTER_SIZE = 3
TOP_TOKENS_PER_PAIR = 5
HARD_SPLIT = "train_hard"


def misclassification_rate(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[N]`` float64: share of the R models whose argmax differs from the label; probs ``[R, N, C]``."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 3 or probs.shape[1] != labels.shape[0]:
        raise ValueError(f"probs must be [R, N, C] with N = {labels.shape[0]} labels, got {probs.shape}")
    return np.mean(np.argmax(probs, axis=-1) != labels[None], axis=0)


def select_hard(rate: np.ndarray, min_error_rate: float = MIN_ERROR_RATE) -> np.ndarray:
    """Positions with ``rate >= min_error_rate`` (ascending)."""
    if not 0.0 < min_error_rate <= 1.0:
        raise ValueError(f"min_error_rate must be in (0, 1], got {min_error_rate}")
    return np.flatnonzero(np.asarray(rate) >= min_error_rate - 1e-12)


def influence_distance(scores: np.ndarray) -> np.ndarray:
    """``d(a, b) = max(1 − I(a,b)/sqrt(I(a,a) I(b,b)), 0)`` from a square score matrix ``[n, n]``.

    Self-influences (the diagonal) must be positive: a zero gradient has no direction.
    Returns a symmetric ``[n, n]`` float64 matrix with a zero diagonal.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"influence scores must be a square matrix, got shape {s.shape}")
    diag = np.diag(s)
    if np.any(diag <= 0):
        bad = np.flatnonzero(diag <= 0)
        raise ValueError(f"self-influence I(a, a) must be > 0; rows {bad[:10].tolist()} have "
                         f"{diag[bad[:10]].tolist()}")
    d = np.maximum(1.0 - s / np.sqrt(np.outer(diag, diag)), 0.0)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return d


def cluster_by_distance(distance: np.ndarray, threshold: float = DISTANCE_THRESHOLD,
                        min_size: int = MIN_CLUSTER_SIZE, linkage: str = "average") -> list[np.ndarray]:
    """Agglomerative clusters (sklearn, precomputed) of at least ``min_size`` members.

    Returns index arrays (ascending) sorted by size, largest first (ties: smallest index).
    """

    d = np.asarray(distance, np.float64)
    if len(d) < 2:
        return [np.arange(len(d))] if len(d) >= min_size else []
    labels = AgglomerativeClustering(n_clusters=None, distance_threshold=float(threshold),
                                     metric="precomputed", linkage=linkage).fit_predict(d)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    groups = [g for g in groups if len(g) >= int(min_size)]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


# ----------------------------------------------------------------------------- pipeline

@dataclasses.dataclass
class Cluster:
    members: list[int]  # training example ids
    positions: list[int]  # rows in the training split
    labels: list[int]  # given labels
    predictions: list[int]  # majority prediction of the N models ([] without models)
    mean_distance: float  # mean pairwise influence distance inside the cluster
    common_tokens: list[tuple[str, int]]  # (token, number of pairs with it in their top 5)
    texts: list[str]


@dataclasses.dataclass
class ClusterReport:
    method: str
    num_models: int
    min_error_rate: float
    threshold: float
    num_hard: int
    label_names: list[str]
    clusters: list[Cluster]

    def to_json(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "clusters"},
                "clusters": [dataclasses.asdict(c) for c in self.clusters]}

    def markdown(self, max_texts: int = 5, text_chars: int = 160) -> str:
        names = self.label_names
        lines = [f"# Mislabel clusters ({self.method}, influence distance, threshold {self.threshold})", "",
                 f"{self.num_hard} hard training examples (misclassified by ≥ {self.min_error_rate:.0%} "
                 f"of {self.num_models} models); {len(self.clusters)} clusters of ≥ {MIN_CLUSTER_SIZE} "
                 "members. Common words: tokens most often among the top-5 contributors (start/end "
                 "tokens left out) to the pairwise TracIn-WE scores inside the cluster "
                 "(count = pairs).", "",
                 "| cluster | size | common words | predicted label | given label | mean distance |",
                 "|---|---:|---|---|---|---:|"]
        for i, c in enumerate(self.clusters, 1):
            words = ", ".join(f"{t} ({n})" for t, n in c.common_tokens)
            pred = _majority_name(c.predictions, names) if c.predictions else "n/a"
            given = _majority_name(c.labels, names)
            lines.append(f"| {i} | {len(c.members)} | {words} | {pred} | {given} | {c.mean_distance:.3f} |")
        for i, c in enumerate(self.clusters, 1):
            lines += ["", f"## Cluster {i}", ""]
            preds = c.predictions or [None] * len(c.members)
            for m, y, p, t in list(zip(c.members, c.labels, preds, c.texts))[:max_texts]:
                short = t if len(t) <= text_chars else t[:text_chars] + "…"
                predicted = f", predicted *{names[p]}*" if p is not None else ""
                lines.append(f"- [{m}] given *{names[y]}*{predicted}: {short}")
            if len(c.members) > max_texts:
                lines.append(f"- … {len(c.members) - max_texts} more")
        return "\n".join(lines) + "\n"


def _majority_name(values: Sequence[int], names: Sequence[str]) -> str:
    counts = Counter(int(v) for v in values)
    top, n = counts.most_common(1)[0]
    return f"{names[top]} ({n}/{len(values)})"


def train_models(setup, seeds: Sequence[int], *, epochs: int | None = None, mesh=None,
                 progress: bool = False) -> np.ndarray:
    """Softmax probabilities ``[R, N, C]`` on the training set of R models trained on all of it
    (one per seed, as ``train`` with that seed and ``epochs``, default the run's), via the
    vmapped replica trainer."""
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, mesh=mesh, epochs=epochs)
    keep = np.ones(len(setup.train.labels), bool)
    report = None
    if progress:
        report = lambda done, total: log.info("replicas: %d/%d device calls", done, total)
    run = trainer.train([ReplicaSpec(seed=int(s), keep=keep) for s in seeds], progress=report)
    # One model at a time through the trainer's own predict_proba: ReplicaTrainer.predict
    # (jit of a vmap over replicas sharded on the mesh) returns wrong CNN probabilities on
    # multi-device CPU meshes (XLA partitioning of the vmapped convolution).
    params = jax.device_get(run.params)
    eval_mesh = mesh or make_local_mesh()
    batch = int(setup.cfg.train.eval_batch_size)
    return np.stack([predict_proba(setup.model, jax.tree.map(lambda x, r=r: np.asarray(x[r]), params),
                                   setup.train, batch, eval_mesh) for r in range(len(seeds))])


def common_tokens(method, store, positions: Sequence[int], context, top_per_pair: int = TOP_TOKENS_PER_PAIR,
                  top: int = 5, skip_special: bool = True) -> list[tuple[str, int]]:
    """Tokens most often among each member pair's ``top_per_pair`` largest positive contributions.

    ``skip_special`` leaves out the start/end tokens: they are shared by every pair, so they
    say nothing about what a cluster has in common (the paper's tables list words only).
    """
    if not method.decomposable:
        return []
    weights = method.checkpoint_weights(store, store)
    records = gather_records(store, positions, method.read_fields(), [w.step for w in weights])
    skip = set(context.special_ids) if skip_special else set()
    counts: Counter = Counter()
    for a, b in combinations(range(len(positions)), 2):
        one = lambda i: {s: {k: v[i:i + 1] for k, v in block.items()} for s, block in records.items()}
        ids, values = pair_contributions(method, one(a), one(b), weights)  # most positive first
        kept = [int(t) for t, v in zip(ids, values) if v > 0 and int(t) not in skip]
        counts.update(kept[:top_per_pair])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    tokens = context.decode([t for t, _ in ranked]) if ranked else []
    return [(str(tok), int(n)) for tok, (_, n) in zip(tokens, ranked)]


def write_report(report: ClusterReport, out_dir: str | Path) -> dict[str, str]:
    """``clusters.md`` (tables as in appendix A) and ``clusters.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "clusters.json", report.to_json())
    atomic_write_text(out / "clusters.md", report.markdown())
    return {"json": str(out / "clusters.json"), "markdown": str(out / "clusters.md")}
