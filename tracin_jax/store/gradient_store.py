"""On-disk gradient store: sharded, resumable, checksummed per-example records.

For every checkpoint c (learning rate η_c) the gradient engine produces one
fixed-size record per example. The store keeps them on disk so that a 400k-example
train set over several checkpoints never has to fit in memory: writers and readers
hold at most one shard at a time.

Layout::

    DIR/manifest.json                      store-level metadata (see `GradientStoreWriter`)
    DIR/ckpt_{step:08d}/checkpoint.json    {"step", "learning_rate"}
    DIR/ckpt_{step:08d}/shard_{i:05d}.npz  records at dataset positions [i*S, min((i+1)*S, N))
    DIR/ckpt_{step:08d}/shard_{i:05d}.json sidecar {shard_index, first_index, num_records,
                                           num_bytes, sha256, fields: {name: {shape, dtype}}}

Record fields (leading axis = records of the shard; shapes below are per record)::

    example_id int64 []      label int32 []        token_ids int32 [T] (-1 padded)
    vectors    store dtype [T, D] (float32 or bfloat16)
    features   float32 [H]   p_minus_y float32 [C] loss float32 []   prediction int32 []

plus any extra fixed-size numeric fields (e.g. `position_norms [L]`).

Shard files are ordinary uncompressed `.npz` archives readable with
`np.load(path, allow_pickle=False)`. They are written with fixed zip timestamps
(`np.savez` stamps the wall clock), so the same records always give the same bytes
and the same sha256: an interrupted-and-resumed run is byte-identical to an
uninterrupted one. bfloat16 arrays are stored as their uint16 bit pattern; the
sidecar records the logical dtype and readers view the bits as `ml_dtypes.bfloat16`.
The only timestamp lives in manifest.json.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import os
import re
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHECKPOINT_META = "checkpoint.json"
STORE_DTYPES = ("float32", "bfloat16")
# Per-record dtype of every required field; `None` means "the store dtype" (vectors).
CORE_FIELDS: dict[str, str | None] = {
    "example_id": "int64",
    "label": "int32",
    "token_ids": "int32",
    "vectors": None,
    "features": "float32",
    "p_minus_y": "float32",
    "loss": "float32",
    "prediction": "int32",
}
# Per-record rank of every required field (token_ids [T], vectors [T, D], ...).
_CORE_RANKS = {"example_id": 0, "label": 0, "token_ids": 1, "vectors": 2,
               "features": 1, "p_minus_y": 1, "loss": 0, "prediction": 0}
# Manifest entries that must agree when a writer reopens an existing store.
_IDENTITY_KEYS = ("fingerprint", "model_info", "k", "dtype", "shard_size",
                  "num_examples", "split")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp; fixed for reproducible bytes
_HASH_CHUNK = 1 << 22

BF16 = np.dtype(ml_dtypes.bfloat16)


class StoreMismatchError(ValueError):
    """An existing store was created for a different dataset, model or layout."""


class CorruptShardError(RuntimeError):
    """A shard (or its sidecar) is missing, truncated or fails its checksum."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"corrupt shard {path}: {reason}")
        self.path = Path(path)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    learning_rate: float


# ----------------------------------------------------------------------------- paths

def checkpoint_dir(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:08d}"


def shard_path(directory: Path, step: int, shard_index: int) -> Path:
    return checkpoint_dir(directory, step) / f"shard_{shard_index:05d}.npz"


def sidecar_path(directory: Path, step: int, shard_index: int) -> Path:
    return shard_path(directory, step, shard_index).with_suffix(".json")


def shard_range(shard_index: int, shard_size: int, num_examples: int) -> tuple[int, int]:
    """Dataset positions `[start, stop)` covered by shard `shard_index`."""
    start = shard_index * shard_size
    return start, min(start + shard_size, num_examples)


# ----------------------------------------------------------------------------- file I/O

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write_fn) -> None:
    """Write via `write_fn(file)` to a temp file, fsync, then `os.replace` onto `path`."""
    # Unique per call: processes on several hosts may write the same small file at once.
    tmp = path.with_name(f".{path.name}.tmp.{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Uncompressed `.npz` identical in format to `np.savez`, with fixed timestamps."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, independent of the host platform
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)


