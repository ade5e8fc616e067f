"""``sweep report`` statistics on sweeps written directly (manifest + result files, no
retraining): paired bootstrap intervals against closed forms, paired differences and
their [r/n] counts, no "± 0.000" for unmeasured spreads, the power advisor against the
textbook sample-size formula."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tracin_jax.deletion import metrics, power
from tracin_jax.deletion.plan import FORMAT, MANIFEST
from tracin_jax.deletion.report import sweep_report, table_markdown
from tracin_jax.files import atomic_write_json

REPO = Path(__file__).resolve().parent.parent


def write_sweep(root: Path, removed: np.ndarray, baseline: np.ndarray, *, methods=("a", "b"),
                signs=("+", "-"), k_grid=(1,), wall_time_s: float | None = 30.0, bootstrap: int = 1000) -> Path:
    """A sweep directory whose results give exactly ``removed [T, M, G, K, S]`` and
    ``baseline [T, S]`` (gold-class probabilities); NaN entries are left unfinished."""
    t, m, g, k, s = removed.shape
    assert (m, g, k) == (len(methods), len(signs), len(k_grid)) and baseline.shape == (t, s)
    test_ids = [100 + i for i in range(t)]
    seeds = list(range(s))
    jobs, results = [], []

    def result(jid, seed, gold):
        return {"id": jid, "status": "ok", "seed": seed, "eval_ids": test_ids, "gold_prob": gold,
                "pred": [0] * t, "heldout_accuracy": 0.8, "heldout_size": 10,
                **({"wall_time_s": wall_time_s} if wall_time_s is not None else {})}

    for si, seed in enumerate(seeds):
        jid = f"base{seed}"
        jobs.append({"id": jid, "seed": seed, "removed": [], "tags": [{"kind": "baseline"}]})
        results.append(result(jid, seed, [float(v) for v in baseline[:, si]]))
    for ti, tid in enumerate(test_ids):
        for mi, method in enumerate(methods):
            for gi, sign in enumerate(signs):
                for ki, kk in enumerate(k_grid):
                    for si, seed in enumerate(seeds):
                        jid = f"del-{tid}-{method}-{gi}-{kk}-{seed}"
                        jobs.append({"id": jid, "seed": seed, "removed": [ti, mi, kk],
                                     "tags": [{"kind": "del", "test": tid, "method": method, "sign": sign, "k": kk}]})
                        if np.isfinite(removed[ti, mi, gi, ki, si]):
                            gold = [0.5] * t
                            gold[ti] = float(removed[ti, mi, gi, ki, si])
                            results.append(result(jid, seed, gold))
    manifest = {"format": FORMAT, "dataset": "planted", "num_train": 50, "epochs": 1,
                "sweep": {"bootstrap": bootstrap}, "methods": list(methods), "k_grid": list(k_grid),
                "signs": list(signs), "seeds": seeds, "test_points": [{"id": i, "label": 0} for i in test_ids],
                "fix_points": [], "eval_points": test_ids, "heldout_rows": [], "lds": None, "mislabel": None,
                "fix": None, "jobs": jobs}
    atomic_write_json(root / MANIFEST, manifest)
    (root / "results").mkdir()
    for r in results:  # plain writes: thousands of small files, no fsync needed in a test
        (root / "results" / f"{r['id']}.json").write_text(json.dumps(r))
    return root


def shaped(values: np.ndarray, signs: int = 1) -> np.ndarray:
    """``[T, M, S]`` per-test-point values -> ``[T, M, G, K=1, S]`` (same for every sign)."""
    return np.repeat(values[:, :, None, None, :], signs, axis=2)


def test_interval_half_width_matches_the_normal_closed_form(tmp_path):
    rng = np.random.default_rng(0)
    n, sigma = 400, 0.1
    dels = rng.normal(-0.05, sigma, size=n)
    baseline = np.full((n, 1), 0.6)
    removed = shaped((baseline + dels[:, None])[:, None, :], 1)  # one method, DEL+, one seed
    summary = sweep_report(write_sweep(tmp_path, removed, baseline, methods=("a",), signs=("+",),
                                       bootstrap=2000), plots=False)
    d = summary["deletion"]["a"]["+"]
    lo, hi = d["auc_del_ci"]
    assert d["auc_del"] == pytest.approx(dels.mean())
    expected = 1.96 * dels.std(ddof=1) / math.sqrt(n)
    assert (hi - lo) / 2 == pytest.approx(expected, rel=0.1)
    assert lo < d["auc_del"] < hi and d["auc_del_resolved"] is True
    assert summary["intervals"]["over"] == "test points" and d["auc_del_std"] is None  # one seed: no app. F
    assert d["auc_del_right_way"] == [int((dels < 0).sum()), n]


def test_paired_bootstrap_draws_test_points_and_seeds_together():
    """Two-stage draws: per-test-point means over drawn seeds; the variance of the bootstrap
    mean is Var_t(x̄_t)/T + mean_t(within_t/S)/T (plug-in), and pairs share the draws."""
    rng = np.random.default_rng(1)
    t, s = 300, 4
    x = rng.normal(0.0, 0.1, size=(t, 1)) + rng.normal(0.0, 0.2, size=(t, s))  # removed
    removed = np.stack([x, x - 0.03], axis=1)[:, :, None, :]  # [T, G=2, K=1, S]; group 1 = group 0 − 0.03
    baseline = np.zeros((t, s))
    boot = metrics.paired_bootstrap(removed, baseline, pairs=[(1, 0)], num_samples=3000, seed=0)
    means = x.mean(1)
    expected = math.sqrt(means.var() / t + x.var(axis=1).mean() / s / t)
    assert boot["auc"][:, 0].std() == pytest.approx(expected, rel=0.1)
    np.testing.assert_allclose(boot["diff"][:, 0], -0.03, atol=1e-12)  # paired: the noise cancels
    one_seed = metrics.paired_bootstrap(removed[..., :1], baseline[:, :1], num_samples=500, seed=0)
    assert one_seed["auc"][:, 0].std() == pytest.approx(x[:, 0].std() / math.sqrt(t), rel=0.15)


def test_zero_spread_gives_the_point_and_one_point_one_seed_no_interval(tmp_path):
    baseline = np.full((5, 2), 0.7)
    removed = shaped(np.full((5, 2, 2), 0.6), 2)  # every test point and seed: DEL = -0.1
    summary = sweep_report(write_sweep(tmp_path / "flat", removed, baseline), plots=False)
    for m in ("a", "b"):
        for sign in ("+", "-"):
            lo, hi = summary["deletion"][m][sign]["auc_del_ci"]
            assert lo == pytest.approx(-0.1, abs=1e-12) and hi == pytest.approx(-0.1, abs=1e-12)
            assert summary["deletion"][m][sign]["auc_del_std"] == pytest.approx(0.0, abs=1e-12)
    lone = sweep_report(write_sweep(tmp_path / "lone", shaped(np.asarray([[[0.4], [0.5]]]), 2),
                                    np.asarray([[0.6]])), plots=False)
    assert lone["intervals"]["over"] is None
    d = lone["deletion"]["a"]["+"]
    assert d["auc_del"] == pytest.approx(-0.2) and d["auc_del_ci"] is None and d["auc_del_std"] is None
    assert d["auc_del_resolved"] is None and all(ci is None for ci in d["del_ci"])
    assert all(x["ci"] is None and x["resolved"] is None for x in lone["differences"])
    table = (tmp_path / "lone" / "report" / "table.md").read_text()
    assert "| planted | AUC-DEL+ ↓ | -0.200 [1/1] | -0.100 [1/1] |" in table  # no interval, no ±
    assert "| planted | AUC-DEL+ ↓ | a − b | -0.100 | [1/1] |" in table
    assert " ± " not in table and "No intervals (one test point and one seed" in table
    assert lone["power"] is None and not (tmp_path / "lone" / "report" / "power.md").exists()


def test_paired_differences_count_and_resolve(tmp_path):
    rng = np.random.default_rng(2)
    t = 10
    b = np.clip(rng.normal(-0.02, 0.15, size=t), -0.35, 0.35)  # method b's DEL+ per test point, very noisy
    a = b - 0.1  # method a lowers the gold probability more on 9 of 10 points...
    a[3] = b[3] + 0.02  # ...and less on one
    rnd = rng.normal(0.0, 0.01, size=t)
    baseline = np.full((t, 1), 0.5)
    removed = shaped(0.5 + np.stack([a, b, rnd], axis=1)[:, :, None], 1)  # [T, 3, 1, 1, 1]
    summary = sweep_report(write_sweep(tmp_path, removed, baseline, methods=("a", "b", "random"), signs=("+",)),
                           plots=False)
    diffs = {(d["a"], d["b"]): d for d in summary["differences"]}
    assert list(diffs) == [("a", "random"), ("b", "random"), ("a", "b")]  # against random first
    ab = diffs[("a", "b")]
    assert ab["difference"] == pytest.approx((a - b).mean())
    assert ab["right_way"] == 9 and ab["test_points"] == 10
    assert ab["resolved"] is True and ab["ci"][1] < 0
    # the individual methods are too noisy to resolve against random on 10 points
    assert diffs[("b", "random")]["resolved"] is False
    table = (tmp_path / "report" / "table.md").read_text()
    row = next(line for line in table.splitlines() if "| a − b |" in line)
    assert row.rstrip().endswith("| [9/10] |") and "]* |" in row
    assert "* : the interval excludes 0 (resolved)" in table and "over test points" in table
    assert "± 0.000" not in table
    csv = (tmp_path / "report" / "differences.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,metric,a,b,difference,ci_low,ci_high,resolved") and len(csv) == 4


def test_one_seed_table_never_prints_unmeasured_spread(tmp_path):
    """The complaint's shape: 8 test points, 3 methods, k ∈ {20, 50}, one seed."""
    rng = np.random.default_rng(3)
    t = 8
    baseline = rng.uniform(0.6, 0.9, size=(t, 1))
    effect = np.asarray([-0.15, 0.0, 0.0])[None, :, None, None, None] * np.asarray([1, -1])[None, None, :, None, None]
    removed = baseline[:, None, None, None, :] + effect + rng.normal(0, 0.05, size=(t, 3, 2, 2, 1))
    sweep = write_sweep(tmp_path, np.clip(removed, 0, 1), baseline, methods=("tracin_we_topk", "tracin_last", "random"),
                        k_grid=(20, 50))
    summary = sweep_report(sweep, plots=True)
    table = (sweep / "report" / "table.md").read_text()
    assert "± 0.000" not in table and "σ retrains" not in table  # one seed: app. F not measured
    for m in summary["methods"]:
        for sign in ("+", "-"):
            d = summary["deletion"][m][sign]
            assert d["auc_del_std"] is None and d["auc_del_ci"] is not None
            assert set(d) >= {"auc_del", "auc_del_per_test", "auc_del_ci", "auc_del_right_way", "del_ci"}
    assert len(summary["differences"]) == 2 * 3
    assert (sweep / "report" / "power.md").exists() and summary["power"]["seed_component_measured"] is False
    on_disk = json.loads((sweep / "report" / "summary.json").read_text())
    assert on_disk["differences"][0]["a"] == "tracin_we_topk" and on_disk["differences"][0]["b"] == "random"
    # two seeds: the appendix-F std is measured and gets its row
    two = np.concatenate([removed, removed + rng.normal(0, 0.02, size=removed.shape)], axis=-1)
    sweep2 = write_sweep(tmp_path / "two", np.clip(two, 0, 1), np.concatenate([baseline, baseline], 1),
                         methods=("tracin_we_topk", "tracin_last", "random"), k_grid=(20, 50))
    summary2 = sweep_report(sweep2, plots=False)
    table2 = (sweep2 / "report" / "table.md").read_text()
    assert "AUC-DEL+ σ retrains (app. F)" in table2 and "over test points and seeds together" in table2
    assert summary2["intervals"]["over"] == "test points and seeds"
    assert summary2["deletion"]["random"]["+"]["auc_del_std"] > 0


