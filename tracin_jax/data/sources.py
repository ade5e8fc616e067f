"""Text sources → `TextDataset` splits: synthetic, TFDS, csv / tsv / jsonl files.

`load_splits(data_cfg)` is the one entry point. Every source goes through the
same steps: raw records of a split (a random-access sequence of mappings) →
seeded subsample of row positions (`max_train` / `max_eval`) → decode, map labels
and check the selected rows → `TextDataset` with `ids` = source row index.
Validation therefore applies to the selected rows.

TFDS: `ag_news_subset` (field `description`, 4 classes), `glue/mnli` (premise /
hypothesis pairs, eval split `validation_matched`) and `wikipedia_toxicity_subtypes`
(label = `toxicity >= 0.5`) have built-in field defaults (SPEC "Paper settings");
any other TFDS name works given `text_field` and `label_field`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from tracin_jax.data.dataset import TextDataset, subsample_indices
from tracin_jax.data.synthetic import default_synthetic_config, make_synthetic

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "tfds", "csv", "tsv", "jsonl")
_TRAIN_STREAM, _EVAL_STREAM = 0, 1  # subsampling seeds [seed, stream]: train and eval differ
_INT_RE = re.compile(r"[+-]?\d+")


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field; configs override. Unset optional fields are typed placeholders."""
    return ml_collections.ConfigDict(dict(
        source="synthetic",  # one of SOURCES
        name="synthetic",  # TFDS name, or a label for file sources
        tfds_data_dir=placeholder(str),
        train_split="train",  # TFDS split, or key of `files`
        eval_split="test",
        files={},  # split -> path, for csv / tsv / jsonl
        text_field=placeholder(str),  # None: the TFDS dataset's default, or "text"
        pair_field=placeholder(str),  # second segment (MNLI hypothesis) or None
        label_field=placeholder(str),  # None: the TFDS dataset's default, or "label"
        label_names=placeholder(tuple),  # None: from TFDS ClassLabel, or inferred from files
        label_threshold=placeholder(float),  # float label -> int(value >= threshold)
        max_train=placeholder(int),  # None = all rows
        max_eval=placeholder(int),
        seed=0,  # subsampling seed
        drop_empty=False,  # empty text: False -> ValueError, True -> skip, counted in the log
        synthetic=default_synthetic_config(),
    ))


@dataclasses.dataclass(frozen=True)
class _Fields:
    text: str
    pair: str | None
    label: str
    threshold: float | None


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    text_field: str
    pair_field: str | None
    label_field: str
    label_names: tuple[str, ...] | None
    label_threshold: float | None
    reader: str  # 'data_source' (array_record, no TensorFlow) or 'load' (tf.data)


_TFDS_SPECS = {
    "ag_news_subset": _TfdsSpec("description", None, "label", None, None, "data_source"),
    "glue/mnli": _TfdsSpec("premise", "hypothesis", "label", None, None, "load"),
    # Toxicity: binary label from the crowd score, toxic iff toxicity >= 0.5 (paper sec. 5).
    "wikipedia_toxicity_subtypes": _TfdsSpec("text", None, "toxicity", ("not_toxic", "toxic"), 0.5,
                                             "load"),
}


def load_splits(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Loads `{"train": TextDataset, "eval": TextDataset}` for `data_cfg`.

    Subsampling to `max_train` / `max_eval` is seeded by `data_cfg.seed` and
    keeps source row indices as ids. For `source="synthetic"` the dict also holds
    `"ground_truth"` (see `make_synthetic`).
    """
    source = data_cfg.source
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r}; expected one of {SOURCES}")
    if source == "synthetic":
        corpus = make_synthetic(data_cfg.synthetic)
        return {
            "train": _subsample(corpus.train, data_cfg.max_train, [data_cfg.seed, _TRAIN_STREAM]),
            "eval": _subsample(corpus.eval, data_cfg.max_eval, [data_cfg.seed, _EVAL_STREAM]),
            "ground_truth": corpus.ground_truth,
        }
    if source == "tfds":
        return _load_tfds(data_cfg)
    return _load_files(data_cfg)


def _subsample(ds: TextDataset, max_n: int | None, seed) -> TextDataset:
    return ds.subset(subsample_indices(len(ds), max_n, seed))


# ----------------------------------------------------------------------------- records → dataset


def _as_text(value: Any, field: str, row: int, where: str) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: row {row} field {field!r} is {type(value).__name__} {value!r}, "
                         "expected text")
    return value


def _label_index(value: Any, fields: _Fields, names: Sequence[str] | None, row: int, where: str) -> int:
    """Maps a raw label to a class index: threshold, else name lookup, else integer."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if fields.threshold is not None:
        try:
            return int(float(value) >= fields.threshold)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: row {row} label {value!r} in {fields.label!r} is not a number "
                             f"(label_threshold={fields.threshold})") from None
    index = None
    if isinstance(value, str):
        if names is not None and value in names:
            index = list(names).index(value)
        elif _INT_RE.fullmatch(value.strip()):
            index = int(value)
    elif isinstance(value, bool):
        index = None
    elif isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    n = None if names is None else len(names)
    if index is None or index < 0 or (n is not None and index >= n):
        raise ValueError(f"{where}: row {row} has unknown label {value!r} in field {fields.label!r}; "
                         f"known label_names: {None if names is None else tuple(names)}")
    return index


