"""Stage "run + stores + rankings → sweep manifest" (``tracin-jax sweep plan``).

Inputs, each optional where it can be computed:
- rankings per method: ``tracin-jax score`` outputs (``--rankings DIR``), else
  computed here from the gradient stores (``--test-store``, ``--train-store``);
- LDS score matrices and self-influence (mislabel detection): from the stores;
- targeted-fixing points: mistakes of the run's final checkpoint with predicted-class
  probability in ``[p_low, p_high]``; their gradients are extracted into
  ``SWEEP/fix_grads`` and ranked with each neighbor's most negative token.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.deletion.cost import choose_num_replicas, estimate_cost
from tracin_jax.deletion.plan import MANIFEST, manifest_summary, plan_sweep, positions_of_ids
from tracin_jax.deletion.runner import make_trainer
from tracin_jax.errors import DataError, UsageError
from tracin_jax.files import atomic_save_npz, atomic_write_json
from tracin_jax.rankings import load_rankings
from tracin_jax.stages.gradients import run_context, subset_gradients
from tracin_jax.stages.rankings import RANDOM, full_scores, random_control, rank, self_scores
from tracin_jax.store import GradientStore
from tracin_jax.train import CheckpointStore, load_run, predict_proba

log = logging.getLogger(__name__)


def select_fix_points(setup, probs: np.ndarray, num_points: int, p_low: float, p_high: float,
                      seed: int, exclude_ids: Sequence[int] = ()) -> np.ndarray:
    """Eval rows of misclassified examples whose predicted-class probability is in
    ``[p_low, p_high]`` (appendix L), ``num_points`` of them drawn with ``seed``."""
    labels = np.asarray(setup.eval.labels)
    pred, p_pred = probs.argmax(-1), probs.max(-1)
    candidates = np.flatnonzero((pred != labels) & (p_pred >= p_low) & (p_pred <= p_high)
                                & ~np.isin(setup.eval.ids, list(exclude_ids)))
    if len(candidates) < num_points:
        log.warning("only %d misclassified eval examples with p in [%.2f, %.2f]; using them all",
                    len(candidates), p_low, p_high)
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, num_points, replace=False))


def final_params(run_dir: Path, verify: bool = True):
    store = CheckpointStore(Path(run_dir) / "checkpoints", verify=verify)
    step = store.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoints in {run_dir}/checkpoints: train first")
    params = store.restore_params(step)
    store.close()
    return params


def eligible_test_points(setup, run_dir: Path, sweep_cfg, test_ids, *, verify: bool = True) -> list[int] | None:
    """The ranked test points a sweep may use (``sweep.test_points``, ``test_points_prob_range``,
    ``test_point_ids``), judged by the run's final model; None = all of them."""
    explicit = [int(i) for i in sweep_cfg.get("test_point_ids", ()) or ()]
    kind = str(sweep_cfg.get("test_points", "all") or "all")
    window = sweep_cfg.get("test_points_prob_range", None)
    if kind not in ("all", "correct", "wrong"):
        raise UsageError(f"sweep.test_points={kind!r}", "use all, correct or wrong (or list ids in sweep.test_point_ids)")
    if explicit:
        unknown = sorted(set(explicit) - set(int(t) for t in test_ids))
        if unknown:
            raise DataError(f"test point ids {unknown[:10]} are not ranked test points",
                            "list ids of the test store the rankings were made for")
        return explicit
    if kind == "all" and window is None:
        return None
    rows = positions_of_ids(setup.eval.ids, test_ids, "test point")
    probs = predict_proba(setup.model, final_params(run_dir, verify), setup.eval.subset(rows),
                          int(setup.cfg.train.eval_batch_size), mesh_lib.make_local_mesh())
    labels = np.asarray(setup.eval.labels)[rows]
    gold = probs[np.arange(len(rows)), labels]
    keep = np.ones(len(rows), bool)
    if kind != "all":
        correct = probs.argmax(-1) == labels
        keep &= correct if kind == "correct" else ~correct
    if window is not None:
        low, high = (float(x) for x in window)
        if not 0.0 <= low <= high <= 1.0:
            raise UsageError(f"test_points_prob_range={tuple(window)} must satisfy 0 <= low <= high <= 1")
        keep &= (gold >= low) & (gold <= high)
    chosen = [int(t) for t, k in zip(test_ids, keep) if k]
    log.info("test points: %d of %d ranked ones are %s%s (by the run's final model)", len(chosen), len(rows),
             kind, "" if window is None else f" with gold-class probability in {tuple(window)}")
    return chosen


