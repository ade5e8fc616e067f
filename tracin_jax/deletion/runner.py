"""``tracin-jax sweep run``: a worker's jobs, R retrainings per program.

Restartable: each job's result is written atomically to ``SWEEP/results/<id>.json``
as soon as its replica group finishes, and a rerun skips finished jobs, so a killed
worker loses at most the group in flight. A failing group is retried job by job; a job
that still fails gets ``SWEEP/failures/<id>.json`` (error, traceback, attempts) and is
retried by later runs up to ``sweep.max_attempts`` times. A worker never stops because
of one job; it reports its counts at the end.

Workers share a sweep through claims: before running a job a worker creates
``SWEEP/claims/<id>.json`` with ``O_EXCL`` (one creator wins), refreshes the files of its
jobs in flight every ``lease/3`` seconds (a heartbeat thread), and deletes them when the
results are written. A claim not refreshed for ``sweep.claim_lease_s`` seconds belongs to
a worker that died or was preempted, and is taken over (renamed away atomically, then
re-created), so N workers started on one manifest — a preemptible TPU/GPU fleet — split
the work with no job run twice while all are alive.

Static sharding is also available: jobs ``i`` with ``i % num_shards == shard``. Without
``--shard`` the shard comes from the environment: ``jax.process_index()/process_count()``
in a multi-process JAX job (TPU pod, multi-host GPU), ``SLURM_ARRAY_TASK_ID`` in a SLURM
array, ``JOB_COMPLETION_INDEX`` in a Kubernetes indexed job; else 0 of 1 (every job,
shared with other workers through the claims). Processes share nothing but the sweep
directory: no collectives.

Result files are validated when read (``check_result``: ids, lengths, finite values in
[0, 1]); a bad one is re-run by ``sweep run`` and reported by ``sweep report``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.deletion.cost import choose_num_replicas
from tracin_jax.deletion.plan import lds_keep_mask, load_manifest, positions_of_ids, training_fingerprint
from tracin_jax.deletion.replicas import ReplicaTrainer
from tracin_jax.deletion.schedule import NO_EDIT, ReplicaSpec
from tracin_jax.errors import DataError, MismatchError, NonFiniteError
from tracin_jax.files import atomic_write_json
from tracin_jax.train import load_run

log = logging.getLogger(__name__)

RESULTS = "results"
FAILURES = "failures"
CLAIMS = "claims"
# A claim not refreshed for this long is taken over (its worker died or was preempted).
DEFAULT_CLAIM_LEASE_S = 600.0
# On CPU, where replicas train one after another anyway, a group holds one job per
# device, so a result lands as soon as each retraining ends.


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


def check_result(record, manifest: dict | None = None) -> str | None:
    """What is wrong with a result record (None when it is a valid finished result)."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    if record.get("status") != "ok":
        return f"status {record.get('status')!r}"
    eval_ids, gold, pred = record.get("eval_ids"), record.get("gold_prob"), record.get("pred")
    if not all(isinstance(v, list) for v in (eval_ids, gold, pred)):
        return "eval_ids, gold_prob and pred must be lists"
    if not len(eval_ids) == len(gold) == len(pred):
        return f"{len(gold)} gold_prob and {len(pred)} pred values for {len(eval_ids)} eval ids"
    if manifest is not None and [int(i) for i in eval_ids] != [int(i) for i in manifest["eval_points"]]:
        return "evaluated on other points than the manifest's eval_points"
    try:
        probs = np.asarray(gold, np.float64)
        ok = np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        return "gold_prob holds values that are not probabilities (non-finite or outside [0, 1])"
    if "heldout_accuracy" in record and record.get("heldout_size", 0) and not (
            isinstance(record["heldout_accuracy"], (int, float)) and 0 <= record["heldout_accuracy"] <= 1):
        return f"heldout_accuracy {record['heldout_accuracy']!r} is not in [0, 1]"
    return None


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return e


