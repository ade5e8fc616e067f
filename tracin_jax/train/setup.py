"""Builds everything a run needs from its config: data, tokenizer, model, parameters.

``prepare_run`` is used by training; ``load_run`` rebuilds the same objects from a
finished (or interrupted) run directory for gradient extraction, scoring and
deletion sweeps, so every stage sees exactly the tokenization and model of training.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import ml_collections

from tracin_jax import config as config_lib
from tracin_jax.data import EncodedDataset, TextDataset, encode_dataset, load_splits, load_tokenizer
from tracin_jax.errors import ConfigError, DataError
from tracin_jax.models import BertClassifier, BertConfig, build_model, init_params
from tracin_jax.models.hf_convert import load_hf_checkpoint, weight_files

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class RunSetup:
    cfg: ml_collections.ConfigDict  # resolved: model.vocab_size / num_labels filled in
    texts: dict[str, TextDataset]  # 'train', 'eval'
    tokenizer: Any
    train: EncodedDataset
    eval: EncodedDataset
    model: Any
    params: Any  # initial parameters (random or pretrained)
    extras: dict[str, Any]  # e.g. synthetic ground truth


def _tokenizer_config(cfg: ml_collections.ConfigDict, workdir: Path | None) -> ml_collections.ConfigDict:
    tok_cfg = ml_collections.ConfigDict(cfg.tokenizer.to_dict())
    saved = workdir / TOKENIZER_DIR if workdir is not None else None
    if tok_cfg.kind == "word":
        if saved is not None and (saved / "vocab.txt").exists():
            tok_cfg.path = str(saved)
    elif not tok_cfg.path:
        if not cfg.model.hf_dir:
            raise ValueError(f"tokenizer.kind={tok_cfg.kind!r} needs tokenizer.path or model.hf_dir")
        tok_cfg.path = cfg.model.hf_dir
    return tok_cfg


def prepare_run(cfg: ml_collections.ConfigDict, workdir: str | Path | None = None, *,
                save_config: bool = True) -> RunSetup:
    """Loads data, builds/loads the tokenizer and model; writes ``workdir/config.json`` (unless
    ``save_config=False``: a run read with overrides keeps its own config file)."""
    workdir = Path(workdir) if workdir is not None else None
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    splits = load_splits(cfg.data)
    extras = {k: v for k, v in splits.items() if k not in ("train", "eval")}
    texts = {"train": splits["train"], "eval": splits["eval"]}
    if len(texts["train"]) == 0 and cfg.data.source != "none":  # "none": an imported model, no data
        raise DataError(f"the training split {cfg.data.train_split!r} (data.source={cfg.data.source!r}) has "
                        "no examples", "check data.source, data.files, data.train_split, data.max_train "
                        "and data.drop_empty")

    tok_cfg = _tokenizer_config(cfg, workdir)
    tokenizer = load_tokenizer(tok_cfg, corpus=list(texts["train"].texts) + list(texts["train"].text_pairs or ()))
    if workdir is not None and cfg.tokenizer.kind == "word" and tok_cfg.get("path") != str(
            workdir / TOKENIZER_DIR):  # built now; a saved one is only read (many processes may)
        tokenizer.save(workdir / TOKENIZER_DIR)
    max_length = int(cfg.tokenizer.max_length)
    train_enc = encode_dataset(texts["train"], tokenizer, max_length)
    eval_enc = encode_dataset(texts["eval"], tokenizer, max_length)

    num_labels = len(texts["train"].label_names)
    rng = jax.random.key(int(cfg.seed))
    if cfg.model.hf_dir:
        if weight_files(cfg.model.hf_dir):
            model_config, params = load_hf_checkpoint(cfg.model.hf_dir, num_labels=num_labels,
                                                      rng_seed=int(cfg.seed))
        else:  # the architecture only (an imported run: its parameters are its checkpoints)
            model_config = BertConfig.from_hf_dict(
                json.loads((Path(cfg.model.hf_dir) / "config.json").read_text()), num_labels=num_labels,
                dtype=cfg.model.get("dtype") or "float32")
            params = init_params(BertClassifier(model_config), rng,
                                 min(max_length, model_config.max_position_embeddings - model_config.pad_token_id - 1))
        with cfg.ignore_type():
            cfg.model.vocab_size = int(model_config.vocab_size)
            cfg.model.num_labels = num_labels
        if tokenizer.vocab_size > model_config.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the checkpoint's "
                              f"embedding table has {model_config.vocab_size} rows",
                              "use the tokenizer the model was trained with (tokenizer.path)")
        model = BertClassifier(model_config)
    else:
        with cfg.ignore_type():
            cfg.model.vocab_size = int(cfg.model.vocab_size or tokenizer.vocab_size)
            cfg.model.num_labels = num_labels
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                             f"{cfg.model.vocab_size}")
        model = build_model(cfg.model)
        params = init_params(model, rng, max_length)

    if workdir is not None and save_config:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / CONFIG_FILE
        text = config_lib.to_json(cfg)
        # The saved config is read through from_json, so a key added to the code since the
        # run was written takes its default (new keys must default to the old behaviour).
        if path.exists() and _train_relevant(json.loads(config_lib.to_json(config_lib.from_json(
                path.read_text())))) != _train_relevant(json.loads(text)):
            raise ValueError(f"{path} was written by a different configuration; use a new workdir "
                             "(or delete it) instead of resuming with changed settings")
        if not path.exists() or path.read_text() != text:  # load_run on many hosts: read-only
            path.write_text(text)
    return RunSetup(cfg=cfg, texts=texts, tokenizer=tokenizer, train=train_enc, eval=eval_enc,
                    model=model, params=params, extras=extras)


def _train_relevant(d: dict) -> dict:
    """The config parts that must not change between a run and its resumption."""
    return {k: d.get(k) for k in ("seed", "data", "tokenizer", "model", "train")}


def load_run(workdir: str | Path, overrides=()) -> RunSetup:
    """Rebuilds a run's setup from ``workdir/config.json`` (params = initial ones).

    ``overrides``: ``--config.*`` strings applied to the saved config for this reading only
    (e.g. ``grads.k=0``, or data and training settings of a sweep over an imported run)."""
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise DataError(f"{path} not found", f"is {workdir} a run directory (tracin-jax train or import)?")
    cfg = config_lib.apply_overrides(config_lib.from_json(path.read_text()), list(overrides))
    return prepare_run(cfg, workdir, save_config=not overrides)
