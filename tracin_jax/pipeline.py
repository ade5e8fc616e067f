"""Glue between a training run directory and the later stages (grads, scoring).

A run directory (``tracin-jax train --workdir RUN``) holds ``config.json``, the
tokenizer (word vocabularies) and ``checkpoints/``. These helpers rebuild the run
and select the examples of a split: ``train``, ``eval`` or ``test`` (the balanced
test points drawn from ``eval`` with ``cfg.test_points``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracin_jax.data import select_test_points
from tracin_jax.train import CheckpointStore, RunSetup, load_run

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "test")


@dataclass
class SplitExamples:
    name: str
    texts: object  # TextDataset
    encoded: object  # EncodedDataset
    positions: np.ndarray  # row positions in the underlying split


def _subset_encoded(enc, rows: np.ndarray):
    import dataclasses
    fields = {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)}
    out = {}
    for name, value in fields.items():
        arr = np.asarray(value) if not isinstance(value, (str, dict, type(None), int)) else value
        out[name] = arr[rows] if isinstance(arr, np.ndarray) and arr.ndim >= 1 and len(arr) == len(enc) else value
    return type(enc)(**out)


def split_examples(setup: RunSetup, split: str) -> SplitExamples:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {SPLITS}")
    if split in ("train", "eval"):
        texts, enc = setup.texts[split], getattr(setup, split)
        return SplitExamples(split, texts, enc, np.arange(len(enc)))
    tp = setup.cfg.test_points
    rows = np.asarray(select_test_points(setup.texts["eval"], int(tp.per_class), int(tp.seed)))
    return SplitExamples("test", setup.texts["eval"].subset(rows), _subset_encoded(setup.eval, rows), rows)


def model_info(setup: RunSetup) -> dict:
    m = setup.cfg.model.to_dict()
    return {"kind": m.get("kind"), "hf_dir": m.get("hf_dir"), "vocab_size": m.get("vocab_size"),
            "num_labels": m.get("num_labels"), "hidden_size": m.get("hidden_size"),
            "num_hidden_layers": m.get("num_hidden_layers"), "embed_dim": m.get("embed_dim")}


def run_gradients(run_dir: str | Path, split: str, out_dir: str | Path, *, steps=None, k=None,
                  topk_by=None, dtype=None, shard_size=None, batch_size=None, progress=True,
                  setup: RunSetup | None = None, param_groups=None, include_bias: bool = False,
                  micro_batch: int | None = None):
    """``tracin-jax grads``: gradient store of one split over a run's checkpoints.

    ``param_groups``: names of ``models.parameter_groups`` (or ``"all"``) whose
    per-example gradients are stored too (field ``param_grads``, same pass; biases
    only with ``include_bias``). ``micro_batch``: rows per device per step.
    """
    from tracin_jax.grads import extract_gradients, parse_steps
    from tracin_jax.grads.param_grads import group_paths

    run_dir = Path(run_dir)
    setup = setup or load_run(run_dir)
    g = setup.cfg.grads
    ckpts = CheckpointStore(run_dir / "checkpoints")
    infos = {c.step: c.learning_rate for c in ckpts.infos()}
    if not infos:
        raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}: train first")
    chosen = parse_steps(steps, infos)
    ex = split_examples(setup, split)
    k = g.k if k is None else k
    k = None if str(k).lower() in ("0", "none", "all") else int(k)
    if isinstance(param_groups, str):
        param_groups = [g.strip() for g in param_groups.split(",") if g.strip()]
    paths = None
    if param_groups:
        names = None if list(param_groups) == ["all"] else list(param_groups)
        paths = group_paths(setup.params, names, include_bias)
    store = extract_gradients(
        setup.model, [(s, infos[s]) for s in chosen], ckpts.restore_params, ex.encoded, out_dir,
        fingerprint=ex.texts.fingerprint(), split=split, model_info=model_info(setup),
        vocab_size=int(setup.cfg.model.vocab_size), k=k, topk_by=topk_by or g.topk_by,
        dtype=dtype or g.dtype, shard_size=int(shard_size or g.shard_size),
        batch_size=int(batch_size or g.batch_size), mode=g.mode, progress=progress,
        param_paths=paths, micro_batch=micro_batch)
    ckpts.close()
    return store
