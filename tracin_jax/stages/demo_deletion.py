"""The demo's last stage: a small case-deletion sweep on the planted synthetic data.

Test points are eval examples carrying a planted trigger token (one per trigger
for the first three triggers), whose only
evidence in training is that trigger's examples: removing the right proponents
must lower the gold-class probability (DEL+ < 0), and removing the trigger's planted
opponents (``data.synthetic.trigger_opponent_examples``: the trigger in examples of
another class) must raise it (DEL− > 0). The stage ranks them with
``tracin_we_topk`` and ``tracin_last``, plans k ∈ {5, 10, 20} × 3 seeds, runs the
retrainings R at a time and writes the Table-4-shaped table and Figure-1-style
curves into ``out_dir/report``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from tracin_jax.deletion.report import sweep_report
from tracin_jax.deletion.runner import run_sweep
from tracin_jax.stages.gradients import run_context, subset_gradients
from tracin_jax.stages.rankings import rank
from tracin_jax.stages.sweep import plan_from_run

log = logging.getLogger(__name__)

DEMO_METHODS = ("tracin_we_topk", "tracin_last")
DEMO_K_GRID = (5, 10, 20)
DEMO_SEEDS = (0, 1, 2)
DEMO_TEST_POINTS = 3  # a few test points: one eval point of each of the first triggers


def trigger_eval_rows(setup, max_points: int | None = None) -> np.ndarray:
    """Eval rows of planted-trigger examples (synthetic ground truth): all of them, or one
    per trigger for the first ``max_points`` triggers (triggers of different classes)."""
    truth = setup.extras.get("ground_truth")
    if not truth:
        raise ValueError("the deletion demo needs the synthetic corpus' ground truth (data.source=synthetic)")
    if max_points is None:
        ids = [e for t in truth["triggers"] for e in t["eval_ids"]]
    else:
        ids = [t["eval_ids"][0] for t in truth["triggers"] if t["eval_ids"]][:int(max_points)]
    return np.flatnonzero(np.isin(setup.eval.ids, ids))


def demo_sweep_config(cfg: ml_collections.ConfigDict, *, methods: Sequence[str] = DEMO_METHODS,
                      k_grid: Sequence[int] = DEMO_K_GRID, seeds: Sequence[int] = DEMO_SEEDS,
                      points_per_class: int | None = None) -> ml_collections.ConfigDict:
    """``cfg.sweep`` with the demo's grid (other fields as configured)."""
    sweep = ml_collections.ConfigDict(cfg.sweep.to_dict())
    sweep.methods = tuple(methods)
    sweep.k_grid = tuple(int(k) for k in k_grid)
    sweep.seeds = tuple(int(s) for s in seeds)
    with sweep.ignore_type():
        sweep.test_points_per_class = points_per_class
    sweep.lds.num_subsets = 0
    sweep.fix.num_points = 0
    return sweep


def run_deletion_demo(setup, run_dir: str | Path, out_dir: str | Path, *, train_store,
                      context=None, sweep_cfg: ml_collections.ConfigDict | None = None,
                      max_points: int | None = DEMO_TEST_POINTS, replicas: int | None = None,
                      mesh=None, measure: bool = False, progress: bool = True) -> dict:
    """Plans, runs and reports a small deletion sweep; returns the report summary.

    Args:
      setup: the demo run's ``RunSetup`` (synthetic data with ground truth).
      run_dir: its training run directory (checkpoints).
      out_dir: sweep directory (``manifest.json``, ``results/``, ``report/``,
        ``grads_triggers/``); rerunning resumes finished retrainings.
      train_store: the training-set ``GradientStore`` (top-k, as the demo extracts).
      context: a ``methods.RunContext`` of the run (built when omitted).
      sweep_cfg: overrides the demo grid (default :func:`demo_sweep_config`).
      max_points: trigger test points (one per trigger); None = every trigger eval point.
      replicas: R per program (default: ``sweep.replicas``, 0 = from memory).
      measure: time replica steps for the plan's cost estimate (and vmap width).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    say = print if progress else (lambda s: None)
    sweep_cfg = sweep_cfg or demo_sweep_config(setup.cfg)
    rows = trigger_eval_rows(setup, max_points)
    store, texts, encoded = subset_gradients(setup, run_dir, "eval", rows, "eval_triggers",
                                             out_dir / "grads_triggers")
    context = context or run_context(run_dir, setup=setup)
    if "eval_triggers" not in context.splits:
        context.add_split("eval_triggers", texts, encoded)
    depth = max(int(k) for k in sweep_cfg.k_grid)
    rankings = {m: rank(m, store, train_store, depth, context=context, mesh=mesh)
                for m in sweep_cfg.methods}
    manifest = plan_from_run(sweep_cfg, run_dir, out_dir, rankings=rankings, setup=setup, mesh=mesh,
                             measure=measure, echo=say)
    run_sweep(out_dir, setup=setup, replicas=replicas, mesh=mesh, progress=progress, echo=say)
    summary = sweep_report(out_dir)
    say("[demo] case deletion (AUC-DEL over k in "
        f"{list(manifest['k_grid'])}, {len(manifest['seeds'])} seeds, {len(manifest['test_points'])} "
        "trigger test points):")
    say((out_dir / "report" / "table.md").read_text().rstrip())
    say(f"[demo] deletion curves: {summary['files'].get('deletion_curves')}")
    return summary
