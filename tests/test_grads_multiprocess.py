"""`tracin-jax grads` as a real 2-process JAX job on CPU (jax.distributed + gloo).

Two subprocesses (2 CPU devices each: 4 global devices) run the CLI through
tests/grads_multiprocess_driver.py with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, the path ``mesh.initialize_distributed`` takes on a hand-launched
multi-host job. Checks: each process wrote exactly the shards it owns
(``i % 2 == process_index``) for every checkpoint; the union store, read with the
normal reader, holds every example once and equals record by record the store of the
same run extracted by one process; the gradient function on the global mesh (rows
fed and read back per process) equals the unsharded one.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from tracin_jax.stages.gradients import run_gradients, split_examples
from tracin_jax.store import GradientStore
from tracin_jax.train import CheckpointStore, load_run
from tracin_jax.train.setup import prepare_run

from test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("grads_multiprocess_driver.py")
NUM_PROCESSES, SHARD_SIZE, BATCH_SIZE = 2, 40, 8
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with two checkpoints (config, tokenizer, orbax checkpoints with their
    learning rates), built without training: the gradient engine only needs parameters."""
    path = tmp_path_factory.mktemp("run")
    setup = prepare_run(tiny_config(**{"data.synthetic.num_train": 128}), path)
    store = CheckpointStore(path / "checkpoints")
    key = jax.random.key(1)
    for step, lr in ((8, 3e-3), (16, 1e-3)):
        key, sub = jax.random.split(key)
        leaves, tree = jax.tree.flatten(setup.params)
        noise = [0.05 * jax.random.normal(k, x.shape, x.dtype)
                 for k, x in zip(jax.random.split(sub, len(leaves)), leaves)]
        params = jax.device_get(jax.tree.unflatten(tree, [x + n for x, n in zip(leaves, noise)]))
        store.save(step, params, optax.sgd(lr).init(params), {"learning_rate": lr, "epoch": step / 8})
    store.close()
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, store: Path, work: Path) -> list[dict]:
    """Runs the driver as NUM_PROCESSES processes; returns their reports (kills all on failure)."""
    port = _free_port()
    procs, logs = [], []
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR"))}
    for i in range(NUM_PROCESSES):
        env = dict(base_env, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
                   JAX_PROCESS_ID=str(i), PYTHONPATH=os.pathsep.join(
                       [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        log = open(work / f"process{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(DRIVER), str(work / f"report{i}.json"), "grads", "--run", str(run_dir),
             "--split", "train", "--shard-size", str(SHARD_SIZE), "--batch-size", str(BATCH_SIZE),
             "--out", str(store), "--no-progress"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes still running after {TIMEOUT_S} s")
            if any(p.returncode not in (None, 0) for p in procs):
                time.sleep(5)  # give the other a moment to fail on its own, then stop it
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    if codes != [0] * NUM_PROCESSES:
        tails = "\n".join(f"--- process {i} (rc {c}):\n" + (work / f"process{i}.log").read_text()[-3000:]
                          for i, c in enumerate(codes))
        pytest.fail(f"multi-process grads failed: return codes {codes}\n{tails}")
    return [json.loads((work / f"report{i}.json").read_text()) for i in range(NUM_PROCESSES)]


def test_two_process_store_equals_single_process_store(run_dir, tmp_path):
    reports = _launch(run_dir, tmp_path / "multi", tmp_path)
    single = run_gradients(run_dir, "train", tmp_path / "single", shard_size=SHARD_SIZE,
                           batch_size=BATCH_SIZE, progress=False)
    multi = GradientStore(tmp_path / "multi")  # finalized by process 0
    steps = [c.step for c in single.checkpoints]
    assert [c.step for c in multi.checkpoints] == steps and len(steps) == 2
    assert multi.checkpoints == single.checkpoints  # learning rates too
    num_shards = multi.num_shards
    assert num_shards == -(-128 // SHARD_SIZE) == 4  # last shard ragged (8 records)

    # The job really was 2 processes over 4 devices, and each wrote only its own shards.
    for i, rep in enumerate(reports):
        assert (rep["process_index"], rep["process_count"]) == (i, NUM_PROCESSES)
        assert (rep["device_count"], rep["local_device_count"]) == (4, 2)
        owned = {(s, j) for s in steps for j in range(num_shards) if j % NUM_PROCESSES == i}
        assert sorted(map(tuple, rep["writes"])) == sorted(owned), rep["writes"]
    assert multi.verify() == len(steps) * num_shards

    # Union store: every example once, equal to the single-process store record by record.
    ids = np.asarray(split_examples(load_run(run_dir), "train").encoded.ids)
    for step in steps:
        a, b = single.load(step), multi.load(step)
        assert set(a) == set(b)
        np.testing.assert_array_equal(b["example_id"], ids)
        assert len(np.unique(b["example_id"])) == len(ids) == 128
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            if a[name].dtype == jax.numpy.bfloat16:  # the default store dtype: one rounding step apart
                np.testing.assert_allclose(b[name].astype(np.float32), a[name].astype(np.float32),
                                           rtol=1e-2, atol=1e-6, err_msg=name)
            elif np.issubdtype(a[name].dtype, np.floating):
                np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)

    # The global mesh (devices of both processes): rows in per process, rows out per process.
    for rep in reports:
        g = rep["global_mesh"]
        assert g["mesh_size"] == 4 and g["global_rows"] == 8 and not g["fully_addressable"]
        assert all(g["rows_equal"].values())
        assert max(g["max_abs_diff"].values()) < 1e-6, g["max_abs_diff"]


def test_initialize_distributed_reads_process_env(monkeypatch):
    """The env contract used above; checked here without starting a job."""
    from tracin_jax import mesh as mesh_lib
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for var in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                "SLURM_NTASKS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    mesh_lib.initialize_distributed()  # plain single process: nothing
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    mesh_lib.initialize_distributed()  # one process: still nothing
    assert calls == []
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
        mesh_lib.initialize_distributed()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="both"):
        mesh_lib.initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "x")
    with pytest.raises(ValueError, match="not an integer"):
        mesh_lib.initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    mesh_lib.initialize_distributed()
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    mesh_lib.initialize_distributed()  # address only: JAX's cluster detection supplies the rest
    assert calls == [{"num_processes": 2, "process_id": 1}, {"num_processes": None, "process_id": None}]
