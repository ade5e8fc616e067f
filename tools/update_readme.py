"""Rewrites README.md's demo results from a demo run's ``demo_summary.json``.

The numbers between ``<!-- demo:start -->`` and ``<!-- demo:end -->`` in README.md are
generated from ``docs/demo_summary.json`` (a copy of a measured ``make demo`` run's
``runs/demo/demo_summary.json``, with its wall time added), so they cannot drift:
``tests/test_readme.py`` checks that the README holds exactly what ``render`` makes of it.

    cp runs/demo/demo_summary.json docs/demo_summary.json    # after a measured make demo
    python tools/update_readme.py [--minutes 9.5]            # records the wall time, rewrites README.md
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- demo:start -->", "<!-- demo:end -->"
NAMES = {"tracin_we_topk": "TR-WE-topk", "tracin_last": "TR-last", "tracin_we": "TR-WE"}


def _cell(value, ci) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}"
    if ci:
        star = "*" if (ci[0] > 0 or ci[1] < 0) else ""
        text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]{star}"
    return text


def render(summary: dict) -> str:
    """The README's demo paragraph and table for one demo summary."""
    d = summary["deletion"]
    methods = list(d["auc_del"])
    precision = summary.get("trigger_precision_at_10", {})
    lines = [
        f"Measured on this 2-core CPU (`make demo`, {summary.get('wall_minutes', '?')} minutes end to end): "
        f"eval accuracy {summary['eval_accuracy']:.3f} (chance {summary['chance']:.3f}), "
        f"{len(summary['checkpoints'])} checkpoints; precision@10 of the trigger test points' proponents "
        + ", ".join(f"{NAMES.get(m, m)} {p:.3f}" for m, p in precision.items())
        + f"; case deletion over {d['test_points']} trigger test points, k ∈ {d['k_grid']}, "
        f"{len(d['seeds'])} seeds (AUC-DEL with its 95% interval; * = the interval excludes 0):",
        "",
        "| metric | " + " | ".join(NAMES.get(m, m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for sign, metric in (("+", "AUC-DEL+ ↓"), ("-", "AUC-DEL− ↑")):
        lines.append(f"| {metric} | " + " | ".join(
            _cell(d["auc_del"][m].get(sign), (d.get("auc_del_ci") or {}).get(m, {}).get(sign)) for m in methods) + " |")
    pair = summary.get("example_pair")
    if pair:
        lines += ["", f"Its first test point is example {pair['test_id']}; its top proponent is training "
                      f"example {pair['train_id']} (used in the commands below)."]
    return "\n".join(lines)


def rewrite(readme: str, summary: dict) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{render(summary)}\n{END}", readme)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", default=str(ROOT / "docs" / "demo_summary.json"))
    parser.add_argument("--minutes", type=float, default=None, help="record the demo's measured wall time")
    args = parser.parse_args(argv)
    path = Path(args.summary)
    summary = json.loads(path.read_text())
    if args.minutes is not None:
        summary["wall_minutes"] = round(args.minutes, 1)
        path.write_text(json.dumps(summary, indent=2) + "\n")
    readme = ROOT / "README.md"
    readme.write_text(rewrite(readme.read_text(), summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
