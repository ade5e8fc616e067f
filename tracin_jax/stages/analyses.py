"""Stage "run → analyses": the paper's analyses on a training run (they read its checkpoints,
extract gradients and rank; ``tracin_jax.analysis`` holds the computations themselves).

- ``cancellation_of_run``: cancellation ratio and gradient similarity (sec. 3.1-3.3);
- ``clusters_of_run``: mislabel clusters by influence distance (appendix A);
- ``run_nooverlap``: the no-word-overlap experiment (sec. 5, appendix J), end to end.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.analysis.cancellation import CancellationReport, analyze_checkpoints
from tracin_jax.analysis.clusters import (DISTANCE_THRESHOLD, HARD_SPLIT, MIN_CLUSTER_SIZE, MIN_ERROR_RATE,
                                          Cluster, ClusterReport, cluster_by_distance, common_tokens,
                                          influence_distance, misclassification_rate, select_hard,
                                          train_models)
from tracin_jax.analysis.nooverlap import lowest_tfidf_sets, shared_tokens
from tracin_jax.deletion import run_sweep, sweep_report
from tracin_jax.errors import DataError, UsageError
from tracin_jax.files import atomic_write_json
from tracin_jax.grads import parse_steps
from tracin_jax.mesh import make_local_mesh
from tracin_jax.methods import get_method, score_matrix
from tracin_jax.stages.gradients import run_context, run_gradients, split_examples, subset_gradients
from tracin_jax.stages.rankings import rank
from tracin_jax.stages.sweep import plan_from_run
from tracin_jax.train import CheckpointStore, load_run, prepare_run, train

log = logging.getLogger(__name__)


def cancellation_of_run(run_dir: str | Path, *, split: str = "train", num_examples: int = 256,
                seed: int = 0, steps: str | Sequence[int] | None = None,
                groups: Sequence[str] | None = None, setup=None, progress: bool = False,
                chunk_size: int | None = None, verify: bool = True) -> CancellationReport:
    """``tracin-jax analyze cancellation``: a seeded sample of ``split`` over the run's checkpoints."""
    run_dir = Path(run_dir)
    setup = setup or load_run(run_dir)
    store = CheckpointStore(run_dir / "checkpoints", verify=verify)
    try:
        infos = {c.step: c.learning_rate for c in store.infos()}
        if not infos:
            raise UsageError(f"no checkpoints in {run_dir / 'checkpoints'}", "train first")
        if steps is not None and not isinstance(steps, str):
            steps = ",".join(str(int(s)) for s in steps)
        chosen = parse_steps(steps, infos)
        ex = split_examples(setup, split, run_dir)
        n = len(ex.encoded.labels)
        if num_examples < 2:
            raise UsageError(f"num_examples must be >= 2, got {num_examples}")
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:min(int(num_examples), n)])
        return analyze_checkpoints(setup.model, store.restore_params, [(s, infos[s]) for s in chosen],
                                   ex.encoded, rows, population=n, groups=groups, split=split,
                                   mesh=make_local_mesh(), chunk_size=chunk_size, progress=progress)
    finally:
        store.close()


