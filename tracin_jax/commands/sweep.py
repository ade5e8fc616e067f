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

from tracin_jax import config as config_lib
from tracin_jax.commands import load_config, no_overrides, print_json, split_methods
from tracin_jax.deletion.plan import manifest_summary
from tracin_jax.deletion.power import advise_sweep, render_markdown
from tracin_jax.deletion.report import PAPER_NAMES, sweep_report
from tracin_jax.deletion.runner import run_sweep
from tracin_jax.errors import UsageError
from tracin_jax.mesh import initialize_distributed
from tracin_jax.stages.sweep import plan_from_run


def _sweep_config(args, overrides):
    """``cfg`` from ``--config`` (else the run's saved config) with ``--config.*`` overrides."""
    if args.config:
        return load_config(args.config, overrides)
    if args.run:
        path = Path(args.run) / "config.json"
        if not path.exists():
            raise UsageError(f"{path} not found", "is --run a tracin-jax training run?")
        return config_lib.apply_overrides(config_lib.from_json(path.read_text()), overrides)
    raise UsageError("sweep plan needs --config or --run")


def _plan_options(args) -> list[str]:
    """The plan's command-line options as config overrides (applied after --config.*)."""
    extra = []
    if args.methods:
        extra.append(f"sweep.methods={tuple(split_methods(args.methods))!r}")
    if args.test_points:
        if args.test_points in ("all", "correct", "wrong"):
            extra.append(f"sweep.test_points={args.test_points}")
        else:
            try:
                ids = [int(i) for i in json.loads(Path(args.test_points).read_text())]
            except (OSError, ValueError, TypeError) as e:
                raise UsageError(f"--test-points {args.test_points}: not all/correct/wrong nor a JSON list of "
                                 f"test ids ({e})") from None
            extra.append(f"sweep.test_point_ids={tuple(ids)!r}")
    if args.prob_range:
        try:
            low, high = (float(x) for x in args.prob_range.split(","))
        except ValueError:
            raise UsageError(f"--prob-range {args.prob_range!r} must be LOW,HIGH", "e.g. 0.5,0.95") from None
        extra.append(f"sweep.test_points_prob_range={(low, high)!r}")
    return extra


def plan(args, overrides) -> int:
    initialize_distributed()
    cfg = _sweep_config(args, list(overrides) + _plan_options(args))
    run_dir = Path(args.run or Path("runs") / cfg.name)
    manifest = plan_from_run(cfg.sweep, run_dir, Path(args.out), rankings_paths=args.rankings,
                             train_store=args.train_store, test_store=args.test_store,
                             measure=not args.no_measure, progress=not args.no_progress,
                             verify=not args.no_verify, allow_mismatch=args.allow_mismatch)
    if args.pilot:
        advice = advise_sweep(args.pilot, effect=args.effect,
                              jobs_per_test_seed=len(cfg.sweep.methods) * len(cfg.sweep.signs) * len(set(cfg.sweep.k_grid)),
                              wall_time_s=(manifest.get("estimate") or {}).get("retrain_s"))
        print(render_markdown(advice, PAPER_NAMES))
    print_json({"manifest": str(Path(args.out) / "manifest.json"), **manifest_summary(manifest),
                "estimate": manifest.get("estimate")})
    return 0


def run(args, overrides) -> int:
    no_overrides("sweep run", overrides, "change settings at plan time (--config.sweep.*)")
    initialize_distributed()
    summary = run_sweep(args.manifest, shard=args.shard, num_shards=args.num_shards,
                        replicas=args.replicas, max_jobs=args.max_jobs, progress=not args.no_progress)
    print_json(summary)
    return 1 if summary["failed"] else 0


def report(args, overrides) -> int:
    no_overrides("sweep report", overrides, "the report reads the manifest and results")
    summary = sweep_report(args.manifest, args.out, bootstrap=args.bootstrap, plots=not args.no_plots,
                           level=args.level, effect=args.effect)
    print(Path(summary["files"]["table_md"]).read_text().rstrip())
    if summary["files"].get("power_md"):
        print(Path(summary["files"]["power_md"]).read_text().rstrip())
    print_json({"jobs": summary["jobs"], "files": summary["files"]})
    return 0
