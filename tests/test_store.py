"""Tests for tracin_jax.store (format 2: one .npy per field per shard): round trips,
resumability, checksums, multi-process writing, non-finite refusal, v1 migration."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tracin_jax.errors import IntegrityError, MismatchError, NonFiniteError
from tracin_jax.store import (
    STORE_DTYPES,
    CheckpointInfo,
    CorruptShardError,
    GradientStore,
    GradientStoreWriter,
    StoreFormatError,
    StoreMismatchError,
)
from tracin_jax.store import gradient_store
from tracin_jax.store.migrate import main as migrate_main
from tracin_jax.store.migrate import migrate_v1

N, S, T, D, H, C, L = 10, 4, 5, 3, 6, 3, 7  # 3 shards: 4 + 4 + 2 records
CHECKPOINTS = [(100, 1e-3), (200, 5e-4)]
MODEL_INFO = {"name": "bert", "num_layers": 2, "hidden": (32, 32)}
FIELDS = ["example_id", "features", "label", "loss", "p_minus_y", "position_norms",
          "prediction", "token_ids", "vectors"]


def make_records(start, stop, step, *, extra=True):
    """Deterministic records for dataset positions [start, stop) at checkpoint `step`."""
    n = stop - start
    rng = np.random.default_rng([step, start])
    token_ids = rng.integers(0, 100, size=(n, T)).astype(np.int32)
    token_ids[:, -2:] = -1  # padding slots
    records = {
        "example_id": np.arange(start, stop, dtype=np.int64) + 1000,
        "label": rng.integers(0, C, size=n).astype(np.int32),
        "token_ids": token_ids,
        "vectors": rng.normal(size=(n, T, D)).astype(np.float32),
        "features": rng.normal(size=(n, H)).astype(np.float32),
        "p_minus_y": rng.normal(size=(n, C)).astype(np.float32),
        "loss": rng.random(n).astype(np.float32),
        "prediction": rng.integers(0, C, size=n).astype(np.int32),
    }
    if extra:
        records["position_norms"] = rng.random((n, L)).astype(np.float32)
    return records


def all_records(step):
    """What the store should hold for `step`: the per-shard records in dataset order."""
    shards = [make_records(start, min(start + S, N), step) for start in range(0, N, S)]
    return {name: np.concatenate([s[name] for s in shards]) for name in shards[0]}


def open_writer(directory, **overrides):
    kwargs = dict(num_examples=N, shard_size=S, k=3, dtype="float32", model_info=MODEL_INFO,
                  fingerprint="abc123", split="train")
    kwargs.update(overrides)
    return GradientStoreWriter(directory, **kwargs)


def write_all(writer, checkpoints=CHECKPOINTS):
    for step, lr in checkpoints:
        writer.begin_checkpoint(step, lr)
        for i in writer.shards_to_write(step):
            writer.write_shard(step, i, make_records(*writer.shard_range(i), step))


def shard_hashes(directory):
    """sha256 of every file under the checkpoints (manifest excluded: it holds a timestamp)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).glob("ckpt_*/**/*")) if p.is_file()}


def ckpt(directory, step=100):
    return Path(directory) / f"ckpt_{step:08d}"


