"""``tracin-jax sweep report``: DEL±(k) curves, AUC-DEL± with confidence intervals, paired
differences between methods, LDS and mislabel detection per method (Table 4 shape,
Markdown + CSV), deletion curves (Figure 1), targeted-fixing curves (Figure 2) and the
power advice (``power.md``), from a sweep's results.

Statistics (what the ``[low, high]`` of the tables means):

- The unit of evidence is the test point. AUC-DEL± of a method is the mean over the k
  grid of DEL± of a test point, averaged over the test points; its interval is a
  percentile bootstrap (default 95%, ``sweep.bootstrap`` replicates, 1000 by default)
  over test points and seeds together: each replicate draws the test points with
  replacement and, within each drawn test point, its seeds (retraining runs) with
  replacement, then recomputes DEL± from the drawn runs. The same draws serve every
  method, sign, k and the no-removal baseline, so the intervals of differences are paired.
  With one seed the draws are over test points alone; with one test point, over seeds.
- Paired differences ``A − B`` of AUC-DEL± (each method against ``random`` when it is in
  the sweep, then every other pair) are the mean over test points of the per-test-point
  differences, with their interval from the same replicates, and ``[r/n]``: r of the n test
  points where A moved the test point the right way more than B (AUC-DEL+: A's lower,
  AUC-DEL−: A's higher). For a single method ``[r/n]`` counts test points with
  DEL+ < 0 (DEL− > 0).
- *Resolved* (``*``): the interval excludes 0. It says the sign of the difference is
  settled at the interval's level over the test points drawn from the same distribution;
  it is not corrected for the number of comparisons.
- No interval is printed (and ``null`` stored) where nothing can be resampled: one test
  point and one seed. A measured spread of zero (identical test points) prints as
  ``[x, x]``; an unmeasured one never prints as ``± 0.000``.
- The appendix-F bootstrap std over retraining runs (test points fixed: retraining noise
  only) is kept as ``auc_del_std`` and an extra row when it is measured (two seeds or
  more), else ``null``.
- LDS: the mean over test points of the per-test-point Spearman correlation; its interval
  is a percentile bootstrap over test points.
- ``power.md`` (``deletion/power.py``): variance components of the paired differences and
  the test points and retraining-hours needed to resolve a given difference.

Works on partial results: missing retrains are NaN and left out of the means;
the counts of finished / failed / missing jobs are part of the summary.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from tracin_jax.deletion import metrics
from tracin_jax.deletion import power as power_lib
from tracin_jax.deletion.metrics import SweepData  # noqa: F401  (re-exported: it used to live here)
from tracin_jax.deletion.plan import lds_keep_mask, load_manifest
from tracin_jax.deletion.runner import load_failures, load_results
from tracin_jax.files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# Column names of the paper's tables (Table 4 / 7); others print as their registry name.
PAPER_NAMES = {"tracin_last": "TR-last", "tracin_we": "TR-WE", "tracin_we_topk": "TR-WE-topk",
               "tracin_tfidf": "TR-TFIDF", "influence_last": "Inf-Last", "representer": "Rep",
               "tracin_common": "TR-common", "tracin_we_noc": "TR-WE-NoC", "tracin_we_syn": "TR-WE-Syn"}
SIGN_TEXT = {"+": "proponents removed", "-": "opponents removed"}
METRIC = {"+": "AUC-DEL+ ↓", "-": "AUC-DEL− ↑"}
DEFAULT_LEVEL = 0.95


def deletion_statistics(data: SweepData, *, bootstrap: int = 1000, seed: int = 0,
                        level: float = DEFAULT_LEVEL) -> dict:
    """AUC-DEL± and DEL±(k) per method with intervals, paired differences, appendix-F std.

    Returns ``{"deletion": method -> sign -> {...}, "differences": [...], "intervals": {...}}``
    (module docstring for the statistics; ``sweep_report`` for the fields).
    """
    base = data.test_baseline()  # [T, S]
    dels = metrics.deletion_values(data.removed, base)  # [T, M, G, K]
    curve = metrics._nanmean(dels, axis=0)  # [M, G, K]
    auc_per_test = metrics.auc_del(dels)  # [T, M, G]
    auc = metrics._nanmean(auc_per_test, axis=0)  # [M, G]
    t, m, g, k, s = data.removed.shape
    pairs = power_lib.method_pairs(data.methods)
    groups = [(a * g + gi, b * g + gi) for gi in range(g) for a, b in pairs]  # sign-major
    auc_ci, curve_ci = np.full((m, g, 2), np.nan), np.full((m, g, k, 2), np.nan)
    diff_ci = np.full((len(groups), 2), np.nan)
    boot_on = bootstrap > 1 and t > 0 and s > 0
    if boot_on:
        boot = metrics.paired_bootstrap(data.removed.reshape(t, m * g, k, s), base, pairs=groups,
                                        num_samples=bootstrap, seed=seed)
        auc_ci = metrics.percentile_interval(boot["auc"], level).reshape(m, g, 2)
        curve_ci = metrics.percentile_interval(boot["curve"], level).reshape(m, g, k, 2)
        diff_ci = metrics.percentile_interval(boot["diff"], level)
    # appendix F: bootstrap over retraining runs, test points fixed; measured only with >= 2 seeds
    std, point_std = np.full((m, g), np.nan), np.full((m, g, k), np.nan)
    if bootstrap > 1 and s >= 2:
        std = metrics.bootstrap_auc_std(data.removed.reshape(t, m * g, k, s), base,
                                        num_samples=bootstrap, seed=seed).reshape(m, g)
        for j in range(k):  # error bars of one curve point: AUC over a single k
            point_std[:, :, j] = metrics.bootstrap_auc_std(
                data.removed[:, :, :, j:j + 1].reshape(t, m * g, 1, s), base,
                num_samples=max(bootstrap // 5, 2), seed=seed + 1 + j).reshape(m, g)
    runs = np.isfinite(data.removed).any(axis=3)  # [T, M, G, S]: a run of that seed exists

    def seeds_of(mi, gi) -> int:
        return int(runs[:, mi, gi].sum(axis=-1).max()) if t else 0

    def measurable(mi, gi) -> bool:
        return boot_on and metrics.spread_measurable(np.isfinite(auc_per_test[:, mi, gi]).sum(), seeds_of(mi, gi))

    out = {}
    for mi, method in enumerate(data.methods):
        out[method] = {}
        for gi, sign in enumerate(data.signs):
            ok = measurable(mi, gi)
            ci = _interval(auc_ci[mi, gi]) if ok else None
            r, n = metrics.right_way(auc_per_test[:, mi, gi], sign)
            out[method][sign] = {
                "k": list(data.k_grid), "del": _floats(curve[mi, gi]),
                "del_ci": [(_interval(curve_ci[mi, gi, j]) if ok else None) for j in range(k)],
                "del_std": _floats(point_std[mi, gi]),
                "auc_del": _float(auc[mi, gi]), "auc_del_ci": ci, "auc_del_resolved": metrics.excludes_zero(ci),
                "auc_del_std": _float(std[mi, gi]),
                "auc_del_right_way": [r, n],
                "auc_del_per_test": {str(tid): _float(auc_per_test[ti, mi, gi]) for ti, tid in enumerate(data.test_ids)},
                "retrains": int(np.isfinite(data.removed[:, mi, gi]).sum()),
            }
    differences = []
    for p, (ga, gb) in enumerate(groups):
        gi, a, b = ga % g, ga // g, gb // g
        sign = data.signs[gi]
        per_test = auc_per_test[:, a, gi] - auc_per_test[:, b, gi]
        r, n = metrics.right_way(per_test, sign)
        ok = boot_on and metrics.spread_measurable(n, max(seeds_of(a, gi), seeds_of(b, gi)))
        ci = _interval(diff_ci[p]) if ok else None
        differences.append({
            "sign": sign, "a": data.methods[a], "b": data.methods[b],
            "difference": _float(metrics._nanmean(per_test, axis=0)), "ci": ci,
            "resolved": metrics.excludes_zero(ci), "right_way": r, "test_points": n,
            "per_test": {str(tid): _float(v) for tid, v in zip(data.test_ids, per_test)},
        })
    seeds_max = max((seeds_of(mi, gi) for mi in range(m) for gi in range(g)), default=0)
    tests_max = int(np.isfinite(auc_per_test).any(axis=(1, 2)).sum()) if t else 0
    if not boot_on:
        over = None
    elif tests_max >= 2 and seeds_max >= 2:
        over = "test points and seeds"
    elif tests_max >= 2:
        over = "test points"
    elif seeds_max >= 2:
        over = "seeds"
    else:
        over = None
    intervals = {"level": float(level), "kind": "percentile", "replicates": int(bootstrap) if boot_on else 0,
                 "over": over, "paired": True, "test_points": tests_max, "seeds": seeds_max, "seed": int(seed)}
    return {"deletion": out, "differences": differences, "intervals": intervals}


def deletion_summary(data: SweepData, *, bootstrap: int = 1000, seed: int = 0, level: float = DEFAULT_LEVEL) -> dict:
    """DEL±(k) averaged over test points, AUC-DEL± with its interval and appendix-F std, per
    method (the ``deletion`` part of :func:`deletion_statistics`)."""
    return deletion_statistics(data, bootstrap=bootstrap, seed=seed, level=level)["deletion"]


def lds_summary(data: SweepData, sweep_dir: Path, *, bootstrap: int = 1000, seed: int = 0,
                level: float = DEFAULT_LEVEL) -> dict:
    """Linear datamodeling score per method: mean Spearman over test points ± s.e., and a
    percentile bootstrap interval over test points (``lds_ci``; null with < 2 test points)."""
    lds = data.manifest.get("lds")
    if not lds:
        return {}
    jobs = [(tag["subset"], job) for job in data.manifest["jobs"] for tag in job["tags"] if tag["kind"] == "lds"]
    jobs = [(j, job) for j, job in jobs if job["id"] in data.results]
    if len(jobs) < 3:
        return {m: {"lds": None, "subsets": len(jobs)} for m in data.methods}
    n = data.manifest["num_train"]
    keep = np.stack([lds_keep_mask(n, float(job["subset"]["alpha"]), int(job["subset"]["seed"]), j)
                     for j, job in jobs])
    for row, (_, job) in enumerate(jobs):  # the plan may also remove explicit ids (none by default)
        if job["removed"]:
            raise ValueError("LDS jobs with explicit removals are not supported")
    cols = [data.col[t] for t in data.test_ids]
    measured = np.asarray([[data.results[job["id"]]["gold_prob"][c] for c in cols] for _, job in jobs])
    out = {}
    for method, rel in lds["scores"].items():
        with np.load(sweep_dir / rel, allow_pickle=False) as z:
            test_ids, train_ids, scores = z["test_ids"], z["train_ids"], z["scores"]
        if len(train_ids) != n:
            raise ValueError(f"{rel}: {len(train_ids)} score columns for {n} training examples")
        rows = [int(np.flatnonzero(test_ids == t)[0]) for t in data.test_ids]
        predicted = metrics.subset_predictions(scores[rows], keep)  # columns = training rows
        mean, per_test = metrics.linear_datamodeling_score(measured, predicted)
        out[method] = {"lds": _float(mean), **lds_interval(per_test, bootstrap=bootstrap, seed=seed, level=level),
                       "subsets": len(jobs),
                       "per_test": {str(t): _float(v) for t, v in zip(data.test_ids, per_test)}}
    return out


def lds_interval(per_test: np.ndarray, *, bootstrap: int = 1000, seed: int = 0,
                 level: float = DEFAULT_LEVEL) -> dict:
    """``lds_se`` (standard error over test points) and ``lds_ci`` (percentile bootstrap over
    test points) of per-test-point LDS values; null with fewer than two finite values."""
    finite = np.asarray(per_test, np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) < 2:
        return {"lds_se": None, "lds_ci": None}
    se = float(finite.std(ddof=1) / np.sqrt(len(finite)))
    ci = None
    if bootstrap > 1:
        ci = _interval(metrics.percentile_interval(metrics.bootstrap_means(finite, num_samples=bootstrap,
                                                                           seed=seed), level))
    return {"lds_se": se, "lds_ci": ci}


def mislabel_summary(manifest: dict, sweep_dir: Path) -> dict:
    info = manifest.get("mislabel")
    if not info:
        return {}
    flipped = set(info["flipped_ids"])
    out = {}
    for method, rel in info["scores"].items():
        with np.load(sweep_dir / rel, allow_pickle=False) as z:
            ids, scores = z["ids"], z["scores"]
        is_flipped = np.asarray([int(i) in flipped for i in ids])
        out[method] = metrics.mislabel_detection(scores, is_flipped, float(info["inspect_fraction"]))
    return out


def fix_summary(data: SweepData) -> dict:
    """Fix rate (share of retrains where the mistake becomes correct) and held-out accuracy
    change versus the no-removal retrains, per method, fix kind and k (k = 0: baseline)."""
    fix = data.manifest.get("fix")
    if not fix:
        return {}
    points = data.manifest["fix_points"]
    gold = {p["id"]: p["label"] for p in points}
    base_correct = [data.baseline_pred[data.col[p["id"]], :] == gold[p["id"]] for p in points]
    base_ok = np.asarray(base_correct)[:, np.isfinite(data.baseline_accuracy)]
    base_rate = float(base_ok.mean()) if base_ok.size else float("nan")
    base_acc = float(np.nanmean(data.baseline_accuracy)) if np.isfinite(data.baseline_accuracy).any() else float("nan")
    cells: dict[tuple, list] = {}
    for job in data.manifest["jobs"]:
        result = data.results.get(job["id"])
        if result is None:
            continue
        for tag in job["tags"]:
            if tag["kind"] in ("fix_remove", "fix_pad"):
                ok = result["pred"][data.col[tag["test"]]] == gold[tag["test"]]
                cells.setdefault((tag["method"], tag["kind"], tag["k"]), []).append(
                    (ok, result["heldout_accuracy"]))
    out = {"baseline_fix_rate": base_rate, "baseline_accuracy": base_acc, "curves": {}}
    for method in fix["methods"]:
        for kind in ("fix_remove", "fix_pad"):
            ks = [k for k in fix["k_grid"] if (method, kind, k) in cells]
            if not ks:
                continue
            rates = [float(np.mean([c[0] for c in cells[(method, kind, k)]])) for k in ks]
            acc = [float(np.mean([c[1] for c in cells[(method, kind, k)]]) - base_acc) for k in ks]
            out["curves"][f"{method}/{kind}"] = {"method": method, "kind": kind, "k": [0] + ks,
                                                 "fix_rate": [base_rate] + rates,
                                                 "accuracy_change": [0.0] + acc,
                                                 "retrains": [len(cells[(method, kind, k)]) for k in ks]}
    return out


# ----------------------------------------------------------------------------- tables

def _fmt(value, std=None) -> str:
    """``value`` or ``value ± std``; "–" for a missing value, the std left out where it was
    not measured (None, NaN)."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.3f}" if std is None or not np.isfinite(std) else f"{value:.3f} ± {std:.3f}"


