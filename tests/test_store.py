"""Tests for tracin_jax.store: round trips, resumability, checksums, multi-process writing."""
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tracin_jax.store import (
    CheckpointInfo,
    CorruptShardError,
    GradientStore,
    GradientStoreWriter,
    StoreMismatchError,
)

N, S, T, D, H, C, L = 10, 4, 5, 3, 6, 3, 7  # 3 shards: 4 + 4 + 2 records
CHECKPOINTS = [(100, 1e-3), (200, 5e-4)]
MODEL_INFO = {"name": "bert", "num_layers": 2, "hidden": (32, 32)}


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
    """sha256 of every shard file and sidecar (manifest excluded: it holds a timestamp)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).glob("ckpt_*/*"))}


@pytest.fixture
def store_dir(tmp_path):
    writer = open_writer(tmp_path / "store")
    write_all(writer)
    writer.finalize()
    return tmp_path / "store"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip(tmp_path, dtype):
    writer = open_writer(tmp_path, dtype=dtype)
    write_all(writer)
    assert writer.finalize() == [CheckpointInfo(*c) for c in CHECKPOINTS]

    store = GradientStore(tmp_path)
    assert store.checkpoints == [CheckpointInfo(100, 1e-3), CheckpointInfo(200, 5e-4)]
    assert store.num_shards == 3
    assert store.manifest["complete"] and store.manifest["dtype"] == dtype
    assert (store.manifest["T"], store.manifest["D"], store.manifest["k"]) == (T, D, 3)
    assert store.manifest["model_info"] == {"name": "bert", "num_layers": 2, "hidden": [32, 32]}
    assert store.verify() == 6
    for step, _ in CHECKPOINTS:
        expected = all_records(step)
        loaded = store.load(step)
        assert set(loaded) == set(expected)
        for name, want in expected.items():
            if name == "vectors":
                assert loaded[name].dtype == np.dtype(getattr(ml_dtypes, dtype, dtype))
                want = want.astype(loaded[name].dtype)  # bf16: equal after the same cast
            assert loaded[name].dtype == want.dtype, name
            np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    if dtype == "bfloat16":  # the cast really lost precision, so the test above is not vacuous
        assert not np.array_equal(store.load(100)["vectors"].astype(np.float32),
                                  all_records(100)["vectors"])
    subset = store.load(200, fields=["features", "example_id"], verify=False)
    assert sorted(subset) == ["example_id", "features"]
    np.testing.assert_array_equal(subset["example_id"], np.arange(N) + 1000)
    with pytest.raises(ValueError, match="nope"):
        store.load(200, fields=["nope"])
    with pytest.raises(ValueError, match="step 300"):
        store.load(300)


def test_no_pickle_anywhere(store_dir):
    """Every shard loads with allow_pickle=False; bf16 is a uint16 bit pattern on disk."""
    npz_files = sorted(store_dir.glob("ckpt_*/shard_*.npz"))
    assert len(npz_files) == 6
    for path in npz_files:
        with np.load(path, allow_pickle=False) as archive:
            assert all(archive[name].dtype != object for name in archive.files)
        # np.savez would stamp the wall clock here and break reproducible checksums.
        with zipfile.ZipFile(path) as zf:
            assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    bf16_dir = store_dir.parent / "bf16"
    writer = open_writer(bf16_dir, dtype="bfloat16")
    write_all(writer, CHECKPOINTS[:1])
    with np.load(bf16_dir / "ckpt_00000100" / "shard_00000.npz", allow_pickle=False) as archive:
        assert archive["vectors"].dtype == np.uint16
        want = make_records(0, S, 100)["vectors"].astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(archive["vectors"], want.view(np.uint16))


def test_resume_is_byte_identical(tmp_path, store_dir, caplog):
    resumed = tmp_path / "resumed"
    writer = open_writer(resumed)
    writer.begin_checkpoint(100, 1e-3)
    writer.write_shard(100, 0, make_records(0, S, 100))
    # "Crash" mid-shard-1: a truncated npz without sidecar, plus a stale temp file.
    full = (store_dir / "ckpt_00000100" / "shard_00001.npz").read_bytes()
    (resumed / "ckpt_00000100" / "shard_00001.npz").write_bytes(full[: len(full) // 2])
    (resumed / "ckpt_00000100" / ".shard_00002.npz.tmp.999").write_bytes(b"junk")
    del writer

    writer = open_writer(resumed)
    with caplog.at_level(logging.WARNING):
        assert writer.shards_to_write(100) == [1, 2]
    assert "shard_00001.npz" in caplog.text
    assert not list(resumed.glob("ckpt_*/.*tmp*"))
    write_all(writer)
    assert writer.shards_to_write(100) == [] and writer.shards_to_write(200) == []
    writer.finalize()
    assert shard_hashes(resumed) == shard_hashes(store_dir)
    assert len(shard_hashes(resumed)) == 2 * (1 + 3 + 3)  # checkpoint.json + npz + sidecars


def test_corrupt_shard_detected(store_dir, caplog):
    target = store_dir / "ckpt_00000200" / "shard_00001.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))

    store = GradientStore(store_dir)
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*sha256") as err:
        store.verify()
    assert err.value.path == target
    list(store.iter_shards(100))  # other checkpoint unaffected
    with pytest.raises(CorruptShardError, match="shard_00001.npz"):
        list(store.iter_shards(200))

    writer = open_writer(store_dir)
    writer.begin_checkpoint(200, 5e-4)
    with caplog.at_level(logging.WARNING):
        assert writer.shards_to_write(200) == [1]
    assert "shard_00001.npz" in caplog.text
    writer.write_shard(200, 1, make_records(*writer.shard_range(1), 200))
    assert store.verify() == 6

    target.write_bytes(target.read_bytes()[:-10])  # truncated
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*truncated"):
        store.verify()
    target.unlink()
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*missing"):
        store.verify()
    with pytest.raises(CorruptShardError, match="shard_00001.npz"):
        writer.finalize()


def test_mismatched_store_is_refused(store_dir):
    open_writer(store_dir, model_info={"hidden": [32, 32], "num_layers": 2, "name": "bert"})
    for key, value in [("fingerprint", "other"), ("model_info", {"name": "roberta"}),
                       ("k", None), ("dtype", "bfloat16"), ("shard_size", 5),
                       ("num_examples", 11), ("split", "eval")]:
        with pytest.raises(StoreMismatchError, match=key):
            open_writer(store_dir, **{key: value})
    with pytest.raises(StoreMismatchError, match="learning_rate"):
        open_writer(store_dir).begin_checkpoint(100, 2e-3)


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
    for step, _ in CHECKPOINTS:
        for i in writers[0].shards_to_write(step):
            writers[0].write_shard(step, i, make_records(*writers[0].shard_range(i), step))
    with pytest.raises(CorruptShardError, match="shard_00001.npz"):  # process 1 not done
        writers[0].finalize()
    write_all(writers[1])
    writers[0].finalize()
    assert shard_hashes(shared) == shard_hashes(store_dir)
    assert GradientStore(shared).verify() == 6


def test_iter_shards_yields_one_shard_at_a_time(store_dir):
    store = GradientStore(store_dir)
    shards = store.iter_shards(100)
    first = next(shards)
    assert first["token_ids"].shape == (S, T)
    # Shards are read lazily: damage to shard 2 surfaces only when it is reached.
    (store_dir / "ckpt_00000100" / "shard_00002.npz").write_bytes(b"not a zip")
    assert next(shards)["example_id"].tolist() == [1004, 1005, 1006, 1007]
    with pytest.raises(CorruptShardError, match="shard_00002.npz"):
        next(shards)
    picked = list(store.iter_shards(200, fields=["loss"], shard_indices=[2]))
    assert len(picked) == 1 and picked[0]["loss"].shape == (2,)
    np.testing.assert_array_equal(picked[0]["loss"], make_records(8, 10, 200)["loss"])


def test_reader_checks_array_dtypes(store_dir):
    """A shard whose bytes match its checksum but hold int64 token ids is refused."""
    path = store_dir / "ckpt_00000100" / "shard_00000.npz"
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["token_ids"] = arrays["token_ids"].astype(np.int64)
    np.savez(path, **arrays)
    sidecar_file = path.with_suffix(".json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                   num_bytes=path.stat().st_size)
    sidecar_file.write_text(json.dumps(sidecar))
    store = GradientStore(store_dir)
    assert store.verify() == 6  # checksums agree, so only decoding can catch it
    with pytest.raises(CorruptShardError, match="shard_00000.npz.*'token_ids' is int64"):
        next(store.iter_shards(100, verify=False))
    sidecar["fields"]["token_ids"]["dtype"] = "int64"  # a sidecar that admits it is refused too
    sidecar_file.write_text(json.dumps(sidecar))
    with pytest.raises(CorruptShardError, match="differ"):
        store.verify()


def test_unverified_reads_skip_the_checksum_but_never_misdecode(store_dir):
    """verify=False trusts the bytes (no sha256) but still refuses what is not a stored npz."""
    store = GradientStore(store_dir)
    good = next(store.iter_shards(100))
    assert good["vectors"].flags.writeable and good["token_ids"].flags.writeable
    target = store_dir / "ckpt_00000100" / "shard_00000.npz"
    data = bytearray(target.read_bytes())
    with zipfile.ZipFile(target) as zf:
        info = zf.getinfo("vectors.npy")
    flip = info.header_offset + info.FileHeader().__len__() + 200  # inside the float data
    data[flip] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="sha256"):
        next(store.iter_shards(100))
    unverified = next(store.iter_shards(100, verify=False))
    assert not np.array_equal(unverified["vectors"], good["vectors"])  # the flipped byte shows
    data[info.header_offset] ^= 0xFF  # break the member's local header magic
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="cannot decode"):
        next(store.iter_shards(100, verify=False))
    # A compressed archive (not what the writer makes) is refused, not half-read.
    with np.load(store_dir / "ckpt_00000100" / "shard_00001.npz", allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    np.savez_compressed(target, **{n: arrays[n][:S] for n in arrays})
    sidecar_file = target.with_suffix(".json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar.update(sha256=hashlib.sha256(target.read_bytes()).hexdigest(), num_bytes=target.stat().st_size)
    sidecar_file.write_text(json.dumps(sidecar))
    with pytest.raises(CorruptShardError, match="compressed"):
        next(store.iter_shards(100))
