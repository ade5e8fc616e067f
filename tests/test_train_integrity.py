"""Training never produces, nor silently consumes, a bad checkpoint.

Divergence stops the run before a non-finite checkpoint; checkpoints record digests
and every restore verifies them (a bit flipped on disk is an IntegrityError naming
the parameter); unreadable or missing checkpoints are one CheckpointError; one
``train`` per workdir; nothing to train is an error before any work.
"""
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax.errors import (BusyError, CheckpointError, ConfigError, DataError, IntegrityError,
                               TrainingDivergedError)
from tracin_jax.files import tree_fingerprint, tree_sha256
from tracin_jax.train import CheckpointStore, WorkdirLock, train
from tracin_jax.train.trainer import _all_finite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- finite or stop


def _all_checkpoints_finite(workdir: Path) -> list[int]:
    store = CheckpointStore(workdir / "checkpoints")
    steps = store.steps()
    for s in steps:
        for leaf in jax.tree_util.tree_leaves(store.restore_params(s)):
            assert np.isfinite(leaf).all(), s
    store.close()
    return steps


def test_diverging_run_stops_before_writing_a_nonfinite_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"training diverged at step \d+ \(loss nan\); "
                                                    r"no checkpoint written; lower train.lr") as e:
        train(tiny_config(**{"train.lr": 1e6}), tmp_path, progress=False)
    assert "train.grad_clip_norm" in e.value.hint and "train.allow_nonfinite=True" in e.value.hint
    assert "\n" not in str(e.value)
    assert _all_checkpoints_finite(tmp_path) == []


def test_divergence_after_a_good_checkpoint_names_it(tmp_path):
    # Warmup: update 1 uses lr 0 (checkpoint 1 is good), later ones lr up to 1e6.
    cfg = tiny_config(**{"train.lr": 1e6, "train.warmup_steps": 16, "train.checkpoint_steps": (1,)})
    with pytest.raises(TrainingDivergedError, match=r"diverged at step (\d+) .*no checkpoint written after step 1;"):
        train(cfg, tmp_path, progress=False)
    assert _all_checkpoints_finite(tmp_path) == [1]


def test_nonfinite_eval_stops_the_run_and_names_the_first_bad_step(tmp_path):
    # Logging never comes (log_every_steps > steps): the epoch-end evaluation and the
    # pre-checkpoint check catch it, and the message names the first non-finite update.
    cfg = tiny_config(**{"train.lr": 1e6, "train.log_every_steps": 1000})
    with pytest.raises(TrainingDivergedError, match=r"diverged at step ([1-9]|1[0-5]) \(loss nan\)"):
        train(cfg, tmp_path, progress=False)
    assert _all_checkpoints_finite(tmp_path) == []


def test_allow_nonfinite_continues(tmp_path, caplog):
    cfg = tiny_config(**{"train.lr": 1e6, "train.epochs": 1})
    with cfg.unlocked():
        cfg.train.allow_nonfinite = True  # until config.py has the key, set it by hand
    with caplog.at_level(logging.WARNING, logger="tracin_jax.train.trainer"):
        result = train(cfg, tmp_path, progress=False)
    assert result.final_step == 16 and [c.step for c in result.checkpoints] == [16]
    assert any("continuing (train.allow_nonfinite=True)" in r.getMessage() for r in caplog.records)


def test_all_finite_check():
    tree = {"a": np.ones((3, 2), np.float32), "b": {"c": np.zeros(4, np.float32)}, "n": np.arange(3),
            "h": np.ones(2, jnp.bfloat16)}
    assert _all_finite(tree)
    tree["b"]["c"][2] = np.nan
    assert not _all_finite(tree)
    tree["b"]["c"][2] = np.inf
    assert not _all_finite(tree)
    tree["b"]["c"][2] = 0
    tree["h"][1] = np.inf
    assert not _all_finite(tree)


# ----------------------------------------------------------------------------- integrity


def _random_finite_f32(shape, seed):
    """Float32 values from random bits (NaN/inf patterns moved): incompressible, so orbax's
    zstd chunk is a raw block and the bytes lie verbatim in the checkpoint files."""
    bits = np.random.default_rng(seed).integers(0, 2**32, size=shape, dtype=np.uint32)
    bits[(bits >> 23 & 0xFF) == 0xFF] ^= np.uint32(1 << 30)
    return bits.view(np.float32)


