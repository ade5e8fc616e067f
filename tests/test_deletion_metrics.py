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


def test_interval_helpers():
    reps = np.arange(101, dtype=float)[:, None] * np.ones((1, 2))
    reps[:, 1] = np.nan
    reps[0, 1] = 1.0  # one finite replicate: no interval
    ci = metrics.percentile_interval(reps, level=0.9)
    assert ci.shape == (2, 2) and ci[0] == pytest.approx([5.0, 95.0]) and np.isnan(ci[1]).all()
    with pytest.raises(ValueError, match="level"):
        metrics.percentile_interval(reps, level=95)
    assert metrics.excludes_zero([-0.2, -0.01]) is True and metrics.excludes_zero([-0.2, 0.0]) is False
    assert metrics.excludes_zero(None) is None and metrics.excludes_zero([np.nan, 1.0]) is None
    assert metrics.right_way([-0.1, 0.2, -0.3, np.nan], "+") == (2, 3)
    assert metrics.right_way([-0.1, 0.2, -0.3, np.nan], "-") == (1, 3)
    assert not metrics.spread_measurable(1, 1) and metrics.spread_measurable(2, 1) and metrics.spread_measurable(1, 2)
    means = metrics.bootstrap_means(np.asarray([1.0, 3.0]), num_samples=400, seed=0)
    assert set(np.unique(means)) <= {1.0, 2.0, 3.0} and abs(means.mean() - 2.0) < 0.15


def test_paired_bootstrap_uses_the_same_draws_everywhere():
    rng = np.random.default_rng(5)
    removed = rng.random((6, 3, 2, 4))  # [T, G, K, S]
    baseline = rng.random((6, 4))
    boot = metrics.paired_bootstrap(removed, baseline, pairs=[(0, 1), (2, 0)], num_samples=50, seed=3)
    small = metrics.paired_bootstrap(removed, baseline, pairs=[(0, 1), (2, 0)], num_samples=50, seed=3,
                                     max_chunk_elements=1)  # one replicate per chunk: same draws
    for key in ("auc", "curve", "diff"):
        np.testing.assert_allclose(boot[key], small[key])
    np.testing.assert_allclose(boot["auc"], boot["curve"].mean(-1))
    np.testing.assert_allclose(boot["diff"][:, 0], boot["auc"][:, 0] - boot["auc"][:, 1])  # no NaN: exact
    # replicate 0 recomputed by hand from the draws
    tests, seeds = metrics.bootstrap_indices(6, 4, 50, np.random.default_rng(3))
    t, s = tests[0], seeds[0]
    dels = np.stack([removed[t[i]][..., s[i]].mean(-1) - baseline[t[i], s[i]].mean() for i in range(6)])
    np.testing.assert_allclose(small["auc"][0], dels.mean(-1).mean(0))
    with pytest.raises(ValueError, match="baseline"):
        metrics.paired_bootstrap(removed, baseline[:, :2])


def test_table_cells_show_interval_resolution_and_counts():
    d = {"auc_del": -0.1, "auc_del_ci": [-0.15, -0.05], "auc_del_right_way": [7, 8], "auc_del_std": None}
    e = {"auc_del": 0.02, "auc_del_ci": [-0.01, 0.05], "auc_del_right_way": [5, 8], "auc_del_std": None}
    summary = {"dataset": "sst2", "methods": ["tracin_we_topk", "random"], "signs": ["+"], "seeds": [0],
               "deletion": {"tracin_we_topk": {"+": d}, "random": {"+": e}}, "lds": {}, "mislabel": {}}
    header, rows, records = table_rows(summary)
    assert rows == [["sst2", "AUC-DEL+ ↓", "-0.100 [-0.150, -0.050]* [7/8]", "0.020 [-0.010, 0.050] [5/8]"]]
    assert records[0]["ci_low"] == -0.15 and records[0]["resolved"] == 1 and records[1]["resolved"] == 0
    assert records[0]["std"] == "" and records[0]["right_way"] == "7/8"
