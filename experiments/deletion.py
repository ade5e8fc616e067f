"""Case-deletion evaluation of several influence methods on one training run (paper sec. 5).

    python experiments/deletion.py --config configs/sst2_bert_tiny.py \
        --out experiments/out/sst2_bert_tiny \
        --methods tracin_we_topk,tracin_we,tracin_last,tracin_tfidf,influence_last,representer \
        --config.sweep.k_grid='(10, 30, 50)' --config.sweep.seeds='(0, 1)'

Stages (each resumes): train the run (OUT/run; or --run DIR to reuse a trained one) →
gradient stores of the training set and the test points (OUT/grads/{train,test}_k{K}:
top-k for tracin_we_topk, exact for tracin_we / _noc / common, the top-k store for
the others) → each method's top proponents/opponents → the sweep manifest, its
retrainings (vmapped replicas) and the report (OUT/sweep/report: table.md,
deletion_curves.png, summary.json). ``random`` among the methods adds the control of
removing k random training examples. ``--config.sweep.lds.num_subsets=J`` adds the linear
datamodeling score over J random subsets (from the exact-or-top-k stores of each method).
``--cancellation N`` also writes the per-layer cancellation analysis of the run over N
training examples (OUT/cancellation).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXACT_METHODS = ("tracin_we", "tracin_we_noc", "tracin_common", "tracin_we_syn")


def main(argv=None) -> int:
    from tracin_jax import mesh as mesh_lib
    from tracin_jax.config import apply_overrides, load_config
    from tracin_jax.deletion import run_sweep, sweep_report
    from tracin_jax.stages.analyses import cancellation_of_run
    from tracin_jax.analysis.cancellation import write_report
    from tracin_jax.stages.gradients import run_context, run_gradients
    from tracin_jax.commands import split_methods
    from tracin_jax.stages.rankings import RANDOM, rank
    from tracin_jax.stages.sweep import plan_from_run
    from tracin_jax.train import load_run, prepare_run, train

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (ignored with --run: the run's own config)")
    parser.add_argument("--run", default=None, help="reuse this trained run instead of OUT/run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", required=True,
                        help="comma-separated; tracin_layer[a,b] allowed; 'random' = the random-removal control")
    parser.add_argument("--cancellation", type=int, default=0, help="examples for the cancellation table")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop the sweep after N jobs")
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    methods = split_methods(args.methods)
    t0 = time.time()

    def say(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    if args.run:
        run = Path(args.run)
        setup = load_run(run)
        cfg = apply_overrides(setup.cfg, overrides)  # sweep.* overrides only: training is fixed
    else:
        cfg = apply_overrides(load_config(args.config), overrides)
        run = out / "run"
        setup = prepare_run(cfg, run)
        result = train(cfg, run, setup=setup, progress=False)
        say(f"trained {run}: eval accuracy {result.eval_metrics['accuracy']:.4f}, checkpoints "
            f"{[(c.step, round(c.learning_rate, 8)) for c in result.checkpoints]}")
    if args.cancellation:
        report = cancellation_of_run(run, num_examples=args.cancellation, setup=setup)
        write_report(report, out / "cancellation")
        say("cancellation:\n" + report.markdown())

    k = int(cfg.grads.k) if cfg.grads.k else 0
    stores = {}
    for need_exact in sorted({m in EXACT_METHODS or not k for m in methods}):
        kk = 0 if need_exact else k
        for split in ("train", "test"):
            stores[split, need_exact] = run_gradients(run, split, out / "grads" / f"{split}_k{kk}",
                                                      k=kk, setup=setup, progress=False)
        say(f"gradient stores with k={kk or 'exact'}: {stores['train', need_exact].num_examples} train, "
            f"{stores['test', need_exact].num_examples} test")
    context = run_context(run, setup=setup)
    mesh = mesh_lib.make_local_mesh()
    depth = max(int(x) for x in cfg.sweep.k_grid)
    rankings = {}
    for m in methods:
        exact = m in EXACT_METHODS or not k
        rankings[m] = rank(m, stores["test", exact], stores["train", exact], depth, context=context, mesh=mesh)
        say(f"ranked {len(rankings[m].test_ids)} test points with {m}")
    overlap = _overlaps(rankings, depth)
    (out / "rankings_overlap.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "rankings_overlap.json").write_text(json.dumps(overlap, indent=1))
    cfg.sweep.methods = tuple(methods)
    lds_stores = {}
    if int(cfg.sweep.lds.num_subsets) > 0:  # score matrices of every method except the control
        lds_stores = {m: (stores["test", m in EXACT_METHODS or not k], stores["train", m in EXACT_METHODS or not k])
                      for m in methods if m != RANDOM}
    plan_from_run(cfg.sweep, run, out / "sweep", rankings=rankings, setup=setup, context=context,
                  mesh=mesh, measure=False, echo=say, lds_stores=lds_stores)
    run_sweep(out / "sweep", setup=setup, progress=True, echo=say, max_jobs=args.max_jobs)
    summary = sweep_report(out / "sweep")
    say("report:\n" + Path(summary["files"]["table_md"]).read_text())
    return 0


def _overlaps(rankings, depth: int) -> dict:
    """Mean share of common training ids between two methods' top-``depth`` proponents."""
    names = list(rankings)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = rankings[a], rankings[b]
            shares = [len(set(ra.top(t, "proponents", depth)) & set(rb.top(t, "proponents", depth))) / depth
                      for t in ra.test_ids]
            out[f"{a} | {b}"] = sum(shares) / len(shares)
    return out


if __name__ == "__main__":
    sys.exit(main())