def _cell(value, ci=None, right=None, spec=".3f") -> str:
    """``value [low, high]* [r/n]``: the interval only where measured, ``*`` when it
    excludes 0, the count only where given."""
    if value is None or not np.isfinite(value):
        return "–"
    text = format(value, spec)
    if ci is not None:
        text += f" [{format(ci[0], spec)}, {format(ci[1], spec)}]" + ("*" if metrics.excludes_zero(ci) else "")
    if right is not None and right[1]:
        text += f" [{right[0]}/{right[1]}]"
    return text


def _render(v: dict) -> str:
    if v.get("legacy"):
        return _fmt(v.get("value"), v.get("std"))
    return _cell(v.get("value"), v.get("ci"), v.get("right"))


def _measured(x):
    """``x`` as a float, or None where it is missing or not finite."""
    return None if x is None or not np.isfinite(x) else float(x)


def _name(method: str, names: dict | None) -> str:
    return (names or PAPER_NAMES).get(method, method)


def table_rows(summary: dict, names: dict | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, Markdown rows and CSV records of the Table-4-shaped table.

    AUC-DEL± cells read ``value [low, high]* [r/n]`` (module docstring); a
    ``σ retrains (app. F)`` row follows each AUC-DEL row when that std was measured.
    Summaries written before intervals existed print ``value ± std`` where the std was
    measured (two seeds or more), else the value alone.
    """
    methods = summary["methods"]
    dataset = summary["dataset"]
    header = ["dataset", "metric"] + [_name(m, names) for m in methods]
    rows, records = [], []
    multi_seed = len(summary.get("seeds", [0, 1])) >= 2

    def add(metric, values):  # values: method -> dict(value, ci, right, std)
        rows.append([dataset, metric] + [_render(values[m]) if m in values else "–" for m in methods])
        for m in methods:
            v = values.get(m, {})
            ci = v.get("ci")
            right = v.get("right")
            records.append({"dataset": dataset, "metric": metric, "method": m,
                            "value": _csv(v.get("value")), "std": _csv(v.get("std")),
                            "ci_low": _csv(ci[0] if ci else None), "ci_high": _csv(ci[1] if ci else None),
                            "resolved": "" if metrics.excludes_zero(ci) is None else int(metrics.excludes_zero(ci)),
                            "right_way": f"{right[0]}/{right[1]}" if right else ""})

    dels = summary["deletion"]
    for sign in ("+", "-"):
        if sign not in summary["signs"]:
            continue
        entries = {m: dels[m][sign] for m in methods}
        stds = {m: _measured(e.get("auc_del_std")) if multi_seed else None for m, e in entries.items()}
        if all("auc_del_ci" in e for e in entries.values()):
            add(METRIC[sign], {m: {"value": e["auc_del"], "ci": e["auc_del_ci"], "std": stds[m],
                                   "right": e.get("auc_del_right_way")} for m, e in entries.items()})
            if any(v is not None for v in stds.values()):
                rows.append([dataset, f"{METRIC[sign].split()[0]} σ retrains (app. F)"] +
                            [_fmt(stds[m]) for m in methods])
        else:  # a summary written before intervals: value ± the appendix-F std where measured
            add(METRIC[sign], {m: {"value": e["auc_del"], "std": stds[m], "legacy": True}
                               for m, e in entries.items()})
    if summary.get("lds"):
        add("LDS ↑", {m: {"value": v.get("lds"), "ci": v.get("lds_ci"), "std": _measured(v.get("lds_se")),
                          "legacy": "lds_ci" not in v} for m, v in summary["lds"].items()})
    if summary.get("mislabel"):
        add("mislabel AUC ↑", {m: {"value": v["auc"]} for m, v in summary["mislabel"].items()})
        add("mislabel P@|flipped| ↑", {m: {"value": v["precision_at_num_flipped"]}
                                        for m, v in summary["mislabel"].items()})
    return header, rows, records


def difference_rows(summary: dict, names: dict | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, Markdown rows and CSV records of the paired differences ``A − B``."""
    level = (summary.get("intervals") or {}).get("level", DEFAULT_LEVEL)
    header = ["dataset", "metric", "A − B", f"Δ [{level:.0%} interval]", "better on"]
    rows, records = [], []
    for d in summary.get("differences") or []:
        pair = f"{_name(d['a'], names)} − {_name(d['b'], names)}"
        rows.append([summary["dataset"], METRIC[d["sign"]], pair, _cell(d["difference"], d["ci"], spec="+.3f"),
                     f"[{d['right_way']}/{d['test_points']}]" if d["test_points"] else "–"])
        ci = d["ci"]
        records.append({"dataset": summary["dataset"], "metric": METRIC[d["sign"]], "a": d["a"], "b": d["b"],
                        "difference": _csv(d["difference"]), "ci_low": _csv(ci[0] if ci else None),
                        "ci_high": _csv(ci[1] if ci else None),
                        "resolved": "" if d["resolved"] is None else int(d["resolved"]),
                        "right_way": d["right_way"], "test_points": d["test_points"]})
    return header, rows, records


def legend_lines(summary: dict) -> list[str]:
    """What the table's intervals are over, and what ``*``, ``[r/n]`` and "–" mean."""
    iv = summary.get("intervals") or {}
    t, s = summary.get("test_points"), len(summary.get("seeds", []))
    grid = f"{t} test point{'s' if t != 1 else ''}, k ∈ {summary.get('k_grid')}, {s} seed{'s' if s != 1 else ''}"
    over = iv.get("over")
    if not iv:
        return [f"{grid}."]
    if over is None:
        why = "bootstrap disabled" if not iv.get("replicates") else "one test point and one seed: no spread to estimate"
        lines = [f"{grid}. No intervals ({why}); values are point estimates."]
    else:
        how = {"test points and seeds": "over test points and seeds together: test points drawn with "
                                        "replacement and, within each, its seeds drawn with replacement",
               "test points": "over test points (one seed: no retraining runs to resample)",
               "seeds": "over seeds (one test point)"}.get(over, f"over {over}")
        lines = [f"{grid}. [low, high]: {iv['level']:.0%} percentile bootstrap interval, {iv['replicates']} "
                 f"replicates, {how}; the same draws for every method, sign, k and the no-removal baseline "
                 "(paired differences). * : the interval excludes 0 (resolved)."]
    lines.append("[r/n]: r of the n test points moved the right way (AUC-DEL+ < 0, AUC-DEL− > 0; for A − B: "
                 "A's AUC-DEL+ lower, A's AUC-DEL− higher). –: not measured.")
    if any(summary["deletion"][m][g].get("auc_del_std") is not None
           for m in summary["methods"] for g in summary["signs"]) and s >= 2:
        lines.append("σ retrains (app. F): bootstrap std over retraining runs with the test points fixed "
                     "(retraining noise only).")
    if summary.get("lds"):
        lines.append("LDS: mean over test points of the Spearman correlation; interval over test points.")
    return lines


def table_markdown(summary: dict, names: dict | None = None) -> str:
    """``table.md``: the Table-4-shaped table, its legend and the paired differences."""
    header, rows, _ = table_rows(summary, names)
    text = markdown_table(header, rows) + "\n" + "\n".join(legend_lines(summary)) + "\n"
    d_header, d_rows, _ = difference_rows(summary, names)
    if d_rows:
        text += ("\nPaired differences A − B of AUC-DEL± (mean over test points of the per-test-point "
                 "difference; AUC-DEL+: A better when < 0, AUC-DEL−: A better when > 0):\n\n"
                 + markdown_table(d_header, d_rows))
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


TABLE_FIELDS = ["dataset", "metric", "method", "value", "std", "ci_low", "ci_high", "resolved", "right_way"]
DIFFERENCE_FIELDS = ["dataset", "metric", "a", "b", "difference", "ci_low", "ci_high", "resolved",
                     "right_way", "test_points"]


def _csv_text(records: list[dict], fields: list[str] = TABLE_FIELDS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _csv(x):
    return "" if x is None or not np.isfinite(x) else x


# ----------------------------------------------------------------------------- plots

def plot_deletion_curves(summary: dict, path: Path) -> None:
    """Figure 1: DEL+(k) and DEL−(k) per method; error bars are the intervals (``del_ci``)
    where measured, else the appendix-F std, else none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signs = summary["signs"]
    fig, axes = plt.subplots(1, len(signs), figsize=(5.2 * len(signs), 3.8), squeeze=False)
    for ax, sign in zip(axes[0], signs):
        for method in summary["methods"]:
            c = summary["deletion"][method][sign]
            y = np.asarray([np.nan if v is None else v for v in c["del"]], float)
            ax.errorbar(c["k"], y, yerr=_error_bars(c, y), marker="o", capsize=3,
                        label=PAPER_NAMES.get(method, method))
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("k (training examples removed)")
        ax.set_ylabel(f"DEL{'+' if sign == '+' else '−'} (Δ gold-class prob.)")
        ax.set_title(SIGN_TEXT[sign])
        if len(summary["k_grid"]) > 1 and summary["k_grid"][-1] / max(summary["k_grid"][0], 1) > 50:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(str(summary["dataset"]))  # once, above both panels: long names do not overlap
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _error_bars(curve: dict, y: np.ndarray):
    cis = curve.get("del_ci")
    if cis and any(ci is not None for ci in cis):
        lo = np.asarray([y[i] - ci[0] if ci else 0.0 for i, ci in enumerate(cis)], float)
        hi = np.asarray([ci[1] - y[i] if ci else 0.0 for i, ci in enumerate(cis)], float)
        return np.nan_to_num(np.stack([np.maximum(lo, 0), np.maximum(hi, 0)]))
    std = curve.get("del_std")
    if std and any(v is not None for v in std):
        return np.nan_to_num(np.asarray([np.nan if v is None else v for v in std], float))
    return None


def plot_fix_curves(fix: dict, path: Path, dataset: str) -> None:
    """Figure 2: fix rate against the number of opponents removed / edited."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, c in fix["curves"].items():
        label = f"{PAPER_NAMES.get(c['method'], c['method'])} ({'remove' if c['kind'] == 'fix_remove' else '[PAD] word'})"
        ax.plot(c["k"], c["fix_rate"], marker="o", label=label)
    ax.set_xlabel("k (top opponents removed or edited)")
    ax.set_ylabel("fix rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{dataset}: targeted fixing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point

def sweep_report(manifest_path: str | Path, out_dir: str | Path | None = None, *,
                 bootstrap: int | None = None, plots: bool = True, seed: int = 0,
                 level: float = DEFAULT_LEVEL, effect: float = 0.05) -> dict:
    """Aggregates a sweep's results into ``out_dir`` (default ``SWEEP/report``).

    Writes ``summary.json``, ``table.md`` (table, legend, paired differences), ``table.csv``,
    ``differences.csv``, ``deletion_curves.png``, ``power.md`` (two test points or more) and,
    with targeted fixing, ``fix_table.md`` and ``fix_curves.png``. Returns the summary.

    Args:
      bootstrap: replicates of the intervals (default the plan's ``sweep.bootstrap``); 0 or
        1 turns intervals off.
      level: the intervals' confidence level.
      effect: the AUC-DEL difference the power advice plans for.

    ``summary.json``: ``deletion[method][sign]`` holds ``auc_del``, ``auc_del_ci`` ([low,
    high] or null), ``auc_del_resolved``, ``auc_del_right_way`` ([r, n]), ``auc_del_std``
    (appendix F, null with one seed), ``auc_del_per_test``, ``del``, ``del_ci``, ``del_std``,
    ``retrains``; ``differences`` a list of ``{sign, a, b, difference, ci, resolved,
    right_way, test_points, per_test}``; ``intervals`` what the intervals are over;
    ``lds[method]`` adds ``lds_ci``; ``power`` the advice (null with < 2 test points).
    """
    manifest = load_manifest(manifest_path)
    sweep_dir = Path(manifest["_dir"])
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(sweep_dir, manifest)
    failures = load_failures(sweep_dir)
    job_ids = {j["id"] for j in manifest["jobs"]}
    results = {k: v for k, v in results.items() if k in job_ids}
    data = SweepData(manifest, results)
    bootstrap = int(manifest["sweep"].get("bootstrap", 1000) if bootstrap is None else bootstrap)
    stats = deletion_statistics(data, bootstrap=bootstrap, seed=seed, level=level)
    advice = power_lib.advise_data(data, effect=effect, alpha=1.0 - level) if len(data.test_ids) >= 2 else None
    if advice is not None and not power_lib.available(advice):
        advice = None
    summary = {
        "dataset": manifest["dataset"].split(":")[0],
        "methods": data.methods, "signs": data.signs, "k_grid": data.k_grid, "seeds": data.seeds,
        "test_points": len(data.test_ids),
        "jobs": {"total": len(job_ids), "finished": len(results),
                 "failed": len([f for f in failures if f in job_ids and f not in results]),
                 "missing": len(job_ids) - len(results)},
        "baseline": {"gold_prob_mean": _float(metrics._nanmean(data.test_baseline().ravel(), 0)),
                     "heldout_accuracy_mean": _float(metrics._nanmean(data.baseline_accuracy, 0))},
        "intervals": stats["intervals"],
        "deletion": stats["deletion"],
        "differences": stats["differences"],
        "lds": lds_summary(data, sweep_dir, bootstrap=bootstrap, seed=seed, level=level),
        "mislabel": mislabel_summary(manifest, sweep_dir),
        "fix": fix_summary(data),
        "power": advice,
    }
    atomic_write_text(out / "table.md", table_markdown(summary))
    atomic_write_text(out / "table.csv", _csv_text(table_rows(summary)[2]))
    atomic_write_text(out / "differences.csv", _csv_text(difference_rows(summary)[2], DIFFERENCE_FIELDS))
    files = {"table_md": str(out / "table.md"), "table_csv": str(out / "table.csv"),
             "differences_csv": str(out / "differences.csv")}
    if advice is not None:
        atomic_write_text(out / "power.md", power_lib.render_markdown(advice, PAPER_NAMES))
        files["power_md"] = str(out / "power.md")
    else:
        (out / "power.md").unlink(missing_ok=True)  # stale advice of an earlier report
    if summary["fix"].get("curves"):
        fix_header = ["method", "fix", "k", "fix rate", "Δ held-out accuracy", "retrains"]
        fix_rows = []
        for c in summary["fix"]["curves"].values():
            for i, k in enumerate(c["k"]):
                fix_rows.append([PAPER_NAMES.get(c["method"], c["method"]),
                                 "remove" if c["kind"] == "fix_remove" else "[PAD]", str(k),
                                 _fmt(c["fix_rate"][i]), f"{c['accuracy_change'][i]:+.4f}",
                                 str(c["retrains"][i - 1]) if i else "baseline"])
        atomic_write_text(out / "fix_table.md", markdown_table(fix_header, fix_rows))
        files["fix_table_md"] = str(out / "fix_table.md")
    if plots:
        plot_deletion_curves(summary, out / "deletion_curves.png")
        files["deletion_curves"] = str(out / "deletion_curves.png")
        if summary["fix"].get("curves"):
            plot_fix_curves(summary["fix"], out / "fix_curves.png", summary["dataset"])
            files["fix_curves"] = str(out / "fix_curves.png")
    summary["files"] = files
    atomic_write_json(out / "summary.json", summary)
    return summary


def _interval(pair):
    """``[low, high]`` as floats, or None when either bound is not finite."""
    lo, hi = (float(x) for x in pair)
    return [lo, hi] if np.isfinite(lo) and np.isfinite(hi) else None


def _float(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(xs):
    return [_float(x) for x in xs]
