"""Drives gradient extraction for a dataset split over checkpoints into a gradient store.

Memory stays bounded by one store shard whatever the dataset size; a killed run
restarts and skips complete shards (the store checks them by checksum). On many
hosts each process uses a mesh over its own devices and writes the shards it owns
(``i % process_count == process_index``); no gradient data crosses hosts. Processes
meet at three barriers: after process 0 creates the manifest (so no other process
sees checkpoint folders without one), before process 0 verifies and finalizes the
store, and after that (so every process returns the finalized store).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import traverse_util

from tracin_jax import mesh as mesh_lib
from tracin_jax.data.batching import batch_padded_length, right_padded_lengths
from tracin_jax.errors import UsageError
from tracin_jax.files import tree_fingerprint, tree_sha256
from tracin_jax.grads.embedding_grads import make_gradient_fn
from tracin_jax.models import check_token_ids
from tracin_jax.store import GradientStore, GradientStoreWriter, StoreMismatchError
from tracin_jax.store.gradient_store import discover_checkpoints

log = logging.getLogger(__name__)

_INPUT_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def batch_rows(encoded, rows: np.ndarray, batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """Rows of an ``EncodedDataset`` as a batch padded to ``batch_size`` by repeating the last row.

    Returns the batch and the number of real rows (the padding is dropped by the caller).
    """
    n = len(rows)
    if n == 0 or n > batch_size:
        raise ValueError(f"need 1..{batch_size} rows, got {n}")
    padded = np.concatenate([rows, np.full(batch_size - n, rows[-1])]) if n < batch_size else rows
    return {f: np.asarray(getattr(encoded, f))[padded] for f in _INPUT_FIELDS}, n


def trim_multiple(pad_to_multiple: int | None, max_length: int) -> int:
    """Column multiple of trimmed batches: ``None`` = automatic (``max_length / 4`` rounded up to
    a multiple of 8, at least 8: at most 4 batch widths, so at most 4 compiled programs), 0 =
    no trimming, else the given multiple."""
    if pad_to_multiple is None:
        return max(8, -(-int(max_length) // 32) * 8)
    if int(pad_to_multiple) < 0:
        raise UsageError(f"grads.pad_to_multiple={pad_to_multiple} is negative",
                         "pass 0 (no trimming), a positive multiple, or None (automatic)")
    return int(pad_to_multiple)


# Fields with a position / token-slot axis (axis 1), padded back to the store's width.
_SLOT_FIELDS = {"token_ids": -1, "vectors": 0, "position_norms": 0, "position_grads": 0}


def compute_records(grad_fn, params, encoded, rows: np.ndarray, batch_size: int, mesh,
                    vectors_dtype: str = "float32", *, k: int | None = None,
                    pad_to_multiple: int = 0) -> dict[str, np.ndarray]:
    """Store records for dataset positions ``rows`` (one shard), in order.

    ``pad_to_multiple = m > 0``: the shard's rows are computed longest first and each batch is
    cut to its longest text rounded up to a multiple of m (``data.batching``: only trailing
    all-padding columns go, and every model masks padding, so the records equal the untrimmed
    ones up to float rounding); records are returned in ``rows`` order with their position and
    slot axes padded back to the full width (``max_length``, or ``min(k, max_length)`` slots).
    """
    rows = np.asarray(rows)
    full = int(np.shape(encoded.input_ids)[1])
    order = np.arange(len(rows))
    lengths = None
    if pad_to_multiple:
        lengths = right_padded_lengths(np.asarray(encoded.attention_mask)[rows])
        if lengths is None:  # not right-padded: full-width batches (same records, no saving)
            log.debug("rows not right-padded: gradient batches are not trimmed")
            pad_to_multiple = 0
        else:
            order = np.argsort(-lengths, kind="stable")
    widths = {"position_norms": full, "position_grads": full,
              "token_ids": full if k is None else min(k, full), "vectors": full if k is None else min(k, full)}
    parts: list[dict[str, np.ndarray]] = []
    padded_total = 0
    for start in range(0, len(rows), batch_size):
        chosen = order[start:start + batch_size]
        batch, n = batch_rows(encoded, rows[chosen], batch_size)
        if pad_to_multiple:
            width = batch_padded_length(int(lengths[chosen].max()), int(pad_to_multiple), full)
            batch = {f: (v[:, :width] if v.ndim == 2 and f != "labels" else v) for f, v in batch.items()}
        padded_total += batch_size - n
        out = grad_fn(params, mesh_lib.shard_batch(batch, mesh))
        part = {}
        for key, value in out.items():
            value = mesh_lib.local_rows(value)[:n]
            if key in _SLOT_FIELDS and value.shape[1] < widths[key]:
                pad = [(0, 0)] * value.ndim
                pad[1] = (0, widths[key] - value.shape[1])
                value = np.pad(value, pad, constant_values=_SLOT_FIELDS[key])
            part[key] = value
        parts.append(part)
    if padded_total:
        log.debug("padded %d rows in a ragged final batch (dropped from the output)", padded_total)
    records = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if pad_to_multiple:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        records = {key: value[inverse] for key, value in records.items()}
    if vectors_dtype in ("bfloat16", "float16"):
        import ml_dtypes
        records["vectors"] = records["vectors"].astype(
            ml_dtypes.bfloat16 if vectors_dtype == "bfloat16" else np.float16)
    records["example_id"] = np.asarray(encoded.ids)[rows].astype(np.int64)
    records["label"] = np.asarray(encoded.labels)[rows].astype(np.int32)
    return records


def extract_gradients(model, checkpoints, restore_params, encoded, out_dir: str | Path, *,
                      fingerprint: str, split: str, model_info: dict, vocab_size: int,
                      k: int | None = 10, topk_by: str = "position", dtype: str = "float32",
                      shard_size: int = 1024, batch_size: int = 32, mode: str = "vmap",
                      progress: bool = True, param_paths=None,
                      micro_batch: int | None = None, overwrite: bool = False,
                      pad_to_multiple: int | None = None) -> GradientStore:
    """Writes (or completes) the gradient store of ``encoded`` for every checkpoint.

    Args:
      checkpoints: ``[(step, learning_rate), ...]`` or ``[(step, learning_rate,
        params_fingerprint), ...]``; the fingerprint (``files.tree_fingerprint`` of the
        checkpoint's parameters, as ``CheckpointStore.fingerprint`` records it) is computed
        from the restored parameters when not given. The store records it per checkpoint,
        and scoring refuses stores of different parameters (``methods.shared_checkpoints``).
      restore_params: ``step -> params`` (host arrays).
      fingerprint / split / model_info: identify the store; reopening with other
        values is an error rather than a silent mix.
      param_paths: optional parameter paths (``param_grads.group_paths``): their
        per-example gradients, from the same forward/backward, are stored as the
        extra field ``param_grads [P]`` (float32, ``param_grads`` layout) and the
        paths and their sizes are recorded in the manifest's ``model_info["param_paths"]``
        and ``["param_sizes"]`` (methods read the columns they need). Disk
        grows by ``4·P`` bytes per example and checkpoint.
      micro_batch: rows per device per step (the chunk bounding per-example
        gradient memory); None = automatic (see ``embedding_grads``).
      pad_to_multiple: trimmed batches (``compute_records``): None = automatic
        (``trim_multiple``), 0 = every batch at ``max_length`` columns.
      overwrite: delete a store already in ``out_dir`` first. Without it, a store made with
        other arguments (dataset, model, k, dtype, shard size, or other checkpoints than
        requested) is a ``StoreMismatchError``; one made with the same arguments resumes.
    """
    check_token_ids(np.asarray(encoded.input_ids), vocab_size)
    checkpoints = [(int(c[0]), float(c[1]), c[2] if len(c) > 2 and c[2] else None) for c in checkpoints]
    if not checkpoints:
        raise UsageError("no checkpoints to extract gradients from", "train first, or pass checkpoints")
    checkpoints = [(step, lr, fp or tree_fingerprint(tree_sha256(restore_params(step))))
                   for step, lr, fp in checkpoints]
    mesh = mesh_lib.make_local_mesh()
    batch_size = mesh_lib.pad_to_multiple(batch_size, mesh.size)
    info = dict(model_info, topk_by=topk_by)
    if param_paths is not None:
        param_paths = [tuple(p) for p in param_paths]
        flat = traverse_util.flatten_dict(restore_params(int(checkpoints[0][0])))
        info["param_paths"] = ["/".join(p) for p in param_paths]
        info["param_sizes"] = [int(np.size(flat[p])) for p in param_paths]  # column ranges of param_grads

    def open_writer():
        return GradientStoreWriter(out_dir, num_examples=len(encoded), shard_size=shard_size, k=k,
                                   dtype=dtype, model_info=info,
                                   fingerprint=fingerprint, split=split,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())

    # Process 0 creates (or checks) the manifest before any process adds checkpoint folders.
    # (try/finally: if it fails, the others pass the barrier and fail on their own.)
    writer = None
    try:
        if jax.process_index() == 0:
            if overwrite and Path(out_dir).exists():
                log.warning("%s: replacing the existing store (--overwrite)", out_dir)
                shutil.rmtree(out_dir)
            writer = open_writer()
            _check_requested(out_dir, writer, [step for step, _, _ in checkpoints])
    finally:
        _barrier("tracin_jax.grads.extract.open")
    writer = writer or open_writer()
    multiple = trim_multiple(pad_to_multiple, int(np.shape(encoded.input_ids)[1]))
    grad_fn = make_gradient_fn(model, mesh, k=k, topk_by=topk_by, mode=mode,
                               param_paths=param_paths, micro_batch=micro_batch)
    todo = {}
    for step, lr, params_fingerprint in checkpoints:
        writer.begin_checkpoint(step, lr, params_fingerprint=params_fingerprint)
        todo[step] = writer.shards_to_write(step)
    total = sum(len(v) for v in todo.values())
    skipped = len(checkpoints) * -(-writer.num_examples // shard_size) - total
    if skipped:
        log.info("%s: %d shards already complete, %d to write", out_dir, skipped, total)
    bar = None
    if progress and total:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(range(*writer.shard_range(i))) for v in todo.values() for i in v),
                   desc=f"grads[{split}] {writer.num_examples} examples x {len(todo)} checkpoints",
                   unit="record", dynamic_ncols=True)
    t0, done = time.time(), 0
    for step, shards in todo.items():
        if not shards:
            continue
        params = mesh_lib.replicate(restore_params(step), mesh)
        for shard in shards:
            start, stop = writer.shard_range(shard)
            records = compute_records(grad_fn, params, encoded, np.arange(start, stop), batch_size,
                                      mesh, dtype, k=k, pad_to_multiple=multiple)
            writer.write_shard(step, shard, records)
            done += stop - start
            if bar is not None:
                bar.update(stop - start)
                bar.set_postfix(ex_per_s=f"{done / max(time.time() - t0, 1e-9):.0f}")
    if bar is not None:
        bar.close()
    _barrier("tracin_jax.grads.extract.written")
    try:
        if jax.process_index() == 0:
            writer.finalize()
    finally:  # if finalize fails, the others find the store unfinalized and raise too
        _barrier("tracin_jax.grads.extract.finalized")
    return GradientStore(out_dir)


def _check_requested(out_dir, writer: GradientStoreWriter, steps) -> None:
    """A store already holding checkpoints that were not requested was made with other
    arguments: reusing it would silently return those too."""
    existing = sorted(c.step for c in discover_checkpoints(Path(out_dir)))
    extra = sorted(set(existing) - set(steps))
    if extra:
        raise StoreMismatchError(f"{out_dir} already holds a store of checkpoints {existing}, but "
                                 f"{sorted(steps)} were requested",
                                 "use another --out, request the same checkpoints, or pass --overwrite")


def _barrier(name: str) -> None:
    """Waits for every process of a multi-process job (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def parse_steps(text: str | None, available: Sequence[int]) -> list[int]:
    """``"3,5,8"`` → [3, 5, 8] (each must exist); ``None``/``"all"`` → every checkpoint."""
    available = sorted(int(s) for s in available)
    if text in (None, "", "all"):
        return available
    try:
        steps = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"checkpoints {text!r} is not a comma-separated list of steps",
                         f"e.g. --checkpoints {','.join(map(str, available[:2]))}") from None
    missing = [s for s in steps if s not in available]
    if missing:
        raise UsageError(f"checkpoints {missing} not found", f"available steps: {available}")
    return steps
