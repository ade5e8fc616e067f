"""Pure metrics of retraining results: DEL±, AUC-DEL±, bootstrap, LDS, mislabel detection, fixing.

Notation (SPEC "Case-deletion evaluation"): for test point x' with gold class c,
``DEL±(x', k, I) = E_seeds[f_c(x'; Θ_{±;k})] − E_seeds[f_c(x'; Θ)]`` and
``AUC-DEL± = mean over the k grid of DEL±``, averaged over test points; its
standard deviation is bootstrapped over retraining runs (appendix F).
Arrays carry NaN where a retraining is missing (failed or not run yet).
"""
from __future__ import annotations

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


def _nanmean(x: np.ndarray, axis) -> np.ndarray:
    """Mean ignoring NaN; NaN (no warning) where a slice is all NaN."""
    x = np.asarray(x, np.float64)
    count = np.sum(np.isfinite(x), axis=axis)
    total = np.nansum(np.where(np.isfinite(x), x, np.nan), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
