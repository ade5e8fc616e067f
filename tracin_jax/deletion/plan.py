"""Sweep plans: the manifest of retraining jobs of a case-deletion evaluation.

A *job* is one retraining: a seed and the exact training ids it never sees
(``removed``), optionally token edits (targeted fixing (b)) or a random subset
(LDS). Its id is a hash of that definition and of the training fingerprint
(run config + training data), so it is stable across re-plans, identical
definitions collapse into one job, and results of another configuration can
never be mistaken for it. *Tags* say what each job is for:

    {"kind": "baseline"}                                       no removal, one per seed
    {"kind": "del", "test": id, "method": m, "sign": "+", "k": k}   top-k proponents (+) / opponents (-)
    {"kind": "lds", "subset": j}                                 random α-subset j
    {"kind": "fix_remove" | "fix_pad", "test": id, "method": m, "k": k}

``SWEEP/manifest.json`` holds the jobs, the evaluation points (test points and
fixing points, eval-split ids), the held-out rows, the grids and the cost
estimate; score matrices (LDS) and self-influence (mislabel detection) are
``.npz`` files beside it. No pickle anywhere; every file is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from tracin_jax.errors import ConfigError, DataError
from tracin_jax.files import read_json
from tracin_jax.rankings import Rankings

log = logging.getLogger(__name__)

FORMAT = "tracin_jax.sweep/1"
MANIFEST = "manifest.json"
SIGNS = {"+": "proponents", "-": "opponents"}
FIX_KINDS = {"remove": "fix_remove", "pad": "fix_pad"}
LDS_SALT = 461  # keeps LDS subset streams apart from data-order streams of the same seed


# ----------------------------------------------------------------------------- files

def load_manifest(path: str | Path) -> dict:
    """Reads ``manifest.json`` (or the sweep directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise DataError(f"sweep manifest {path} not found", "run tracin-jax sweep plan first")
    manifest = read_json(path, "sweep manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                        f"expected {FORMAT!r}", "is it a tracin-jax sweep manifest?")
    manifest["_dir"] = str(path.parent)
    return manifest


# ----------------------------------------------------------------------------- jobs

def training_fingerprint(setup, epochs: int | None = None) -> str:
    """sha256 over what determines a retraining besides seed and removal: the run's
    model, tokenizer and training settings (epochs possibly overridden) and the
    training data."""
    cfg = setup.cfg.to_dict()
    train = dict(cfg["train"])
    if epochs is not None:
        train["epochs"] = int(epochs)
    for key in ("num_devices", "log_every_steps", "allow_nonfinite"):  # no effect on a finite run
        train.pop(key, None)
    for key in ("checkpoint_every_epochs", "checkpoint_every_steps", "checkpoint_steps"):
        train.pop(key, None)
    payload = {"model": cfg["model"], "tokenizer": cfg["tokenizer"], "train": train,
               "data": setup.texts["train"].fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def job_id(fingerprint: str, seed: int, removed: Sequence[int] = (),
           edits: Sequence[Sequence[int]] = (), subset: Mapping | None = None) -> str:
    """16 hex digits of sha256 over the job definition (removed ids and edits sorted)."""
    definition = {"fingerprint": fingerprint, "seed": int(seed),
                  "removed": sorted(int(i) for i in removed),
                  "edits": sorted([int(a), int(b)] for a, b in edits),
                  "subset": dict(subset) if subset else None}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def lds_keep_mask(num_train: int, alpha: float, seed: int, index: int) -> np.ndarray:
    """Keep mask ``[N]`` of LDS subset ``index``: ``round(α N)`` rows drawn without
    replacement from ``default_rng([LDS_SALT, seed, index])`` (dataset positions)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"lds alpha must be in (0, 1], got {alpha}")
    keep = np.zeros(num_train, bool)
    rows = np.random.default_rng([LDS_SALT, int(seed), int(index)]).permutation(num_train)
    keep[rows[:int(round(alpha * num_train))]] = True
    return keep


def lds_training_seed(lds_seed: int, index: int) -> int:
    """Training seed of LDS subset ``index`` (each subset is one retraining with its own seed)."""
    return int(lds_seed) * 100_000 + int(index)


class JobSet:
    """Jobs by id, in insertion order; adding an existing definition appends a tag."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.jobs: dict[str, dict] = {}

    def add(self, tag: dict, seed: int, removed: Sequence[int] = (),
            edits: Sequence[Sequence[int]] = (), subset: Mapping | None = None) -> str:
        jid = job_id(self.fingerprint, seed, removed, edits, subset)
        if jid not in self.jobs:
            job = {"id": jid, "seed": int(seed), "removed": sorted(int(i) for i in removed), "tags": []}
            if edits:
                job["edits"] = sorted([int(a), int(b)] for a, b in edits)
            if subset:
                job["subset"] = dict(subset)
            self.jobs[jid] = job
        self.jobs[jid]["tags"].append(tag)
        return jid

    def to_list(self) -> list[dict]:
        return list(self.jobs.values())


# ----------------------------------------------------------------------------- test points

def select_test_ids(rankings: Mapping[str, Rankings], per_class: int | None = None,
                    seed: int = 0, eligible: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test points ranked by every method (and in ``eligible`` when given), class-balanced
    and seeded when ``per_class``.

    Returns ``(ids [M] int64, labels [M] int32)`` in the first method's order.
    """
    first = next(iter(rankings.values()))
    common = set(first.test_ids.tolist())
    for r in rankings.values():
        common &= set(r.test_ids.tolist())
    ids = np.asarray([t for t in first.test_ids.tolist() if t in common], np.int64)
    if len(ids) < len(first.test_ids):
        log.warning("%d test points are not ranked by every method; using the %d common ones",
                    len(first.test_ids) - len(ids), len(ids))
    if eligible is not None:
        allowed = set(int(i) for i in eligible)
        ids = np.asarray([t for t in ids.tolist() if t in allowed], np.int64)
        if not len(ids):
            raise DataError("no ranked test point passes the test-point filter (sweep.test_points / "
                            "test_points_prob_range / test_point_ids)", "widen the filter")
    labels = np.asarray([first.test_labels[first.row(t)] for t in ids], np.int32)
    if per_class is None:
        return ids, labels
    rng = np.random.default_rng(int(seed))
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise DataError(f"class {c} has {len(members)} eligible ranked test points, fewer than "
                            f"test_points_per_class={per_class}", "lower it or widen the test-point filter")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    rows = np.concatenate(chosen)
    return ids[rows], labels[rows]


def positions_of_ids(ids: np.ndarray, wanted: Sequence[int], what: str) -> np.ndarray:
    """Rows of ``wanted`` ids in ``ids`` (ValueError naming missing ones)."""
    index = {int(e): i for i, e in enumerate(np.asarray(ids))}
    missing = [int(w) for w in wanted if int(w) not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} ids are not in the dataset, e.g. {missing[:10]}")
    return np.asarray([index[int(w)] for w in wanted], np.int64)


# ----------------------------------------------------------------------------- the plan

def sweep_seeds(sweep_cfg, run_seed: int) -> list[int]:
    """The sweep's retraining seeds: ``sweep.seeds``, with the run's own training seed replaced
    by the next unused one when ``sweep.exclude_run_seed`` (the run is the model that judged
    and ranked the test points; retraining it again would let DEL inherit that selection)."""
    seeds = [int(s) for s in sweep_cfg.seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"sweep.seeds must be distinct, non-negative and non-empty, got {seeds}")
    if sweep_cfg.get("exclude_run_seed", False) and run_seed in seeds:
        spare = next(s for s in range(max(seeds) + 1, max(seeds) + len(seeds) + 2) if s not in seeds)
        seeds = [spare if s == run_seed else s for s in seeds]
        log.info("sweep seeds %s: the run's own seed %d is replaced by %d (sweep.exclude_run_seed)",
                 seeds, run_seed, spare)
    return seeds


def plan_sweep(setup, run_dir: str | Path, rankings: Mapping[str, Rankings],
               sweep_cfg: ml_collections.ConfigDict, *,
               fix_rankings: Mapping[str, Rankings] | None = None,
               lds_scores: Mapping[str, str] | None = None,
               self_influence: Mapping[str, str] | None = None,
               flipped_ids: Sequence[int] | None = None,
               eligible_test_ids: Sequence[int] | None = None) -> dict:
    """The manifest (a dict) of a sweep over ``rankings`` (method name -> Rankings).

    Args:
      setup: the run's ``RunSetup`` (data, config).
      sweep_cfg: ``cfg.sweep`` (methods, k grid, signs, seeds, LDS, fixing).
      fix_rankings: rankings (with tokens, for fix (b)) of the targeted-fixing points.
      lds_scores / self_influence: method -> ``.npz`` path (relative to the sweep dir).
      flipped_ids: training ids with planted label flips (mislabel detection).
      eligible_test_ids: the test points the sweep may use (``sweep.test_points`` filters).
    """
    methods = list(sweep_cfg.methods)
    missing = [m for m in methods if m not in rankings]
    if missing:
        raise ValueError(f"no rankings for methods {missing}; have {sorted(rankings)}")
    k_grid = sorted({int(k) for k in sweep_cfg.k_grid})
    if not k_grid or k_grid[0] < 1:
        raise ValueError(f"sweep.k_grid must hold positive ints, got {tuple(sweep_cfg.k_grid)}")
    signs = list(sweep_cfg.signs)
    bad = [s for s in signs if s not in SIGNS]
    if bad:
        raise ValueError(f"sweep.signs {bad} not in {sorted(SIGNS)}")
    seeds = sweep_seeds(sweep_cfg, int(setup.cfg.seed))
    epochs = sweep_cfg.epochs
    fingerprint = training_fingerprint(setup, epochs)
    jobs = JobSet(fingerprint)
    num_train = len(setup.train)

    for seed in seeds:
        jobs.add({"kind": "baseline"}, seed)
    test_ids, test_labels = select_test_ids({m: rankings[m] for m in methods},
                                            sweep_cfg.test_points_per_class, sweep_cfg.test_points_seed,
                                            eligible=eligible_test_ids)
    train_ids = set(np.asarray(setup.train.ids).tolist())
    for t in test_ids.tolist():
        for m in methods:
            for sign in signs:
                ranked = rankings[m].top(t, SIGNS[sign], k_grid[-1])
                unknown = [i for i in ranked.tolist() if i not in train_ids]
                if unknown:
                    raise ValueError(f"{m}: ranked train ids {unknown[:5]} are not in this run's "
                                     "training set (rankings of another run?)")
                for k in k_grid:
                    for seed in seeds:
                        jobs.add({"kind": "del", "test": t, "method": m, "sign": sign, "k": k},
                                 seed, ranked[:k])

    lds = None
    if int(sweep_cfg.lds.num_subsets) > 0:
        alpha, lds_seed = float(sweep_cfg.lds.alpha), int(sweep_cfg.lds.seed)
        for j in range(int(sweep_cfg.lds.num_subsets)):
            keep = lds_keep_mask(num_train, alpha, lds_seed, j)
            subset = {"alpha": alpha, "seed": lds_seed, "index": j, "num_kept": int(keep.sum())}
            # one retraining per subset, each with its own training seed
            jobs.add({"kind": "lds", "subset": j}, lds_training_seed(lds_seed, j), subset=subset)
        lds = {"num_subsets": int(sweep_cfg.lds.num_subsets), "alpha": alpha, "seed": lds_seed,
               "scores": dict(lds_scores or {})}

    fix_points: list[dict] = []
    fix = None
    if fix_rankings:
        fix_cfg = sweep_cfg.fix
        fix_k = sorted({int(k) for k in fix_cfg.k_grid})
        kinds = list(fix_cfg.kinds)
        first = next(iter(fix_rankings.values()))
        fix_points = [{"id": int(t), "label": int(first.test_labels[first.row(t)])} for t in first.test_ids]
        for m, r in fix_rankings.items():
            if "pad" in kinds and r.negative_tokens is None:
                log.warning("fix (b) skipped for %s: it has no word-level decomposition", m)
        for p in fix_points:
            for m, r in fix_rankings.items():
                opponents = r.top(p["id"], "opponents", fix_k[-1])
                for kind in kinds:
                    if kind == "pad" and r.negative_tokens is None:
                        continue
                    for k in fix_k:
                        tag = {"kind": FIX_KINDS[kind], "test": p["id"], "method": m, "k": k}
                        for seed in seeds:
                            if kind == "remove":
                                jobs.add(tag, seed, opponents[:k])
                            else:
                                tokens = r.negative_tokens["opponents"][r.row(p["id"]), :k]
                                edits = [(i, tok) for i, tok in zip(opponents[:k].tolist(), tokens.tolist())
                                         if tok >= 0]
                                jobs.add(tag, seed, edits=edits)
        fix = {"k_grid": fix_k, "kinds": kinds, "methods": list(fix_rankings),
               "p_low": float(fix_cfg.p_low), "p_high": float(fix_cfg.p_high)}

    eval_ids = [int(t) for t in test_ids] + [p["id"] for p in fix_points if p["id"] not in set(test_ids.tolist())]
    eval_rows = positions_of_ids(setup.eval.ids, eval_ids, "evaluation point")
    heldout = np.setdiff1d(np.arange(len(setup.eval)), eval_rows)
    size = int(sweep_cfg.heldout_size)
    if 0 < size < len(heldout):
        heldout = np.sort(np.random.default_rng(int(sweep_cfg.test_points_seed)).choice(heldout, size, replace=False))
    mislabel = None
    if flipped_ids is not None and self_influence:
        mislabel = {"flipped_ids": sorted(int(i) for i in flipped_ids), "scores": dict(self_influence),
                    "inspect_fraction": float(sweep_cfg.mislabel.inspect_fraction)}

    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run_dir": str(Path(run_dir).absolute()),
        "fingerprint": fingerprint,
        "dataset": setup.texts["train"].name,
        "label_names": list(setup.texts["train"].label_names),
        "num_train": num_train,
        "epochs": int(epochs if epochs is not None else setup.cfg.train.epochs),
        "sweep": sweep_cfg.to_dict(),
        "methods": methods,
        "k_grid": k_grid,
        "signs": signs,
        "seeds": seeds,
        "test_points": [{"id": int(t), "label": int(c)} for t, c in zip(test_ids, test_labels)],
        "fix_points": fix_points,
        "eval_points": eval_ids,  # every job reports its outputs on these eval ids, in this order
        "heldout_rows": heldout.tolist(),
        "lds": lds,
        "mislabel": mislabel,
        "fix": fix,
        "jobs": jobs.to_list(),
    }
    return manifest


def manifest_summary(manifest: dict) -> dict:
    """Counts of jobs by tag kind, and total jobs."""
    counts: dict[str, int] = {}
    for job in manifest["jobs"]:
        for kind in sorted({t["kind"] for t in job["tags"]}):
            counts[kind] = counts.get(kind, 0) + 1
    return {"jobs": len(manifest["jobs"]), "by_kind": counts,
            "test_points": len(manifest["test_points"]), "fix_points": len(manifest["fix_points"]),
            "methods": manifest["methods"], "k_grid": manifest["k_grid"], "seeds": manifest["seeds"]}
