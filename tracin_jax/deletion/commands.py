"""``tracin-jax sweep plan | run | report``: the case-deletion evaluation from the command line.

    tracin-jax sweep plan --config CFG [--run RUN] --out SWEEP [--rankings SCORE_DIR ...]
                          [--train-store S --test-store S] [--config.sweep.k_grid=(10,20)]
    tracin-jax sweep run --manifest SWEEP [--shard I --num-shards N] [--replicas R]
    tracin-jax sweep report --manifest SWEEP [--out DIR]

``run`` without ``--shard`` takes the shard from the job environment (multi-process
JAX, SLURM array, Kubernetes indexed job), so one command serves a pod, an array
job or a laptop.
"""
from __future__ import annotations

import json
from pathlib import Path


def _sweep_config(args, overrides):
    """``cfg`` from ``--config`` (else the run's saved config) with ``--config.*`` overrides."""
    from tracin_jax import config as config_lib

    if args.config:
        from tracin_jax.cli import _resolve_config_path
        cfg = config_lib.load_config(_resolve_config_path(args.config))
    elif args.run:
        path = Path(args.run) / "config.json"
        if not path.exists():
            raise SystemExit(f"{path} not found: is --run a tracin-jax training run?")
        cfg = config_lib.from_json(path.read_text())
    else:
        raise SystemExit("sweep plan needs --config or --run")
    return config_lib.apply_overrides(cfg, overrides)


def cmd_plan(args, overrides) -> int:
    from tracin_jax.deletion.plan import manifest_summary
    from tracin_jax.deletion.sweep import plan_from_run

    cfg = _sweep_config(args, overrides)
    run_dir = Path(args.run or Path("runs") / cfg.name)
    manifest = plan_from_run(cfg.sweep, run_dir, Path(args.out), rankings_paths=args.rankings,
                             train_store=args.train_store, test_store=args.test_store,
                             measure=not args.no_measure, progress=not args.no_progress)
    print(json.dumps({"manifest": str(Path(args.out) / "manifest.json"), **manifest_summary(manifest),
                      "estimate": manifest.get("estimate")}))
    return 0


def cmd_run(args, overrides) -> int:
    from tracin_jax.deletion.runner import run_sweep

    if overrides:
        raise SystemExit("sweep run reads the manifest; change settings at plan time (--config.sweep.*)")
    summary = run_sweep(args.manifest, shard=args.shard, num_shards=args.num_shards,
                        replicas=args.replicas, max_jobs=args.max_jobs, progress=not args.no_progress)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


def cmd_report(args, overrides) -> int:
    from tracin_jax.deletion.report import sweep_report

    if overrides:
        raise SystemExit("sweep report takes no --config.* overrides")
    summary = sweep_report(args.manifest, args.out, bootstrap=args.bootstrap, plots=not args.no_plots)
    print(Path(summary["files"]["table_md"]).read_text().rstrip())
    print(json.dumps({"jobs": summary["jobs"], "files": summary["files"]}))
    return 0


def register(sub) -> None:
    """Adds ``sweep plan|run|report`` to the CLI's subparsers."""
    sweep = sub.add_parser("sweep", help="Case-deletion sweeps: plan, run (sharded, restartable), report.",
                           description=__doc__.splitlines()[0])
    steps = sweep.add_subparsers(dest="sweep_command", required=True)

    p = steps.add_parser("plan", help="Write the manifest of retraining jobs from rankings; estimate its cost.")
    p.add_argument("--config", default=None, help="config (configs/NAME.py) whose cfg.sweep is used; "
                   "default: the run's saved config. Override with --config.sweep.FIELD=VALUE")
    p.add_argument("--run", default=None, help="training run directory (default runs/<config.name>)")
    p.add_argument("--out", required=True, help="sweep directory (manifest.json, results/, report/)")
    p.add_argument("--rankings", nargs="*", default=[],
                   help="tracin-jax score output directories (or retrieval.npz / scores.jsonl), one per method")
    p.add_argument("--train-store", default=None, help="training gradient store (rank / LDS / self-influence here)")
    p.add_argument("--test-store", default=None, help="test-point gradient store")
    p.add_argument("--no-measure", action="store_true", help="skip timing replica steps for the estimate")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = steps.add_parser("run", help="Run this shard's unfinished jobs, R retrainings per vmapped program.")
    p.add_argument("--manifest", required=True, help="sweep directory or its manifest.json")
    p.add_argument("--shard", type=int, default=None,
                   help="default: jax.process_index(), SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX")
    p.add_argument("--num-shards", type=int, default=None, help="default: jax.process_count() / the array size")
    p.add_argument("--replicas", type=int, default=None, help="R per program (default sweep.replicas; 0 = from memory)")
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = steps.add_parser("report", help="DEL±/AUC-DEL± with bootstrap std, LDS, mislabel detection, "
                         "fixing: tables (Markdown, CSV) and plots (PNG).")
    p.add_argument("--manifest", required=True, help="sweep directory or its manifest.json")
    p.add_argument("--out", default=None, help="output directory (default SWEEP/report)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap samples (default sweep.bootstrap)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_report)