def _tree(seed):
    params = {"layer": {"kernel": _random_finite_f32((64, 64), seed), "bias": np.zeros(64, np.float32)},
              "head": {"kernel": np.full((4, 2), 0.0187, np.float32)}}
    opt_state = {"mu": _random_finite_f32((64, 64), seed + 100), "count": np.asarray(3, np.int32)}
    return params, opt_state


def _flip_bit_on_disk(item_dir: Path, array: np.ndarray, index: int) -> None:
    """Flips a high bit of ``array.flat[index]`` where its bytes lie in ``item_dir``'s files."""
    needle = array.tobytes()[:64]
    hits = [p for p in item_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert hits, "array bytes not found verbatim in the checkpoint"
    for path in hits:
        data = bytearray(path.read_bytes())
        offset = data.index(needle) + 4 * index + 3  # little-endian float32: byte 3 = sign/exponent
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))


@pytest.fixture
def two_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    store = CheckpointStore(directory)
    trees = {}
    for step in (10, 20):
        trees[step] = _tree(step)
        store.save(step, *trees[step], {"learning_rate": 0.1, "epoch": step / 10})
    store.close()
    return directory, trees


def test_checkpoint_meta_records_digests(two_checkpoints):
    directory, trees = two_checkpoints
    store = CheckpointStore(directory)
    meta = store.meta(20)
    digests = tree_sha256(trees[20][0])
    assert meta["params_sha256"] == digests
    assert meta["params_fingerprint"] == tree_fingerprint(digests) == store.fingerprint(20)
    assert len(meta["opt_state_sha256"]) == 64
    assert store.fingerprint(10) != store.fingerprint(20)
    restored = store.restore_params(20)
    np.testing.assert_array_equal(restored["layer"]["kernel"], trees[20][0]["layer"]["kernel"])
    params, opt_state, _ = store.restore(20, *trees[20])
    np.testing.assert_array_equal(opt_state["mu"], trees[20][1]["mu"])
    store.close()


def test_flipped_bit_in_parameter_is_an_integrity_error(two_checkpoints):
    directory, trees = two_checkpoints
    kernel = trees[20][0]["layer"]["kernel"]
    _flip_bit_on_disk(directory / "20" / "params", kernel, index=100)
    store = CheckpointStore(directory)
    with pytest.raises(IntegrityError) as e:
        store.restore_params(20)
    assert str(directory / "20") in e.value.what and "'layer/kernel'" in e.value.what
    assert e.value.hint == ("re-train from step 10 (delete checkpoints/20 and later) "
                            "or pass --no-verify to use it anyway")
    with pytest.raises(IntegrityError, match="layer/kernel"):
        store.restore(20, *trees[20])  # resume verifies too
    # verify=False (per call or per store) reads the damaged value; checkpoint 10 is fine
    damaged = store.restore_params(20, verify=False)["layer"]["kernel"]
    assert np.flatnonzero(damaged != kernel).tolist() == [100]
    assert CheckpointStore(directory, verify=False).restore_params(20)["layer"]["kernel"].flat[100] \
        == damaged.flat[100]
    store.restore_params(10)
    store.close()


def test_flipped_bit_in_optimizer_state_is_an_integrity_error(two_checkpoints):
    directory, trees = two_checkpoints
    _flip_bit_on_disk(directory / "10" / "opt_state", trees[10][1]["mu"], index=7)
    store = CheckpointStore(directory)
    store.restore_params(10)  # the parameters are intact
    with pytest.raises(IntegrityError, match="optimizer state") as e:
        store.restore(10, *trees[10])
    assert e.value.hint.startswith("re-train from the start (delete checkpoints/10 and later)")
    store.close()


