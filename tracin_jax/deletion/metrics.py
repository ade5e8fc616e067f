"""Pure metrics of retraining results: DEL±, AUC-DEL±, bootstraps, LDS, mislabel detection.

Notation (docs/method.md "Case-deletion evaluation"): for test point x' with gold class c,
``DEL±(x', k, I) = E_seeds[f_c(x'; Θ_{±;k})] − E_seeds[f_c(x'; Θ)]`` and
``AUC-DEL± = mean over the k grid of DEL±``, averaged over test points.

Two bootstraps:
- :func:`paired_bootstrap` (the report's intervals): resamples test points with
  replacement and, within each resampled test point, its seeds with replacement; the
  same draws serve every method, sign, k and the no-removal baseline, so differences
  between methods are paired. With one seed it resamples test points alone.
- :func:`bootstrap_auc_std` (appendix F): the test points fixed, resamples each
  cell's retraining runs; it measures retraining noise only, and nothing with one seed.

Arrays carry NaN where a retraining is missing (failed or not run yet).
:class:`SweepData` arranges a manifest's result files as those arrays.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def deletion_values(removed: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """DEL per cell: ``nanmean_s removed[..., s] − nanmean_s baseline[t, s]``.

    Args:
      removed: ``[T, ..., S]`` gold-class probabilities after removal, S seeds.
      baseline: ``[T, S]`` gold-class probabilities of the no-removal retrains.
    Returns ``[T, ...]`` float64.
    """
    removed = np.asarray(removed, np.float64)
    base = _nanmean(np.asarray(baseline, np.float64), axis=-1)
    return _nanmean(removed, axis=-1) - base.reshape(base.shape + (1,) * (removed.ndim - 2))


def auc_del(deletion: np.ndarray) -> np.ndarray:
    """Mean over the k grid (last axis) of DEL: ``[..., K] -> [...]``."""
    return _nanmean(np.asarray(deletion, np.float64), axis=-1)


def bootstrap_auc_std(removed: np.ndarray, baseline: np.ndarray, *, num_samples: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """Bootstrap standard deviation of AUC-DEL averaged over test points (appendix F).

    Each replicate resamples, with replacement, the retraining runs (seeds) of every
    cell independently — each removal set's runs and each test point's baseline
    runs — and recomputes ``mean_t mean_k DEL``.

    Args:
      removed: ``[T, G, K, S]`` (G = any flattening of method × sign).
      baseline: ``[T, S]``.
    Returns ``[G]`` float64.
    """
    removed = np.asarray(removed, np.float64)
    baseline = np.asarray(baseline, np.float64)
    t, g, k, s = removed.shape
    rng = np.random.default_rng(seed)
    out = np.zeros((num_samples, g))
    for b in range(num_samples):
        pick = rng.integers(0, s, size=(t, g, k, s))
        resampled = np.take_along_axis(removed, pick, axis=-1)
        base_pick = rng.integers(0, baseline.shape[1], size=baseline.shape)
        base = np.take_along_axis(baseline, base_pick, axis=-1)
        dels = deletion_values(resampled, base)  # [T, G, K]
        out[b] = _nanmean(auc_del(dels), axis=0)
    return out.std(axis=0, ddof=1) if num_samples > 1 else np.zeros(g)


def bootstrap_indices(num_tests: int, num_seeds: int, num_samples: int, rng: np.random.Generator,
                      resample_seeds: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Draws of the paired two-stage bootstrap.

    Returns ``tests [B, T]`` (test-point rows drawn with replacement) and ``seeds [B, T, S]``
    (for each drawn test point, seed columns drawn with replacement; ``arange(S)`` when
    ``resample_seeds`` is false or there is one seed).
    """
    tests = rng.integers(0, num_tests, size=(num_samples, num_tests))
    if resample_seeds and num_seeds > 1:
        seeds = rng.integers(0, num_seeds, size=(num_samples, num_tests, num_seeds))
    else:
        seeds = np.broadcast_to(np.arange(num_seeds), (num_samples, num_tests, num_seeds))
    return tests, seeds


