"""``tracin-jax analyze cancellation|clusters``: argument parsing and the command bodies.

Registered by ``tracin_jax.cli``; each writes its files under ``--out`` and prints a
one-line JSON summary.
"""
from __future__ import annotations

import json
from pathlib import Path


def _groups(text):
    return None if not text else [g.strip() for g in text.split(",") if g.strip()]


def cmd_cancellation(args, overrides) -> int:
    from tracin_jax.analysis.cancellation import analyze_run, write_report

    if overrides:
        raise SystemExit("analyze takes no --config.* overrides")
    report = analyze_run(args.run, split=args.split, num_examples=args.num_examples, seed=args.seed,
                         steps=args.checkpoints, groups=_groups(args.groups),
                         progress=not args.no_progress, chunk_size=args.chunk_size)
    files = write_report(report, args.out)
    print(report.markdown())
    print(json.dumps({"files": files, **{v.name: v.cancellation for v in report.views}}))
    return 0


def cmd_clusters(args, overrides) -> int:
    from tracin_jax.analysis.clusters import find_clusters, write_report

    if overrides:
        raise SystemExit("analyze takes no --config.* overrides")
    hard = None
    if args.hard_positions:
        hard = [int(i) for i in json.loads(Path(args.hard_positions).read_text())]
    seeds = None if not args.seeds else [int(s) for s in args.seeds.split(",")]
    report = find_clusters(args.run, args.out, num_models=args.models, seeds=seeds, epochs=args.epochs,
                           min_error_rate=args.min_error_rate, hard_positions=hard,
                           method=args.method, threshold=args.threshold, min_size=args.min_size,
                           linkage=args.linkage, progress=not args.no_progress)
    files = write_report(report, args.out)
    print(json.dumps({"files": files, "hard": report.num_hard, "clusters": len(report.clusters),
                      "sizes": [len(c.members) for c in report.clusters]}))
    return 0


def register(sub) -> None:
    """Adds ``analyze`` with its two sub-commands to the CLI's sub-parsers."""
    from tracin_jax.analysis import clusters as cl

    analyze = sub.add_parser("analyze", help="The paper's analyses: cancellation ratio (sec. 3), "
                             "mislabel clusters (appendix A).")
    kinds = analyze.add_subparsers(dest="analysis", required=True)

    p = kinds.add_parser("cancellation", help="C(W), G(W)_c, ΔW_c and gradient cosine similarity "
                         "per parameter group (bias vs weight, per layer): table, JSON, bar plot.")
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--split", default="train", help="examples whose gradients are summed (train, eval, test)")
    p.add_argument("--num-examples", type=int, default=256, help="sample size; G is scaled to the split")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    p.add_argument("--checkpoints", default=None, help="steps, e.g. 100,200,300 (default: all)")
    p.add_argument("--groups", default=None, help="parameter groups, e.g. word_embedding,layer_0 (default: all)")
    p.add_argument("--chunk-size", type=int, default=None, help="examples per gradient call")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_cancellation)

    p = kinds.add_parser("clusters", help="Hard training examples clustered by influence distance "
                         "(appendix A), with their common words, as Markdown.")
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--models", type=int, default=5, help="N models trained to find hard examples")
    p.add_argument("--seeds", default=None, help="seeds of the N models, e.g. 0,1,2 (default 0..N-1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the N models (early stopping; default: the run's)")
    p.add_argument("--min-error-rate", type=float, default=cl.MIN_ERROR_RATE)
    p.add_argument("--hard-positions", default=None,
                   help="JSON list of training rows to cluster (skips training the N models)")
    p.add_argument("--method", default="tracin_we")
    p.add_argument("--threshold", type=float, default=cl.DISTANCE_THRESHOLD)
    p.add_argument("--min-size", type=int, default=cl.MIN_CLUSTER_SIZE)
    p.add_argument("--linkage", default="average", choices=("average", "complete", "single"))
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_clusters)
