"""``tracin-jax analyze cancellation|clusters``: each writes its files under ``--out`` and prints a
one-line JSON summary."""
from __future__ import annotations

import json
from pathlib import Path

from tracin_jax.analysis import cancellation, clusters
from tracin_jax.commands import no_overrides, print_json
from tracin_jax.stages.analyses import cancellation_of_run, clusters_of_run


def _groups(text):
    return None if not text else [g.strip() for g in text.split(",") if g.strip()]


def cancellation_cmd(args, overrides) -> int:
    no_overrides("analyze", overrides, "the analysis reads the run's saved config")
    report = cancellation_of_run(args.run, split=args.split, num_examples=args.num_examples, seed=args.seed,
                                 steps=args.checkpoints, groups=_groups(args.groups),
                                 progress=not args.no_progress, chunk_size=args.chunk_size,
                                 verify=not args.no_verify)
    files = cancellation.write_report(report, args.out)
    print(report.markdown())
    print_json({"files": files, **{v.name: v.cancellation for v in report.views}})
    return 0


def clusters_cmd(args, overrides) -> int:
    no_overrides("analyze", overrides, "the analysis reads the run's saved config")
    hard = None
    if args.hard_positions:
        hard = [int(i) for i in json.loads(Path(args.hard_positions).read_text())]
    seeds = None if not args.seeds else [int(s) for s in args.seeds.split(",")]
    report = clusters_of_run(args.run, args.out, num_models=args.models, seeds=seeds, epochs=args.epochs,
                             min_error_rate=args.min_error_rate, hard_positions=hard,
                             method=args.method, threshold=args.threshold, min_size=args.min_size,
                             linkage=args.linkage, progress=not args.no_progress, verify=not args.no_verify)
    files = clusters.write_report(report, args.out)
    print_json({"files": files, "hard": report.num_hard, "clusters": len(report.clusters),
                "sizes": [len(c.members) for c in report.clusters]})
    return 0

