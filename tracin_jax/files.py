"""The one way results reach the disk: atomic writes, checksums, JSON reads that name the file.

``atomic_write(path, write_fn)`` writes to a temporary file beside ``path`` (a unique
name, so processes on several hosts may write the same small file at once), flushes
and fsyncs it, renames it onto ``path`` (``os.replace``) and fsyncs the directory. A
reader never sees half a file: it sees the old content, or the new one. Everything the
project writes for a user (stores, manifests, results, reports) goes through here.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tracin_jax.errors import DataError

_HASH_CHUNK = 1 << 22


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Any], Any]) -> None:
    """Writes ``path`` through ``write_fn(binary_file)``, atomically (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False, allow_nan: bool = True) -> None:
    """JSON of ``obj`` (numpy scalars and paths converted), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=_json_default)
    atomic_write_text(path, text + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` of ``arrays`` (no pickle), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """One ``.npy`` file (``np.load(path, mmap_mode="r")`` reads it), atomically."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parsed JSON of ``path``; a missing, unreadable or truncated file raises ``DataError``
    naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is not valid JSON ({e})",
                        "it is truncated or was damaged; delete it and re-create it") from None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def array_sha256(array) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    digest.update(memoryview(a).cast("B") if a.size else b"")
    return digest.hexdigest()


def tree_sha256(tree) -> dict[str, str]:
    """``{"a/b/c": array_sha256(leaf)}`` for every array leaf of a nested dict (parameters)."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict) or hasattr(node, "items"):
            for key in sorted(node, key=str):
                walk(node[key], prefix + (str(key),))
        else:
            out["/".join(prefix)] = array_sha256(node)

    walk(tree, ())
    return out


def tree_fingerprint(digests: dict[str, str]) -> str:
    """One sha256 over the per-array digests of :func:`tree_sha256` (path order): the
    identity of a set of parameters, recorded with checkpoints and gradient stores."""
    digest = hashlib.sha256()
    for path in sorted(digests):
        digest.update(f"{path}={digests[path]}\n".encode())
    return digest.hexdigest()