def paired_bootstrap(removed: np.ndarray, baseline: np.ndarray, *, pairs=(), num_samples: int = 1000,
                     seed: int = 0, resample_seeds: bool = True,
                     max_chunk_elements: int = 4_000_000) -> dict[str, np.ndarray]:
    """Bootstrap replicates of AUC-DEL, DEL(k) and paired differences (module docstring).

    Each replicate draws test points with replacement and, within each drawn test point,
    seeds with replacement (:func:`bootstrap_indices`); every group, k and the baseline
    use the same draws. DEL is then recomputed from the drawn runs exactly as
    :func:`deletion_values` does, and averaged over the drawn test points.

    Args:
      removed: ``[T, G, K, S]`` gold-class probabilities after removal (G = any
        flattening of method × sign).
      baseline: ``[T, S]`` no-removal probabilities, same seed columns.
      pairs: ``(a, b)`` group indices; ``diff`` holds ``mean_t (AUC_a(t) − AUC_b(t))``.
    Returns ``{"auc": [B, G], "curve": [B, G, K], "diff": [B, P]}`` float64.
    """
    removed = np.asarray(removed, np.float64)
    baseline = np.asarray(baseline, np.float64)
    t, g, k, s = removed.shape
    if baseline.shape != (t, s):
        raise ValueError(f"baseline {baseline.shape} does not match removed {removed.shape}: expected {(t, s)}")
    pairs = [(int(a), int(b)) for a, b in pairs]
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    runs = removed.transpose(0, 3, 1, 2)  # [T, S, G, K]
    rng = np.random.default_rng(seed)
    out = {"auc": np.full((num_samples, g), np.nan), "curve": np.full((num_samples, g, k), np.nan),
           "diff": np.full((num_samples, len(pairs)), np.nan)}
    all_tests, all_seeds = bootstrap_indices(t, s, num_samples, rng, resample_seeds)  # chunking-independent
    chunk = max(1, int(max_chunk_elements) // max(t * s * g * k, 1))
    for start in range(0, num_samples, chunk):
        b = min(chunk, num_samples - start)
        tests, seeds = all_tests[start:start + b], all_seeds[start:start + b]
        drawn = runs[tests[..., None], seeds]  # [b, T, S, G, K]
        base = _nanmean(baseline[tests[..., None], seeds], axis=-1)  # [b, T]
        dels = _nanmean(drawn, axis=2) - base[..., None, None]  # [b, T, G, K]
        per_test = _nanmean(dels, axis=-1)  # [b, T, G]
        rows = slice(start, start + b)
        out["auc"][rows] = _nanmean(per_test, axis=1)
        out["curve"][rows] = _nanmean(dels, axis=1)
        if pairs:
            out["diff"][rows] = _nanmean(per_test[:, :, first] - per_test[:, :, second], axis=1)
    return out


def bootstrap_means(values: np.ndarray, *, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Replicates ``[B, ...]`` of the NaN-mean over axis 0 of ``values [T, ...]``, the rows
    (test points) drawn with replacement."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, values.shape[0], size=(num_samples, values.shape[0]))
    return _nanmean(values[rows], axis=1)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval ``[..., 2]`` (low, high) over axis 0 of bootstrap replicates;
    NaN where fewer than two replicates are finite."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    replicates = np.asarray(replicates, np.float64)
    finite = np.isfinite(replicates).sum(axis=0)
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    if replicates.shape[0] == 0:
        return np.full(replicates.shape[1:] + (2,), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        bounds = np.nanpercentile(replicates, q, axis=0)
    bounds = np.moveaxis(np.asarray(bounds, np.float64), 0, -1)
    return np.where((finite >= 2)[..., None], bounds, np.nan)


def spread_measurable(num_tests: int, num_seeds: int) -> bool:
    """Whether a bootstrap has anything to resample: two test points, or two seeds."""
    return int(num_tests) >= 2 or int(num_seeds) >= 2


def excludes_zero(interval) -> bool | None:
    """``True`` when the interval lies strictly on one side of 0 (resolved), ``None`` when
    there is no interval."""
    if interval is None:
        return None
    lo, hi = (float(v) if v is not None else float("nan") for v in interval)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return bool(lo > 0.0 or hi < 0.0)


def right_way(values: np.ndarray, sign: str) -> tuple[int, int]:
    """``(r, n)``: r of the n finite values moved the right way: ``< 0`` for DEL+ (or a
    difference of DEL+), ``> 0`` for DEL−."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    moved = values < 0 if sign == "+" else values > 0
    return int(moved.sum()), int(len(values))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (NaN pairs dropped; NaN if constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def linear_datamodeling_score(measured: np.ndarray, predicted: np.ndarray) -> tuple[float, np.ndarray]:
    """LDS: per test point, the Spearman correlation over training subsets between the
    measured output and the predicted one (sum of influence scores over the subset).

    Args:
      measured: ``[J, T]`` model output of test point t after training on subset j.
      predicted: ``[J, T]`` ``Σ_{i ∈ subset j} score(t, i)``.
    Returns ``(mean over test points, per-test-point correlations [T])``.
    """
    measured, predicted = np.asarray(measured), np.asarray(predicted)
    if measured.shape != predicted.shape or measured.ndim != 2:
        raise ValueError(f"measured {measured.shape} and predicted {predicted.shape} must both be [J, T]")
    per_test = np.asarray([spearman(measured[:, t], predicted[:, t]) for t in range(measured.shape[1])])
    return _nanmean(per_test, axis=0), per_test


def subset_predictions(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``[J, T]``: ``Σ_i keep[j, i] · scores[t, i]`` for keep masks ``[J, N]``, scores ``[T, N]``."""
    return np.asarray(keep, np.float64) @ np.asarray(scores, np.float64).T


def mislabel_detection(self_influence: np.ndarray, flipped: np.ndarray,
                       inspect_fraction: float = 0.1) -> dict[str, float]:
    """How well ranking by self-influence (largest first) finds flipped labels.

    Returns ``auc`` (ROC AUC of self-influence as a flipped-label score),
    ``precision_at_num_flipped`` (share flipped among the top |flipped|),
    ``recall_at_fraction`` (share of flips found inspecting the top
    ``inspect_fraction`` of the training set) and the counts.
    """
    scores = np.asarray(self_influence, np.float64)
    flipped = np.asarray(flipped, bool)
    if scores.shape != flipped.shape:
        raise ValueError(f"self_influence {scores.shape} and flipped {flipped.shape} differ")
    n, f = len(scores), int(flipped.sum())
    if f == 0 or f == n:
        raise ValueError(f"mislabel detection needs both flipped and clean examples, got {f} of {n}")
    ranks = stats.rankdata(scores)  # average ranks for ties: the Mann-Whitney AUC
    auc = (ranks[flipped].sum() - f * (f + 1) / 2) / (f * (n - f))
    order = np.argsort(-scores, kind="stable")
    inspected = max(1, int(round(inspect_fraction * n)))
    return {"auc": float(auc), "precision_at_num_flipped": float(flipped[order[:f]].mean()),
            "recall_at_fraction": float(flipped[order[:inspected]].sum() / f),
            "inspect_fraction": float(inspect_fraction), "num_flipped": f, "num_train": n}


class SweepData:
    """A manifest's results arranged as arrays (NaN where a retrain is missing).

    ``baseline [E, S]``: gold-class probability of each evaluation point for each
    seed without removal; ``removed [T, M, G, K, S]`` after removing the top-k of
    sign G for method M; ``baseline_accuracy [S]`` (held-out); ``wall_time_s``: the
    measured per-job wall time of each finished result that records one (job id -> s).
    """

    def __init__(self, manifest: dict, results: dict[str, dict]):
        self.manifest, self.results = manifest, results
        self.eval_points = [int(i) for i in manifest["eval_points"]]
        self.col = {e: i for i, e in enumerate(self.eval_points)}
        for r in results.values():
            if r["eval_ids"] != self.eval_points:
                raise ValueError(f"result {r['id']} was evaluated on other points than the manifest's")
        self.seeds = manifest["seeds"]
        self.seed_col = {s: i for i, s in enumerate(self.seeds)}
        self.methods, self.signs, self.k_grid = manifest["methods"], manifest["signs"], manifest["k_grid"]
        self.test_ids = [p["id"] for p in manifest["test_points"]]
        s = len(self.seeds)
        self.baseline = np.full((len(self.eval_points), s), np.nan)
        self.baseline_pred = np.full((len(self.eval_points), s), -1)
        self.baseline_accuracy = np.full(s, np.nan)
        self.removed = np.full((len(self.test_ids), len(self.methods), len(self.signs), len(self.k_grid), s), np.nan)
        self.wall_time_s = {jid: float(r["wall_time_s"]) for jid, r in results.items()
                            if r.get("wall_time_s") is not None and np.isfinite(float(r["wall_time_s"]))}
        t_row = {t: i for i, t in enumerate(self.test_ids)}
        for job in manifest["jobs"]:
            result = results.get(job["id"])
            if result is None:
                continue
            for tag in job["tags"]:
                if tag["kind"] == "baseline":
                    c = self.seed_col[job["seed"]]
                    self.baseline[:, c] = result["gold_prob"]
                    self.baseline_pred[:, c] = result["pred"]
                    self.baseline_accuracy[c] = result["heldout_accuracy"]
                elif tag["kind"] == "del":
                    self.removed[t_row[tag["test"]], self.methods.index(tag["method"]),
                                 self.signs.index(tag["sign"]), self.k_grid.index(tag["k"]),
                                 self.seed_col[job["seed"]]] = result["gold_prob"][self.col[tag["test"]]]

    def test_baseline(self) -> np.ndarray:
        """``[T, S]``: the baseline rows of the test points."""
        return self.baseline[[self.col[t] for t in self.test_ids]]

    def auc_per_seed(self) -> np.ndarray:
        """``[T, M, G, S]``: AUC-DEL of each test point computed from one seed's runs
        (``mean_k removed[..., s] − baseline[t, s]``)."""
        base = self.test_baseline()
        return _nanmean(self.removed, axis=3) - base[:, None, None, :]


def _nanmean(x: np.ndarray, axis) -> np.ndarray:
    """Mean ignoring NaN; NaN (no warning) where a slice is all NaN."""
    x = np.asarray(x, np.float64)
    count = np.sum(np.isfinite(x), axis=axis)
    total = np.nansum(np.where(np.isfinite(x), x, np.nan), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