def is_finished(sweep_dir, jid: str, manifest: dict | None = None) -> bool:
    """A valid result exists; an unreadable or malformed one is logged and re-run."""
    path = result_path(sweep_dir, jid)
    if not path.exists():
        return False
    record = _read(path)
    problem = f"unreadable ({record})" if isinstance(record, Exception) else check_result(record, manifest)
    if problem:
        log.warning("result %s: %s; the job will be re-run", path, problem)
    return problem is None


def attempts(sweep_dir, jid: str) -> int:
    path = failure_path(sweep_dir, jid)
    if not path.exists():
        return 0
    record = _read(path)
    if isinstance(record, Exception) or not isinstance(record, dict):
        log.warning("failure record %s is unreadable; counting 0 attempts", path)
        return 0
    return int(record.get("attempts", 0))


def load_results(sweep_dir: str | Path, manifest: dict | None = None) -> dict[str, dict]:
    """Finished results by job id; ``DataError`` listing every unreadable or malformed file
    (re-run them with ``tracin-jax sweep run``)."""
    out, bad = {}, []
    for path in sorted((Path(sweep_dir) / RESULTS).glob("*.json")):
        record = _read(path)
        problem = f"unreadable ({record})" if isinstance(record, Exception) else check_result(record, manifest)
        if problem:
            bad.append(f"{path} ({problem})")
        else:
            out[record["id"]] = record
    if bad:
        raise DataError(f"{len(bad)} result files are bad: " + "; ".join(bad[:10]) + ("; ..." if len(bad) > 10 else ""),
                        "rerun tracin-jax sweep run on the manifest: it re-runs jobs whose result is bad")
    return out


def load_failures(sweep_dir: str | Path) -> dict[str, dict]:
    out, bad = {}, []
    for path in sorted((Path(sweep_dir) / FAILURES).glob("*.json")):
        record = _read(path)
        if isinstance(record, Exception) or not isinstance(record, dict):
            bad.append(str(path))
        else:
            out[path.stem] = record
    if bad:
        raise DataError(f"{len(bad)} failure records are unreadable: {', '.join(bad[:10])}",
                        "delete them and rerun tracin-jax sweep run")
    return out