def _records_to_dataset(records: Sequence[Mapping[str, Any]], positions: np.ndarray, fields: _Fields,
                        label_names: Sequence[str], drop_empty: bool, name: str,
                        where: str) -> TextDataset:
    """Decodes the rows at `positions`; ids = positions. Empty text: error, or skip when asked."""
    texts, pairs, labels, ids, empty = [], [], [], [], []
    for pos in positions:
        row = int(pos)
        rec = records[row]
        text = _as_text(rec[fields.text], fields.text, row, where)
        pair = None if fields.pair is None else _as_text(rec[fields.pair], fields.pair, row, where)
        if not text.strip() or (pair is not None and not pair.strip()):
            if not drop_empty:
                raise ValueError(f"{where}: row {row} has empty text in field "
                                 f"{fields.pair if text.strip() else fields.text!r}; "
                                 "set data.drop_empty=True to skip such rows")
            empty.append(row)
            continue
        texts.append(text)
        pairs.append(pair)
        labels.append(_label_index(rec[fields.label], fields, label_names, row, where))
        ids.append(row)
    if empty:
        log.warning("%s: skipped %d rows with empty text (drop_empty=True), first ids %s", where,
                    len(empty), empty[:10])
    return TextDataset(texts=tuple(texts), text_pairs=None if fields.pair is None else tuple(pairs),
                       labels=np.asarray(labels, np.int32).reshape(-1),
                       ids=np.asarray(ids, np.int64).reshape(-1),
                       label_names=tuple(label_names), name=name)


def _split_datasets(cfg, read_split, fields: _Fields, label_names, where_of) -> dict[str, TextDataset]:
    """Reads both splits, infers label names from all their rows if needed, subsamples, decodes."""
    raw = {"train": read_split(cfg.train_split), "eval": read_split(cfg.eval_split)}
    if label_names is None:
        label_names = _infer_label_names(
            [rec[fields.label] for split in raw.values() for rec in split], fields)
    out = {}
    for key, stream, max_n in (("train", _TRAIN_STREAM, cfg.max_train),
                               ("eval", _EVAL_STREAM, cfg.max_eval)):
        split = cfg.train_split if key == "train" else cfg.eval_split
        positions = subsample_indices(len(raw[key]), max_n, [cfg.seed, stream])
        out[key] = _records_to_dataset(raw[key], positions, fields, label_names, cfg.drop_empty,
                                       f"{cfg.name}:{split}", where_of(split))
        log.info("%s: %d of %d rows", where_of(split), len(out[key]), len(raw[key]))
    return out


def _infer_label_names(values: list, fields: _Fields) -> tuple[str, ...]:
    """Integer labels → ('0', ..., str(max)); string labels → sorted unique names."""
    if fields.threshold is not None:
        return ("0", "1")
    decoded = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    decoded = [v.item() if isinstance(v, (np.generic, np.ndarray)) else v for v in decoded]
    ints = [int(v) for v in decoded
            if (isinstance(v, int) and not isinstance(v, bool)) or
            (isinstance(v, str) and _INT_RE.fullmatch(v.strip()))]
    if len(ints) == len(decoded):
        names = tuple(str(i) for i in range(max(ints, default=-1) + 1))
    else:
        names = tuple(sorted({str(v) for v in decoded}))
    log.info("inferred label_names %s from field %r (set data.label_names to fix the order)", names,
             fields.label)
    return names


# ----------------------------------------------------------------------------- local files


def _load_files(cfg) -> dict[str, TextDataset]:
    files = dict(cfg.files or {})
    for split in (cfg.train_split, cfg.eval_split):
        if split not in files:
            raise ValueError(f"data.files has no entry for split {split!r}; it has {sorted(files)}")
        if not Path(files[split]).is_file():
            raise FileNotFoundError(f"data.files[{split!r}] = {files[split]} does not exist")
    fields = _Fields(text=cfg.text_field or "text", pair=cfg.pair_field,
                     label=cfg.label_field or "label", threshold=cfg.label_threshold)
    wanted = [f for f in (fields.text, fields.pair, fields.label) if f is not None]
    reader = _read_jsonl if cfg.source == "jsonl" else _read_delimited
    label_names = None if cfg.label_names is None else tuple(cfg.label_names)
    return _split_datasets(cfg, lambda split: reader(Path(files[split]), wanted, cfg.source),
                           fields, label_names, lambda split: str(files[split]))


