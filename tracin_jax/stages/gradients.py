"""Stage "run → gradient stores": the examples of a split, their gradient store, the run context.

A run directory (``tracin-jax train --workdir RUN``, or ``tracin-jax import``) holds
``config.json``, the tokenizer and ``checkpoints/``. These functions rebuild the run and
select the examples of a split — ``train``, ``eval`` or ``test`` (the balanced test points
drawn from ``eval`` with ``cfg.test_points``), or a labelled file attached to the run with
``attach_data`` (``tracin-jax grads --data FILE --split NAME``; recorded in
``RUN/splits.json`` so that later stages find the same examples) — and write their
gradient store, or any subset's.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tracin_jax.data import EncodedDataset, TextDataset, encode_dataset, load_file, select_test_points
from tracin_jax.errors import MismatchError, UsageError
from tracin_jax.files import atomic_write_json, read_json, sha256_file
from tracin_jax.grads import extract_gradients, parse_steps
from tracin_jax.grads.param_grads import group_paths
from tracin_jax.methods import RunContext, SplitData
from tracin_jax.store import GradientStore
from tracin_jax.train import CheckpointStore, RunSetup, load_run

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "test")
SPLITS_FILE = "splits.json"  # RUN/splits.json: name -> the labelled file attached as that split


@dataclasses.dataclass(frozen=True)
class SplitExamples:
    name: str
    texts: TextDataset
    encoded: EncodedDataset
    positions: np.ndarray  # [N] int64 rows in the underlying split (train or eval)


def registered_splits(run_dir: str | Path | None) -> dict[str, dict]:
    """The files attached to a run as named splits (``RUN/splits.json``)."""
    path = None if run_dir is None else Path(run_dir) / SPLITS_FILE
    return read_json(path, "split registry") if path is not None and path.exists() else {}


def attach_data(setup: RunSetup, run_dir: str | Path, name: str, path: str | Path, *, text: str = "text",
                text_pair: str | None = None, label: str = "label", columns=None,
                encoding: str = "utf-8") -> dict:
    """Attaches the labelled file ``path`` to the run as split ``name`` (``RUN/splits.json``).

    The file is read now (errors surface here) with the run's tokenizer and class names; its
    sha256 is recorded, so a later change of the file is noticed. The run's own split names
    (train / eval / test) are reserved unless the run has no data of its own (an import).
    """
    if not name or not str(name).replace("_", "").replace("-", "").isalnum():
        raise UsageError(f"split name {name!r} must be letters, digits, - and _")
    if name in SPLITS and setup.cfg.data.source != "none":
        raise UsageError(f"split {name!r} is the run's own", "pick another --split name for the file")
    spec = {"path": str(Path(path).absolute()), "text": text, "text_pair": text_pair, "label": label,
            "columns": None if columns is None else list(columns), "encoding": encoding,
            "sha256": sha256_file(path) if Path(path).is_file() else None}
    _load_attached(setup, name, spec)  # reads and encodes it: errors now, not at scoring
    registry = registered_splits(run_dir)
    if name in registry and registry[name] != spec:
        log.warning("split %r of %s now reads %s (it read %s)", name, run_dir, spec["path"], registry[name]["path"])
    registry[name] = spec
    atomic_write_json(Path(run_dir) / SPLITS_FILE, registry, sort_keys=True)
    return spec


def _load_attached(setup: RunSetup, name: str, spec: dict) -> tuple[TextDataset, EncodedDataset]:
    path = Path(spec["path"])
    if spec.get("sha256") is not None and path.is_file() and sha256_file(path) != spec["sha256"]:
        raise MismatchError(f"{path} changed since it was attached as split {name!r} (sha256 differs)",
                            f"attach it again: tracin-jax grads --data {path} --split {name} ...")
    texts = load_file(path, label_names=setup.texts["train"].label_names, text=spec.get("text") or "text",
                      text_pair=spec.get("text_pair"), label=spec.get("label") or "label",
                      columns=spec.get("columns"), encoding=spec.get("encoding") or "utf-8", name=name)
    return texts, encode_dataset(texts, setup.tokenizer, int(setup.cfg.tokenizer.max_length))


def split_examples(setup: RunSetup, split: str, run_dir: str | Path | None = None) -> SplitExamples:
    """The examples of ``split``: a file attached to the run under that name, all of train /
    eval, or the run's test points (from eval)."""
    attached = registered_splits(run_dir)
    if split in attached:
        texts, enc = _load_attached(setup, split, attached[split])
        return SplitExamples(split, texts, enc, np.arange(len(enc)))
    if split not in SPLITS:
        raise UsageError(f"split {split!r} is neither one of {SPLITS} nor a file attached to the run "
                         f"({sorted(attached) or 'none'})", "attach one with tracin-jax grads --data FILE --split NAME")
    if setup.cfg.data.source == "none":
        raise UsageError(f"the run has no data of its own (an imported model): split {split!r} is not attached",
                         f"attach a file: tracin-jax grads --run RUN --data FILE --split {split}")
    if split in ("train", "eval"):
        texts, enc = setup.texts[split], getattr(setup, split)
        return SplitExamples(split, texts, enc, np.arange(len(enc)))
    tp = setup.cfg.test_points
    rows = np.asarray(select_test_points(setup.texts["eval"], int(tp.per_class), int(tp.seed)))
    return SplitExamples("test", setup.texts["eval"].subset(rows), setup.eval.subset(rows), rows)


