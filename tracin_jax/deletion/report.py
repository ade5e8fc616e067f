"""``tracin-jax sweep report``: DEL±(k) curves, AUC-DEL± with bootstrap std, LDS and
mislabel detection per method (Table 4 shape, Markdown + CSV), deletion curves
(Figure 1) and targeted-fixing curves (Figure 2), from a sweep's results.

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
from tracin_jax.deletion.plan import lds_keep_mask, load_manifest
from tracin_jax.deletion.runner import load_failures, load_results
from tracin_jax.files import atomic_write_json

log = logging.getLogger(__name__)

# Column names of the paper's tables (Table 4 / 7); others print as their registry name.
PAPER_NAMES = {"tracin_last": "TR-last", "tracin_we": "TR-WE", "tracin_we_topk": "TR-WE-topk",
               "tracin_tfidf": "TR-TFIDF", "influence_last": "Inf-Last", "representer": "Rep",
               "tracin_common": "TR-common", "tracin_we_noc": "TR-WE-NoC", "tracin_we_syn": "TR-WE-Syn"}
SIGN_TEXT = {"+": "proponents removed", "-": "opponents removed"}


class SweepData:
    """A manifest's results arranged as arrays (NaN where a retrain is missing).

    ``baseline [E, S]``: gold-class probability of each evaluation point for each
    seed without removal; ``removed [T, M, G, K, S]`` after removing the top-k of
    sign G for method M; ``accuracy`` per job id (held-out).
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
        return self.baseline[[self.col[t] for t in self.test_ids]]


