"""No-word-overlap experiment (paper sec. 5, appendix J): train with a frozen word embedding,
rank each test point's lowest-TF-IDF candidates with tracin_we / tracin_we_noc /
tracin_common / tracin_last, and compare them by case deletion.

    python experiments/nooverlap.py --config configs/nooverlap_synthetic.py \
        --out experiments/out/nooverlap_synthetic [--config.sweep.seeds='(0,1)']

Writes OUT/run (training), OUT/grads, OUT/candidates.json, OUT/sweep (manifest, results,
report/table.md, report/deletion_curves.png) and OUT/nooverlap_summary.json. Rerunning
resumes every stage.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from tracin_jax.stages.analyses import run_nooverlap
    from tracin_jax.config import apply_overrides, load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/nooverlap_synthetic.py")
    parser.add_argument("--out", required=True)
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = apply_overrides(load_config(args.config), overrides)
    summary = run_nooverlap(cfg, Path(args.out))
    print(Path(summary["files"]["table_md"]).read_text())
    print(f"overlap: {summary['overlap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