@pytest.mark.parametrize("victim", ["array", "meta"])
def test_truncated_checkpoint_is_one_checkpoint_error(two_checkpoints, victim):
    directory, trees = two_checkpoints
    if victim == "array":
        needle = trees[20][0]["layer"]["kernel"].tobytes()[:64]
        [path] = [p for p in (directory / "20" / "params").rglob("*") if p.is_file() and needle in p.read_bytes()]
    else:
        path = directory / "20" / "meta" / "metadata"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    store = CheckpointStore(directory)
    with pytest.raises(CheckpointError) as e:
        store.restore_params(20)
    message = str(e.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith(f"checkpoint step 20 in {directory} cannot be read (")
    assert "re-train from step 10" in e.value.hint
    store.close()


def test_missing_step_lists_available_ones(two_checkpoints):
    directory, _ = two_checkpoints
    store = CheckpointStore(directory)
    for call in (lambda: store.restore_params(40), lambda: store.meta(40), lambda: store.fingerprint(40)):
        with pytest.raises(CheckpointError, match=r"checkpoint step 40 not found in .*available steps: 10, 20"):
            call()
    store.close()


def test_checkpoint_without_digests_loads_with_one_warning(tmp_path, caplog):
    import orbax.checkpoint as ocp
    directory = tmp_path / "checkpoints"
    params, opt_state = _tree(0)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True),
                                    item_names=("params", "opt_state", "meta"))
    manager.save(5, args=ocp.args.Composite(  # the layout written before digests were recorded
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": 5, "epoch": 1.0, "learning_rate": 0.1})))
    manager.wait_until_finished()
    manager.close()
    store = CheckpointStore(directory)
    with caplog.at_level(logging.WARNING, logger="tracin_jax.train.checkpoints"):
        store.restore_params(5)
        store.restore(5, params, opt_state)
        CheckpointStore(directory).restore_params(5)
    warnings = [r.getMessage() for r in caplog.records if "no recorded digests" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("checkpoint 5 has no recorded digests (written by an older tracin_jax); "
                                  "not verified")
    assert store.fingerprint(5) is None
    store.close()


# ----------------------------------------------------------------------------- one process per workdir


_HOLDER = """
import sys, time
from tracin_jax.train import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_process_on_a_workdir_is_busy(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError) as e:
            WorkdirLock(workdir).acquire()
        assert e.value.what == f"workdir {workdir} is in use by pid {holder.pid} on {socket.gethostname()}"
        assert e.value.hint == "wait for it, or use another --workdir"
        with pytest.raises(BusyError, match=f"pid {holder.pid}"):
            train(tiny_config(), workdir, progress=False)
        assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock
    with WorkdirLock(workdir):
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):  # also within one process
            WorkdirLock(workdir).acquire()
    WorkdirLock(workdir).acquire().release()


def test_overwrite_clears_the_workdir_under_the_lock(tmp_path):
    (tmp_path / "checkpoints" / "99").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 99}\n')
    result = train(tiny_config(**{"train.max_steps": 2}), tmp_path, overwrite=True, progress=False)
    assert result.resumed_from is None and [c.step for c in result.checkpoints] == [2]
    assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 2]


# ----------------------------------------------------------------------------- nothing to train


@pytest.mark.parametrize("overrides,error,match", [
    ({"train.epochs": -1}, ConfigError, r"train.epochs=-1: nothing to train"),
    ({"train.epochs": 0}, ConfigError, r"train.epochs=0: nothing to train"),
    ({"train.max_steps": 0}, ConfigError, r"train.max_steps=0: nothing to train"),
    ({"train.checkpoint_every_steps": -5}, ConfigError, r"train.checkpoint_every_steps=-5"),
    # (the data loader may refuse the empty split itself; prepare_run checks too)
    ({"data.max_train": 0}, DataError, r"'train'.* has no (rows|examples).*data.max_train"),
])
def test_nothing_to_train_is_an_error_before_any_work(tmp_path, overrides, error, match):
    t = time.time()
    with pytest.raises(error, match=match):
        train(tiny_config(**overrides), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert time.time() - t < 30


def test_keep_nothing_is_a_data_error(tmp_path):
    cfg = tiny_config()
    with pytest.raises(DataError, match="keep removes all 256 training examples"):
        train(cfg, tmp_path, keep=np.zeros(256, bool), progress=False)
    assert not (tmp_path / "checkpoints").exists()