def model_info(setup: RunSetup) -> dict[str, Any]:
    """What a gradient store records about the model (checked when a store is reopened)."""
    m = setup.cfg.model.to_dict()
    return {"kind": m.get("kind"), "hf_dir": m.get("hf_dir"), "vocab_size": m.get("vocab_size"),
            "num_labels": m.get("num_labels"), "hidden_size": m.get("hidden_size"),
            "num_hidden_layers": m.get("num_hidden_layers"), "embed_dim": m.get("embed_dim")}


def run_context(run_dir: str | Path, setup: RunSetup | None = None, *, verify: bool = True) -> RunContext:
    """``RunContext`` of a run directory: its model, checkpoints (digests verified unless
    ``verify=False``), tokenizer and the splits train / eval / test, rebuilt on demand."""
    setup = setup or load_run(run_dir)
    checkpoints = CheckpointStore(Path(run_dir) / "checkpoints", verify=verify)

    def load_split(name: str) -> SplitData:
        ex = split_examples(setup, name, run_dir)
        return SplitData(ex.texts, ex.encoded)

    return RunContext(setup.model, checkpoints.restore_params, setup.tokenizer,
                      split_loader=load_split, setup=setup)


def store_dtype(dtype: str | None, k: int | None) -> str:
    """The vectors' storage dtype: ``"auto"`` (or None) = bfloat16 for top-k stores, float32 for
    exact ones (``k`` None); else ``dtype`` as given."""
    if dtype in (None, "", "auto"):
        return "float32" if k is None else "bfloat16"
    return str(dtype)


def _normalize_k(k) -> int | None:
    """``0``/``None``/``"all"``/``"none"`` → exact vectors (None); else a positive int."""
    if k is None or str(k).strip().lower() in ("0", "none", "all"):
        return None
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise UsageError(f"k={k!r} is not an integer", "pass a positive int, or 0 for exact vectors") from None
    if value < 0:
        raise UsageError(f"k={value} is negative", "pass a positive int, or 0 for exact vectors")
    return value or None


# Checkpoints verified before extraction are kept in host memory up to this size (beyond it,
# each is read again when its turn comes).
_VERIFIED_PARAMS_BYTES = 2 << 30


