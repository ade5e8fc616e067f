"""Prints the Markdown tables of README "Analyses" from the outputs of run_real_data.sh.

    python experiments/summarize.py [--out experiments/out]

For each experiment directory found: the deletion table (AUC-DEL± ± bootstrap std,
with the baseline and the number of retrainings), the cancellation table, and the
cluster summary. Missing experiments are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"tracin_layer[word_embedding]": "TR-first (word emb.)", "tracin_layer[conv_0]": "TR-second (conv 0)",
         "tracin_layer[conv_1]": "TR-third (conv 1)", "tracin_layer[conv_2]": "TR-conv 2 (k=1)",
         "tracin_layer[classifier]": "TR-last (dense)", "tracin_all": "TR-all",
         "tracin_we_topk": "TR-WE-topk", "tracin_we": "TR-WE", "tracin_last": "TR-last",
         "tracin_tfidf": "TR-TFIDF", "influence_last": "Inf-Last", "representer": "Rep",
         "tracin_we_noc": "TR-WE-NoC", "tracin_common": "TR-common"}


def deletion_table(sweep_dir: Path) -> str:
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    methods = summary["methods"]
    lines = ["| metric | " + " | ".join(NAMES.get(m, m) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for sign, label in (("+", "AUC-DEL+ ↓"), ("-", "AUC-DEL− ↑")):
        cells = []
        for m in methods:
            d = summary["deletion"][m][sign]
            cells.append(f"{d['auc_del']:+.3f} ± {d['auc_del_std']:.3f}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out")
    out = Path(parser.parse_args().out)
    for name in ("nooverlap_synthetic", "sst2_cnn", "sst2_bert_tiny", "sst2_minilm_del"):
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
