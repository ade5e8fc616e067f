"""``tracin-jax sweep run``: the jobs of one shard, R retrainings per vmapped program.

Restartable: each job's result is written atomically to ``SWEEP/results/<id>.json``
as soon as its replica group finishes, and a rerun skips finished jobs, so a
killed run loses at most the group in flight. A failing group is retried job by
job; a job that still fails gets ``SWEEP/failures/<id>.json`` (error, traceback,
attempts) and is retried by later runs up to ``sweep.max_attempts`` times. The
shard never stops because of one job; it reports its counts at the end.

Sharding: jobs ``i`` with ``i % num_shards == shard``. Without ``--shard`` the
shard comes from the environment: ``jax.process_index()/process_count()`` in a
multi-process JAX job (TPU pod, multi-host GPU), ``SLURM_ARRAY_TASK_ID`` in a
SLURM array, ``JOB_COMPLETION_INDEX`` in a Kubernetes indexed job; else 0 of 1.
Processes share nothing but the sweep directory: no collectives.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.deletion.cost import choose_num_replicas
from tracin_jax.deletion.plan import lds_keep_mask, load_manifest, positions_of_ids, training_fingerprint
from tracin_jax.deletion.replicas import ReplicaTrainer
from tracin_jax.deletion.schedule import NO_EDIT, ReplicaSpec
from tracin_jax.files import atomic_write_json
from tracin_jax.train import load_run

log = logging.getLogger(__name__)

RESULTS = "results"
FAILURES = "failures"


def resolve_shard(shard: int | None = None, num_shards: int | None = None) -> tuple[int, int]:
    """``(shard, num_shards)``: explicit values, else from the job environment (module docstring)."""
    import jax

    if shard is None:
        if jax.process_count() > 1:
            shard, default_n = jax.process_index(), jax.process_count()
        elif "SLURM_ARRAY_TASK_ID" in os.environ:
            shard = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
            default_n = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 0)) or None
        elif "JOB_COMPLETION_INDEX" in os.environ:
            shard, default_n = int(os.environ["JOB_COMPLETION_INDEX"]), None
        else:
            shard, default_n = 0, 1
        num_shards = num_shards or default_n
        if num_shards is None:
            raise ValueError(f"shard {shard} taken from the environment, but the number of shards is "
                             "unknown: pass --num-shards")
    num_shards = 1 if num_shards is None else int(num_shards)
    if not 0 <= int(shard) < num_shards:
        raise ValueError(f"shard must satisfy 0 <= shard < num_shards, got {shard} of {num_shards}")
    return int(shard), num_shards


def shard_jobs(jobs: list[dict], shard: int, num_shards: int) -> list[dict]:
    """The jobs this shard owns: manifest positions ``i % num_shards == shard``."""
    return [job for i, job in enumerate(jobs) if i % num_shards == shard]


def result_path(sweep_dir: str | Path, jid: str) -> Path:
    return Path(sweep_dir) / RESULTS / f"{jid}.json"


def failure_path(sweep_dir: str | Path, jid: str) -> Path:
    return Path(sweep_dir) / FAILURES / f"{jid}.json"


def is_finished(sweep_dir, jid: str) -> bool:
    path = result_path(sweep_dir, jid)
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (json.JSONDecodeError, OSError):
        return False  # unreadable: rerun (written atomically, so only external damage)


def attempts(sweep_dir, jid: str) -> int:
    path = failure_path(sweep_dir, jid)
    if not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text()).get("attempts", 0))
    except (json.JSONDecodeError, OSError):
        return 0


def load_results(sweep_dir: str | Path) -> dict[str, dict]:
    """Finished results by job id."""
    out = {}
    for path in sorted((Path(sweep_dir) / RESULTS).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "ok":
            out[record["id"]] = record
    return out


def load_failures(sweep_dir: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(sweep_dir) / FAILURES).glob("*.json"))}


class JobInputs:
    """Maps a manifest job to a ``ReplicaSpec`` over this run's training rows."""

    def __init__(self, manifest: dict, train_enc):
        self.manifest = manifest
        self.train_ids = np.asarray(train_enc.ids, np.int64)
        if len(self.train_ids) != manifest["num_train"]:
            raise ValueError(f"the run has {len(self.train_ids)} training examples, the manifest "
                             f"{manifest['num_train']}")
        self.row_of = {int(e): i for i, e in enumerate(self.train_ids)}

    def rows(self, ids) -> np.ndarray:
        missing = [int(i) for i in ids if int(i) not in self.row_of]
        if missing:
            raise ValueError(f"training ids {missing[:10]} are not in the run's training set")
        return np.asarray([self.row_of[int(i)] for i in ids], np.int64)

    def spec(self, job: dict) -> ReplicaSpec:
        n = len(self.train_ids)
        subset = job.get("subset")
        if subset:
            keep = lds_keep_mask(n, float(subset["alpha"]), int(subset["seed"]), int(subset["index"]))
        else:
            keep = np.ones(n, bool)
        keep[self.rows(job["removed"])] = False
        edit_tokens = None
        if job.get("edits"):
            edit_tokens = np.full(n, NO_EDIT, np.int32)
            pairs = np.asarray(job["edits"], np.int64)
            edit_tokens[self.rows(pairs[:, 0])] = pairs[:, 1]
        return ReplicaSpec(seed=int(job["seed"]), keep=keep, edit_tokens=edit_tokens)


