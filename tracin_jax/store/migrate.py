"""Convert a format-1 gradient store (one ``.npz`` per shard) to format 2 in place.

    python -m tracin_jax.store.migrate DIR [DIR ...]

Each v1 shard ``ckpt_*/shard_{i:05d}.npz`` is checked against its v1 sidecar's
sha256, read with numpy's own reader (``np.load(npz, allow_pickle=False)``) and
rewritten as the v2 shard directory ``shard_{i:05d}/{field}.npy`` plus its v2 sidecar,
with the same atomic per-shard commit as `GradientStoreWriter.write_shard` (so the
files are byte-identical to what the v2 writer makes from the same records). The
manifest is switched to format 2 last: until then readers and writers refuse the
store, and re-running after a crash finishes the job.

Per shard the steps are: rename the v1 sidecar to ``shard_{i:05d}.v1.json`` (the v2
sidecar takes its name), write the v2 shard, delete the ``.npz``, delete the
``.v1.json``. Each state in between is recognised on a re-run. A v1 shard that never
completed (an ``.npz`` without sidecar) is deleted: `tracin-jax grads` rewrites it
after the migration, as it would have before. A v1 shard whose bytes do not match its
sidecar stops the migration with `CorruptShardError` naming it (nothing is lost: the
store stays format 1; restore the file or re-extract the store).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from tracin_jax.errors import TracinError
from tracin_jax.files import fsync_dir, read_json, sha256_file
from tracin_jax.store.gradient_store import (
    CHECKPOINT_META,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    CorruptShardError,
    StoreFormatError,
    _disk_dtype,
    _from_disk,
    _remove,
    _schema_from_json,
    _stale_temporaries,
    _write_json,
    commit_shard,
    shard_range,
)

log = logging.getLogger(__name__)

_V1_HINT = ("the store is unchanged and still format 1; restore the file from a copy, or "
            "delete the store and re-extract it with `tracin-jax grads`")


def _migrate_shard(ckpt: Path, index: int, start: int, stop: int) -> str:
    """Convert one shard; returns "converted", "already" (v2) or "missing" (never completed)."""
    npz = ckpt / f"shard_{index:05d}.npz"
    side = ckpt / f"shard_{index:05d}.json"
    old = ckpt / f"shard_{index:05d}.v1.json"
    if not old.exists():
        if not side.exists():
            if npz.exists():
                log.warning("%s never completed (no sidecar); deleting it: `tracin-jax grads` "
                            "will rewrite the shard", npz)
                npz.unlink()
            return "missing"
        if "sha256" not in read_json(side, "shard sidecar"):  # a v2 sidecar: done before
            npz.unlink(missing_ok=True)
            return "already"
        os.replace(side, old)
        fsync_dir(ckpt)
    if not npz.exists():  # crashed between deleting the npz and the v1 sidecar
        if not side.exists():
            raise CorruptShardError(npz, "is gone but its v2 shard was never committed", _V1_HINT)
        old.unlink()
        return "converted"
    try:
        v1 = read_json(old, "v1 shard sidecar")
        schema = _schema_from_json(v1["fields"])
        expected_sha, expected_bytes = str(v1["sha256"]), int(v1["num_bytes"])
        covers = (v1["first_index"], v1["num_records"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptShardError(old, f"unreadable v1 sidecar ({e})", _V1_HINT) from e
    if covers != (start, stop - start):
        raise CorruptShardError(old, f"covers {covers}, expected {(start, stop - start)}", _V1_HINT)
    size = npz.stat().st_size
    if size != expected_bytes:
        raise CorruptShardError(npz, f"file has {size} bytes, sidecar says {expected_bytes}", _V1_HINT)
    actual = sha256_file(npz)
    if actual != expected_sha:
        raise CorruptShardError(npz, f"sha256 {actual} does not match sidecar {expected_sha}", _V1_HINT)
    arrays = {}
    try:
        with np.load(npz, allow_pickle=False) as archive:
            if sorted(archive.files) != sorted(schema):
                raise ValueError(f"members {sorted(archive.files)} != sidecar fields {sorted(schema)}")
            for name, (shape, logical) in schema.items():
                array = archive[name]
                if array.dtype != _disk_dtype(logical) or array.shape != (stop - start, *shape):
                    raise ValueError(f"member {name!r} is {array.dtype}{list(array.shape)}, sidecar "
                                     f"says {logical}{[stop - start, *shape]}")
                arrays[name] = _from_disk(array, logical)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise CorruptShardError(npz, f"cannot read ({e})", _V1_HINT) from e
    commit_shard(ckpt, index, start, arrays)
    npz.unlink()
    fsync_dir(ckpt)
    old.unlink()
    return "converted"


def migrate_v1(directory: str | os.PathLike) -> dict:
    """Convert the format-1 store at `directory` to format 2 in place (module docstring).

    Returns a summary: shards converted, already converted (by an interrupted earlier
    run), and missing (never completed in v1). A store already in format 2 is left
    alone; any other format raises `StoreFormatError`.
    """
    directory = Path(directory)
    manifest_file = directory / MANIFEST
    manifest = read_json(manifest_file, "store manifest")
    version = manifest.get("format_version")
    summary = {"directory": str(directory), "converted": 0, "already": 0, "missing": 0}
    if manifest.get("format") == FORMAT_NAME and version == FORMAT_VERSION:
        return {**summary, "status": f"already format {FORMAT_VERSION}"}
    if version != 1:
        raise StoreFormatError(f"{manifest_file}: format_version {version!r} is not 1; "
                               "this tool converts format-1 (npz) stores only")
    num_examples, shard_size = int(manifest["num_examples"]), int(manifest["shard_size"])
    num_shards = int(manifest["num_shards"])
    for ckpt in sorted(p for p in directory.glob("ckpt_*") if p.is_dir()):
        meta_file = ckpt / CHECKPOINT_META
        if meta_file.exists():
            meta = read_json(meta_file, "checkpoint metadata")
            if "params_fingerprint" not in meta:
                _write_json(meta_file, {**meta, "params_fingerprint": None})
        for i in range(num_shards):
            state = _migrate_shard(ckpt, i, *shard_range(i, shard_size, num_examples))
            summary[state] += 1
        for stale in _stale_temporaries(ckpt, range(num_shards)):
            _remove(stale)
    checkpoints = [{**c, "params_fingerprint": c.get("params_fingerprint")}
                   for c in manifest.get("checkpoints") or []]
    _write_json(manifest_file, {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                "checkpoints": checkpoints})
    return {**summary, "status": f"converted to format {FORMAT_VERSION}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracin_jax.store.migrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", help="gradient store directories (format 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for directory in args.directories:
        try:
            print(json.dumps(migrate_v1(directory)), flush=True)
        except TracinError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