def _extract(setup: RunSetup, run_dir: Path, texts: TextDataset, encoded: EncodedDataset, split: str,
             out_dir: Path, *, steps=None, k=None, topk_by=None, dtype=None, shard_size=None,
             batch_size=None, progress=True, param_paths=None, micro_batch=None,
             verify: bool = True, overwrite: bool = False) -> GradientStore:
    g = setup.cfg.grads
    checkpoints = CheckpointStore(Path(run_dir) / "checkpoints", verify=verify)
    try:
        infos = {c.step: c.learning_rate for c in checkpoints.infos()}
        if not infos:
            raise UsageError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}", "train first")
        chosen = parse_steps(steps, infos)
        verified = {}
        if verify:  # every checkpoint checked before anything is written
            held = 0
            for step in chosen:
                params = checkpoints.restore_params(step)
                size = sum(x.nbytes for x in jax.tree.leaves(params))
                if held + size <= _VERIFIED_PARAMS_BYTES:  # kept for extraction: no second read
                    verified[step], held = params, held + size

        def restore(step):
            return verified[step] if step in verified else checkpoints.restore_params(step)

        return extract_gradients(
            setup.model, [(s, infos[s], checkpoints.fingerprint(s)) for s in chosen],
            restore, encoded, out_dir,
            fingerprint=texts.fingerprint(), split=split, model_info=model_info(setup),
            vocab_size=int(setup.cfg.model.vocab_size), k=_normalize_k(g.k if k is None else k),
            topk_by=topk_by or g.topk_by, dtype=store_dtype(dtype or g.dtype, _normalize_k(g.k if k is None else k)),
            shard_size=int(shard_size or g.shard_size),
            batch_size=int(batch_size or g.batch_size), mode=g.mode, progress=progress,
            param_paths=param_paths, micro_batch=micro_batch, overwrite=overwrite,
            pad_to_multiple=g.get("pad_to_multiple"))
    finally:
        checkpoints.close()


def run_gradients(run_dir: str | Path, split: str, out_dir: str | Path, *, steps=None, k=None,
                  topk_by=None, dtype=None, shard_size=None, batch_size=None, progress=True,
                  setup: RunSetup | None = None, param_groups=None, include_bias: bool = False,
                  micro_batch: int | None = None, verify: bool = True,
                  overwrite: bool = False, data: str | Path | None = None,
                  data_fields: dict | None = None) -> GradientStore:
    """``tracin-jax grads``: gradient store of one split over a run's checkpoints.

    Unset options take the run's ``cfg.grads`` values. ``param_groups``: names of
    ``models.parameter_groups`` (or ``"all"``) whose per-example gradients are stored too
    (field ``param_grads``, same pass; biases only with ``include_bias``).
    ``micro_batch``: rows per device per step. ``verify=False`` skips the checkpoints'
    digest check; ``overwrite`` replaces a store in ``out_dir`` made with other arguments.
    ``data``: a labelled file to attach as ``split`` first (``attach_data``; ``data_fields``:
    its ``text`` / ``text_pair`` / ``label`` / ``columns`` / ``encoding``).
    """
    run_dir = Path(run_dir)
    setup = setup or load_run(run_dir)
    if data is not None:
        attach_data(setup, run_dir, split, data, **(data_fields or {}))
    ex = split_examples(setup, split, run_dir)
    if isinstance(param_groups, str):
        param_groups = [g.strip() for g in param_groups.split(",") if g.strip()]
    paths = None
    if param_groups:
        names = None if list(param_groups) == ["all"] else list(param_groups)
        paths = group_paths(setup.params, names, include_bias)
    return _extract(setup, run_dir, ex.texts, ex.encoded, split, Path(out_dir), steps=steps, k=k,
                    topk_by=topk_by, dtype=dtype, shard_size=shard_size, batch_size=batch_size,
                    progress=progress, param_paths=paths, micro_batch=micro_batch, verify=verify,
                    overwrite=overwrite)


def subset_gradients(setup: RunSetup, run_dir: str | Path, split: str, rows, name: str,
                     out_dir: str | Path, *, k="config", dtype=None, progress: bool = False,
                     verify: bool = True) -> tuple[GradientStore, TextDataset, EncodedDataset]:
    """Gradient store of the examples at ``rows`` of ``split`` ('train' or 'eval'), over every
    checkpoint, with the run's ``cfg.grads`` settings (``k="config"``) or the given ``k``.

    The store's split is ``name``; register the same examples in a ``RunContext`` with
    ``context.add_split(name, texts, encoded)`` to decode or explain them. Returns
    ``(store, texts, encoded)``.
    """
    if split not in ("train", "eval"):
        raise UsageError(f"subset_gradients takes rows of 'train' or 'eval', not {split!r}")
    rows = np.asarray(rows, np.int64)
    texts, encoded = setup.texts[split].subset(rows), getattr(setup, split).subset(rows)
    store = _extract(setup, Path(run_dir), texts, encoded, name, Path(out_dir),
                     k=setup.cfg.grads.k if k == "config" else (0 if k is None else k), dtype=dtype,
                     progress=progress, verify=verify)
    return store, texts, encoded