def clusters_of_run(run_dir: str | Path, out_dir: str | Path, *, num_models: int = 5, seeds=None,
                  epochs: int | None = None, min_error_rate: float = MIN_ERROR_RATE, hard_positions: Sequence[int] | None = None,
                  method: str = "tracin_we", threshold: float = DISTANCE_THRESHOLD,
                  min_size: int = MIN_CLUSTER_SIZE, linkage: str = "average", top: int = 5,
                  setup=None, progress: bool = False, verify: bool = True) -> ClusterReport:
    """The appendix-A pipeline on a training run; writes ``hardness.json`` and the store under ``out_dir``.

    ``hard_positions`` (training-split rows) skips the N-model selection. ``epochs``: training
    length of the N models (the paper early-stops them, so that they do not memorise the
    mislabelled examples; default the run's ``train.epochs``).
    """
    run_dir, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = setup or load_run(run_dir)
    labels = np.asarray(setup.train.labels)
    mesh = make_local_mesh()
    predictions = None
    if hard_positions is None:
        seeds = list(range(int(num_models))) if seeds is None else [int(s) for s in seeds]
        probs = train_models(setup, seeds, epochs=epochs, mesh=mesh, progress=progress)
        rate = misclassification_rate(probs, labels)
        hard = select_hard(rate, min_error_rate)
        votes = np.argmax(probs, -1)  # [R, N]
        predictions = np.asarray([np.bincount(votes[:, n], minlength=probs.shape[-1]).argmax()
                                  for n in range(votes.shape[1])])
        atomic_write_json(out / "hardness.json", {
            "seeds": seeds, "epochs": epochs or int(setup.cfg.train.epochs), "min_error_rate": min_error_rate,
            "error_rate": rate.round(6).tolist(), "hard_positions": hard.tolist(),
            "hard_ids": np.asarray(setup.train.ids)[hard].tolist()}, indent=None)
        num_models = len(seeds)
        log.info("hard examples: %d of %d misclassified by >= %.0f%% of %d models", len(hard),
                 len(labels), 100 * min_error_rate, num_models)
    else:
        hard = np.unique(np.asarray(hard_positions, np.int64))
        num_models = 0
    if len(hard) < 2:
        raise DataError(f"only {len(hard)} hard examples (error rate >= {min_error_rate}); nothing to cluster",
                        "lower --min-error-rate or train more models (--models)")
    k = None if method == "tracin_we" else setup.cfg.grads.k
    texts_of_hard = setup.texts["train"].subset(hard)
    store, texts, encoded = subset_gradients(  # one store per set of hard examples
        setup, run_dir, "train", hard, HARD_SPLIT, out / f"grads-{texts_of_hard.fingerprint()[:12]}",
        k=k, dtype="float32", progress=progress, verify=verify)
    context = run_context(run_dir, setup=setup, verify=verify)
    context.add_split(HARD_SPLIT, texts, encoded)
    m = get_method(method)
    matrix = score_matrix(m, store, store, context=context, mesh=mesh)
    distance = influence_distance(matrix.scores)
    clusters = []
    for members in cluster_by_distance(distance, threshold, min_size, linkage):
        pos = hard[members]
        sub = distance[np.ix_(members, members)]
        clusters.append(Cluster(
            members=np.asarray(setup.train.ids)[pos].tolist(), positions=pos.tolist(),
            labels=labels[pos].tolist(),
            predictions=[] if predictions is None else predictions[pos].tolist(),
            mean_distance=float(sub[np.triu_indices(len(members), 1)].mean()),
            common_tokens=common_tokens(m, store, members, context, top=top),
            texts=[texts.texts[i] for i in members]))
    return ClusterReport(method=m.name, num_models=num_models, min_error_rate=min_error_rate,
                         threshold=threshold, num_hard=len(hard),
                         label_names=list(setup.texts["train"].label_names), clusters=clusters)


def rank_within_candidates(methods: Sequence[str], test_store, train_store, candidates, depth: int, *,
                           context=None, mesh=None) -> dict:
    """``{method: Rankings}``: each test point's top-``depth`` proponents/opponents among
    its own candidates only."""
    return {method: rank(method, test_store, train_store, int(depth), context=context, mesh=mesh,
                         per_test_candidates=candidates) for method in methods}


def run_nooverlap(cfg: ml_collections.ConfigDict, out_dir: str | Path, *, progress: bool = False,
                  echo=print) -> dict:
    """Train (frozen embedding) → exact gradient stores → TF-IDF candidates → rankings within
    them → deletion sweep (frozen embedding) → report. Resumable: every stage skips finished work."""
    if not cfg.train.freeze_word_embeddings:
        raise UsageError("the no-overlap experiment freezes the word embedding (appendix J)",
                         "set train.freeze_word_embeddings=True")
    out = Path(out_dir)
    run = out / "run"
    setup = prepare_run(cfg, run)
    result = train(cfg, run, setup=setup, progress=progress)
    echo(f"[nooverlap] trained: eval accuracy {result.eval_metrics['accuracy']:.4f}, checkpoints "
         f"{[c.step for c in result.checkpoints]}")
    stores = {split: run_gradients(run, split, out / "grads" / split, k=0, setup=setup, progress=progress)
              for split in ("train", "test")}  # exact vectors: tracin_we / _noc / common
    test = split_examples(setup, "test")
    candidates = lowest_tfidf_sets(test.texts, setup.texts["train"], int(cfg.nooverlap.num_candidates))
    overlap = shared_tokens(test.encoded, setup.train, candidates, ignore=[setup.tokenizer.pad_id,
                                                                          *setup.tokenizer.special_ids])
    echo(f"[nooverlap] {len(candidates)} test points x {len(next(iter(candidates.values())))} candidates; "
         f"shared word types per pair (specials excluded): {overlap['mean_shared_tokens']:.3f}, "
         f"{overlap['share_without_overlap']:.1%} of pairs share none")
    atomic_write_json(out / "candidates.json", {str(k): v.tolist() for k, v in candidates.items()}, indent=None)
    context = run_context(run, setup=setup)
    mesh = mesh_lib.make_local_mesh()
    depth = max(int(k) for k in cfg.sweep.k_grid)
    rankings = rank_within_candidates(cfg.sweep.methods, stores["test"], stores["train"], candidates,
                                      depth, context=context, mesh=mesh)
    plan_from_run(cfg.sweep, run, out / "sweep", rankings=rankings, setup=setup, context=context,
                  mesh=mesh, measure=False, echo=echo)
    run_sweep(out / "sweep", setup=setup, progress=True, echo=echo)
    summary = sweep_report(out / "sweep")
    summary["overlap"] = overlap
    atomic_write_json(out / "nooverlap_summary.json", summary)
    return summary