def test_older_summaries_print_std_only_where_measured():
    base = {"dataset": "d", "methods": ["a"], "signs": ["+"], "lds": {}, "mislabel": {}}
    one = dict(base, seeds=[0], deletion={"a": {"+": {"auc_del": -0.1, "auc_del_std": 0.0}}})
    two = dict(base, seeds=[0, 1], deletion={"a": {"+": {"auc_del": -0.1, "auc_del_std": 0.02}}})
    assert "± 0.000" not in table_markdown(one) and "| -0.100 |" in table_markdown(one)
    assert "| -0.100 ± 0.020 |" in table_markdown(two)


def test_power_advice_matches_the_textbook_formula(tmp_path):
    rng = np.random.default_rng(4)
    t, s = 300, 3
    sigma_t, sigma_s = 0.05, 0.08
    b = rng.normal(-0.02, 0.03, size=(t, 1)) + rng.normal(0, 0.02, size=(t, s))
    a = b - 0.03 + rng.normal(0, sigma_t, size=(t, 1)) + rng.normal(0, sigma_s, size=(t, s))
    baseline = np.full((t, s), 0.5) + rng.normal(0, 0.03, size=(t, s))  # probabilities stay in [0, 1]
    removed = shaped(baseline[:, None, :] + np.stack([a, b], axis=1), 1)
    removed = np.repeat(removed, 2, axis=3)  # two k values, same runs
    sweep = write_sweep(tmp_path, removed, baseline, methods=("a", "b"), signs=("+",), k_grid=(5, 10),
                        wall_time_s=36.0)
    advice = power.advise_sweep(sweep, effect=0.05, seeds_options=(1, 2, 5))
    pair = advice["pairs"][0]
    assert (pair["a"], pair["b"]) == ("a", "b") and pair["mean_difference"] == pytest.approx(-0.03, abs=0.02)
    # d(t, s) = a − b = −0.03 + u_t + e_ts: b's own noise and the baseline cancel (paired seeds)
    assert pair["sigma_within"] == pytest.approx(sigma_s, rel=0.1)
    assert pair["sigma_between"] == pytest.approx(sigma_t, rel=0.25)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert advice["z_alpha"] + advice["z_power"] == pytest.approx(z)
    for row in pair["needed"]:
        sig = math.sqrt(pair["sigma_between"] ** 2 + pair["sigma_within"] ** 2 / row["seeds"])
        assert row["sigma"] == pytest.approx(sig)
        assert row["n_exact"] == pytest.approx((z * sig / 0.05) ** 2)
        assert row["test_points"] == max(2, math.ceil(row["n_exact"]))
        # cost: methods × signs × k values × seeds per test point, plus a baseline per seed
        assert row["retrainings"] == row["test_points"] * 2 * 1 * 2 * row["seeds"] + row["seeds"]
        assert row["hours"] == pytest.approx(row["retrainings"] * 36.0 / 3600)
    ns = [r["test_points"] for r in pair["needed"]]
    assert ns == sorted(ns, reverse=True)  # more seeds, fewer test points
    assert advice["recommendation"]["retrainings"] == min(r["retrainings"] for r in advice["pooled"]["+"]["needed"])
    assert power.power_at(0.1, 0.05, 32) == pytest.approx(stats.norm.cdf(0.05 * math.sqrt(32) / 0.1 - 1.959964)
                                                          + stats.norm.cdf(-0.05 * math.sqrt(32) / 0.1 - 1.959964))
    text = power.render_markdown(advice)
    assert "| AUC-DEL+ | a − b |" in text and "retraining-hours" in text
    # textbook example: σ = 0.1, δ = 0.05 -> ((1.96 + 0.8416)·2)² = 31.4 -> 32 test points
    assert power.required_test_points(0.1, 0.05) == pytest.approx(31.40, abs=0.01)