def make_trainer(setup, manifest: dict, mesh=None) -> ReplicaTrainer:
    """The replica trainer of a sweep: the run's model, data and training settings."""
    sweep = manifest["sweep"]
    if mesh is None:
        devices = sweep.get("num_devices")
        mesh = mesh_lib.make_local_mesh() if devices is None else mesh_lib.make_mesh(int(devices))
    width = int(sweep.get("vmap_width", 0)) or int((manifest.get("estimate") or {}).get("vmap_width", 0))
    return ReplicaTrainer(setup.cfg, setup.model, setup.train, mesh=mesh, epochs=int(manifest["epochs"]),
                          steps_per_call=int(sweep.get("steps_per_call", 256)), vmap_width=width)


def run_sweep(manifest_path: str | Path, *, shard: int | None = None, num_shards: int | None = None,
              replicas: int | None = None, setup=None, mesh=None, max_jobs: int | None = None,
              progress: bool = True, echo: Callable[[str], None] | None = print) -> dict:
    """Runs this shard's unfinished jobs; returns counts ``{owned, finished_before, done,
    failed, skipped_attempts, replicas}``.

    Args:
      replicas: R per program (default ``sweep.replicas``; 0 = from memory).
      setup: the run's ``RunSetup`` (default: ``load_run(manifest['run_dir'])``).
      max_jobs: stop after this many jobs (tests, smoke runs).
    """
    manifest = load_manifest(manifest_path)
    sweep_dir = Path(manifest["_dir"])
    sweep = manifest["sweep"]
    shard, num_shards = resolve_shard(shard, num_shards)
    owned = shard_jobs(manifest["jobs"], shard, num_shards)
    max_attempts = int(sweep.get("max_attempts", 3))
    finished = [j for j in owned if is_finished(sweep_dir, j["id"])]
    done_ids = {j["id"] for j in finished}
    exhausted = [j for j in owned if j["id"] not in done_ids and attempts(sweep_dir, j["id"]) >= max_attempts]
    skip = done_ids | {j["id"] for j in exhausted}
    pending = [j for j in owned if j["id"] not in skip]
    if max_jobs is not None:
        pending = pending[:int(max_jobs)]
    summary = {"shard": shard, "num_shards": num_shards, "owned": len(owned),
               "finished_before": len(finished), "skipped_attempts": len(exhausted),
               "done": 0, "failed": 0, "replicas": 0}
    say = echo or (lambda s: None)
    say(f"[sweep] shard {shard}/{num_shards}: {len(owned)} jobs owned, {len(finished)} finished before, "
        f"{len(exhausted)} out of attempts, {len(pending)} to run")
    if not pending:
        return summary

    setup = setup or load_run(manifest["run_dir"])
    fingerprint = training_fingerprint(setup, manifest["epochs"])
    if fingerprint != manifest["fingerprint"]:
        raise ValueError(f"run {manifest['run_dir']} does not match the manifest (training "
                         f"fingerprint {fingerprint[:12]} != {manifest['fingerprint'][:12]}): its "
                         "config or data changed since the plan")
    inputs = JobInputs(manifest, setup.train)
    trainer = make_trainer(setup, manifest, mesh)
    requested = int(sweep.get("replicas", 0)) if replicas is None else int(replicas)
    r = choose_num_replicas(trainer, num_jobs=len(pending), requested=requested,
                            max_replicas=int(sweep.get("max_replicas", 64)),
                            memory_fraction=float(sweep.get("memory_fraction", 0.5)))
    summary["replicas"] = r
    eval_rows = positions_of_ids(setup.eval.ids, manifest["eval_points"], "evaluation point")
    heldout_rows = np.asarray(manifest["heldout_rows"], np.int64)
    context = {"trainer": trainer, "setup": setup, "inputs": inputs, "eval_rows": eval_rows,
               "heldout_rows": heldout_rows, "shard": shard}

    # Edited jobs need another program (per-replica token edits): group them apart.
    plain = [j for j in pending if not j.get("edits")]
    edited = [j for j in pending if j.get("edits")]
    groups = [g[i:i + r] for g in (plain, edited) for i in range(0, len(g), r)]
    t_start = time.time()
    for g_index, group in enumerate(groups):
        t0 = time.time()
        outcomes = _run_group(group, context)
        if any(isinstance(o, BaseException) for o in outcomes) and len(group) > 1:
            say(f"[sweep] group {g_index + 1} failed ({_first_error(outcomes)}); retrying its jobs one by one")
            outcomes = [_run_group([job], context)[0] for job in group]
        for job, outcome in zip(group, outcomes):
            if isinstance(outcome, BaseException):
                _record_failure(sweep_dir, job, outcome, shard)
                summary["failed"] += 1
            else:
                atomic_write_json(result_path(sweep_dir, job["id"]), outcome)
                failure_path(sweep_dir, job["id"]).unlink(missing_ok=True)
                summary["done"] += 1
        if progress:
            finished_now = summary["done"] + summary["failed"]
            rate = summary["done"] / max(time.time() - t_start, 1e-9) * 3600
            say(f"[sweep] shard {shard}/{num_shards}: group {g_index + 1}/{len(groups)} "
                f"({len(group)} jobs) in {time.time() - t0:.1f} s; {finished_now}/{len(pending)} "
                f"jobs, {summary['failed']} failed; {rate:.0f} retrainings/hour")
    return summary


