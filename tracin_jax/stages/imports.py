"""Stage "checkpoints trained elsewhere → a run directory" (``tracin-jax import``).

A run directory is what every later stage reads (``grads``, ``score``, ``explain``,
``self-influence``, ``analyze``): the model's architecture, its checkpoints with the
learning rate in force at each (TracIn's η_c), and a tokenizer. ``import_hf`` builds one
from Hugging Face BERT/RoBERTa classifier directories (``config.json`` + ``model.safetensors``;
``pytorch_model.bin`` only through ``torch.load(weights_only=True)``); ``import_params``
from Flax parameters of this package's models. The run has no data of its own
(``data.source = "none"``): attach labelled files with ``tracin-jax grads --run RUN --data
FILE --split NAME``.

Learning rates, in order of precedence:
1. given explicitly (``--lr 2e-5,1e-5``), one per checkpoint directory, in the order given;
2. a Hugging Face Trainer's ``trainer_state.json`` (``--trainer-state FILE``, or the file
   each ``checkpoint-N`` directory holds): the ``learning_rate`` of the ``log_history``
   entry at the checkpoint's step, else at the latest logged step before it (the rate the
   scheduler had set when the checkpoint was written);
3. an ``lr.txt`` (one number) inside each checkpoint directory.
Steps come from ``checkpoint-N`` directory names, else ``--steps``, else 1, 2, ...

Layout written::

    RUN/config.json          tracin_jax config (model.kind, model.hf_dir=RUN/model, tokenizer, labels)
    RUN/model/config.json    the Hugging Face architecture (no weights)
    RUN/tokenizer/           the tokenizer files found beside the checkpoints (or --tokenizer),
                             else an ids-only tokenizer (pre-tokenised data only)
    RUN/checkpoints/<step>/  orbax: params + meta {learning_rate, source, lr_source, digests}
    RUN/import.json          what was imported from where
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tracin_jax import config as config_lib
from tracin_jax.errors import DataError, MismatchError, OutputExistsError, UsageError
from tracin_jax.files import atomic_write_json, atomic_write_text, read_json
from tracin_jax.models import BertClassifier, CNNClassifier
from tracin_jax.models.hf_convert import load_hf_checkpoint, weight_files
from tracin_jax.train import CheckpointStore, prepare_run

log = logging.getLogger(__name__)

IMPORT_FILE = "import.json"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
_STEP_RE = re.compile(r"(?:^|[-_])(\d+)$")
# HF config entries that say nothing about the architecture (they may differ between checkpoints).
_NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
                     "use_cache", "problem_type", "label2id", "_attn_implementation_autoset"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json")


def _steps_of(dirs: Sequence[Path], steps: Sequence[int] | None) -> list[int]:
    if steps is not None:
        steps = [int(s) for s in steps]
        if len(steps) != len(dirs):
            raise UsageError(f"{len(steps)} steps for {len(dirs)} checkpoint directories", "give one step each")
    else:
        found = [_STEP_RE.search(d.name) for d in dirs]
        steps = [int(m.group(1)) for m in found] if all(found) else list(range(1, len(dirs) + 1))
    if len(set(steps)) != len(steps) or min(steps) < 0:
        raise UsageError(f"checkpoint steps {steps} must be distinct non-negative integers",
                         "name the directories checkpoint-STEP or pass --steps")
    return steps


def _lr_from_trainer_state(state_file: Path, step: int) -> float:
    state = read_json(state_file, "trainer state")
    logged = sorted((int(e["step"]), float(e["learning_rate"])) for e in state.get("log_history", [])
                    if "learning_rate" in e and "step" in e)
    before = [lr for s, lr in logged if s <= step]
    if not before:
        raise DataError(f"{state_file}: no learning_rate logged at or before step {step} "
                        f"(logged at steps {[s for s, _ in logged][:10]})",
                        "pass the learning rates with --lr")
    return before[-1]


def _learning_rates(dirs: Sequence[Path], steps: Sequence[int], lrs, trainer_state) -> tuple[list[float], str]:
    if lrs is not None:
        lrs = [float(x) for x in lrs]
        if len(lrs) != len(dirs):
            raise UsageError(f"{len(lrs)} learning rates for {len(dirs)} checkpoints", "give one per checkpoint")
        source = "given"
    elif trainer_state is not None:
        lrs = [_lr_from_trainer_state(Path(trainer_state), s) for s in steps]
        source = f"trainer_state {trainer_state}"
    elif all((d / "lr.txt").is_file() for d in dirs):
        try:
            lrs = [float((d / "lr.txt").read_text().strip()) for d in dirs]
        except ValueError as e:
            raise DataError(f"an lr.txt does not hold one number ({e})", "write one learning rate per file") from None
        source = "lr.txt"
    elif all((d / "trainer_state.json").is_file() for d in dirs):
        lrs = [_lr_from_trainer_state(d / "trainer_state.json", s) for d, s in zip(dirs, steps)]
        source = "trainer_state.json in each checkpoint"
    else:
        raise UsageError("no learning rates for the checkpoints",
                         "pass --lr η1,η2,... (one per checkpoint), --trainer-state FILE, or put an lr.txt in "
                         "each directory")
    bad = [lr for lr in lrs if not (math.isfinite(lr) and lr >= 0)]
    if bad:
        raise DataError(f"learning rates must be finite and >= 0, got {bad}")
    if all(lr == 0 for lr in lrs):
        raise DataError("every learning rate is 0: every TracIn score would be 0",
                        "check the learning rates (a finished linear decay ends at 0)")
    return lrs, source


def _architecture(hf_config: dict) -> dict:
    return {k: v for k, v in hf_config.items() if k not in _NOT_ARCHITECTURE}


def _label_names(hf_config: dict, num_labels: int) -> tuple[str, ...]:
    id2label = hf_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(num_labels)]
    return tuple(names)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} is not empty", "import into a new directory, or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _tokenizer(out: Path, dirs: Sequence[Path], tokenizer: str | Path | None, hf_config: dict,
               model_type: str) -> dict:
    """Copies the tokenizer files into ``out/tokenizer``; returns the config's tokenizer block."""
    target = out / TOKENIZER_DIR
    candidates = [Path(tokenizer)] if tokenizer is not None else [*dirs, *{d.parent for d in dirs}]
    for source in candidates:
        files = [source / f for f in _TOKENIZER_FILES if (source / f).is_file()]
        usable = any(f.name in ("tokenizer.json", "vocab.txt") for f in files) if model_type == "bert" else \
            any(f.name == "tokenizer.json" for f in files) or {"vocab.json", "merges.txt"} <= {f.name for f in files}
        if usable:
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, target / f.name)
            lowercase = True
            cfg_file = source / "tokenizer_config.json"
            if cfg_file.is_file():
                lowercase = bool(json.loads(cfg_file.read_text()).get("do_lower_case", True))
            return {"kind": model_type, "path": str(target.absolute()), "lowercase": lowercase, "source": str(source)}
    if tokenizer is not None:
        raise DataError(f"no {model_type} tokenizer files in {tokenizer}",
                        "a bert tokenizer needs vocab.txt or tokenizer.json; roberta tokenizer.json or "
                        "vocab.json + merges.txt")
    from tracin_jax.data import IdsTokenizer
    specials = [hf_config[k] for k in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")
                if isinstance(hf_config.get(k), int)]
    IdsTokenizer(int(hf_config["vocab_size"]), int(hf_config.get("pad_token_id", 0) or 0),
                 sorted(set(specials))).save(target)
    log.warning("no tokenizer files beside the checkpoints: the run reads pre-tokenised rows only "
                "(pass --tokenizer DIR to read text)")
    return {"kind": "ids", "path": str(target.absolute()), "lowercase": True, "source": None}


