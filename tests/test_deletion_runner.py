"""Sweep plan / run / report machinery: stable ids, exact removal lists, restart, failures, shards."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tracin_jax import config as config_lib
from tracin_jax.deletion import plan as plan_lib
from tracin_jax.deletion import runner as runner_lib
from tracin_jax.errors import DataError
from tracin_jax.files import atomic_write_json
from tracin_jax.rankings import Rankings, load_rankings
from tracin_jax.deletion.report import sweep_report
from tracin_jax.train import prepare_run

REPO = Path(__file__).resolve().parent.parent


def tiny_config():
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.data.synthetic.num_train = 96
    cfg.data.synthetic.num_eval = 40
    cfg.data.synthetic.num_triggers = 2
    cfg.data.synthetic.trigger_train_examples = 4
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 12
    cfg.model.hidden_size = 8
    cfg.model.num_hidden_layers = 1
    cfg.model.num_attention_heads = 1
    cfg.model.intermediate_size = 16
    cfg.model.max_position_embeddings = 16
    cfg.train.batch_size = 16
    cfg.train.epochs = 1
    cfg.sweep.methods = ("tracin_we_topk", "tracin_last")
    cfg.sweep.k_grid = (2, 4)
    cfg.sweep.seeds = (0, 1)
    cfg.sweep.replicas = 4
    cfg.sweep.num_devices = 1
    cfg.sweep.heldout_size = 16
    cfg.sweep.bootstrap = 20
    return cfg


def fake_rankings(setup, method: str, test_rows, seed: int) -> Rankings:
    """Deterministic stand-in rankings (the machinery under test does not care how they were made)."""
    rng = np.random.default_rng(seed)
    m, n, depth = len(test_rows), len(setup.train), 6
    order = np.stack([rng.permutation(n)[:2 * depth] for _ in range(m)])
    ids = np.asarray(setup.train.ids)[order]
    scores = np.sort(rng.normal(size=(m, 2 * depth)))[:, ::-1].astype(np.float32)
    return Rankings.from_ids(method, np.asarray(setup.eval.ids)[test_rows], np.asarray(setup.eval.labels)[test_rows],
                             ids[:, :depth], ids[:, depth:], proponent_scores=scores[:, :depth],
                             opponent_scores=scores[:, depth:][:, ::-1])


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg = tiny_config()
    setup = prepare_run(cfg, root / "run")
    test_rows = np.asarray([0, 1, 2])
    rankings = {"tracin_we_topk": fake_rankings(setup, "tracin_we_topk", test_rows, 0),
                "tracin_last": fake_rankings(setup, "tracin_last", test_rows, 1)}
    manifest = plan_lib.plan_sweep(setup, root / "run", rankings, setup.cfg.sweep)
    return root, setup, rankings, manifest


def write(root: Path, name: str, manifest: dict) -> Path:
    atomic_write_json(root / name / plan_lib.MANIFEST, manifest)
    return root / name


def test_plan_lists_exact_removals_with_stable_ids(planned):
    root, setup, rankings, manifest = planned
    # 2 baselines + 3 test points x 2 methods x 2 signs x 2 k x 2 seeds
    assert len(manifest["jobs"]) == 2 + 3 * 2 * 2 * 2 * 2
    for job in manifest["jobs"]:
        for tag in job["tags"]:
            if tag["kind"] == "del":
                r = rankings[tag["method"]]
                kind = "proponents" if tag["sign"] == "+" else "opponents"
                expected = r.ranking(kind).ids[r.row(tag["test"]), :tag["k"]]
                assert job["removed"] == sorted(expected.tolist())
            else:
                assert job["removed"] == [] and tag["kind"] == "baseline"
    again = plan_lib.plan_sweep(setup, root / "run", rankings, setup.cfg.sweep)
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in manifest["jobs"]]
    fp = manifest["fingerprint"]
    assert plan_lib.job_id(fp, 0, [3, 1]) == plan_lib.job_id(fp, 0, [1, 3])
    assert len({plan_lib.job_id(fp, 0, [1]), plan_lib.job_id(fp, 1, [1]), plan_lib.job_id(fp, 0, [2]),
                plan_lib.job_id("other", 0, [1])}) == 4
    # identical removal sets collapse into one job with two tags
    same = dict(rankings, tracin_last=Rankings(**{**rankings["tracin_we_topk"].__dict__, "method": "tracin_last"}))
    merged = plan_lib.plan_sweep(setup, root / "run", same, setup.cfg.sweep)
    assert len(merged["jobs"]) == 2 + 3 * 2 * 2 * 2
    assert all(len(j["tags"]) == 2 for j in merged["jobs"] if j["removed"])
    with pytest.raises(ValueError, match="k=7 requested"):
        rankings["tracin_last"].top(int(rankings["tracin_last"].test_ids[0]), "proponents", 7)


def test_run_restarts_skip_finished_and_kill_loses_only_in_flight(planned, monkeypatch):
    root, setup, _, manifest = planned
    sweep_dir = write(root, "restart", manifest)
    first = runner_lib.run_sweep(sweep_dir, setup=setup, max_jobs=8, echo=None)
    assert first["done"] == 8 and first["replicas"] == 4
    finished = sorted(p.name for p in (sweep_dir / "results").glob("*.json"))
    stamps = {p: os.stat(sweep_dir / "results" / p).st_mtime_ns for p in finished}

    calls = {"n": 0}
    real_train = runner_lib.ReplicaTrainer.train

    def killed_after_one_group(self, specs, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # not an Exception: the process dies here
        return real_train(self, specs, **kw)

    monkeypatch.setattr(runner_lib.ReplicaTrainer, "train", killed_after_one_group)
    with pytest.raises(KeyboardInterrupt):
        runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    after_kill = sorted(p.name for p in (sweep_dir / "results").glob("*.json"))
    assert len(after_kill) == 8 + 4  # the group finished before the kill is kept
    assert not list((sweep_dir / "results").glob(".*.tmp"))
    monkeypatch.setattr(runner_lib.ReplicaTrainer, "train", real_train)

    rest = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    assert rest["finished_before"] == 12 and rest["done"] == len(manifest["jobs"]) - 12
    for p in finished:  # finished jobs were not rerun
        assert os.stat(sweep_dir / "results" / p).st_mtime_ns == stamps[p]
    again = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    assert again["done"] == 0 and again["finished_before"] == len(manifest["jobs"])

    result = json.loads(next((sweep_dir / "results").glob("*.json")).read_text())
    assert result["status"] == "ok" and len(result["gold_prob"]) == 3 and result["steps"] > 0
    assert 0.0 <= result["heldout_accuracy"] <= 1.0 and result["heldout_size"] == 16
    # a job's removal count is what the manifest lists
    by_id = {j["id"]: j for j in manifest["jobs"]}
    assert result["num_removed"] == len(by_id[result["id"]]["removed"])

    summary = sweep_report(sweep_dir)
    assert summary["jobs"] == {"total": len(manifest["jobs"]), "finished": len(manifest["jobs"]),
                               "failed": 0, "missing": 0}
    for name in ("table.md", "table.csv", "deletion_curves.png", "summary.json"):
        assert (sweep_dir / "report" / name).stat().st_size > 0
    assert "AUC-DEL+ ↓" in (sweep_dir / "report" / "table.md").read_text()
    # DEL from the report == brute force over the result files
    results = runner_lib.load_results(sweep_dir)
    test_id = manifest["test_points"][1]["id"]
    col = manifest["eval_points"].index(test_id)
    base = np.mean([results[j["id"]]["gold_prob"][col] for j in manifest["jobs"]
                    if j["tags"][0]["kind"] == "baseline"])
    removed = np.mean([results[j["id"]]["gold_prob"][col] for j in manifest["jobs"] for t in j["tags"]
                       if t.get("test") == test_id and t["method"] == "tracin_last" and t["sign"] == "-"
                       and t["k"] == 4])
    auc_test = summary["deletion"]["tracin_last"]["-"]["auc_del_per_test"][str(test_id)]
    other_k = np.mean([results[j["id"]]["gold_prob"][col] for j in manifest["jobs"] for t in j["tags"]
                       if t.get("test") == test_id and t["method"] == "tracin_last" and t["sign"] == "-"
                       and t["k"] == 2])
    assert auc_test == pytest.approx(((removed - base) + (other_k - base)) / 2, abs=1e-9)


def test_failures_are_recorded_per_job_and_retried(planned, monkeypatch):
    root, setup, _, manifest = planned
    small = dict(manifest, jobs=manifest["jobs"][:6])
    sweep_dir = write(root, "failing", small)
    bad = small["jobs"][3]["id"]
    real_spec = runner_lib.JobInputs.spec

    def spec(self, job):
        if job["id"] == bad:
            raise RuntimeError("disk on fire")
        return real_spec(self, job)

    monkeypatch.setattr(runner_lib.JobInputs, "spec", spec)
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    assert out["done"] == 5 and out["failed"] == 1  # the group is retried job by job
    record = json.loads((sweep_dir / "failures" / f"{bad}.json").read_text())
    assert "disk on fire" in record["error"] and record["attempts"] == 1 and "Traceback" in record["traceback"]
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None, replicas=1)
    assert out["failed"] == 1 and json.loads((sweep_dir / "failures" / f"{bad}.json").read_text())["attempts"] == 2
    small["sweep"]["max_attempts"] = 2
    write(root, "failing", small)
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    assert out["skipped_attempts"] == 1 and out["failed"] == 0
    monkeypatch.setattr(runner_lib.JobInputs, "spec", real_spec)
    small["sweep"]["max_attempts"] = 3
    write(root, "failing", small)
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None)
    assert out["done"] == 1 and not (sweep_dir / "failures" / f"{bad}.json").exists()


def test_shards_partition_jobs_and_default_from_environment(planned, monkeypatch):
    _, _, _, manifest = planned
    jobs = manifest["jobs"]
    parts = [runner_lib.shard_jobs(jobs, i, 3) for i in range(3)]
    ids = [j["id"] for p in parts for j in p]
    assert sorted(ids) == sorted(j["id"] for j in jobs) and len(set(ids)) == len(ids)
    assert runner_lib.resolve_shard(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert runner_lib.resolve_shard(None, None) == (1, 3)
    assert runner_lib.resolve_shard(2, 4) == (2, 4)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(ValueError, match="num-shards"):
        runner_lib.resolve_shard(None, None)
    assert runner_lib.resolve_shard(None, 5) == (2, 5)
    with pytest.raises(ValueError, match="0 <= shard"):
        runner_lib.resolve_shard(3, 3)


def test_run_refuses_a_changed_run(planned, tmp_path):
    root, setup, _, manifest = planned
    sweep_dir = write(root, "changed", manifest)
    other = tiny_config()
    other.train.lr = 0.5
    with pytest.raises(ValueError, match="does not match the manifest"):
        runner_lib.run_sweep(sweep_dir, setup=prepare_run(other, None), echo=None)


def test_load_rankings_reads_score_outputs(planned, tmp_path):
    _, _, rankings, _ = planned
    r = rankings["tracin_last"]
    r.save(tmp_path / "retrieval.npz")
    rows = []
    for i, t in enumerate(r.test_ids):
        for kind, ids in (("proponent", r.proponents.ids), ("opponent", r.opponents.ids)):
            for j, train_id in enumerate(ids[i]):
                rows.append({"method": "tracin_last", "test_id": int(t), "test_label": int(r.test_labels[i]),
                             "kind": kind, "rank": j + 1, "train_id": int(train_id), "score": 0.5,
                             "most_negative_token": {"token": "x", "id": 7 + j, "contribution": -1.0}})
    (tmp_path / "scores.jsonl").write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    for path in (tmp_path, tmp_path / "retrieval.npz", tmp_path / "scores.jsonl"):
        loaded = load_rankings(path)
        np.testing.assert_array_equal(loaded.proponents.ids, r.proponents.ids)
        np.testing.assert_array_equal(loaded.opponents.ids, r.opponents.ids)
        np.testing.assert_array_equal(loaded.test_ids, r.test_ids)
    assert load_rankings(tmp_path).negative_tokens["opponents"][0].tolist() == list(range(7, 13))
    with pytest.raises(DataError, match="not found"):
        load_rankings(tmp_path / "nope")


_WORKER = """
import json, sys
from tracin_jax.deletion.runner import run_sweep
print("SUMMARY " + json.dumps(run_sweep(sys.argv[1], progress=False, echo=None, replicas=2)))
"""


def test_two_workers_on_one_manifest_split_the_jobs(planned, tmp_path):
    """Two real processes started on one manifest (a preemptible fleet): every job runs exactly
    once, through the O_EXCL claims; a rerun finds everything finished."""
    import subprocess
    import sys
    root, _, _, manifest = planned
    sweep_dir = write(root, "two_workers", dict(manifest, jobs=manifest["jobs"][:10]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(sweep_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    summaries = [json.loads(next(line for line in o[0].splitlines() if line.startswith("SUMMARY"))[8:])
                 for o in outs]
    assert sum(s["done"] for s in summaries) == 10 and sum(s["failed"] for s in summaries) == 0
    assert len(list((sweep_dir / "results").glob("*.json"))) == 10
    assert not list((sweep_dir / "claims").glob("*.json"))  # released


def test_claims_skip_live_and_take_over_stale(planned):
    root, setup, _, manifest = planned
    sweep_dir = write(root, "claims", dict(manifest, jobs=manifest["jobs"][:3]))
    live, stale = manifest["jobs"][0]["id"], manifest["jobs"][1]["id"]
    other = runner_lib.Claims(sweep_dir, lease_s=600)
    assert other.try_claim(live) and other.try_claim(stale)
    old = os.stat(other.path(stale)).st_mtime - 3600  # that worker stopped heart-beating an hour ago
    os.utime(other.path(stale), (old, old))
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None, progress=False)
    assert out["done"] == 2 and out["claimed_elsewhere"] == 1  # the stale one taken over, the live one not
    assert runner_lib.is_finished(sweep_dir, stale) and not runner_lib.is_finished(sweep_dir, live)
    assert other.path(live).exists()


def test_bad_result_files_are_rerun_and_reported(planned, capsys):
    root, setup, _, manifest = planned
    small = dict(manifest, jobs=manifest["jobs"][:3])
    sweep_dir = write(root, "bad_results", small)
    runner_lib.run_sweep(sweep_dir, setup=setup, echo=None, progress=False)
    first, second = (runner_lib.result_path(sweep_dir, j["id"]) for j in small["jobs"][:2])
    first.write_text(first.read_text()[:40])  # truncated
    record = json.loads(second.read_text())
    record["gold_prob"] = record["gold_prob"] + [0.5]  # one value more than eval ids
    second.write_text(json.dumps(record))
    with pytest.raises(DataError, match="2 result files are bad") as e:
        runner_lib.load_results(sweep_dir, small)
    assert first.name in str(e.value) and second.name in str(e.value) and "gold_prob" in str(e.value)
    from tracin_jax import cli
    assert cli.main(["sweep", "report", "--manifest", str(sweep_dir), "--no-plots"]) == 1
    assert "result files are bad" in capsys.readouterr().err
    out = runner_lib.run_sweep(sweep_dir, setup=setup, echo=None, progress=False)
    assert out["done"] == 2 and out["finished_before"] == 1  # both re-run
    assert len(runner_lib.load_results(sweep_dir, small)) == 3