def test_power_with_one_seed_is_an_upper_bound_and_reported(tmp_path):
    rng = np.random.default_rng(5)
    t = 8
    baseline = np.full((t, 1), 0.8)
    removed = shaped(0.8 + np.stack([rng.normal(-0.15, 0.1, t), rng.normal(0, 0.05, t)], 1)[:, :, None], 1)
    sweep = write_sweep(tmp_path, removed, baseline, methods=("a", "random"), signs=("+",), wall_time_s=None)
    summary = sweep_report(sweep, plots=False)
    advice = summary["power"]
    pair = advice["pairs"][0]
    assert pair["sigma_within"] is None and pair["sigma_between"] is None and pair["sigma_single"] > 0
    assert len({r["test_points"] for r in pair["needed"]}) == 1  # no gain assumed from more seeds
    assert all(r["hours"] is None for r in pair["needed"])  # no wall time recorded
    text = (sweep / "report" / "power.md").read_text()
    assert "One seed" in text and "upper bound" in text and "no measured wall time" in text


def test_summarize_reads_new_and_old_summaries(tmp_path):
    spec = importlib.util.spec_from_file_location("summarize", REPO / "experiments" / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    rng = np.random.default_rng(6)
    t = 6
    baseline = np.full((t, 1), 0.7)
    removed = shaped(0.7 + np.stack([rng.normal(-0.1, 0.03, t), rng.normal(0, 0.03, t)], 1)[:, :, None], 2)
    sweep = write_sweep(tmp_path / "sweep", removed, baseline, methods=("tracin_we_topk", "random"))
    sweep_report(sweep, plots=False)
    text = summarize.deletion_table(sweep)
    assert "TR-WE-topk − random" in text and "± 0.000" not in text and "[6/6]" in text
    # an old one-seed summary (std 0.0, no intervals): intervals from the per-test values
    path = sweep / "report" / "summary.json"
    old = json.loads(path.read_text())
    for m in old["methods"]:
        for g in old["signs"]:
            d = old["deletion"][m][g]
            old["deletion"][m][g] = {"auc_del": d["auc_del"], "auc_del_std": 0.0,
                                     "auc_del_per_test": d["auc_del_per_test"]}
    del old["differences"], old["intervals"]
    path.write_text(json.dumps(old))
    text = summarize.deletion_table(sweep)
    assert "± 0.000" not in text and "[6/6]" in text and "TR-WE-topk − random" in text