class Claims:
    """This worker's claims on jobs (module docstring): ``O_EXCL`` files with a lease."""

    def __init__(self, sweep_dir: Path, lease_s: float = DEFAULT_CLAIM_LEASE_S, worker: str | None = None):
        self.dir = Path(sweep_dir) / CLAIMS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease_s = float(lease_s)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()

    def path(self, jid: str) -> Path:
        return self.dir / f"{jid}.json"

    def _create(self, jid: str) -> bool:
        try:
            fd = os.open(self.path(jid), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"worker": self.worker, "claimed": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
        return True

    def try_claim(self, jid: str) -> bool:
        """True if this worker now holds ``jid`` (free, or its claim's lease expired)."""
        if not self._create(jid):
            path = self.path(jid)
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                age = math.inf
            if age < self.lease_s:
                return False
            stale = self.dir / f".{jid}.stale.{uuid.uuid4().hex}"
            try:
                os.rename(path, stale)  # atomic: of several workers taking over, one succeeds
            except FileNotFoundError:
                return False
            stale.unlink(missing_ok=True)
            log.warning("job %s: its claim was not refreshed for %.0f s (worker gone?); taking it over", jid, age)
            if not self._create(jid):
                return False
        with self._lock:
            self.held.add(jid)
        return True

    def refresh(self) -> None:
        now = time.time()
        with self._lock:
            held = list(self.held)
        for jid in held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path(jid), (now, now))

    def release(self, jid: str) -> None:
        with self._lock:
            self.held.discard(jid)
        self.path(jid).unlink(missing_ok=True)

    @contextlib.contextmanager
    def heartbeat(self):
        """Refreshes the held claims every ``lease/3`` seconds while the body runs."""
        stop = threading.Event()

        def beat():
            while not stop.wait(self.lease_s / 3):
                self.refresh()

        thread = threading.Thread(target=beat, name="tracin-claims", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            for jid in list(self.held):
                self.release(jid)


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
              progress: bool = True, echo: Callable[[str], None] | None = print,
              lease_s: float | None = None) -> dict:
    """Runs this worker's unfinished jobs; returns counts ``{owned, finished_before, done,
    failed, skipped_attempts, claimed_elsewhere, replicas}``.

    Args:
      replicas: R per program (default ``sweep.replicas``; 0 = one per device where replicas
        run one after another (CPU), else as many as fit in memory).
      setup: the run's ``RunSetup`` (default: ``load_run(manifest['run_dir'])``).
      max_jobs: stop after this many jobs (tests, smoke runs).
      lease_s: claim lease (default ``sweep.claim_lease_s``, else ``DEFAULT_CLAIM_LEASE_S``).
    """
    manifest = load_manifest(manifest_path)
    sweep_dir = Path(manifest["_dir"])
    sweep = manifest["sweep"]
    shard, num_shards = resolve_shard(shard, num_shards)
    owned = shard_jobs(manifest["jobs"], shard, num_shards)
    max_attempts = int(sweep.get("max_attempts", 3))
    finished = [j for j in owned if is_finished(sweep_dir, j["id"], manifest)]
    done_ids = {j["id"] for j in finished}
    exhausted = [j for j in owned if j["id"] not in done_ids and attempts(sweep_dir, j["id"]) >= max_attempts]
    skip = done_ids | {j["id"] for j in exhausted}
    pending = [j for j in owned if j["id"] not in skip]
    if max_jobs is not None:
        pending = pending[:int(max_jobs)]
    summary = {"shard": shard, "num_shards": num_shards, "owned": len(owned),
               "finished_before": len(finished), "skipped_attempts": len(exhausted),
               "claimed_elsewhere": 0, "done": 0, "failed": 0, "replicas": 0}
    say = echo or (lambda s: None)
    say(f"[sweep] worker {shard}/{num_shards}: {len(owned)} jobs, {len(finished)} finished before, "
        f"{len(exhausted)} out of attempts, {len(pending)} to run")
    if not pending:
        return summary

    setup = setup or load_run(manifest["run_dir"])
    fingerprint = training_fingerprint(setup, manifest["epochs"])
    if fingerprint != manifest["fingerprint"]:
        raise MismatchError(f"run {manifest['run_dir']} does not match the manifest (training fingerprint "
                            f"{fingerprint[:12]} != {manifest['fingerprint'][:12]})",
                            "its config or data changed since the plan: plan a new sweep")
    inputs = JobInputs(manifest, setup.train)
    trainer = make_trainer(setup, manifest, mesh)
    requested = int(sweep.get("replicas", 0)) if replicas is None else int(replicas)
    if not requested and trainer.vmap_width_for(trainer.num_devices) <= 1 and trainer.num_devices == 1:
        requested = 1  # replicas would run one after another: write each result as it ends
    r = choose_num_replicas(trainer, num_jobs=len(pending), requested=requested,
                            max_replicas=int(sweep.get("max_replicas", 64)),
                            memory_fraction=float(sweep.get("memory_fraction", 0.5)))
    summary["replicas"] = r
    eval_rows = positions_of_ids(setup.eval.ids, manifest["eval_points"], "evaluation point")
    heldout_rows = np.asarray(manifest["heldout_rows"], np.int64)
    context = {"trainer": trainer, "setup": setup, "inputs": inputs, "eval_rows": eval_rows,
               "heldout_rows": heldout_rows, "shard": shard}
    claims = Claims(sweep_dir, float(lease_s or sweep.get("claim_lease_s") or DEFAULT_CLAIM_LEASE_S))
    # Edited jobs need another program (per-replica token edits): they form groups apart.
    queues = [[j for j in pending if not j.get("edits")], [j for j in pending if j.get("edits")]]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(pending), desc="sweep", unit="job", dynamic_ncols=True)
    t_start, g_index, elsewhere_seen = time.time(), 0, 0
    with claims.heartbeat():
        for queue in queues:
            while queue:
                group = _claim_group(queue, r, claims, sweep_dir, manifest, max_attempts, summary)
                if bar is not None and summary["claimed_elsewhere"] > elsewhere_seen:  # not ours to run
                    bar.total -= summary["claimed_elsewhere"] - elsewhere_seen
                    elsewhere_seen = summary["claimed_elsewhere"]
                    bar.refresh()
                if not group:
                    continue
                g_index += 1
                t0 = time.time()
                outcomes = _run_group(group, context)
                if any(isinstance(o, BaseException) for o in outcomes) and len(group) > 1:
                    say(f"[sweep] group {g_index} failed ({_first_error(outcomes)}); retrying its jobs one by one")
                    outcomes = [_run_group([job], context)[0] for job in group]
                for job, outcome in zip(group, outcomes):
                    if isinstance(outcome, BaseException):
                        _record_failure(sweep_dir, job, outcome, shard)
                        summary["failed"] += 1
                    else:
                        atomic_write_json(result_path(sweep_dir, job["id"]), outcome)
                        failure_path(sweep_dir, job["id"]).unlink(missing_ok=True)
                        summary["done"] += 1
                    claims.release(job["id"])
                rate = summary["done"] / max(time.time() - t_start, 1e-9) * 3600
                if bar is not None:
                    bar.update(len(group))
                    bar.set_postfix(failed=summary["failed"], per_hour=f"{rate:.0f}")
                else:
                    say(f"[sweep] worker {shard}/{num_shards}: group {g_index} ({len(group)} jobs) in "
                        f"{time.time() - t0:.1f} s; {summary['done'] + summary['failed']}/{len(pending)} jobs, "
                        f"{summary['failed']} failed; {rate:.0f} retrainings/hour")
    if bar is not None:
        bar.close()
    return summary


