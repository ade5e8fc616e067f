"""Prints the Markdown tables of README "Analyses" from the outputs of run_real_data.sh.

    python experiments/summarize.py [--out experiments/out]

For each experiment directory found: the deletion table (AUC-DEL± ± bootstrap std,
with the baseline and the number of retrainings), the cancellation table, and the
cluster summary. Missing experiments are skipped with a note. ``--figures DIR`` also
writes the README figures (deletion curves titled by experiment, cancellation bars).
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


def per_test_cell(d: dict, sign: str) -> str:
    """AUC-DEL ± standard error over test points [number moved the right way]."""
    import numpy as np

    values = np.asarray(list(d["auc_del_per_test"].values()), float)
    values = values[np.isfinite(values)]  # a test point whose retrainings are not all in yet
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    right = int(np.sum(values < 0 if sign == "+" else values > 0))
    return f"{d['auc_del']:+.3f} ± {se:.3f} [{right}/{len(values)}]"


def deletion_table(sweep_dir: Path) -> str:
    """Table 4 layout. With several seeds ± is the bootstrap std over retrainings
    (appendix F); with one seed (no bootstrap spread) the standard error over test
    points, and [r/n]: r of the n test points moved the right way."""
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    methods = summary["methods"]
    one_seed = len(summary["seeds"]) == 1
    lines = ["| metric | " + " | ".join(NAMES.get(m, m) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for sign, label in (("+", "AUC-DEL+ ↓"), ("-", "AUC-DEL− ↑")):
        cells = []
        for m in methods:
            d = summary["deletion"][m][sign]
            cells.append(per_test_cell(d, sign) if one_seed and d.get("auc_del_per_test")
                         else f"{d['auc_del']:+.3f} ± {d['auc_del_std']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    jobs, base = summary["jobs"], summary["baseline"]
    lines.append("")
    lines.append(f"{summary['test_points']} test points, k ∈ {summary['k_grid']}, seeds {summary['seeds']}; "
                 f"{jobs['finished']}/{jobs['total']} retrainings finished; baseline gold-class probability "
                 f"{base['gold_prob_mean']:.3f}, held-out accuracy {base['heldout_accuracy_mean']:.3f}.")
    return "\n".join(lines)


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
          "sst2_minilm_10pt": "SST-2, MiniLM-L6, 10 test points"}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out")
    parser.add_argument("--figures", default=None, help="write the README figures into this directory")
    args = parser.parse_args()
    out = Path(args.out)
    if args.figures:
        write_figures(out, Path(args.figures))
    for name in ("nooverlap_synthetic", "sst2_cnn", "sst2_bert_tiny", "sst2_bert_tiny_10pt", "sst2_minilm_del",
                 "sst2_minilm_10pt"):
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