_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over an in-memory buffer that never copies the buffer
    (``io.BytesIO`` copies it), so ``zipfile`` can read the archive's directory."""

    def __init__(self, buffer):
        super().__init__()
        self._view, self._pos = memoryview(buffer).cast("B"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n


def _decode_npz(data: bytearray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays of an uncompressed `.npz` held in memory, as views of `data` (no copy).

    The bytes were just checked against the sidecar's sha256, so the members' zip
    CRC32 (which `np.load` recomputes) is not checked again. Compressed members,
    object arrays and malformed headers raise (never unpickled).
    """
    view = memoryview(data)
    with zipfile.ZipFile(_BufferFile(view)) as archive:
        infos = {i.filename: i for i in archive.infolist()}
    out = {}
    for name in names:
        info = infos.get(name + ".npy")
        if info is None:
            raise KeyError(f"{name} is not a member of the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {info.filename} is compressed; the store writes stored members")
        at = info.header_offset
        local = bytes(view[at:at + _LOCAL_HEADER])
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local header for member {info.filename}")
        start = at + _LOCAL_HEADER + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little")
        header = io.BytesIO(bytes(view[start:start + min(info.file_size, 1 << 16)]))
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
        else:  # rare format versions: numpy's own reader (copies), still without pickle
            with np.load(_BufferFile(view), allow_pickle=False) as z:
                out[name] = z[name]
            continue
        if dtype.hasobject:
            raise ValueError(f"member {info.filename} holds objects; refusing to unpickle")
        count = math.prod(shape)
        offset = start + header.tell()
        if offset + count * dtype.itemsize > start + info.file_size:
            raise ValueError(f"member {info.filename} is shorter than its header says")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        out[name] = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return out


# ----------------------------------------------------------------------------- dtypes

def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == BF16 else np.dtype(dtype).name


def _parse_dtype(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


def _to_disk(array: np.ndarray) -> np.ndarray:
    """bfloat16 → uint16 bit pattern (npy has no bfloat16 descriptor)."""
    return array.view(np.uint16) if array.dtype == BF16 else array


def _from_disk(array: np.ndarray, logical: str) -> np.ndarray:
    return array.view(BF16) if logical == "bfloat16" and array.dtype == np.uint16 else array


def _is_float(dtype: np.dtype) -> bool:
    return dtype == BF16 or np.issubdtype(dtype, np.floating)


def _convert_core(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    """Cast a required field to its stored dtype; refuse lossy integer/float mixes."""
    if np.issubdtype(target, np.integer):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"field {name!r} must be an integer array, got dtype {array.dtype}")
        converted = array.astype(target)
        if not np.array_equal(converted, array):
            raise ValueError(f"field {name!r} has values that do not fit in {target}")
        return converted
    if not _is_float(array.dtype):
        raise ValueError(f"field {name!r} must be a floating array, got dtype {array.dtype}")
    return array.astype(target)


# ----------------------------------------------------------------------------- schema

Schema = dict[str, tuple[tuple[int, ...], str]]  # name -> (per-record shape, logical dtype)


def _schema_to_json(schema: Schema) -> dict:
    return {n: {"shape": list(s), "dtype": d} for n, (s, d) in sorted(schema.items())}


def _schema_from_json(fields: Mapping[str, Any]) -> Schema:
    return {n: (tuple(int(x) for x in v["shape"]), str(v["dtype"])) for n, v in fields.items()}


def _check_core_dtypes(schema: Schema, store_dtype: str, where: Path) -> None:
    for name, expected in CORE_FIELDS.items():
        expected = expected or store_dtype
        if name not in schema:
            raise CorruptShardError(where, f"required field {name!r} is missing")
        if schema[name][1] != expected:
            raise CorruptShardError(
                where, f"field {name!r} has dtype {schema[name][1]}, expected {expected}")


def _verify_shard(directory: Path, step: int, shard_index: int, shard_size: int,
                  num_examples: int, *, read: bool = False, check: bool = True,
                  expected_fields: Schema | None = None) -> tuple[dict, bytearray | None]:
    """Check one shard against its sidecar; return (sidecar, file bytes if `read`).

    Raises `CorruptShardError` naming the file when the sidecar or shard is missing,
    unreadable, of the wrong size, covers the wrong positions, fails sha256 (only
    with `check`), or (given `expected_fields`) records a different schema.
    """
    npz, side = shard_path(directory, step, shard_index), sidecar_path(directory, step, shard_index)
    if not side.exists():
        raise CorruptShardError(npz, f"sidecar {side.name} is missing (shard never completed)")
    try:
        sidecar = _read_json(side)
        expected_sha, expected_bytes = sidecar["sha256"], int(sidecar["num_bytes"])
        fields = _schema_from_json(sidecar["fields"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptShardError(side, f"unreadable sidecar ({e})") from e
    start, stop = shard_range(shard_index, shard_size, num_examples)
    if (sidecar.get("first_index"), sidecar.get("num_records")) != (start, stop - start):
        raise CorruptShardError(side, f"sidecar covers first_index={sidecar.get('first_index')}, "
                                      f"num_records={sidecar.get('num_records')}; expected "
                                      f"{start}, {stop - start}")
    if not npz.exists():
        raise CorruptShardError(npz, "shard file is missing")
    size = npz.stat().st_size
    if size != expected_bytes:
        raise CorruptShardError(npz, f"file has {size} bytes, sidecar says {expected_bytes} "
                                     "(truncated or overwritten)")
    if read:
        data = bytearray(size)  # writable: the decoded arrays are views of it
        with open(npz, "rb") as f:
            if f.readinto(data) != size:
                raise CorruptShardError(npz, "file shrank while it was read")
        actual = hashlib.sha256(data).hexdigest() if check else expected_sha
    else:
        data, actual = None, (_sha256_file(npz) if check else expected_sha)
    if actual != expected_sha:
        raise CorruptShardError(npz, f"sha256 {actual} does not match sidecar {expected_sha}")
    sidecar["fields"] = fields
    if expected_fields is not None and fields != expected_fields:
        raise CorruptShardError(side, f"fields {fields} differ from the store's {expected_fields}")
    return sidecar, data


# ----------------------------------------------------------------------------- writer

class GradientStoreWriter:
    """Writes one store, shard by shard, resumably and across processes.

    Args:
      directory: the store root (created if absent).
      num_examples: N, records per checkpoint (the dataset split's size).
      shard_size: S, records per shard; shard i holds dataset positions [i*S, (i+1)*S).
      k: top-k tokens kept per example (None = all), recorded for readers.
      dtype: storage dtype of `vectors`: "float32" or "bfloat16".
      model_info: JSON-serialisable model description (config, parameter count...).
      fingerprint: dataset fingerprint (`TextDataset.fingerprint()`).
      split: split name, e.g. "train".
      process_index, process_count: this process owns shards with
        `i % process_count == process_index`.

    Reopening an existing store checks that fingerprint, model_info, k, dtype,
    shard_size, num_examples and split agree with its manifest and raises
    `StoreMismatchError` naming the first field that differs.

    Typical loop (each process)::

        writer.begin_checkpoint(step, lr)
        for i in writer.shards_to_write(step):
            writer.write_shard(step, i, compute_records(*writer.shard_range(i)))
        # after all processes are done (barrier), on one process:
        writer.finalize()
    """

    def __init__(self, directory: str | os.PathLike, *, num_examples: int, shard_size: int,
                 k: int | None, dtype: str, model_info: dict, fingerprint: str, split: str,
                 process_index: int = 0, process_count: int = 1):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be None or >= 1, got {k}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"need 0 <= process_index < process_count, got "
                             f"{process_index}, {process_count}")
        self.directory = Path(directory)
        self.num_examples, self.shard_size = int(num_examples), int(shard_size)
        self.num_shards = math.ceil(num_examples / shard_size)
        self.dtype = dtype
        self.process_index, self.process_count = process_index, process_count
        # JSON round trip so tuples and lists compare equal to what is on disk.
        identity = json.loads(json.dumps({
            "fingerprint": fingerprint, "model_info": model_info, "k": k, "dtype": dtype,
            "shard_size": self.shard_size, "num_examples": self.num_examples, "split": split}))
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest_file = self.directory / MANIFEST
        if manifest_file.exists():
            self.manifest = _read_json(manifest_file)
            if self.manifest.get("format_version") != FORMAT_VERSION:
                raise StoreMismatchError(f"{manifest_file}: format_version "
                                         f"{self.manifest.get('format_version')} != {FORMAT_VERSION}")
            for key in _IDENTITY_KEYS:
                if self.manifest.get(key) != identity[key]:
                    raise StoreMismatchError(
                        f"{manifest_file}: {key} is {self.manifest.get(key)!r} in the store "
                        f"but {identity[key]!r} was requested")
        else:
            if any(self.directory.glob("ckpt_*")):
                raise StoreMismatchError(f"{self.directory} holds checkpoints but no {MANIFEST}")
            self.manifest = {
                **identity, "format_version": FORMAT_VERSION, "num_shards": self.num_shards,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "T": None, "D": None, "fields": None, "checkpoints": [], "complete": False}
            _write_json(manifest_file, self.manifest)
        self._schema: Schema | None = None

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """Dataset positions `[start, stop)` that shard `shard_index` must hold."""
        if not 0 <= shard_index < self.num_shards:
            raise ValueError(f"shard_index {shard_index} out of range [0, {self.num_shards})")
        return shard_range(shard_index, self.shard_size, self.num_examples)

    def begin_checkpoint(self, step: int, learning_rate: float) -> None:
        """Create `ckpt_{step}` with its learning rate; idempotent for equal arguments."""
        if int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        if not (math.isfinite(learning_rate) and learning_rate >= 0):
            raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
        meta = {"step": int(step), "learning_rate": float(learning_rate)}
        ckpt = checkpoint_dir(self.directory, step)
        ckpt.mkdir(exist_ok=True)
        meta_file = ckpt / CHECKPOINT_META
        if meta_file.exists():
            existing = _read_json(meta_file)
            if existing != meta:
                raise StoreMismatchError(f"{meta_file} holds {existing}, requested {meta}")
            return
        _write_json(meta_file, meta)

    def _require_checkpoint(self, step: int) -> None:
        if not (checkpoint_dir(self.directory, step) / CHECKPOINT_META).exists():
            raise ValueError(f"checkpoint step {step} not begun; call begin_checkpoint first")

    def shards_to_write(self, step: int) -> list[int]:
        """Shards owned by this process that are not yet complete (sidecar + checksum).

        Corrupt or partial shards are logged by file name and will be rewritten.
        """
        self._require_checkpoint(step)
        todo = []
        for i in range(self.process_index, self.num_shards, self.process_count):
            npz = shard_path(self.directory, step, i)
            if not sidecar_path(self.directory, step, i).exists() and not npz.exists():
                todo.append(i)
                continue
            try:
                _verify_shard(self.directory, step, i, self.shard_size, self.num_examples)
            except CorruptShardError as e:
                log.warning("%s; it will be rewritten", e)
                todo.append(i)
        # Temp files left by a crash; only this process writes these shards.
        for i in todo:
            for stale in npz.parent.glob(f".shard_{i:05d}.*.tmp.*"):
                stale.unlink(missing_ok=True)
        return todo

    def _load_schema(self) -> Schema | None:
        """Schema of any shard already on disk (e.g. written before a restart)."""
        for side in sorted(self.directory.glob("ckpt_*/shard_*.json")):
            try:
                return _schema_from_json(_read_json(side)["fields"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def _validate(self, shard_index: int, records: Mapping[str, np.ndarray]) -> dict:
        start, stop = self.shard_range(shard_index)
        n = stop - start
        missing = [name for name in CORE_FIELDS if name not in records]
        if missing:
            raise ValueError(f"records lack required fields {missing}")
        arrays = {}
        for name, value in records.items():
            if not _FIELD_NAME.match(name):
                raise ValueError(f"field name {name!r} must match {_FIELD_NAME.pattern}")
            array = np.asarray(value)
            if array.ndim == 0 or array.shape[0] != n:
                raise ValueError(f"shard {shard_index} needs {n} records (positions "
                                 f"[{start}, {stop})); field {name!r} has shape {array.shape}")
            if name in CORE_FIELDS:
                target = _parse_dtype(CORE_FIELDS[name] or self.dtype)
                array = _convert_core(name, array, target)
                if array.ndim - 1 != _CORE_RANKS[name]:
                    raise ValueError(f"field {name!r} must have {_CORE_RANKS[name]} per-record "
                                     f"axes, got shape {array.shape}")
            elif not (_is_float(array.dtype) or array.dtype.kind in "biu"):
                raise ValueError(f"field {name!r} has unsupported dtype {array.dtype}")
            arrays[name] = array
        T = arrays["token_ids"].shape[1]
        if arrays["vectors"].shape[1] != T:
            raise ValueError(f"vectors {arrays['vectors'].shape} and token_ids "
                             f"{arrays['token_ids'].shape} disagree on T")
        if (arrays["token_ids"] < -1).any():
            raise ValueError("token_ids must be >= 0, or -1 for padding")
        schema = {name: (a.shape[1:], _dtype_name(a.dtype)) for name, a in arrays.items()}
        if self._schema is None:
            self._schema = self._load_schema() or schema
        if schema != self._schema:
            diff = sorted(set(schema.items()) ^ set(self._schema.items()))
            raise ValueError(f"shard {shard_index} schema differs from the store's first shard "
                             f"(per-record shape, dtype) in {diff}; expected {self._schema}")
        return arrays

    def write_shard(self, step: int, shard_index: int, records: Mapping[str, np.ndarray]) -> None:
        """Validate and atomically write one shard (npz first, sidecar last)."""
        self._require_checkpoint(step)
        arrays = self._validate(shard_index, records)
        npz = shard_path(self.directory, step, shard_index)
        side = sidecar_path(self.directory, step, shard_index)
        if side.exists():  # invalidate first so a crash mid-rewrite leaves it incomplete
            side.unlink()
        _atomic_write(npz, lambda f: _write_npz(f, {n: _to_disk(a) for n, a in arrays.items()}))
        start, stop = self.shard_range(shard_index)
        _write_json(side, {
            "shard_index": shard_index, "first_index": start, "num_records": stop - start,
            "num_bytes": npz.stat().st_size, "sha256": _sha256_file(npz),
            "fields": _schema_to_json({n: self._schema[n] for n in arrays})})

    def finalize(self) -> list[CheckpointInfo]:
        """Verify every shard of every checkpoint; mark the store complete in the manifest.

        Run once all processes have finished writing. Raises `CorruptShardError`
        naming the first missing or corrupt shard.
        """
        checkpoints = _discover_checkpoints(self.directory)
        if not checkpoints:
            raise ValueError(f"{self.directory} has no checkpoints to finalize")
        schema = None
        for ckpt in checkpoints:
            for i in range(self.num_shards):
                sidecar, _ = _verify_shard(self.directory, ckpt.step, i, self.shard_size,
                                           self.num_examples, expected_fields=schema)
                if schema is None:
                    schema = sidecar["fields"]
                    _check_core_dtypes(schema, self.dtype, sidecar_path(self.directory, ckpt.step, i))
        self.manifest.update({
            "T": schema["token_ids"][0][0], "D": schema["vectors"][0][1],
            "fields": _schema_to_json(schema), "complete": True,
            "checkpoints": [dataclasses.asdict(c) for c in checkpoints]})
        _write_json(self.directory / MANIFEST, self.manifest)
        return checkpoints


def _discover_checkpoints(directory: Path) -> list[CheckpointInfo]:
    found = []
    for meta_file in sorted(Path(directory).glob(f"ckpt_*/{CHECKPOINT_META}")):
        meta = _read_json(meta_file)
        found.append(CheckpointInfo(int(meta["step"]), float(meta["learning_rate"])))
    return found


# ----------------------------------------------------------------------------- reader

class GradientStore:
    """Read-only view of a finalized store; yields one shard at a time.

    `allow_incomplete=True` opens a store that has not been finalized (e.g. to
    inspect progress); its checkpoints are then discovered from disk.
    """

    def __init__(self, directory: str | os.PathLike, *, allow_incomplete: bool = False):
        self.directory = Path(directory)
        manifest_file = self.directory / MANIFEST
        if not manifest_file.exists():
            raise FileNotFoundError(f"no gradient store at {self.directory} ({MANIFEST} missing)")
        self.manifest = _read_json(manifest_file)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_file}: unsupported format_version "
                             f"{self.manifest.get('format_version')} (expected {FORMAT_VERSION})")
        if self.manifest["complete"]:
            self.checkpoints = [CheckpointInfo(int(c["step"]), float(c["learning_rate"]))
                                for c in self.manifest["checkpoints"]]
        elif allow_incomplete:
            self.checkpoints = _discover_checkpoints(self.directory)
        else:
            raise ValueError(f"store {self.directory} is not finalized; call "
                             "GradientStoreWriter.finalize() or pass allow_incomplete=True")
        self.num_examples = int(self.manifest["num_examples"])
        self.shard_size = int(self.manifest["shard_size"])
        self.num_shards = int(self.manifest["num_shards"])
        self.dtype = self.manifest["dtype"]
        fields = self.manifest.get("fields")
        self.fields: Schema | None = _schema_from_json(fields) if fields else None

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """Dataset positions `[start, stop)` held by shard `shard_index`."""
        return shard_range(shard_index, self.shard_size, self.num_examples)

    def _check_step(self, step: int) -> None:
        if step not in {c.step for c in self.checkpoints}:
            raise ValueError(f"step {step} not in store; available: "
                             f"{[c.step for c in self.checkpoints]}")

    def iter_shards(self, step: int, fields: Sequence[str] | None = None, verify: bool = True,
                    shard_indices: Sequence[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield `{field: array [records, ...]}` for each shard, in dataset order.

        Only one shard is held in memory at a time; `fields` selects a subset of
        arrays. With `verify`, each shard's sha256 is checked before it is decoded;
        without, only its sidecar, size and schema. The file is read once; the arrays
        are (writable) views of that buffer, with no second copy.
        """
        self._check_step(step)
        indices = range(self.num_shards) if shard_indices is None else shard_indices
        for i in indices:
            if not 0 <= i < self.num_shards:
                raise ValueError(f"shard index {i} out of range [0, {self.num_shards})")
            npz = shard_path(self.directory, step, i)
            sidecar, data = _verify_shard(self.directory, step, i, self.shard_size,
                                          self.num_examples, read=True, check=verify,
                                          expected_fields=self.fields)
            schema = sidecar["fields"]
            _check_core_dtypes(schema, self.dtype, npz)
            names = list(schema) if fields is None else list(fields)
            unknown = sorted(set(names) - set(schema))
            if unknown:
                raise ValueError(f"unknown fields {unknown}; store has {sorted(schema)}")
            try:
                shard = {n: _from_disk(a, schema[n][1]) for n, a in _decode_npz(data, names).items()}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                raise CorruptShardError(npz, f"cannot decode ({e})") from e
            for n, array in shard.items():
                shape, dtype = (sidecar["num_records"], *schema[n][0]), _parse_dtype(schema[n][1])
                if array.shape != shape or array.dtype != dtype:
                    raise CorruptShardError(npz, f"field {n!r} is {array.dtype}{list(array.shape)}, "
                                                 f"sidecar says {dtype}{list(shape)}")
            yield shard

    def load(self, step: int, fields: Sequence[str] | None = None,
             verify: bool = True) -> dict[str, np.ndarray]:
        """All records of one checkpoint concatenated in dataset order (small sets only)."""
        shards = list(self.iter_shards(step, fields=fields, verify=verify))
        return {n: np.concatenate([s[n] for s in shards]) for n in shards[0]}

    def verify(self) -> int:
        """Check sidecars and sha256 of every shard of every checkpoint.

        Returns the number of shards checked; raises `CorruptShardError` naming the
        first missing, truncated or mismatching file.
        """
        for ckpt in self.checkpoints:
            for i in range(self.num_shards):
                sidecar, _ = _verify_shard(self.directory, ckpt.step, i, self.shard_size,
                                           self.num_examples, expected_fields=self.fields)
                _check_core_dtypes(sidecar["fields"], self.dtype,
                                   shard_path(self.directory, ckpt.step, i))
        return len(self.checkpoints) * self.num_shards
