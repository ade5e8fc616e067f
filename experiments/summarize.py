"""Prints the Markdown tables of README "Analyses" from the outputs of run_real_data.sh.

    python experiments/summarize.py [--out experiments/out]

For each experiment directory found: the deletion table (AUC-DEL± with its bootstrap
interval over test points and seeds, [r/n] counts, paired differences between methods,
the baseline and the number of retrainings), the cancellation table, and the cluster
summary. Missing experiments are skipped with a note. ``--figures DIR`` also
writes the README figures (deletion curves titled by experiment, cancellation bars);
``--results DIR`` copies each sweep's report (table.md with every paired difference,
summary.json, differences.csv, power.md) to DIR/<experiment>/, the record behind README's
tables (docs/results).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMES = {"tracin_layer[word_embedding]": "TR-first (word emb.)", "tracin_layer[conv_0]": "TR-second (conv 0)",
         "tracin_layer[conv_1]": "TR-third (conv 1)", "tracin_layer[conv_2]": "TR-conv 2 (k=1)",
         "tracin_layer[classifier]": "TR-last (dense)", "tracin_all": "TR-all",
         "tracin_all+bias": "TR-all + bias",
         "tracin_we_topk": "TR-WE-topk", "tracin_we": "TR-WE", "tracin_last": "TR-last",
         "tracin_tfidf": "TR-TFIDF", "influence_last": "Inf-Last", "representer": "Rep",
         "tracin_we_noc": "TR-WE-NoC", "tracin_common": "TR-common"}


def with_intervals(summary: dict, *, replicates: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """``summary`` as ``sweep report`` writes it now. A summary written before intervals
    existed gets them from its ``auc_del_per_test`` values: a percentile bootstrap over test
    points (paired: the same draws for every method and sign), the [r/n] counts and the
    paired differences; its appendix-F std is kept only where measured (two seeds)."""
    import numpy as np

    from tracin_jax.deletion import metrics
    from tracin_jax.deletion.power import method_pairs

    if "differences" in summary and all("auc_del_ci" in summary["deletion"][m][g]
                                        for m in summary["methods"] for g in summary["signs"]):
        return summary
    out = json.loads(json.dumps(summary))
    methods, signs = out["methods"], out["signs"]
    tests = sorted({t for m in methods for g in signs for t in out["deletion"][m][g].get("auc_del_per_test") or {}})
    values = np.asarray([[[_num(out["deletion"][m][g].get("auc_del_per_test", {}).get(t)) for g in signs]
                          for m in methods] for t in tests], float).reshape(len(tests), len(methods), len(signs))
    pairs = [(gi, a, b) for gi in range(len(signs)) for a, b in method_pairs(methods)]
    columns = [values[:, mi, gi] for mi in range(len(methods)) for gi in range(len(signs))]
    columns += [values[:, a, gi] - values[:, b, gi] for gi, a, b in pairs]
    table = np.stack(columns, axis=1) if len(tests) else np.zeros((0, len(columns)))
    ci = np.full((len(columns), 2), np.nan)
    if len(tests) >= 2:
        ci = metrics.percentile_interval(metrics.bootstrap_means(table, num_samples=replicates, seed=seed), level)

    def interval(i, n):
        return [float(ci[i, 0]), float(ci[i, 1])] if n >= 2 and np.isfinite(ci[i]).all() else None

    one_seed = len(out.get("seeds", [])) < 2
    for mi, m in enumerate(methods):
        for gi, g in enumerate(signs):
            d = out["deletion"][m][g]
            r, n = metrics.right_way(values[:, mi, gi], g)
            d["auc_del_ci"] = interval(mi * len(signs) + gi, n)
            d["auc_del_right_way"] = [r, n]
            if one_seed:
                d["auc_del_std"] = None  # one seed: the appendix-F bootstrap had nothing to resample
    out["differences"] = []
    for p, (gi, a, b) in enumerate(pairs):
        diff = values[:, a, gi] - values[:, b, gi]
        r, n = metrics.right_way(diff, signs[gi])
        c = interval(len(methods) * len(signs) + p, n)
        out["differences"].append({"sign": signs[gi], "a": methods[a], "b": methods[b],
                                   "difference": float(np.nanmean(diff)) if n else None, "ci": c,
                                   "resolved": metrics.excludes_zero(c), "right_way": r, "test_points": n})
    out["intervals"] = {"level": level, "kind": "percentile", "replicates": replicates if len(tests) >= 2 else 0,
                        "over": "test points (their seed means; the summary predates paired seed draws)"
                        if len(tests) >= 2 else None, "paired": True, "test_points": len(tests)}
    return out


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def deletion_table(sweep_dir: Path) -> str:
    """Table 4 layout: AUC-DEL± [interval]* [r/n] per method, the legend (what the intervals
    are over), the paired differences A − B, and a line on the sweep (``sweep report``'s
    statistics; see tracin_jax/deletion/report.py)."""
    from tracin_jax.deletion.report import difference_rows, legend_lines, table_rows

    summary = with_intervals(json.loads((sweep_dir / "report" / "summary.json").read_text()))
    header, rows, _ = table_rows(summary, NAMES)
    lines = ["| " + " | ".join(header[1:]) + " |", "|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(r[1:]) + " |" for r in rows]
    lines += [""] + legend_lines(summary)
    d_header, d_rows, _ = difference_rows(summary, NAMES)
    if d_rows:
        lines += ["", "| " + " | ".join(d_header[1:]) + " |", "|---|---|---:|---:|"]
        lines += ["| " + " | ".join(r[1:]) + " |" for r in d_rows]
    jobs, base = summary["jobs"], summary["baseline"]
    lines.append("")
    lines.append(f"{jobs['finished']}/{jobs['total']} retrainings finished; baseline gold-class probability "
                 f"{_fmt(base['gold_prob_mean'])}, held-out accuracy {_fmt(base['heldout_accuracy_mean'])}.")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def cancellation_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = ["| W | params | Σ G(W)_c | Σ ΔW_c | C(W) | E cos |", "|---|---:|---:|---:|---:|---:|"]
    for v in data["views"]:
        lines.append(f"| {v['name']} | {v['num_parameters']:,} | {sum(v['G']):.3g} | {sum(v['delta']):.3g} | "
                     f"{v['cancellation']:.3g} | {v['cosine'][-1]:.3f} |")
    return "\n".join(lines)


TITLES = {"nooverlap_synthetic": "synthetic, no word overlap", "sst2_cnn": "SST-2, CNN per layer",
          "sst2_bert_tiny": "SST-2, BERT L2-H128", "sst2_minilm_del": "SST-2, MiniLM-L6",
          "sst2_bert_tiny_10pt": "SST-2, BERT L2-H128, 10 test points",
          "sst2_minilm_10pt": "SST-2, MiniLM-L6, 10 test points",
          "sst2_bert_tiny_v2": "SST-2, BERT L2-H128, six methods vs random"}


def write_figures(out: Path, figures: Path) -> None:
    import shutil

    from tracin_jax.deletion.report import plot_deletion_curves

    figures.mkdir(parents=True, exist_ok=True)
    for name, title in TITLES.items():
        path = out / name / "sweep" / "report" / "summary.json"
        if path.exists():
            summary = dict(json.loads(path.read_text()), dataset=title)  # CSV runs are named by data.name
            plot_deletion_curves(summary, figures / f"deletion_{name}.png")
    for name, src in (("sst2_cnn", out / "sst2_cnn" / "cancellation"),
                      ("sst2_bert_tiny", out / "sst2_bert_tiny" / "cancellation"),
                      ("sst2_minilm", out / "sst2_minilm_cancellation")):
        if (src / "cancellation.png").exists():
            shutil.copy(src / "cancellation.png", figures / f"cancellation_{name}.png")


REPORT_FILES = ("table.md", "summary.json", "differences.csv", "power.md")


def copy_results(out: Path, results: Path) -> list[Path]:
    """Copies the report files of every finished sweep under ``out`` to ``results/<name>/``."""
    import shutil

    copied = []
    for name in TITLES:
        report = out / name / "sweep" / "report"
        if not (report / "summary.json").exists():
            continue
        (results / name).mkdir(parents=True, exist_ok=True)
        for f in REPORT_FILES:
            if (report / f).exists():
                copied.append(Path(shutil.copy(report / f, results / name / f)))
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out")
    parser.add_argument("--figures", default=None, help="write the README figures into this directory")
    parser.add_argument("--results", default=None, help="copy each sweep's report files into this directory")
    args = parser.parse_args()
    out = Path(args.out)
    if args.figures:
        write_figures(out, Path(args.figures))
    if args.results:
        copy_results(out, Path(args.results))
    for name in TITLES:  # the experiments run_real_data.sh writes (and earlier ones)
        sweep = out / name / "sweep"
        print(f"\n### {name}\n")
        if (sweep / "report" / "summary.json").exists():
            print(deletion_table(sweep))
        else:
            print("(no sweep report yet)")
        for canc in (out / name / "cancellation" / "cancellation.json",):
            if canc.exists():
                print("\n" + cancellation_table(canc))
    canc = out / "sst2_minilm_cancellation" / "cancellation.json"
    if canc.exists():
        print("\n### sst2_minilm (cancellation)\n\n" + cancellation_table(canc))
    for clusters in sorted(out.glob("*clusters*/clusters.json")):
        data = json.loads(clusters.read_text())
        print(f"\n### {clusters.parent.name}: {data['num_hard']} hard examples, "
              f"{len(data['clusters'])} clusters, sizes {[len(c['members']) for c in data['clusters']]}")


if __name__ == "__main__":
    main()
