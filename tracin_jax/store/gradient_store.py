"""On-disk gradient store: sharded, resumable, checksummed per-example records.

For every checkpoint c (learning rate η_c) the gradient engine produces one
fixed-size record per example. The store keeps them on disk so that a 400k-example
train set over several checkpoints never has to fit in memory: writers and readers
hold at most one shard at a time, and readers map the files rather than copy them.

Format version 2 (plain ``.npy`` files; nothing here needs this package to read)::

    DIR/manifest.json
        {"format": "tracin_jax.gradient_store", "format_version": 2,
         identity fields "fingerprint", "model_info", "k", "dtype", "shard_size",
         "num_examples", "split";
         "num_shards", "created" (the only timestamp), "T", "D",
         "fields": {name: {"shape": per-record shape, "dtype": logical dtype}},
         "checkpoints": [{"step", "learning_rate", "params_fingerprint"}, ...],
         "complete": true once `GradientStoreWriter.finalize` verified every shard}
        (T, D, fields and checkpoints are null/empty until the store is complete.)
    DIR/ckpt_{step:08d}/checkpoint.json
        {"step", "learning_rate", "params_fingerprint" (str or null)}
    DIR/ckpt_{step:08d}/shard_{i:05d}/{field}.npy
        one plain .npy per field (np.save, allow_pickle=False, C order): the records
        at dataset positions [i*S, min((i+1)*S, N)), leading axis = records
    DIR/ckpt_{step:08d}/shard_{i:05d}.json
        sidecar, the shard's commit marker: {"shard_index", "first_index",
        "num_records", "fields": {name: {"shape": per-record shape, "dtype": logical
        dtype, "num_bytes": file size, "sha256": file digest}}}

A shard exists only if its sidecar does and every file matches it (size, sha256).

Record fields (shapes per record)::

    example_id int64 []      label int32 []        token_ids int32 [T] (-1 padded)
    vectors    store dtype [T, D] (float32, bfloat16 or float16)
    features   float32 [H]   p_minus_y float32 [C] loss float32 []   prediction int32 []

plus any extra fixed-size numeric fields (e.g. `position_norms [L]`, `param_grads [P]`).
Float fields hold only finite numbers (the writer refuses NaN/inf).

dtypes: npy has no bfloat16 descriptor, so a bfloat16 field is stored as its uint16
bit pattern (descr ``<u2``) and the sidecar/manifest record the logical dtype
"bfloat16"; this package's readers return ``ml_dtypes.bfloat16`` views. Reading any
field with numpy alone::

    a = np.load("DIR/ckpt_00000100/shard_00000/vectors.npy", mmap_mode="r")
    if sidecar["fields"]["vectors"]["dtype"] == "bfloat16":      # a.dtype is uint16
        a = (a.astype(np.uint32) << 16).view(np.float32)           # exact float32 values
    # (or a.view(ml_dtypes.bfloat16)); float16/float32/int fields are ordinary npy.

Writing a shard (`GradientStoreWriter.write_shard`): every field's .npy goes into a
temporary directory beside it (``.shard_{i:05d}.tmp.<uuid>``), the files and the
directory are fsynced, the old sidecar (if any) is removed so a crash mid-rewrite
leaves the shard incomplete, the old shard directory (if any) is removed, the
temporary one is renamed onto ``shard_{i:05d}``, the parent is fsynced, and last the
sidecar is written atomically (`tracin_jax.files.atomic_write_json`). Stale temporary
directories are removed by the owning process in `shards_to_write`.

Bytes are deterministic: np.save writes no timestamps, the sidecar is sorted JSON,
so the same records always give the same files and digests and an interrupted and
resumed extraction is byte-identical to an uninterrupted one. Processes write
disjoint shards (process p of n owns shards i with i % n == p).

Reading (`GradientStore.iter_shards`, `load`, `verify`) checks the sidecar (exists,
covers the right positions, schema equals the store's), each requested field file's
size and, with ``verify``, its sha256 (hashed through a read-only memory map: no
copy, and the pages stay in the page cache), then returns
``np.load(path, mmap_mode="r")`` arrays: read-only memmaps, dtype and shape checked
against the sidecar, never unpickled. Only the requested fields are read or hashed.

Format version 1 (one uncompressed .npz per shard) is refused with `StoreFormatError`;
``python -m tracin_jax.store.migrate DIR`` converts such a store in place.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import mmap
import os
import re
import threading
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from tracin_jax.errors import IntegrityError, MismatchError, NonFiniteError
from tracin_jax.files import atomic_write_json, fsync_dir, read_json, sha256_file

log = logging.getLogger(__name__)

FORMAT_NAME = "tracin_jax.gradient_store"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
CHECKPOINT_META = "checkpoint.json"
STORE_DTYPES = ("float32", "bfloat16", "float16")
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
_MAX_REPORTED_IDS = 10
_REWRITE_HINT = "re-run the same `tracin-jax grads` command: it rewrites corrupt shards"

BF16 = np.dtype(ml_dtypes.bfloat16)


class StoreMismatchError(MismatchError):
    """An existing store was created for a different dataset, model or layout."""


class StoreFormatError(MismatchError):
    """A store written in another on-disk format (e.g. format 1, npz shards)."""


class CorruptShardError(IntegrityError):
    """A shard file (or its sidecar) is missing, truncated or fails its checksum."""

    def __init__(self, path: Path | str, reason: str, hint: str | None = _REWRITE_HINT):
        super().__init__(f"corrupt shard file {path}: {reason}", hint)
        self.path = Path(path)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    learning_rate: float
    params_fingerprint: str | None = None


# ----------------------------------------------------------------------------- paths

def checkpoint_dir(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:08d}"


def shard_dir(directory: Path, step: int, shard_index: int) -> Path:
    return checkpoint_dir(directory, step) / f"shard_{shard_index:05d}"


def field_path(directory: Path, step: int, shard_index: int, name: str) -> Path:
    return shard_dir(directory, step, shard_index) / f"{name}.npy"


def sidecar_path(directory: Path, step: int, shard_index: int) -> Path:
    return checkpoint_dir(directory, step) / f"shard_{shard_index:05d}.json"


def shard_range(shard_index: int, shard_size: int, num_examples: int) -> tuple[int, int]:
    """Dataset positions `[start, stop)` covered by shard `shard_index`."""
    start = shard_index * shard_size
    return start, min(start + shard_size, num_examples)


def _write_json(path: Path, obj: Any) -> None:
    """Sorted, indented JSON, atomically (deterministic bytes for sidecars)."""
    atomic_write_json(path, obj, indent=2, sort_keys=True, allow_nan=False)


# ----------------------------------------------------------------------------- dtypes

def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == BF16 else np.dtype(dtype).name


def _parse_dtype(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


def _disk_dtype(logical: str) -> np.dtype:
    """The npy descriptor a field of `logical` dtype is stored with (bf16 → <u2)."""
    return np.dtype("<u2") if logical == "bfloat16" else _parse_dtype(logical)


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
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf: refused as non-finite
        return array.astype(target)


def _finite_rows(array: np.ndarray) -> np.ndarray:
    """[n] bool: which records of a float field hold only finite numbers."""
    if array.dtype == BF16:
        array = array.astype(np.float32)  # exact
    return np.isfinite(array.reshape(len(array), -1)).all(axis=1)


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


# ----------------------------------------------------------------------------- shard files

def sha256_mapped(path: Path) -> str:
    """sha256 of a file hashed through a read-only memory map (no copy; the pages stay
    in the page cache for the `np.load(mmap_mode="r")` that follows)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()  # releases the GIL while it hashes