def deletion_summary(data: SweepData, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """DEL±(k) averaged over test points, AUC-DEL± and its bootstrap std, per method."""
    base = data.test_baseline()  # [T, S]
    dels = metrics.deletion_values(data.removed, base)  # [T, M, G, K]
    curve = metrics._nanmean(dels, axis=0)  # [M, G, K]
    auc_per_test = metrics.auc_del(dels)  # [T, M, G]
    auc = metrics._nanmean(auc_per_test, axis=0)  # [M, G]
    t, m, g, k, s = data.removed.shape
    std = metrics.bootstrap_auc_std(data.removed.reshape(t, m * g, k, s), base,
                                    num_samples=bootstrap, seed=seed).reshape(m, g) if bootstrap > 1 \
        else np.full((m, g), np.nan)
    # bootstrap std of each curve point (error bars of the plot): AUC over a single k
    point_std = np.full((m, g, k), np.nan)
    if bootstrap > 1:
        for j in range(k):
            point_std[:, :, j] = metrics.bootstrap_auc_std(
                data.removed[:, :, :, j:j + 1].reshape(t, m * g, 1, s), base,
                num_samples=max(bootstrap // 5, 2), seed=seed + 1 + j).reshape(m, g)
    out = {}
    for mi, method in enumerate(data.methods):
        out[method] = {}
        for gi, sign in enumerate(data.signs):
            out[method][sign] = {
                "k": list(data.k_grid), "del": _floats(curve[mi, gi]), "del_std": _floats(point_std[mi, gi]),
                "auc_del": _float(auc[mi, gi]), "auc_del_std": _float(std[mi, gi]),
                "auc_del_per_test": {str(tid): _float(auc_per_test[ti, mi, gi]) for ti, tid in enumerate(data.test_ids)},
                "retrains": int(np.isfinite(data.removed[:, mi, gi]).sum()),
            }
    return out


def lds_summary(data: SweepData, sweep_dir: Path) -> dict:
    """Linear datamodeling score per method (mean Spearman over test points ± s.e.)."""
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
        finite = per_test[np.isfinite(per_test)]
        se = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else float("nan")
        out[method] = {"lds": _float(mean), "lds_se": se, "subsets": len(jobs),
                       "per_test": {str(t): _float(v) for t, v in zip(data.test_ids, per_test)}}
    return out


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
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.3f}" if std is None or not np.isfinite(std) else f"{value:.3f} ± {std:.3f}"


def table_rows(summary: dict) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, Markdown rows and CSV records of the Table-4-shaped table."""
    methods = summary["methods"]
    dataset = summary["dataset"]
    header = ["dataset", "metric"] + [PAPER_NAMES.get(m, m) for m in methods]
    rows, records = [], []

    def add(metric, values):  # values: method -> (value, std)
        rows.append([dataset, metric] + [_fmt(*values.get(m, (None, None))) for m in methods])
        for m in methods:
            v, s = values.get(m, (None, None))
            records.append({"dataset": dataset, "metric": metric, "method": m,
                            "value": "" if v is None else v, "std": "" if s is None else s})

    dels = summary["deletion"]
    for sign, metric in (("+", "AUC-DEL+ ↓"), ("-", "AUC-DEL− ↑")):
        if sign in summary["signs"]:
            add(metric, {m: (dels[m][sign]["auc_del"], dels[m][sign]["auc_del_std"]) for m in methods})
    if summary.get("lds"):
        add("LDS ↑", {m: (v["lds"], v.get("lds_se")) for m, v in summary["lds"].items()})
    if summary.get("mislabel"):
        add("mislabel AUC ↑", {m: (v["auc"], None) for m, v in summary["mislabel"].items()})
        add("mislabel P@|flipped| ↑", {m: (v["precision_at_num_flipped"], None)
                                        for m, v in summary["mislabel"].items()})
    return header, rows, records


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["dataset", "metric", "method", "value", "std"])
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


# ----------------------------------------------------------------------------- plots

def plot_deletion_curves(summary: dict, path: Path) -> None:
    """Figure 1: DEL+(k) and DEL−(k) per method, bootstrap error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signs = summary["signs"]
    fig, axes = plt.subplots(1, len(signs), figsize=(5.2 * len(signs), 3.8), squeeze=False)
    for ax, sign in zip(axes[0], signs):
        for method in summary["methods"]:
            c = summary["deletion"][method][sign]
            y = np.asarray(c["del"], float)
            err = np.nan_to_num(np.asarray(c["del_std"], float))
            ax.errorbar(c["k"], y, yerr=err, marker="o", capsize=3, label=PAPER_NAMES.get(method, method))
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("k (training examples removed)")
        ax.set_ylabel(f"DEL{'+' if sign == '+' else '−'} (Δ gold-class prob.)")
        ax.set_title(f"{summary['dataset']}: {SIGN_TEXT[sign]}")
        if len(summary["k_grid"]) > 1 and summary["k_grid"][-1] / max(summary["k_grid"][0], 1) > 50:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
                 bootstrap: int | None = None, plots: bool = True, seed: int = 0) -> dict:
    """Aggregates a sweep's results into ``out_dir`` (default ``SWEEP/report``).

    Writes ``summary.json``, ``table.md``, ``table.csv``, ``deletion_curves.png`` and,
    with targeted fixing, ``fix_table.md`` and ``fix_curves.png``. Returns the summary.
    """
    manifest = load_manifest(manifest_path)
    sweep_dir = Path(manifest["_dir"])
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(sweep_dir)
    failures = load_failures(sweep_dir)
    job_ids = {j["id"] for j in manifest["jobs"]}
    results = {k: v for k, v in results.items() if k in job_ids}
    data = SweepData(manifest, results)
    bootstrap = int(manifest["sweep"].get("bootstrap", 1000) if bootstrap is None else bootstrap)
    summary = {
        "dataset": manifest["dataset"].split(":")[0],
        "methods": data.methods, "signs": data.signs, "k_grid": data.k_grid, "seeds": data.seeds,
        "test_points": len(data.test_ids),
        "jobs": {"total": len(job_ids), "finished": len(results),
                 "failed": len([f for f in failures if f in job_ids and f not in results]),
                 "missing": len(job_ids) - len(results)},
        "baseline": {"gold_prob_mean": _float(metrics._nanmean(data.test_baseline().ravel(), 0)),
                     "heldout_accuracy_mean": _float(metrics._nanmean(data.baseline_accuracy, 0))},
        "deletion": deletion_summary(data, bootstrap=bootstrap, seed=seed),
        "lds": lds_summary(data, sweep_dir),
        "mislabel": mislabel_summary(manifest, sweep_dir),
        "fix": fix_summary(data),
    }
    header, rows, records = table_rows(summary)
    (out / "table.md").write_text(markdown_table(header, rows))
    (out / "table.csv").write_text(_csv_text(records))
    files = {"table_md": str(out / "table.md"), "table_csv": str(out / "table.csv")}
    if summary["fix"].get("curves"):
        fix_header = ["method", "fix", "k", "fix rate", "Δ held-out accuracy", "retrains"]
        fix_rows = []
        for c in summary["fix"]["curves"].values():
            for i, k in enumerate(c["k"]):
                fix_rows.append([PAPER_NAMES.get(c["method"], c["method"]),
                                 "remove" if c["kind"] == "fix_remove" else "[PAD]", str(k),
                                 _fmt(c["fix_rate"][i]), f"{c['accuracy_change'][i]:+.4f}",
                                 str(c["retrains"][i - 1]) if i else "baseline"])
        (out / "fix_table.md").write_text(markdown_table(fix_header, fix_rows))
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


def _float(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(xs):
    return [_float(x) for x in xs]