def plan_from_run(sweep_cfg: ml_collections.ConfigDict, run_dir: str | Path, out_dir: str | Path, *,
                  rankings: dict | None = None, rankings_paths: Sequence[str | Path] = (),
                  train_store=None, test_store=None, lds_stores: dict | None = None, setup=None,
                  context=None, mesh=None, measure: bool = True, progress: bool = False,
                  echo: Callable[[str], None] | None = print, verify: bool = True,
                  allow_mismatch: bool = False) -> dict:
    """Plans a sweep of run ``run_dir`` into ``out_dir/manifest.json``; returns the manifest.

    Args:
      sweep_cfg: ``cfg.sweep``.
      rankings: method -> ``Rankings`` already computed (e.g. by the demo).
      rankings_paths: ``tracin-jax score`` output directories / files.
      train_store, test_store: ``GradientStore``s (paths accepted) for what is computed here.
      lds_stores: method -> ``(test_store, train_store)`` for that method's LDS score matrix
        (e.g. exact stores for tracin_we, top-k ones for tracin_we_topk); default the two above.
      measure: time a few replica steps for the cost estimate.
      verify: check the checkpoints' digests; allow_mismatch: rank with stores of other models.
    """
    say = echo or (lambda s: None)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = setup or load_run(run_dir)
    mesh = mesh or mesh_lib.make_local_mesh()
    train_store = GradientStore(train_store) if isinstance(train_store, (str, Path)) else train_store
    test_store = GradientStore(test_store) if isinstance(test_store, (str, Path)) else test_store
    if context is None and (train_store is not None):
        context = run_context(run_dir, setup=setup, verify=verify)

    ranked = dict(rankings or {})
    for path in rankings_paths:
        r = load_rankings(path)
        ranked[r.method] = r
    depth = max(int(k) for k in sweep_cfg.k_grid)
    for method in sweep_cfg.methods:
        if method in ranked:
            continue
        if method == RANDOM and (train_store is None or test_store is None) and ranked:
            # the control needs no gradients: the test points of the rankings given
            first = next(iter(ranked.values()))
            ranked[RANDOM] = random_control(first.test_ids, first.test_labels, setup.train.ids, depth)
            continue
        if train_store is None or test_store is None:
            raise UsageError(f"no rankings for {method!r}", "pass its tracin-jax score output "
                             "(--rankings) or the gradient stores (--train-store, --test-store)")
        say(f"[sweep] ranking the test points with {method} (top {depth})")
        ranked[method] = rank(method, test_store, train_store, depth, context=context, mesh=mesh,
                              allow_mismatch=allow_mismatch)

    lds_files, self_files = {}, {}
    if int(sweep_cfg.lds.num_subsets) > 0:
        for method in sweep_cfg.methods:
            if method == RANDOM:
                continue  # the control ranks at random: it has no scores to correlate
            test_s, train_s = (lds_stores or {}).get(method, (test_store, train_store))
            if train_s is None or test_s is None:
                raise UsageError("sweep.lds needs the full score matrices", "pass --train-store and --test-store")
            test_ids, train_ids, scores = full_scores(method, test_s, train_s, context=context, mesh=mesh,
                                                     allow_mismatch=allow_mismatch)
            cols = positions_of_ids(train_ids, setup.train.ids, "training")  # columns in training-row order
            rel = f"lds/{method}.npz"
            atomic_save_npz(out_dir / rel, test_ids=test_ids, train_ids=np.asarray(setup.train.ids),
                            scores=scores[:, cols])
            lds_files[method] = rel
    flipped = (setup.extras.get("ground_truth") or {}).get("flipped_train_ids")
    if sweep_cfg.mislabel.enabled and flipped and train_store is not None:
        for method in sweep_cfg.methods:
            if method == RANDOM:
                continue
            ids, scores = self_scores(method, train_store, context=context, mesh=mesh)
            rel = f"self_influence/{method}.npz"
            atomic_save_npz(out_dir / rel, ids=ids, scores=scores)
            self_files[method] = rel
    elif sweep_cfg.mislabel.enabled and not flipped:
        log.info("mislabel detection skipped: the run has no known flipped labels")

    fix_rankings = None
    if int(sweep_cfg.fix.num_points) > 0:
        if train_store is None:
            raise UsageError("targeted fixing ranks new test points", "pass --train-store")
        probs = predict_proba(setup.model, final_params(run_dir, verify), setup.eval,
                              int(setup.cfg.train.eval_batch_size), mesh_lib.make_local_mesh())
        fix_cfg = sweep_cfg.fix
        rows = select_fix_points(setup, probs, int(fix_cfg.num_points), float(fix_cfg.p_low),
                                 float(fix_cfg.p_high), int(fix_cfg.seed))
        if len(rows):
            say(f"[sweep] targeted fixing: {len(rows)} misclassified points; extracting their gradients")
            store, texts, encoded = subset_gradients(setup, run_dir, "eval", rows, "eval_fix",
                                                     out_dir / "fix_grads", progress=progress, verify=verify)
            if context is not None:
                context.add_split("eval_fix", texts, encoded)
            fix_depth = max(int(k) for k in fix_cfg.k_grid)
            fix_rankings = {m: rank(m, store, train_store, fix_depth, context=context, mesh=mesh,
                                   with_tokens="pad" in fix_cfg.kinds, allow_mismatch=allow_mismatch)
                            for m in fix_cfg.methods}

    first = ranked[sweep_cfg.methods[0]]
    eligible = eligible_test_points(setup, run_dir, sweep_cfg, first.test_ids, verify=verify)
    manifest = plan_sweep(setup, run_dir, ranked, sweep_cfg, fix_rankings=fix_rankings,
                          lds_scores=lds_files, self_influence=self_files,
                          flipped_ids=flipped if self_files else None, eligible_test_ids=eligible)
    counts = manifest_summary(manifest)
    if measure:
        trainer = make_trainer(setup, manifest)
        r = choose_num_replicas(trainer, num_jobs=len(manifest["jobs"]), requested=int(sweep_cfg.replicas),
                                max_replicas=int(sweep_cfg.max_replicas),
                                memory_fraction=float(sweep_cfg.memory_fraction))
        manifest["estimate"] = estimate_cost(manifest, setup, r, mesh=trainer.mesh,
                                             vmap_width=int(sweep_cfg.vmap_width))
    if jax.process_index() == 0:  # every process computes the same plan; one writes it
        atomic_write_json(out_dir / MANIFEST, manifest)
    say(f"[sweep] plan: {counts['jobs']} retraining jobs ({_kinds(counts['by_kind'])}) for "
        f"{counts['test_points']} test points x {len(counts['methods'])} methods x "
        f"{len(counts['k_grid'])} k x {len(manifest['signs'])} signs x {len(counts['seeds'])} seeds "
        f"-> {out_dir / MANIFEST}")
    if "estimate" in manifest:
        e = manifest["estimate"]
        say(f"[sweep] estimate: {e['step_time_s'] * 1e3:.1f} ms per step of {e['replicas']} replicas on "
            f"{e['num_devices']} x {e['device']}: {e['retrain_s']:.2f} s per retraining, "
            f"{e['total_hours']:.2f} h in all on this machine ({3600 / max(e['retrain_s'], 1e-9):.0f} "
            "retrainings/hour)")
    return manifest


def _kinds(by_kind: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in by_kind.items())