def _stale_temporaries(ckpt: Path, shard_indices: Sequence[int]) -> list[Path]:
    """Temporary shard directories / sidecar files a crashed writer left for these shards."""
    if not ckpt.is_dir():
        return []
    prefixes = tuple(f".shard_{i:05d}." for i in shard_indices)
    return [p for p in ckpt.iterdir()
            if p.name.startswith(prefixes) and ".tmp." in p.name]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def commit_shard(ckpt: Path, shard_index: int, first_index: int,
                 arrays: Mapping[str, np.ndarray]) -> dict:
    """Write one shard (`arrays` in logical dtypes, leading axis = records) into the
    checkpoint directory `ckpt`, atomically as the module docstring describes; returns
    the sidecar. Callers validate `arrays` first."""
    final = ckpt / f"shard_{shard_index:05d}"
    side = ckpt / f"shard_{shard_index:05d}.json"
    tmp = ckpt / f".shard_{shard_index:05d}.tmp.{uuid.uuid4().hex}"
    num_records = len(next(iter(arrays.values())))
    fields = {}
    tmp.mkdir()
    try:
        for name in sorted(arrays):
            array = arrays[name]
            path = tmp / f"{name}.npy"
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(_to_disk(array)), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            fields[name] = {"shape": list(array.shape[1:]), "dtype": _dtype_name(array.dtype),
                            "num_bytes": path.stat().st_size, "sha256": sha256_file(path)}
        fsync_dir(tmp)
        side.unlink(missing_ok=True)  # from here on the shard reads as incomplete
        if final.exists() or final.is_symlink():
            _remove(final)
        os.rename(tmp, final)
        fsync_dir(ckpt)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    sidecar = {"shard_index": int(shard_index), "first_index": int(first_index),
               "num_records": int(num_records), "fields": fields}
    _write_json(side, sidecar)
    return sidecar