def _claim_group(queue: list[dict], r: int, claims: Claims, sweep_dir: Path, manifest: dict,
                 max_attempts: int, summary: dict) -> list[dict]:
    """Up to ``r`` jobs from the front of ``queue`` that this worker could claim (others are
    being run by another worker, or were finished by one meanwhile)."""
    group = []
    while queue and len(group) < r:
        job = queue.pop(0)
        if not claims.try_claim(job["id"]):
            summary["claimed_elsewhere"] += 1
            continue
        if is_finished(sweep_dir, job["id"], manifest) or attempts(sweep_dir, job["id"]) >= max_attempts:
            claims.release(job["id"])  # done by another worker between our scan and the claim
            summary["claimed_elsewhere"] += 1
            continue
        group.append(job)
    return group


def _first_error(outcomes) -> str:
    e = next(o for o in outcomes if isinstance(o, BaseException))
    return f"{type(e).__name__}: {e}"


def _run_group(group: list[dict], ctx: dict) -> list:
    """Trains and evaluates one replica group: a result dict per job, or the exception."""
    trainer, setup, inputs = ctx["trainer"], ctx["setup"], ctx["inputs"]
    try:
        t0 = time.perf_counter()
        specs = [inputs.spec(job) for job in group]
        run = trainer.train(specs)
        t_eval = time.perf_counter()
        eval_probs = trainer.predict(run, setup.eval, ctx["eval_rows"])  # [R, M, C]
        heldout = ctx["heldout_rows"]
        if len(heldout):
            held_probs = trainer.predict(run, setup.eval, heldout)
            held_acc = (held_probs.argmax(-1) == np.asarray(setup.eval.labels)[heldout]).mean(-1)
        else:
            held_acc = np.full(len(group), np.nan)
        t_end = time.perf_counter()
        wall = t_end - t0
        # Where the group's time went (tools/bench_retrain.py --end-to-end): the training
        # steps (device calls and their loss read-back), the rest of training (initial
        # states, placement, first-call compilation) and evaluation.
        compile_s = float(trainer.last_timing.get("compile_s", 0.0))
        timing = {"train_steps_s": float(trainer.last_timing.get("steps_s", 0.0)) - compile_s,
                  "compile_s": compile_s, "train_s": t_eval - t0, "eval_s": t_end - t_eval}
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
            "timing": {k: v / len(group) for k, v in timing.items()},  # per job
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