def _read_delimited(path: Path, wanted: list[str], source: str) -> list[dict[str, str]]:
    """csv (standard quoting) or tsv (GLUE layout: tab separated, header, no quoting)."""
    if source == "tsv":
        kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        kwargs = dict(delimiter=",")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, **kwargs)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header row")
        missing = [w for w in wanted if w not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; available columns: {header}")
        columns = [header.index(w) for w in wanted]
        rows = []
        for line in reader:
            if not line:
                continue  # blank line, not a row
            if len(line) != len(header):
                raise ValueError(f"{path}: row {len(rows)} has {len(line)} fields but the header has "
                                 f"{len(header)}")
            rows.append({w: line[c] for w, c in zip(wanted, columns)})
    return rows


def _read_jsonl(path: Path, wanted: list[str], source: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not JSON: {e}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {line_no} is {type(rec).__name__}, expected an object")
            missing = [w for w in wanted if w not in rec]
            if missing:
                raise ValueError(f"{path}: row {len(rows)} (line {line_no}) is missing column(s) "
                                 f"{missing}; available columns: {sorted(rec)}")
            rows.append({w: rec[w] for w in wanted})
    return rows


# ----------------------------------------------------------------------------- TFDS


def _tfds_spec(name: str) -> _TfdsSpec | None:
    base = name.split(":")[0]
    return _TFDS_SPECS.get(base) or _TFDS_SPECS.get(base.split("/")[0])


def _load_tfds(cfg) -> dict[str, TextDataset]:
    import tensorflow_datasets as tfds

    spec = _tfds_spec(cfg.name)
    if cfg.name.startswith("glue"):
        import tensorflow_datasets.text.glue  # noqa: F401  registers glue/* builders without TF
    fields = _Fields(
        text=cfg.text_field or (spec.text_field if spec else None),
        pair=cfg.pair_field if cfg.pair_field is not None else (spec.pair_field if spec else None),
        label=cfg.label_field or (spec.label_field if spec else None),
        threshold=(cfg.label_threshold if cfg.label_threshold is not None
                   else (spec.label_threshold if spec else None)))
    if fields.text is None or fields.label is None:
        raise ValueError(f"TFDS dataset {cfg.name!r} has no built-in field defaults; set "
                         "data.text_field and data.label_field")
    features = tfds.builder(cfg.name, data_dir=cfg.tfds_data_dir).info.features
    wanted = [f for f in (fields.text, fields.pair, fields.label) if f is not None]
    missing = [w for w in wanted if w not in features]
    if missing:
        raise ValueError(f"TFDS {cfg.name}: missing feature(s) {missing}; available: {sorted(features)}")

    label_names = None if cfg.label_names is None else tuple(cfg.label_names)
    if label_names is None and fields.threshold is None and hasattr(features[fields.label], "names"):
        label_names = tuple(features[fields.label].names)  # a ClassLabel
    if label_names is None and spec is not None and spec.label_names is not None:
        label_names = spec.label_names
    if label_names is None:
        raise ValueError(f"TFDS {cfg.name}: label field {fields.label!r} is not a ClassLabel; set "
                         "data.label_names")
    reader = spec.reader if spec is not None else "data_source"

    def read_split(split: str):
        if reader == "data_source":
            try:
                return tfds.data_source(cfg.name, split=split, data_dir=cfg.tfds_data_dir)
            except Exception as e:  # e.g. data prepared as tfrecord, not array_record
                log.warning("tfds.data_source(%r, %r) failed (%s: %s); reading with tfds.load",
                            cfg.name, split, type(e).__name__, e)
        return _tfds_load_records(tfds, cfg.name, split, cfg.tfds_data_dir, wanted)

    return _split_datasets(cfg, read_split, fields, label_names,
                           lambda split: f"tfds:{cfg.name}:{split}")


def _tfds_load_records(tfds, name: str, split: str, data_dir: str | None,
                       wanted: list[str]) -> list[dict[str, Any]]:
    """All rows of a split via tf.data, in file order (no shuffling), keeping `wanted` fields."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"reading TFDS {name!r} needs TensorFlow: pip install 'tracin_jax[tfds]' "
                          "(tensorflow-cpu)") from e
    try:
        tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerator JAX uses
    except RuntimeError:
        pass  # devices already initialised by an earlier call
    ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=False, shuffle_files=False)
    return [{w: ex[w] for w in wanted} for ex in tfds.as_numpy(ds)]