def _first_error(outcomes) -> str:
    e = next(o for o in outcomes if isinstance(o, BaseException))
    return f"{type(e).__name__}: {e}"


class NonFiniteError(RuntimeError):
    """A retraining diverged (NaN/inf loss or outputs)."""


def _run_group(group: list[dict], ctx: dict) -> list:
    """Trains and evaluates one replica group: a result dict per job, or the exception."""
    trainer, setup, inputs = ctx["trainer"], ctx["setup"], ctx["inputs"]
    try:
        specs = [inputs.spec(job) for job in group]
        t0 = time.time()
        run = trainer.train(specs)
        eval_probs = trainer.predict(run, setup.eval, ctx["eval_rows"])  # [R, M, C]
        heldout = ctx["heldout_rows"]
        if len(heldout):
            held_probs = trainer.predict(run, setup.eval, heldout)
            held_acc = (held_probs.argmax(-1) == np.asarray(setup.eval.labels)[heldout]).mean(-1)
        else:
            held_acc = np.full(len(group), np.nan)
        wall = time.time() - t0
    except Exception as e:  # recorded per job by the caller, never silently dropped
        e.traceback_text = traceback.format_exc()
        return [e] * len(group)
    gold = np.asarray(setup.eval.labels)[ctx["eval_rows"]]
    out = []
    for r, (job, spec) in enumerate(zip(group, specs)):
        probs = eval_probs[r]
        if not (np.isfinite(probs).all() and np.isfinite(run.train_loss[r])):
            e = NonFiniteError(f"job {job['id']}: non-finite training loss {run.train_loss[r]} or outputs")
            e.traceback_text = ""
            out.append(e)
            continue
        out.append({
            "id": job["id"], "status": "ok", "seed": int(job["seed"]),
            "num_removed": int((~spec.keep).sum()), "num_edits": len(job.get("edits", ())),
            "steps": int(run.steps[r]), "train_loss": float(run.train_loss[r]),
            "eval_ids": [int(i) for i in np.asarray(setup.eval.ids)[ctx["eval_rows"]]],
            "gold_prob": [float(p) for p in probs[np.arange(len(gold)), gold]],
            "pred": [int(p) for p in probs.argmax(-1)],
            "heldout_accuracy": float(held_acc[r]), "heldout_size": int(len(heldout)),
            "group_wall_time_s": wall, "group_size": len(group), "wall_time_s": wall / len(group),
            "shard": ctx["shard"], "host": socket.gethostname(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    return out


def _record_failure(sweep_dir: Path, job: dict, error: BaseException, shard: int) -> None:
    path = failure_path(sweep_dir, job["id"])
    record = {"id": job["id"], "status": "failed", "error": f"{type(error).__name__}: {error}",
              "traceback": getattr(error, "traceback_text", ""), "attempts": attempts(sweep_dir, job["id"]) + 1,
              "shard": shard, "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "tags": job["tags"]}
    atomic_write_json(path, record)
    log.error("job %s failed: %s", job["id"], record["error"])
