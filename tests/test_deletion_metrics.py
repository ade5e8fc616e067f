"""DEL±, AUC-DEL±, bootstrap std, LDS and mislabel metrics against direct computations."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from tracin_jax.deletion import metrics
from tracin_jax.deletion.plan import lds_keep_mask
from tracin_jax.deletion.report import markdown_table, table_rows


def test_deletion_values_and_auc_match_the_definition():
    rng = np.random.default_rng(0)
    removed = rng.random((3, 2, 4, 5))  # [T, G, K, S]
    baseline = rng.random((3, 5))
    dels = metrics.deletion_values(removed, baseline)
    for t in range(3):
        for g in range(2):
            for k in range(4):
                assert dels[t, g, k] == pytest.approx(removed[t, g, k].mean() - baseline[t].mean())
    np.testing.assert_allclose(metrics.auc_del(dels), dels.mean(-1))
    # a missing retrain (NaN) is left out of its mean, not counted as zero
    removed[0, 0, 0, 1] = np.nan
    d = metrics.deletion_values(removed, baseline)
    assert d[0, 0, 0] == pytest.approx(np.nanmean(removed[0, 0, 0]) - baseline[0].mean())


def test_bootstrap_std_matches_the_standard_error_of_the_means():
    rng = np.random.default_rng(1)
    s = 40
    removed = rng.normal(0.3, 0.2, size=(1, 1, 1, s))
    baseline = rng.normal(0.5, 0.1, size=(1, s))
    std = metrics.bootstrap_auc_std(removed, baseline, num_samples=3000, seed=0)[0]
    expected = np.sqrt(removed.var() / s + baseline.var() / s)  # plug-in bootstrap std of the difference
    assert std == pytest.approx(expected, rel=0.08)
    # runs without variance have no bootstrap spread
    flat = metrics.bootstrap_auc_std(np.full((2, 3, 4, 5), 0.2), np.full((2, 5), 0.7), num_samples=50)
    np.testing.assert_allclose(flat, 0.0, atol=1e-12)
    assert flat.shape == (3,)


def test_lds_is_spearman_per_test_point_averaged():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 30))  # [T, N]
    keep = np.stack([lds_keep_mask(30, 0.5, 0, j) for j in range(12)])
    assert keep.sum(1).tolist() == [15] * 12
    np.testing.assert_array_equal(keep[3], lds_keep_mask(30, 0.5, 0, 3))
    assert not np.array_equal(keep[0], keep[1])
    predicted = metrics.subset_predictions(scores, keep)
    np.testing.assert_allclose(predicted[4, 2], scores[2, keep[4]].sum())
    lds, per_test = metrics.linear_datamodeling_score(np.exp(predicted), predicted)  # monotone
    assert lds == pytest.approx(1.0) and np.allclose(per_test, 1.0)
    assert metrics.linear_datamodeling_score(-predicted, predicted)[0] == pytest.approx(-1.0)
    noisy = predicted + rng.normal(size=predicted.shape)
    expected = np.mean([stats.spearmanr(noisy[:, t], predicted[:, t]).statistic for t in range(3)])
    assert metrics.linear_datamodeling_score(noisy, predicted)[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[J, T\]"):
        metrics.linear_datamodeling_score(noisy[:, :2], predicted)
    with pytest.raises(ValueError, match="alpha"):
        lds_keep_mask(10, 0.0, 0, 0)


def test_mislabel_detection_matches_sklearn():
    rng = np.random.default_rng(3)
    flipped = np.zeros(200, bool)
    flipped[rng.choice(200, 20, replace=False)] = True
    scores = rng.normal(size=200) + 1.5 * flipped
    scores[:10] = scores[10:20]  # ties are handled like sklearn (average ranks)
    out = metrics.mislabel_detection(scores, flipped, inspect_fraction=0.1)
    assert out["auc"] == pytest.approx(roc_auc_score(flipped, scores))
    top = np.argsort(-scores, kind="stable")
    assert out["precision_at_num_flipped"] == pytest.approx(flipped[top[:20]].mean())
    assert out["recall_at_fraction"] == pytest.approx(flipped[top[:20]].sum() / 20)
    with pytest.raises(ValueError, match="both flipped and clean"):
        metrics.mislabel_detection(scores, np.zeros(200, bool))


def test_table_has_the_shape_of_table_4():
    summary = {"dataset": "toxicity", "methods": ["tracin_last", "tracin_we_topk"], "signs": ["+", "-"],
               "deletion": {m: {s: {"auc_del": v, "auc_del_std": 0.004} for s, v in (("+", -0.1), ("-", 0.15))}
                            for m in ("tracin_last", "tracin_we_topk")},
               "lds": {"tracin_we_topk": {"lds": 0.2, "lds_se": 0.01}}, "mislabel": {}}
    header, rows, records = table_rows(summary)
    assert header == ["dataset", "metric", "TR-last", "TR-WE-topk"]
    assert [r[1] for r in rows] == ["AUC-DEL+ ↓", "AUC-DEL− ↑", "LDS ↑"]
    assert rows[0][2] == "-0.100 ± 0.004" and rows[2][2] == "–" and rows[2][3] == "0.200 ± 0.010"
    text = markdown_table(header, rows)
    assert text.splitlines()[1] == "|---|---|---|---|" and len(text.splitlines()) == 5
    assert len(records) == 6