def rewrite_sidecar_for(path: Path):
    """Make the sidecar agree with a field file replaced by hand (size, sha256)."""
    side = path.parent.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["fields"][path.stem].update(num_bytes=path.stat().st_size,
                                        sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    side.write_text(json.dumps(sidecar))
    return side, sidecar


@pytest.fixture
def store_dir(tmp_path):
    writer = open_writer(tmp_path / "store")
    write_all(writer)
    writer.finalize()
    return tmp_path / "store"


@pytest.mark.parametrize("dtype", STORE_DTYPES)
def test_round_trip(tmp_path, dtype):
    assert STORE_DTYPES == ("float32", "bfloat16", "float16")
    writer = open_writer(tmp_path, dtype=dtype)
    write_all(writer)
    assert writer.finalize() == [CheckpointInfo(*c) for c in CHECKPOINTS]

    store = GradientStore(tmp_path)
    assert store.checkpoints == [CheckpointInfo(100, 1e-3), CheckpointInfo(200, 5e-4)]
    assert store.num_shards == 3
    assert store.manifest["format"] == "tracin_jax.gradient_store"
    assert store.manifest["format_version"] == 2
    assert store.manifest["complete"] and store.manifest["dtype"] == dtype
    assert (store.manifest["T"], store.manifest["D"], store.manifest["k"]) == (T, D, 3)
    assert store.manifest["model_info"] == {"name": "bert", "num_layers": 2, "hidden": [32, 32]}
    assert store.fields["vectors"] == ((T, D), dtype)
    assert store.verify() == 6
    logical = np.dtype(getattr(ml_dtypes, dtype, dtype))
    for step, _ in CHECKPOINTS:
        expected = all_records(step)
        loaded = store.load(step)
        assert set(loaded) == set(expected)
        for name, want in expected.items():
            if name == "vectors":
                assert loaded[name].dtype == logical
                want = want.astype(logical)  # the store casts once, exactly like this
                # exact bits, not just equal values
                np.testing.assert_array_equal(loaded[name].view(np.uint8), want.view(np.uint8))
            assert loaded[name].dtype == want.dtype, name
            np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    if dtype != "float32":  # the cast really lost precision, so the test above is not vacuous
        assert not np.array_equal(store.load(100)["vectors"].astype(np.float32),
                                  all_records(100)["vectors"])
    subset = store.load(200, fields=["features", "example_id"], verify=False)
    assert sorted(subset) == ["example_id", "features"]
    np.testing.assert_array_equal(subset["example_id"], np.arange(N) + 1000)
    with pytest.raises(ValueError, match="nope"):
        store.load(200, fields=["nope"])
    with pytest.raises(ValueError, match="step 300"):
        store.load(300)


def test_layout_is_plain_npy(store_dir):
    """One plain .npy per field per shard, readable by numpy alone; the sidecar records
    the logical dtype, per-record shape, size and sha256 of each file."""
    assert sorted(p.name for p in ckpt(store_dir).iterdir()) == [
        "checkpoint.json", "shard_00000", "shard_00000.json", "shard_00001", "shard_00001.json",
        "shard_00002", "shard_00002.json"]
    assert json.loads((ckpt(store_dir) / "checkpoint.json").read_text()) == {
        "learning_rate": 1e-3, "params_fingerprint": None, "step": 100}
    sidecar = json.loads((ckpt(store_dir) / "shard_00002.json").read_text())
    assert (sidecar["shard_index"], sidecar["first_index"], sidecar["num_records"]) == (2, 8, 2)
    assert sorted(sidecar["fields"]) == FIELDS
    assert sorted(p.name for p in (ckpt(store_dir) / "shard_00002").iterdir()) == [
        f + ".npy" for f in FIELDS]
    for name, entry in sidecar["fields"].items():
        path = ckpt(store_dir) / "shard_00002" / f"{name}.npy"
        assert entry["num_bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        array = np.load(path, allow_pickle=False)
        assert array.dtype != object and array.flags.c_contiguous
        assert [array.shape[0], *array.shape[1:]] == [2, *entry["shape"]]
    assert sidecar["fields"]["vectors"] == {**sidecar["fields"]["vectors"], "shape": [T, D],
                                            "dtype": "float32"}

    # bfloat16: a uint16 bit pattern on disk; numpy alone recovers exact float32 values.
    bf16_dir = store_dir.parent / "bf16"
    write_all(open_writer(bf16_dir, dtype="bfloat16"), CHECKPOINTS[:1])
    bits = np.load(ckpt(bf16_dir) / "shard_00000" / "vectors.npy", mmap_mode="r")
    assert bits.dtype == np.dtype("<u2")
    want = make_records(0, S, 100)["vectors"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(bits, want.view(np.uint16))
    as_f32 = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(as_f32, want.astype(np.float32))
    side = json.loads((ckpt(bf16_dir) / "shard_00000.json").read_text())
    assert side["fields"]["vectors"]["dtype"] == "bfloat16"


def test_memmaps_are_read_only_and_equal_to_what_was_written(store_dir):
    store = GradientStore(store_dir)
    shard = next(store.iter_shards(200, shard_indices=[1]))
    want = make_records(S, 2 * S, 200)
    for name, array in shard.items():
        assert isinstance(array, np.memmap), name
        assert not array.flags.writeable, name
        np.testing.assert_array_equal(array, want[name], err_msg=name)
    with pytest.raises(ValueError, match="read-only"):
        shard["vectors"][0, 0, 0] = 1.0
    bf16_dir = store_dir.parent / "bf16"
    write_all(open_writer(bf16_dir, dtype="bfloat16"), CHECKPOINTS[:1])
    vectors = next(GradientStore(bf16_dir, allow_incomplete=True).iter_shards(100))["vectors"]
    assert isinstance(vectors, np.memmap) and vectors.dtype == ml_dtypes.bfloat16
    assert not vectors.flags.writeable
    np.testing.assert_array_equal(vectors, make_records(0, S, 100)["vectors"].astype(ml_dtypes.bfloat16))
    loaded = store.load(100, fields=["loss"])  # load() concatenates into ordinary arrays
    assert loaded["loss"].flags.writeable


def test_resume_is_byte_identical(tmp_path, store_dir, caplog):
    resumed = tmp_path / "resumed"
    writer = open_writer(resumed)
    writer.begin_checkpoint(100, 1e-3)
    writer.write_shard(100, 0, make_records(0, S, 100))
    # "Crash" mid-shard-1: its directory renamed in with a truncated file but no sidecar
    # yet; plus stale temporaries of an interrupted shard-2 write and sidecar write.
    shutil.copytree(ckpt(store_dir) / "shard_00001", ckpt(resumed) / "shard_00001")
    vectors = ckpt(resumed) / "shard_00001" / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-7])
    (ckpt(resumed) / ".shard_00002.tmp.999").mkdir()
    (ckpt(resumed) / ".shard_00002.tmp.999" / "loss.npy").write_bytes(b"junk")
    (ckpt(resumed) / ".shard_00002.json.tmp.abc").write_bytes(b"{")
    (ckpt(resumed) / ".shard_00000.tmp.555").mkdir()  # stale beside a complete shard
    del writer

    writer = open_writer(resumed)
    with caplog.at_level(logging.WARNING):
        assert writer.shards_to_write(100) == [1, 2]
    assert "shard_00001.json" in caplog.text and "missing" in caplog.text
    assert not list(resumed.glob("ckpt_*/.*tmp*"))
    write_all(writer)
    assert writer.shards_to_write(100) == [] and writer.shards_to_write(200) == []
    writer.finalize()
    assert shard_hashes(resumed) == shard_hashes(store_dir)
    # per checkpoint: checkpoint.json + 3 sidecars + 3 shards x 9 fields
    assert len(shard_hashes(resumed)) == 2 * (1 + 3 + 3 * len(FIELDS))

    # A crash mid-rewrite of a complete shard (old sidecar removed, new directory not
    # yet in place) leaves it incomplete, and the rewrite is again identical.
    (ckpt(resumed) / "shard_00001.json").unlink()
    shutil.rmtree(ckpt(resumed) / "shard_00001")
    assert writer.shards_to_write(100) == [1]
    write_all(writer)
    assert shard_hashes(resumed) == shard_hashes(store_dir)


def test_flipped_byte_is_detected_and_named(store_dir, caplog):
    target = ckpt(store_dir, 200) / "shard_00001" / "vectors.npy"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # inside the float data
    target.write_bytes(bytes(data))

    store = GradientStore(store_dir)
    with pytest.raises(CorruptShardError, match="shard_00001/vectors.npy.*sha256") as err:
        store.verify()
    assert err.value.path == target
    assert isinstance(err.value, IntegrityError) and "tracin-jax grads" in str(err.value)
    list(store.iter_shards(100))  # other checkpoint unaffected
    with pytest.raises(CorruptShardError, match="shard_00001/vectors.npy"):
        list(store.iter_shards(200))
    # verify=False trusts the bytes: no error, and the flipped byte shows.
    unverified = list(store.iter_shards(200, verify=False))[1]["vectors"]
    assert not np.array_equal(unverified, make_records(S, 2 * S, 200)["vectors"])

    writer = open_writer(store_dir)
    writer.begin_checkpoint(200, 5e-4)
    with caplog.at_level(logging.WARNING):
        assert writer.shards_to_write(200) == [1]
    assert "shard_00001/vectors.npy" in caplog.text
    writer.write_shard(200, 1, make_records(*writer.shard_range(1), 200))
    assert store.verify() == 6
    (ckpt(store_dir, 200) / "shard_00001" / "label.npy").unlink()
    with pytest.raises(CorruptShardError, match="shard_00001/label.npy.*missing"):
        writer.finalize()


def test_truncated_and_missing_files(store_dir):
    store = GradientStore(store_dir)
    target = ckpt(store_dir, 200) / "shard_00001" / "loss.npy"
    target.write_bytes(target.read_bytes()[:-4])
    for verify in (True, False):  # the size check needs no hashing
        with pytest.raises(CorruptShardError, match="shard_00001/loss.npy.*truncated"):
            list(store.iter_shards(200, verify=verify))
    target.unlink()
    with pytest.raises(CorruptShardError, match="shard_00001/loss.npy.*missing"):
        store.verify()
    with pytest.raises(CorruptShardError, match="shard_00001/loss.npy.*missing"):
        list(store.iter_shards(200, verify=False))
    list(store.iter_shards(200, fields=["label"]))  # the other fields still read
    (ckpt(store_dir, 200) / "shard_00002.json").unlink()
    with pytest.raises(CorruptShardError, match="shard_00002.json.*never completed"):
        list(store.iter_shards(200, fields=["label"]))
    (ckpt(store_dir, 200) / "shard_00002.json").write_text("{")
    with pytest.raises(CorruptShardError, match="shard_00002.json.*unreadable"):
        list(store.iter_shards(200, fields=["label"]))


def test_only_requested_fields_are_read_and_hashed(store_dir, monkeypatch):
    target = ckpt(store_dir) / "shard_00000" / "vectors.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    hashed = []
    real = gradient_store.sha256_mapped
    monkeypatch.setattr(gradient_store, "sha256_mapped", lambda p: (hashed.append(p.name), real(p))[1])
    store = GradientStore(store_dir)
    labels = store.load(100, fields=("label",), verify=True)  # vectors.npy is never hashed
    np.testing.assert_array_equal(labels["label"], all_records(100)["label"])
    assert hashed == ["label.npy"] * 3
    hashed.clear()
    list(store.iter_shards(100, fields=("token_ids", "vectors", "label"), verify=False))
    assert hashed == []  # verify=False really skips hashing
    with pytest.raises(CorruptShardError, match="vectors.npy"):
        store.load(100, fields=("label", "vectors"))


def test_non_finite_records_are_refused(tmp_path):
    writer = open_writer(tmp_path)
    writer.begin_checkpoint(100, 1e-3)
    bad = make_records(0, S, 100)
    bad["vectors"][1, 2, 0] = np.nan
    bad["vectors"][3, 0, 1] = np.inf
    with pytest.raises(NonFiniteError, match=r"'vectors'.*step 100.*example_id 1001, 1003") as err:
        writer.write_shard(100, 0, bad)
    assert isinstance(err.value, ValueError)
    bad = make_records(0, S, 100)
    bad["loss"][2] = -np.inf
    with pytest.raises(NonFiniteError, match=r"'loss'.*example_id 1002\b"):
        writer.write_shard(100, 0, bad)
    assert writer.shards_to_write(100) == [0, 1, 2]  # nothing was written
    assert not (ckpt(tmp_path) / "shard_00000").exists()

    # at most 10 ids are listed
    big = open_writer(tmp_path / "big", num_examples=30, shard_size=30)
    big.begin_checkpoint(5, 1.0)
    recs = {**make_records(0, 30, 5)}
    recs["features"][:, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"30 record\(s\): example_id 1000, .*1009 and 20 more"):
        big.write_shard(5, 0, recs)

    # bfloat16 NaN, and float16 overflow (finite float32 beyond the float16 range)
    for dtype, value in [("bfloat16", np.nan), ("float16", 1e6)]:
        w = open_writer(tmp_path / dtype, dtype=dtype)
        w.begin_checkpoint(100, 1e-3)
        recs = make_records(0, S, 100)
        recs["vectors"][2, 0, 0] = value
        with pytest.raises(NonFiniteError, match=rf"'vectors' \({dtype}\).*example_id 1002"):
            w.write_shard(100, 0, recs)


def test_mismatched_store_is_refused(store_dir):
    open_writer(store_dir, model_info={"hidden": [32, 32], "num_layers": 2, "name": "bert"})
    for key, value in [("fingerprint", "other"), ("model_info", {"name": "roberta"}),
                       ("k", None), ("dtype", "bfloat16"), ("shard_size", 5),
                       ("num_examples", 11), ("split", "eval")]:
        with pytest.raises(StoreMismatchError, match=key) as err:
            open_writer(store_dir, **{key: value})
        assert isinstance(err.value, MismatchError) and isinstance(err.value, ValueError)
    with pytest.raises(StoreMismatchError, match="learning_rate"):
        open_writer(store_dir).begin_checkpoint(100, 2e-3)


def test_params_fingerprint_recorded_and_checked(tmp_path):
    writer = open_writer(tmp_path)
    writer.begin_checkpoint(100, 1e-3, params_fingerprint="f" * 64)
    writer.begin_checkpoint(200, 5e-4)
    writer.begin_checkpoint(100, 1e-3, params_fingerprint="f" * 64)  # idempotent
    writer.begin_checkpoint(100, 1e-3)  # None: not checked
    assert json.loads((ckpt(tmp_path) / "checkpoint.json").read_text())["params_fingerprint"] == "f" * 64
    with pytest.raises(StoreMismatchError, match="params_fingerprint"):
        open_writer(tmp_path).begin_checkpoint(100, 1e-3, params_fingerprint="e" * 64)
    with pytest.raises(StoreMismatchError, match="params_fingerprint"):  # recorded null
        open_writer(tmp_path).begin_checkpoint(200, 5e-4, params_fingerprint="e" * 64)
    with pytest.raises(ValueError, match="params_fingerprint"):
        writer.begin_checkpoint(300, 1e-3, params_fingerprint=123)
    for step, _ in CHECKPOINTS:
        for i in writer.shards_to_write(step):
            writer.write_shard(step, i, make_records(*writer.shard_range(i), step))
    infos = writer.finalize()
    assert infos == [CheckpointInfo(100, 1e-3, "f" * 64), CheckpointInfo(200, 5e-4, None)]
    store = GradientStore(tmp_path)
    assert store.checkpoints == infos
    assert store.manifest["checkpoints"][0] == {"step": 100, "learning_rate": 1e-3,
                                                "params_fingerprint": "f" * 64}
    assert GradientStore(tmp_path, allow_incomplete=True).checkpoints == infos


def test_invalid_records_raise(tmp_path):
    writer = open_writer(tmp_path)
    with pytest.raises(ValueError, match="begin_checkpoint"):
        writer.write_shard(100, 0, make_records(0, S, 100))
    writer.begin_checkpoint(100, 1e-3)
    with pytest.raises(ValueError, match="needs 4 records"):
        writer.write_shard(100, 0, make_records(0, S - 1, 100))
    with pytest.raises(ValueError, match="needs 2 records"):  # last shard holds the remainder
        writer.write_shard(100, 2, make_records(8, 12, 100))
    with pytest.raises(ValueError, match="out of range"):
        writer.write_shard(100, 3, make_records(12, 14, 100))
    bad = make_records(0, S, 100)
    del bad["features"]
    with pytest.raises(ValueError, match="features"):
        writer.write_shard(100, 0, bad)
    bad = make_records(0, S, 100) | {"token_ids": np.zeros((S, T), np.float32)}
    with pytest.raises(ValueError, match="token_ids.*integer"):
        writer.write_shard(100, 0, bad)
    bad = make_records(0, S, 100) | {"vectors": np.zeros((S, T + 1, D), np.float32)}
    with pytest.raises(ValueError, match="disagree on T"):
        writer.write_shard(100, 0, bad)
    bad = make_records(0, S, 100) | {"label": np.zeros((S, 2), np.int32)}
    with pytest.raises(ValueError, match="label"):
        writer.write_shard(100, 0, bad)
    bad = make_records(0, S, 100) | {"bad-name": np.zeros(S, np.int32)}
    with pytest.raises(ValueError, match="bad-name"):
        writer.write_shard(100, 0, bad)
    with pytest.raises(ValueError, match="dtype must be one of"):
        open_writer(tmp_path / "x", dtype="float64")

    writer.write_shard(100, 0, make_records(0, S, 100))  # fixes the schema
    bad = make_records(S, 2 * S, 100) | {"features": np.zeros((S, H + 1), np.float32)}
    with pytest.raises(ValueError, match="schema differs.*features"):
        writer.write_shard(100, 1, bad)
    with pytest.raises(ValueError, match="schema differs.*position_norms"):
        writer.write_shard(100, 1, make_records(S, 2 * S, 100, extra=False))
    # A fresh writer (after a restart) takes the schema from the shard on disk.
    with pytest.raises(ValueError, match="schema differs"):
        open_writer(tmp_path).write_shard(100, 1, make_records(S, 2 * S, 100, extra=False))
    # Lossless casts are accepted: float64 vectors, int64 labels.
    ok = make_records(S, 2 * S, 100)
    ok = ok | {"vectors": ok["vectors"].astype(np.float64), "label": ok["label"].astype(np.int64)}
    writer.write_shard(100, 1, ok)
    with pytest.raises(ValueError, match="not finalized"):
        GradientStore(tmp_path)
    assert GradientStore(tmp_path, allow_incomplete=True).checkpoints == [CheckpointInfo(100, 1e-3)]


def test_two_processes_match_one(tmp_path, store_dir):
    shared = tmp_path / "multi"
    writers = [open_writer(shared, process_index=p, process_count=2) for p in range(2)]
    for w in writers:
        w.begin_checkpoint(*CHECKPOINTS[0])
        w.begin_checkpoint(*CHECKPOINTS[1])
    assert [w.shards_to_write(100) for w in writers] == [[0, 2], [1]]
    # a temporary of process 1's shard is not process 0's to remove
    (ckpt(shared) / ".shard_00001.tmp.inflight").mkdir()
    for step, _ in CHECKPOINTS:
        for i in writers[0].shards_to_write(step):
            writers[0].write_shard(step, i, make_records(*writers[0].shard_range(i), step))
    assert (ckpt(shared) / ".shard_00001.tmp.inflight").exists()
    with pytest.raises(CorruptShardError, match="shard_00001.json"):  # process 1 not done
        writers[0].finalize()
    write_all(writers[1])
    assert not (ckpt(shared) / ".shard_00001.tmp.inflight").exists()
    writers[0].finalize()
    assert shard_hashes(shared) == shard_hashes(store_dir)
    assert GradientStore(shared).verify() == 6


def test_iter_shards_yields_one_shard_at_a_time(store_dir):
    store = GradientStore(store_dir)
    shards = store.iter_shards(100)
    first = next(shards)
    assert first["token_ids"].shape == (S, T)
    # Shards are opened lazily: damage to shard 2 surfaces only when it is reached.
    (ckpt(store_dir) / "shard_00002" / "label.npy").write_bytes(b"not an npy file")
    assert next(shards)["example_id"].tolist() == [1004, 1005, 1006, 1007]
    with pytest.raises(CorruptShardError, match="shard_00002/label.npy"):
        next(shards)
    picked = list(store.iter_shards(200, fields=["loss"], shard_indices=[2]))
    assert len(picked) == 1 and picked[0]["loss"].shape == (2,)
    np.testing.assert_array_equal(picked[0]["loss"], make_records(8, 10, 200)["loss"])
    with pytest.raises(ValueError, match="out of range"):
        list(store.iter_shards(200, shard_indices=[3]))


def test_reader_checks_array_dtypes_and_shapes(store_dir):
    """A file whose bytes match its checksum but hold int64 token ids is refused."""
    path = ckpt(store_dir) / "shard_00000" / "token_ids.npy"
    np.save(path, np.load(path).astype(np.int64))
    side, sidecar = rewrite_sidecar_for(path)
    store = GradientStore(store_dir)
    assert store.verify() == 6  # checksums agree, so only opening can catch it
    with pytest.raises(CorruptShardError, match="shard_00000/token_ids.npy.*int64.*sidecar says int32"):
        next(store.iter_shards(100, verify=False))
    sidecar["fields"]["token_ids"]["dtype"] = "int64"  # a sidecar that admits it is refused too
    side.write_text(json.dumps(sidecar))
    with pytest.raises(CorruptShardError, match="differ"):
        store.verify()

    path = ckpt(store_dir, 200) / "shard_00000" / "loss.npy"  # wrong number of records
    np.save(path, np.zeros(S + 1, np.float32))
    rewrite_sidecar_for(path)
    with pytest.raises(CorruptShardError, match="loss.npy.*float32\\[5\\].*float32\\[4\\]"):
        next(store.iter_shards(200))


def test_unverified_reads_never_misdecode(store_dir):
    """verify=False trusts the bytes (no sha256) but still refuses what is not a plain npy."""
    store = GradientStore(store_dir)
    target = ckpt(store_dir) / "shard_00000" / "features.npy"
    good = np.load(target)
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF  # the npy magic
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="features.npy.*sha256"):
        next(store.iter_shards(100))
    with pytest.raises(CorruptShardError, match="features.npy.*cannot read"):
        next(store.iter_shards(100, verify=False))
    # Fortran order (not what the writer makes) is refused, checksum or not.
    np.save(target, np.asfortranarray(good))
    rewrite_sidecar_for(target)
    with pytest.raises(CorruptShardError, match="features.npy.*C order"):
        next(store.iter_shards(100))
    # An object array would need pickle: refused, never unpickled.
    np.save(target, np.array([{"a": 1}] * S, dtype=object), allow_pickle=True)
    rewrite_sidecar_for(target)
    with pytest.raises(CorruptShardError, match="features.npy.*cannot read"):
        next(store.iter_shards(100))