def _read_sidecar(directory: Path, step: int, shard_index: int, shard_size: int,
                  num_examples: int, expected_fields: Schema | None) -> tuple[dict, Schema]:
    """The shard's sidecar (checked: present, well formed, right positions and schema)."""
    side = sidecar_path(directory, step, shard_index)
    if not side.exists():
        raise CorruptShardError(side, "sidecar is missing (shard never completed)")
    try:
        sidecar = read_json(side, "shard sidecar")
        entries = sidecar["fields"]
        schema = _schema_from_json(entries)
        for name, entry in entries.items():
            if not _FIELD_NAME.match(name):
                raise ValueError(f"bad field name {name!r}")
            int(entry["num_bytes"]), str(entry["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptShardError(side, f"unreadable sidecar ({e})") from e
    start, stop = shard_range(shard_index, shard_size, num_examples)
    got = (sidecar.get("shard_index"), sidecar.get("first_index"), sidecar.get("num_records"))
    if got != (shard_index, start, stop - start):
        raise CorruptShardError(side, f"sidecar covers shard_index={got[0]}, first_index={got[1]}, "
                                      f"num_records={got[2]}; expected {shard_index}, {start}, "
                                      f"{stop - start}")
    if expected_fields is not None and schema != expected_fields:
        raise CorruptShardError(side, f"fields {schema} differ from the store's {expected_fields}")
    return sidecar, schema


def _check_field(path: Path, entry: Mapping[str, Any], verify: bool) -> None:
    """A field file exists, has the sidecar's size and (with `verify`) its sha256."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptShardError(path, "file is missing") from None
    expected = int(entry["num_bytes"])
    if size != expected:
        raise CorruptShardError(path, f"file has {size} bytes, sidecar says {expected} "
                                      "(truncated or overwritten)")
    if verify:
        actual = sha256_mapped(path)
        if actual != entry["sha256"]:
            raise CorruptShardError(path, f"sha256 {actual} does not match sidecar {entry['sha256']}")


# np.load parses the .npy header with ast.literal_eval, which CPython 3.11 does not make safe
# across threads ("AST constructor recursion depth mismatch"); retrieval reads shards in
# several threads, so opening a field (header + memory map, no data read) is serialised.
_NPY_OPEN_LOCK = threading.Lock()


def _open_field(path: Path, num_records: int, shape: tuple[int, ...], logical: str) -> np.ndarray:
    """Read-only memmap of a checked field file, dtype and shape as the sidecar says."""
    try:
        with _NPY_OPEN_LOCK:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorruptShardError(path, f"cannot read as .npy ({e})") from e
    want_dtype, want_shape = _disk_dtype(logical), (num_records, *shape)
    if not isinstance(array, np.ndarray) or array.dtype != want_dtype or array.shape != want_shape:
        raise CorruptShardError(path, f"holds {getattr(array, 'dtype', type(array).__name__)}"
                                      f"{list(getattr(array, 'shape', ()))}, sidecar says "
                                      f"{logical}{list(want_shape)}")
    if not array.flags.c_contiguous:
        raise CorruptShardError(path, "is not in C order")
    return _from_disk(array, logical)


def _check_shard(directory: Path, step: int, shard_index: int, shard_size: int,
                 num_examples: int, *, names: Sequence[str] | None = None, verify: bool = True,
                 expected_fields: Schema | None = None, store_dtype: str | None = None,
                 open_arrays: bool = False) -> tuple[dict, Schema, dict[str, np.ndarray]]:
    """Check one shard against its sidecar; return (sidecar, schema, arrays if `open_arrays`).

    Only the fields in `names` (default: all) are size-checked, hashed (with
    `verify`) and opened. Raises `CorruptShardError` naming the file; `ValueError`
    for field names the shard does not have.
    """
    sidecar, schema = _read_sidecar(directory, step, shard_index, shard_size, num_examples,
                                    expected_fields)
    if store_dtype is not None:
        _check_core_dtypes(schema, store_dtype, sidecar_path(directory, step, shard_index))
    names = list(schema) if names is None else list(names)
    unknown = sorted(set(names) - set(schema))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; store has {sorted(schema)}")
    arrays = {}
    for name in names:
        path = field_path(directory, step, shard_index, name)
        _check_field(path, sidecar["fields"][name], verify)
        if open_arrays:
            arrays[name] = _open_field(path, sidecar["num_records"], *schema[name])
    return sidecar, schema, arrays


def check_format(manifest: Mapping[str, Any], directory: Path) -> None:
    """Raise `StoreFormatError` unless `manifest` describes a format-2 store."""
    version = manifest.get("format_version")
    if version == 1:
        raise StoreFormatError(
            f"store {directory} uses format 1 (npz shards)",
            f"convert it with `python -m tracin_jax.store.migrate {directory}` or re-extract it")
    if manifest.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{Path(directory) / MANIFEST}: format {manifest.get('format')!r} version {version!r} "
            f"is not {FORMAT_NAME!r} version {FORMAT_VERSION}",
            "it was written by another program or another version of tracin_jax")


# ----------------------------------------------------------------------------- writer

class GradientStoreWriter:
    """Writes one store, shard by shard, resumably and across processes.

    Args:
      directory: the store root (created if absent).
      num_examples: N, records per checkpoint (the dataset split's size).
      shard_size: S, records per shard; shard i holds dataset positions [i*S, (i+1)*S).
      k: top-k tokens kept per example (None = all), recorded for readers.
      dtype: storage dtype of `vectors`: "float32", "bfloat16" or "float16".
      model_info: JSON-serialisable model description (config, parameter count...).
      fingerprint: dataset fingerprint (`TextDataset.fingerprint()`).
      split: split name, e.g. "train".
      process_index, process_count: this process owns shards with
        `i % process_count == process_index`.

    Reopening an existing store checks that fingerprint, model_info, k, dtype,
    shard_size, num_examples and split agree with its manifest and raises
    `StoreMismatchError` naming the first field that differs (`StoreFormatError`
    for a store in another on-disk format).

    Typical loop (each process)::

        writer.begin_checkpoint(step, lr, params_fingerprint)
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
            self.manifest = read_json(manifest_file, "store manifest")
            check_format(self.manifest, self.directory)
            for key in _IDENTITY_KEYS:
                if self.manifest.get(key) != identity[key]:
                    raise StoreMismatchError(
                        f"{manifest_file}: {key} is {self.manifest.get(key)!r} in the store "
                        f"but {identity[key]!r} was requested")
        else:
            if any(self.directory.glob("ckpt_*")):
                raise StoreMismatchError(f"{self.directory} holds checkpoints but no {MANIFEST}")
            self.manifest = {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, **identity,
                "num_shards": self.num_shards,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "T": None, "D": None, "fields": None, "checkpoints": [], "complete": False}
            _write_json(manifest_file, self.manifest)
        self._schema: Schema | None = None

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """Dataset positions `[start, stop)` that shard `shard_index` must hold."""
        if not 0 <= shard_index < self.num_shards:
            raise ValueError(f"shard_index {shard_index} out of range [0, {self.num_shards})")
        return shard_range(shard_index, self.shard_size, self.num_examples)

    def begin_checkpoint(self, step: int, learning_rate: float,
                         params_fingerprint: str | None = None) -> None:
        """Create `ckpt_{step}` with its learning rate and parameter fingerprint.

        Idempotent for equal arguments. Reopening a step with another learning rate
        is a `StoreMismatchError`, and so is another `params_fingerprint` than the one
        recorded (a recorded null included: its shards may come from other
        parameters); `params_fingerprint=None` means "not checked" on reopen.
        """
        if int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        if not (math.isfinite(learning_rate) and learning_rate >= 0):
            raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
        if params_fingerprint is not None and not isinstance(params_fingerprint, str):
            raise ValueError(f"params_fingerprint must be a string or None, got {params_fingerprint!r}")
        meta = {"step": int(step), "learning_rate": float(learning_rate),
                "params_fingerprint": params_fingerprint}
        ckpt = checkpoint_dir(self.directory, step)
        ckpt.mkdir(exist_ok=True)
        meta_file = ckpt / CHECKPOINT_META
        if meta_file.exists():
            existing = read_json(meta_file, "checkpoint metadata")
            if params_fingerprint is None:
                meta["params_fingerprint"] = existing.get("params_fingerprint")
            for key in ("learning_rate", "params_fingerprint"):
                if existing.get(key) != meta[key]:
                    raise StoreMismatchError(
                        f"{meta_file}: {key} is {existing.get(key)!r} in the store but "
                        f"{meta[key]!r} was requested (step {step})")
            if existing != meta:
                raise StoreMismatchError(f"{meta_file} holds {existing}, requested {meta}")
            return
        _write_json(meta_file, meta)

    def _require_checkpoint(self, step: int) -> None:
        if not (checkpoint_dir(self.directory, step) / CHECKPOINT_META).exists():
            raise ValueError(f"checkpoint step {step} not begun; call begin_checkpoint first")

    def _own_shards(self) -> range:
        return range(self.process_index, self.num_shards, self.process_count)

    def shards_to_write(self, step: int) -> list[int]:
        """Shards owned by this process that are not yet complete (sidecar + checksums).

        Corrupt or partial shards are logged by file name and will be rewritten;
        temporary files a crashed writer left for this process's shards are removed.
        """
        self._require_checkpoint(step)
        todo = []
        for i in self._own_shards():
            if not (sidecar_path(self.directory, step, i).exists()
                    or shard_dir(self.directory, step, i).exists()):
                todo.append(i)
                continue
            try:
                _check_shard(self.directory, step, i, self.shard_size, self.num_examples)
            except CorruptShardError as e:
                log.warning("%s; it will be rewritten", e.what)
                todo.append(i)
        # Only this process writes these shards, so their temporaries are stale.
        for stale in _stale_temporaries(checkpoint_dir(self.directory, step), self._own_shards()):
            log.info("removing %s (left by an interrupted write)", stale)
            _remove(stale)
        return todo

    def _load_schema(self) -> Schema | None:
        """Schema of any shard already on disk (e.g. written before a restart)."""
        for side in sorted(self.directory.glob("ckpt_*/shard_*.json")):
            try:
                return _schema_from_json(read_json(side)["fields"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
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

    def _check_finite(self, step: int, shard_index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Refuse NaN/inf in any float field (as stored, i.e. after the dtype cast)."""
        for name in sorted(arrays):
            array = arrays[name]
            if not _is_float(array.dtype):
                continue
            ok = _finite_rows(array)
            if ok.all():
                continue
            bad = np.asarray(arrays["example_id"])[~ok]
            shown = ", ".join(str(int(i)) for i in bad[:_MAX_REPORTED_IDS])
            more = f" and {len(bad) - _MAX_REPORTED_IDS} more" if len(bad) > _MAX_REPORTED_IDS else ""
            raise NonFiniteError(
                f"field {name!r} ({_dtype_name(array.dtype)}) holds NaN or inf at checkpoint step "
                f"{step}, shard {shard_index}, for {len(bad)} record(s): example_id {shown}{more}",
                "the model's gradients or outputs are not finite at this checkpoint (diverged "
                "training, or values beyond the store dtype's range); nothing was written")

    def write_shard(self, step: int, shard_index: int, records: Mapping[str, np.ndarray]) -> None:
        """Validate and atomically write one shard (field files first, sidecar last).

        Raises `ValueError` for malformed records and `NonFiniteError` for NaN/inf."""
        self._require_checkpoint(step)
        arrays = self._validate(shard_index, records)
        self._check_finite(step, shard_index, arrays)
        start, _ = self.shard_range(shard_index)
        commit_shard(checkpoint_dir(self.directory, step), shard_index, start, arrays)

    def finalize(self) -> list[CheckpointInfo]:
        """Verify every shard of every checkpoint; mark the store complete in the manifest.

        Run once all processes have finished writing. Raises `CorruptShardError`
        naming the first missing or corrupt file.
        """
        checkpoints = discover_checkpoints(self.directory)
        if not checkpoints:
            raise ValueError(f"{self.directory} has no checkpoints to finalize")
        schema = None
        for ckpt in checkpoints:
            for i in range(self.num_shards):
                _, shard_schema, _ = _check_shard(self.directory, ckpt.step, i, self.shard_size,
                                                  self.num_examples, expected_fields=schema,
                                                  store_dtype=self.dtype)
                schema = schema or shard_schema
        self.manifest.update({
            "T": schema["token_ids"][0][0], "D": schema["vectors"][0][1],
            "fields": _schema_to_json(schema), "complete": True,
            "checkpoints": [dataclasses.asdict(c) for c in checkpoints]})
        _write_json(self.directory / MANIFEST, self.manifest)
        return checkpoints


def _checkpoint_info(meta: Mapping[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(int(meta["step"]), float(meta["learning_rate"]),
                          meta.get("params_fingerprint"))


def discover_checkpoints(directory: Path) -> list[CheckpointInfo]:
    return [_checkpoint_info(read_json(meta_file, "checkpoint metadata"))
            for meta_file in sorted(Path(directory).glob(f"ckpt_*/{CHECKPOINT_META}"))]


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
        self.manifest = read_json(manifest_file, "store manifest")
        check_format(self.manifest, self.directory)
        if self.manifest["complete"]:
            self.checkpoints = [_checkpoint_info(c) for c in self.manifest["checkpoints"]]
        elif allow_incomplete:
            self.checkpoints = discover_checkpoints(self.directory)
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

        Shards are opened lazily, one at a time; `fields` selects a subset of arrays
        (only those files are checked and hashed). With `verify`, each file's sha256
        is checked before it is opened; without, only the sidecar, file sizes, dtypes
        and shapes. Arrays are read-only memory maps of the files (bfloat16 fields as
        `ml_dtypes.bfloat16` views); copy one to modify it.
        """
        self._check_step(step)
        if fields is not None and self.fields is not None:
            unknown = sorted(set(fields) - set(self.fields))
            if unknown:
                raise ValueError(f"unknown fields {unknown}; store has {sorted(self.fields)}")
        indices = range(self.num_shards) if shard_indices is None else shard_indices
        for i in indices:
            if not 0 <= i < self.num_shards:
                raise ValueError(f"shard index {i} out of range [0, {self.num_shards})")
            _, _, arrays = _check_shard(self.directory, step, i, self.shard_size,
                                        self.num_examples, names=fields, verify=verify,
                                        expected_fields=self.fields, store_dtype=self.dtype,
                                        open_arrays=True)
            yield arrays

    def load(self, step: int, fields: Sequence[str] | None = None,
             verify: bool = True) -> dict[str, np.ndarray]:
        """All records of one checkpoint concatenated in dataset order (small sets only;
        writable in-memory arrays)."""
        shards = list(self.iter_shards(step, fields=fields, verify=verify))
        return {n: np.concatenate([s[n] for s in shards]) for n in shards[0]}

    def verify(self) -> int:
        """Check sidecars, sizes and sha256 of every file of every checkpoint.

        Returns the number of shards checked; raises `CorruptShardError` naming the
        first missing, truncated or mismatching file.
        """
        for ckpt in self.checkpoints:
            for i in range(self.num_shards):
                _check_shard(self.directory, ckpt.step, i, self.shard_size, self.num_examples,
                             expected_fields=self.fields, store_dtype=self.dtype)
        return len(self.checkpoints) * self.num_shards