def _run_config(name: str, model_kind: str, model_dir: Path | None, tok: dict, label_names, max_length: int,
                model_fields: dict | None = None):
    cfg = config_lib.base_config()
    cfg.name = name
    cfg.data.source = "none"
    cfg.data.name = "imported"
    cfg.data.label_names = tuple(label_names)
    cfg.tokenizer.kind = tok["kind"]
    cfg.tokenizer.path = tok["path"]
    cfg.tokenizer.lowercase = tok["lowercase"]
    cfg.tokenizer.max_length = int(max_length)
    cfg.model.kind = model_kind
    if model_dir is not None:
        cfg.model.hf_dir = str(model_dir.absolute())
    for key, value in (model_fields or {}).items():
        cfg.model[key] = value
    return cfg


def import_hf(hf_dirs: Sequence[str | Path], out: str | Path, *, lrs: Sequence[float] | None = None,
              trainer_state: str | Path | None = None, steps: Sequence[int] | None = None,
              tokenizer: str | Path | None = None, max_length: int = 128, overwrite: bool = False) -> dict:
    """Hugging Face checkpoint directories → a run directory ``out`` (module docstring).

    Returns the import record (also written to ``out/import.json``): steps, learning rates
    and their source, the architecture and the tokenizer used.
    """
    dirs = [Path(d) for d in hf_dirs]
    if not dirs:
        raise UsageError("no checkpoint directories given", "pass --hf DIR [DIR ...]")
    for d in dirs:
        if not (d / "config.json").is_file():
            raise DataError(f"{d} has no config.json: not a Hugging Face checkpoint directory")
        if not weight_files(d):
            raise DataError(f"{d} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    configs = [read_json(d / "config.json", "Hugging Face config") for d in dirs]
    for d, c in zip(dirs[1:], configs[1:]):
        if _architecture(c) != _architecture(configs[0]):
            differ = sorted(k for k in set(_architecture(c)) | set(_architecture(configs[0]))
                            if c.get(k) != configs[0].get(k))
            raise MismatchError(f"{d} and {dirs[0]} hold different architectures (differ in {differ[:5]})",
                                "import checkpoints of one training run")
    model_type = configs[0].get("model_type")
    if model_type not in ("bert", "roberta"):
        raise DataError(f"{dirs[0]}/config.json: model_type {model_type!r} is not bert or roberta")
    steps = _steps_of(dirs, steps)
    order = np.argsort(steps, kind="stable")
    dirs, configs, steps = [dirs[i] for i in order], [configs[i] for i in order], [steps[i] for i in order]
    if lrs is not None and len(lrs) == len(order):  # given in the order of the directories
        lrs = [float(lrs[i]) for i in order]
    lrs, lr_source = _learning_rates(dirs, steps, lrs, trainer_state)

    out = Path(out)
    _prepare_out(out, overwrite)
    model_dir = out / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    num_labels = None
    store = CheckpointStore(out / "checkpoints")
    try:
        for d, step, lr in zip(dirs, steps, lrs):
            config, params = load_hf_checkpoint(str(d))
            if num_labels is not None and config.num_labels != num_labels:
                raise MismatchError(f"{d} has {config.num_labels} classes, earlier checkpoints {num_labels}")
            num_labels = config.num_labels
            store.save(step, params, None, {"learning_rate": lr, "epoch": 0.0, "source": str(d.absolute()),
                                            "lr_source": lr_source})
            log.info("imported %s as checkpoint %d (learning rate %g)", d, step, lr)
    finally:
        store.close()
    hf_config = dict(configs[-1], num_labels=num_labels)
    atomic_write_text(model_dir / "config.json", json.dumps(hf_config, indent=2, sort_keys=True))
    tok = _tokenizer(out, dirs, tokenizer, hf_config, model_type)
    label_names = _label_names(hf_config, num_labels)
    positions = int(hf_config.get("max_position_embeddings", max_length))
    if model_type == "roberta":  # RoBERTa's positions start after the pad id
        positions -= int(hf_config.get("pad_token_id", 1)) + 1
    if max_length > positions:
        log.info("max length %d -> %d: the model has %d positions", max_length, positions, positions)
        max_length = positions
    cfg = _run_config(out.name, model_type, model_dir, tok, label_names, max_length)
    prepare_run(cfg, out)  # checks that the run loads (model, tokenizer) and writes its resolved config
    record = {"kind": "huggingface", "checkpoints": [{"step": s, "learning_rate": lr, "source": str(d.absolute())}
                                                     for d, s, lr in zip(dirs, steps, lrs)],
              "lr_source": lr_source, "model_type": model_type, "num_labels": num_labels,
              "label_names": list(label_names), "tokenizer": tok}
    atomic_write_json(out / IMPORT_FILE, record)
    return record


def import_params(out: str | Path, model, checkpoints: Sequence[tuple], *, tokenizer=None,
                  label_names: Sequence[str] | None = None, max_length: int = 128,
                  overwrite: bool = False) -> dict:
    """Flax parameters of this package's models → a run directory ``out``.

    Args:
      model: a ``BertClassifier`` or ``CNNClassifier`` (the architecture is saved with the run).
      checkpoints: ``[(params, learning_rate), ...]`` or ``[(step, params, learning_rate), ...]``
        in training order.
      tokenizer: any tokenizer of ``tracin_jax.data`` (saved with the run); None = ids only.
      label_names: class names (default ``("0", ..., "C-1")``).
    """
    if not checkpoints:
        raise UsageError("no checkpoints given")
    entries = [(i + 1, c[0], c[1]) if len(c) == 2 else tuple(c) for i, c in enumerate(checkpoints)]
    steps = [int(s) for s, _, _ in entries]
    if len(set(steps)) != len(steps):
        raise UsageError(f"checkpoint steps {steps} repeat")
    lrs, _ = _learning_rates([Path(".")] * len(entries), steps, [lr for _, _, lr in entries], None)
    out = Path(out)
    _prepare_out(out, overwrite)
    if isinstance(model, BertClassifier):
        config = model.config
        num_labels = config.num_labels
        model_dir = out / MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(model_dir / "config.json", json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
        kind, fields = config.model_type, {}
    elif isinstance(model, CNNClassifier):
        import dataclasses
        model_dir, kind = None, "cnn"
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(model.config).items()
                  if k in config_lib.base_config().model}
        num_labels = model.config.num_labels
    else:
        raise UsageError(f"import_params saves {type(model).__name__} models' architecture only for "
                         "BertClassifier / CNNClassifier", "for another Flax module use tracin_jax.influence "
                         "(in memory) or the functions of tracin_jax.grads and tracin_jax.methods")
    store = CheckpointStore(out / "checkpoints")
    try:
        for (step, params, _), lr in zip(entries, lrs):
            store.save(step, params, None, {"learning_rate": lr, "epoch": 0.0, "source": "import_params",
                                            "lr_source": "given"})
    finally:
        store.close()
    if tokenizer is not None:
        tokenizer.save(out / TOKENIZER_DIR)
        tok = {"kind": tokenizer.kind, "path": str((out / TOKENIZER_DIR).absolute()),
               "lowercase": bool(getattr(tokenizer, "lowercase", True))}
    else:
        from tracin_jax.data import IdsTokenizer
        vocab = model.config.vocab_size
        IdsTokenizer(vocab, 0).save(out / TOKENIZER_DIR)
        tok = {"kind": "ids", "path": str((out / TOKENIZER_DIR).absolute()), "lowercase": True}
    label_names = tuple(label_names) if label_names is not None else tuple(str(i) for i in range(num_labels))
    if len(label_names) != num_labels:
        raise UsageError(f"{len(label_names)} label names for a model with {num_labels} classes")
    cfg = _run_config(out.name, kind, model_dir, tok, label_names, max_length, fields)
    prepare_run(cfg, out)  # checks that the run loads (model, tokenizer) and writes its resolved config
    record = {"kind": "params", "checkpoints": [{"step": s, "learning_rate": lr} for (s, _, _), lr in zip(entries, lrs)],
              "num_labels": num_labels, "label_names": list(label_names), "tokenizer": tok}
    atomic_write_json(out / IMPORT_FILE, record)
    return record