# ----------------------------------------------------------------------------- format 1

def write_v1_store(directory: Path, dtype: str = "float32", *, incomplete_shard: bool = False):
    """A format-1 store built by hand: one uncompressed np.savez per shard, v1 sidecars
    (whole-file sha256) and a v1 manifest — what the old writer made."""
    directory.mkdir(parents=True)
    schema = None
    for step, lr in CHECKPOINTS:
        c = ckpt(directory, step)
        c.mkdir()
        (c / "checkpoint.json").write_text(json.dumps({"learning_rate": lr, "step": step}))
        for i, start in enumerate(range(0, N, S)):
            records = make_records(start, min(start + S, N), step)
            if dtype == "bfloat16":
                records["vectors"] = records["vectors"].astype(ml_dtypes.bfloat16)
            logical = {n: "bfloat16" if a.dtype == ml_dtypes.bfloat16 else a.dtype.name
                       for n, a in records.items()}
            on_disk = {n: a.view(np.uint16) if logical[n] == "bfloat16" else a
                       for n, a in records.items()}
            npz = c / f"shard_{i:05d}.npz"
            np.savez(npz, **on_disk)
            if incomplete_shard and (step, i) == (200, 2):
                continue  # killed before its sidecar
            schema = {n: {"dtype": logical[n], "shape": list(a.shape[1:])} for n, a in records.items()}
            (c / f"shard_{i:05d}.json").write_text(json.dumps({
                "shard_index": i, "first_index": start, "num_records": len(records["label"]),
                "num_bytes": npz.stat().st_size,
                "sha256": hashlib.sha256(npz.read_bytes()).hexdigest(), "fields": schema}))
    manifest = {"fingerprint": "abc123", "model_info": json.loads(json.dumps(MODEL_INFO)), "k": 3,
                "dtype": dtype, "shard_size": S, "num_examples": N, "split": "train",
                "format_version": 1, "num_shards": 3, "created": "2024-01-01T00:00:00+00:00",
                "T": T, "D": D, "fields": schema, "complete": not incomplete_shard,
                "checkpoints": [{"step": s, "learning_rate": lr} for s, lr in CHECKPOINTS]}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_v1_store_is_refused_with_a_way_out(tmp_path):
    v1 = write_v1_store(tmp_path / "v1")
    for opener in (lambda: GradientStore(v1), lambda: open_writer(v1)):
        with pytest.raises(StoreFormatError, match="uses format 1 \\(npz shards\\); convert it with "
                                                   "`python -m tracin_jax.store.migrate .*v1` or "
                                                   "re-extract it") as err:
            opener()
        assert isinstance(err.value, MismatchError) and isinstance(err.value, ValueError)
    manifest = json.loads((v1 / "manifest.json").read_text())
    (v1 / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(StoreFormatError, match="version 3"):
        GradientStore(v1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_migrate_v1_round_trip(tmp_path, dtype):
    v1 = write_v1_store(tmp_path / "v1", dtype)
    summary = migrate_v1(v1)
    assert (summary["converted"], summary["already"], summary["missing"]) == (6, 0, 0)
    assert not list(v1.rglob("*.npz")) and not list(v1.rglob("*.v1.json"))
    store = GradientStore(v1)
    assert store.verify() == 6 and store.dtype == dtype
    assert store.checkpoints == [CheckpointInfo(*c) for c in CHECKPOINTS]
    for step, _ in CHECKPOINTS:
        loaded = store.load(step)
        for name, want in all_records(step).items():
            if name == "vectors":
                want = want.astype(np.dtype(getattr(ml_dtypes, dtype, dtype)))
            assert loaded[name].dtype == want.dtype, name
            np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    # byte-identical to what the v2 writer makes from the same records
    fresh = open_writer(tmp_path / "fresh", dtype=dtype)
    for step, lr in CHECKPOINTS:
        fresh.begin_checkpoint(step, lr)
        for i in range(3):
            records = make_records(*fresh.shard_range(i), step)
            fresh.write_shard(step, i, records)
    fresh.finalize()
    assert shard_hashes(v1) == shard_hashes(tmp_path / "fresh")
    assert migrate_v1(v1)["status"] == "already format 2"  # idempotent
    # a migrated store is resumable by the writer like any other
    assert open_writer(v1, dtype=dtype).shards_to_write(100) == []


def test_migrate_v1_resumes_after_a_crash(tmp_path, monkeypatch, capsys):
    v1 = write_v1_store(tmp_path / "v1", incomplete_shard=True)
    from tracin_jax.store import migrate
    real, calls = migrate.commit_shard, {"n": 0}

    def dying(*args):
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(migrate, "commit_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        migrate_v1(v1)
    with pytest.raises(StoreFormatError):  # still format 1 until the migration finishes
        GradientStore(v1, allow_incomplete=True)
    # also a crash after deleting one npz but before deleting its v1 sidecar copy
    (ckpt(v1, 100) / "shard_00000.v1.json").write_text("{}")
    monkeypatch.setattr(migrate, "commit_shard", real)
    assert migrate_main([str(v1)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["converted"], summary["already"], summary["missing"]) == (3, 2, 1)
    store = GradientStore(v1, allow_incomplete=True)
    assert store.manifest["format_version"] == 2 and not store.manifest["complete"]
    # the incomplete v1 shard is simply rewritten by the writer
    writer = open_writer(v1)
    assert writer.shards_to_write(100) == [] and writer.shards_to_write(200) == [2]
    write_all(writer)
    writer.finalize()
    np.testing.assert_array_equal(GradientStore(v1).load(200)["vectors"], all_records(200)["vectors"])


def test_migrate_v1_refuses_a_corrupt_shard(tmp_path):
    v1 = write_v1_store(tmp_path / "v1")
    npz = ckpt(v1, 200) / "shard_00001.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*sha256.*still format 1"):
        migrate_v1(v1)
    assert json.loads((v1 / "manifest.json").read_text())["format_version"] == 1
