"""Text sources → `TextDataset` splits: synthetic, TFDS, local csv / tsv / jsonl / parquet files.

`load_splits(data_cfg)` is the one entry point. Every source goes through the
same steps: raw records of a split (a random-access sequence of mappings) →
seeded subsample of row positions (`max_train` / `max_eval`) → decode, map labels
and check the selected rows → `TextDataset` with `ids` = source row index.
Validation therefore applies to the selected rows (label names, when inferred, are
inferred from all rows of both splits).

TFDS: `ag_news_subset` (field `description`, 4 classes), `glue/mnli` (premise /
hypothesis pairs, eval split `validation_matched`), `glue/sst2` (field `sentence`,
labels negative / positive, eval split `validation`) and `wikipedia_toxicity_subtypes`
(label = `toxicity >= 0.5`) have built-in field defaults (docs/method.md "Paper settings");
any other TFDS name works given `text_field` and `label_field`.

Local files (`tracin_jax.data.files`): `data.files` maps `"train"` and `"eval"` (or
the split names `train_split` / `eval_split`) to paths. `source` = `csv`, `tsv`,
`jsonl` or `parquet` reads every file in that format; `files` picks the reader by
each file's extension (.csv, .tsv, .jsonl / .json (JSON lines), .parquet).
csv / tsv files start with a header naming the columns unless `data.columns` names
them (then the file has no header). csv / tsv / jsonl are decoded with
`data.encoding` (default utf-8); an undecodable byte is a `DataError` naming the
file, row and byte offset. Field defaults: `text_field="text"`, `label_field="label"`.

Pre-tokenised files: a file with an `input_ids` column (jsonl: whose first row has
an `input_ids` key) holds token ids instead of text, in every row: a list of ints
(csv / tsv: ints separated by spaces or commas), already with the model's special
tokens, plus optional `attention_mask` / `token_type_ids` of the same length. The
split is then a `TextDataset` with `token_ids` (texts empty unless the file also has
the text field) and `encode_dataset` pads the ids to `[N, L]` with the tokenizer's
pad id instead of tokenizing. A row without ids in such a file (or with ids in a
text file) is a `DataError`; train and eval must both be text or both token ids.
Rows with empty text / no ids: `DataError`, or skipped with `drop_empty=True`.

Labels are strict: with `label_names` set, a label must be one of them or an integer
in `[0, len(label_names))`; without, integer labels must cover `0..max` (a stray
label such as 7 in a binary task is a `DataError` naming file, row and value) and
string labels become sorted names. Inferred names are logged as a warning. A split
that ends up with no rows (an empty or header-only file, `max_train=0`, every row
dropped) is a `DataError` naming the file and split.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from tracin_jax.data import files as file_io
from tracin_jax.data.dataset import TextDataset, subsample_indices
from tracin_jax.data.synthetic import default_synthetic_config, make_synthetic
from tracin_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# "none": a run with no data of its own (a model imported from checkpoints); its splits come
# from files attached later (tracin-jax grads --data FILE --split NAME).
SOURCES = ("synthetic", "tfds", "csv", "tsv", "jsonl", "parquet", "files", "none")
_TRAIN_STREAM, _EVAL_STREAM = 0, 1  # subsampling seeds [seed, stream]: train and eval differ
_INT_RE = re.compile(r"[+-]?\d+")
_LABEL_HINT = "set data.label_names, or fix the label"


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field; configs override. Unset optional fields are typed placeholders."""
    return ml_collections.ConfigDict(dict(
        source="synthetic",  # one of SOURCES
        name="synthetic",  # TFDS name, or a label for file sources
        tfds_data_dir=placeholder(str),
        train_split="train",  # TFDS split; names the file splits
        eval_split="test",
        # "train" / "eval" (or the split names) -> path, for csv / tsv / jsonl / parquet / files;
        # predeclared so --config.data.files.train=PATH works with every config
        files=dict(train=placeholder(str), eval=placeholder(str)),
        columns=placeholder(tuple),  # csv / tsv: None = header row; else the headerless file's columns
        encoding="utf-8",  # text encoding of csv / tsv / jsonl files
        text_field=placeholder(str),  # None: the TFDS dataset's default, or "text"
        pair_field=placeholder(str),  # second segment (MNLI hypothesis) or None
        label_field=placeholder(str),  # None: the TFDS dataset's default, or "label"
        label_names=placeholder(tuple),  # None: from TFDS ClassLabel, or inferred from files
        label_threshold=placeholder(float),  # float label -> int(value >= threshold)
        max_train=placeholder(int),  # None = all rows
        max_eval=placeholder(int),
        seed=0,  # subsampling seed
        drop_empty=False,  # empty text / no ids: False -> DataError, True -> skip, counted in the log
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
    "glue/sst2": _TfdsSpec("sentence", None, "label", None, None, "load"),
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
        raise ConfigError(f"data.source={source!r} is not a data source", f"use one of {SOURCES}")
    if source == "synthetic":
        corpus = make_synthetic(data_cfg.synthetic)
        out = {
            "train": _subsample(corpus.train, data_cfg.max_train, [data_cfg.seed, _TRAIN_STREAM]),
            "eval": _subsample(corpus.eval, data_cfg.max_eval, [data_cfg.seed, _EVAL_STREAM]),
            "ground_truth": corpus.ground_truth,
        }
        for key, max_key in (("train", "max_train"), ("eval", "max_eval")):
            if not len(out[key]):
                raise DataError(f"synthetic: split {key!r} has no rows (data.{max_key}="
                                f"{data_cfg[max_key]}, data.synthetic.num_{key}="
                                f"{data_cfg.synthetic.get(f'num_{key}')})",
                                f"set data.{max_key} to None or at least 1")
        return out
    if source == "tfds":
        return _load_tfds(data_cfg)
    if source == "none":
        if data_cfg.label_names is None:
            raise ConfigError("data.source='none' needs data.label_names (the model's classes)")
        empty = lambda split: TextDataset(texts=(), text_pairs=None, labels=np.zeros(0, np.int32),
                                          ids=np.zeros(0, np.int64),
                                          label_names=tuple(data_cfg.label_names), name=f"none:{split}")
        return {"train": empty("train"), "eval": empty("eval")}
    return _load_files(data_cfg)


def _subsample(ds: TextDataset, max_n: int | None, seed) -> TextDataset:
    return ds.subset(subsample_indices(len(ds), max_n, seed))


# ----------------------------------------------------------------------------- records → dataset


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    return value


def _as_text(value: Any, field: str, row: int, where: str) -> str:
    value = _plain(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: row {row} field {field!r} is not valid utf-8 (byte {e.start} "
                            "of the field)", "fix the data") from None
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: row {row} field {field!r} is {type(value).__name__} {value!r}, "
                        "expected text", "point data.text_field / data.pair_field at a text field")
    return value


def _label_index(value: Any, fields: _Fields, names: Sequence[str] | None, row: int, where: str) -> int:
    """Maps a raw label to a class index: threshold, else name lookup, else integer."""
    value = _plain(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if fields.threshold is not None:
        try:
            return int(float(value) >= fields.threshold)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {row} label {value!r} in {fields.label!r} is not a number "
                            f"(label_threshold={fields.threshold})",
                            "fix the label, or unset data.label_threshold") from None
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
        known = "" if names is None else f" (class indices 0..{n - 1})"
        raise DataError(f"{where}: row {row} has unknown label {value!r} in field {fields.label!r}; "
                        f"known label_names: {None if names is None else tuple(names)}{known}",
                        _LABEL_HINT)
    return index


def _records_to_dataset(table: file_io.Table, positions: np.ndarray, fields: _Fields,
                        label_names: Sequence[str], drop_empty: bool, name: str,
                        split: str) -> TextDataset:
    """Decodes the rows at `positions`; ids = positions. Empty text / ids: error, or skip."""
    where, tok = table.path, table.pretokenized
    with_pairs = fields.pair is not None and (table.has_pair or not tok)
    texts, pairs, labels, ids, empty = [], [], [], [], []
    tokens = {key: [] for key in file_io.TOKEN_FIELDS}
    for pos in positions:
        row = int(pos)
        rec = table[row]
        get = rec.get if tok else rec.__getitem__  # pre-tokenised: text / pair only for display
        text = _as_text(get(fields.text), fields.text, row, where) if table.has_text else ""
        pair = _as_text(get(fields.pair), fields.pair, row, where) if with_pairs else None
        if tok:
            missing = None if rec["input_ids"].size else "input_ids"
        elif not text.strip():
            missing = fields.text
        elif pair is not None and not pair.strip():
            missing = fields.pair
        else:
            missing = None
        if missing is not None:
            if not drop_empty:
                what = "no token ids in field 'input_ids'" if tok else f"empty text in field {missing!r}"
                raise DataError(f"{where}: row {row} has {what}", "set data.drop_empty=True to skip such rows")
            empty.append(row)
            continue
        labels.append(_label_index(rec[fields.label], fields, label_names, row, where))
        texts.append(text)
        pairs.append(pair)
        ids.append(row)
        if tok:
            for key in file_io.TOKEN_FIELDS:
                if key in rec:
                    tokens[key].append(rec[key])
    if empty:
        log.warning("%s: skipped %d rows with %s (drop_empty=True), first ids %s", where, len(empty),
                    "no token ids" if tok else "empty text", empty[:10])
    if not ids:
        raise DataError(f"{where}: split {split!r} has no rows left: all {len(positions)} selected rows "
                        f"have {'no token ids' if tok else 'empty text'} and data.drop_empty=True skips them",
                        "fix the file, or select other rows")
    return TextDataset(texts=tuple(texts), text_pairs=tuple(pairs) if with_pairs else None,
                       labels=np.asarray(labels, np.int32).reshape(-1),
                       ids=np.asarray(ids, np.int64).reshape(-1),
                       label_names=tuple(label_names), name=name,
                       token_ids=tuple(tokens["input_ids"]) if tok else None,
                       token_masks=tuple(tokens["attention_mask"]) if tokens["attention_mask"] else None,
                       token_types=tuple(tokens["token_type_ids"]) if tokens["token_type_ids"] else None)


def _split_datasets(cfg, read_split, fields: _Fields, label_names) -> dict[str, TextDataset]:
    """Reads both splits, infers label names from all their rows if needed, subsamples, decodes.

    `read_split(role, split)` returns a `files.Table`-like object (`path`, `pretokenized`,
    `has_text`, `has_pair`, `len()` and row access)."""
    split_of = {"train": cfg.train_split, "eval": cfg.eval_split}
    raw = {key: read_split(key, split_of[key]) for key in ("train", "eval")}
    if raw["train"].pretokenized != raw["eval"].pretokenized:
        kind = {True: "token ids (input_ids)", False: "text"}
        raise DataError(f"{raw['train'].path} (train) holds {kind[raw['train'].pretokenized]} but "
                        f"{raw['eval'].path} (eval) holds {kind[raw['eval'].pretokenized]}",
                        "give both splits text, or both token ids from the same tokenizer")
    if label_names is None:
        label_names = _infer_label_names(raw, fields)
    out = {}
    for key, stream, max_key in (("train", _TRAIN_STREAM, "max_train"), ("eval", _EVAL_STREAM, "max_eval")):
        table, split, max_n = raw[key], split_of[key], cfg[max_key]
        positions = subsample_indices(len(table), max_n, [cfg.seed, stream])
        if not len(positions):
            raise DataError(f"{table.path}: split {split!r} has no rows left after subsampling "
                            f"(data.{max_key}={max_n})", f"set data.{max_key} to None or at least 1")
        out[key] = _records_to_dataset(table, positions, fields, label_names, cfg.drop_empty,
                                       f"{cfg.name}:{split}", split)
        log.info("%s: %d of %d rows", table.path, len(out[key]), len(table))
    return out


def _ranges(values: list[int]) -> str:
    """[2, 3, 4, 6] → 'classes 2..4, 6'; [2] → 'class 2'."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}..{v}")
            start = None
    return ("class " if len(values) == 1 else "classes ") + ", ".join(parts)


def _infer_label_names(raw: Mapping[str, Any], fields: _Fields) -> tuple[str, ...]:
    """Integer labels → ('0', ..., str(max)), every class present; string labels → sorted names.

    Reads the labels of every row of both splits; a label set with a gap (e.g. {0, 1, 7})
    or a negative or missing label is a `DataError` naming file, row and value.
    """
    if fields.threshold is not None:
        names = ("0", "1")
    else:
        entries = []  # (where, row, value), file order, train first
        seen = set()
        for table in raw.values():
            if id(table) in seen:
                continue
            seen.add(id(table))
            for row in range(len(table)):
                value = _plain(table[row][fields.label])
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise DataError(f"{table.path}: row {row} has no label in field {fields.label!r}",
                                    "fix the row")
                entries.append((table.path, row, value))

        def as_int(v):
            if isinstance(v, bool):
                return None
            if isinstance(v, int):
                return v
            if isinstance(v, float) and v.is_integer():
                return int(v)
            if isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
                return int(v)
            return None

        ints = [as_int(v) for _, _, v in entries]
        if all(i is not None for i in ints):
            counts = Counter(ints)
            present = sorted(counts)
            if present and present[0] < 0:
                where, row, _ = entries[ints.index(present[0])]
                raise DataError(f"{where}: row {row} has label {present[0]} < 0; integer labels are class "
                                "indices 0, 1, ...", _LABEL_HINT)
            missing = sorted(set(range(present[-1] + 1)) - set(present)) if present else []
            if missing:
                # the likely stray: the rarest label above the first gap (ties: the largest)
                stray = min((c for c in present if c > missing[0]), key=lambda c: (counts[c], -c))
                where, row, _ = entries[ints.index(stray)]
                raise DataError(f"{where}: labels {present} leave {_ranges(missing)} without examples "
                                f"(row {row} has label {stray})", _LABEL_HINT)
            names = tuple(str(i) for i in range(present[-1] + 1)) if present else ()
        else:
            names = tuple(sorted({str(v) for _, _, v in entries}))
    log.warning("inferred label_names %s from field %r; set data.label_names to fix their order",
                names, fields.label)
    return names


# ----------------------------------------------------------------------------- local files


def _check_columns(columns) -> tuple[str, ...] | None:
    if columns is None:
        return None
    columns = tuple(columns)
    if not columns or not all(isinstance(c, str) and c for c in columns) or len(set(columns)) != len(columns):
        raise ConfigError(f"data.columns={columns!r} must be unique, non-empty column names",
                          "e.g. --config.data.columns=\"('text', 'label')\", or None for a header row")
    return columns


def _load_files(cfg) -> dict[str, TextDataset]:
    files = {k: v for k, v in dict(cfg.files or {}).items() if v is not None}
    columns = _check_columns(cfg.get("columns", None))
    encoding = file_io.check_encoding(cfg.get("encoding", None) or "utf-8")
    if columns is not None and cfg.source in ("jsonl", "parquet"):
        raise ConfigError(f"data.columns={columns} applies to csv / tsv files, not {cfg.source}",
                          "set data.columns=None")

    def path_of(role: str, split: str) -> Path:
        keys = [k for k in dict.fromkeys((split, role)) if k in files]
        if not keys:
            also = "" if split == role else f" (nor {role!r})"
            raise ConfigError(f"data.files has no entry for split {split!r}{also}; it has {sorted(files)}",
                              f"set --config.data.files.{role}=PATH")
        if len({str(files[k]) for k in keys}) > 1:
            raise ConfigError(f"data.files[{keys[0]!r}] = {files[keys[0]]} and data.files[{keys[1]!r}] = "
                              f"{files[keys[1]]} both name the {role} split", "set only one of them")
        path = Path(str(files[keys[0]]))
        if not path.is_file():
            raise DataError(f"data.files[{keys[0]!r}] = {path} does not exist", "fix the path")
        return path

    paths = {role: path_of(role, split) for role, split in (("train", cfg.train_split),
                                                            ("eval", cfg.eval_split))}
    fields = _Fields(text=cfg.text_field or "text", pair=cfg.pair_field,
                     label=cfg.label_field or "label", threshold=cfg.label_threshold)
    label_names = None if cfg.label_names is None else tuple(cfg.label_names)
    tables = {}

    def read_split(role: str, split: str) -> file_io.Table:
        path = paths[role]
        fmt = file_io.format_for(path) if cfg.source == "files" else cfg.source
        key = (str(path.resolve()), fmt)
        if key not in tables:  # train and eval may be the same file: read it once
            tables[key] = file_io.read_table(path, fmt, text=fields.text, pair=fields.pair,
                                             label=fields.label,
                                             columns=columns if fmt in ("csv", "tsv") else None,
                                             encoding=encoding, split=split)
        return tables[key]

    return _split_datasets(cfg, read_split, fields, label_names)


def load_file(path: str | Path, *, label_names: Sequence[str] | None, text: str = "text",
              text_pair: str | None = None, label: str = "label", columns: Sequence[str] | None = None,
              encoding: str = "utf-8", fmt: str | None = None, name: str | None = None,
              drop_empty: bool = False) -> TextDataset:
    """Every row of one labelled file (csv / tsv / jsonl / parquet; text or pre-tokenised
    rows, see ``data.files``) as a ``TextDataset`` with ids = row numbers.

    ``label_names``: the model's classes; integer labels are class indices and named labels
    are looked up (None: inferred from this file, as ``load_splits`` does).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", "fix the path")
    fmt = fmt or file_io.format_for(path)
    columns = _check_columns(columns)
    table = file_io.read_table(path, fmt, text=text, pair=text_pair, label=label,
                               columns=columns if fmt in ("csv", "tsv") else None,
                               encoding=file_io.check_encoding(encoding), split=name or path.stem)
    fields = _Fields(text=text, pair=text_pair, label=label, threshold=None)
    if label_names is None:
        label_names = _infer_label_names({"file": table}, fields)
    return _records_to_dataset(table, np.arange(len(table)), fields, tuple(label_names), drop_empty,
                               name or f"file:{path.name}", name or path.stem)


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
        raise ConfigError(f"TFDS dataset {cfg.name!r} has no built-in field defaults",
                          "set data.text_field and data.label_field")
    features = tfds.builder(cfg.name, data_dir=cfg.tfds_data_dir).info.features
    wanted = [f for f in (fields.text, fields.pair, fields.label) if f is not None]
    missing = [w for w in wanted if w not in features]
    if missing:
        raise ConfigError(f"TFDS {cfg.name}: missing feature(s) {missing}; available: {sorted(features)}",
                          "set data.text_field / data.pair_field / data.label_field")

    label_names = None if cfg.label_names is None else tuple(cfg.label_names)
    if label_names is None and fields.threshold is None and hasattr(features[fields.label], "names"):
        label_names = tuple(features[fields.label].names)  # a ClassLabel
    if label_names is None and spec is not None and spec.label_names is not None:
        label_names = spec.label_names
    if label_names is None:
        raise ConfigError(f"TFDS {cfg.name}: label field {fields.label!r} is not a ClassLabel",
                          "set data.label_names")
    reader = spec.reader if spec is not None else "data_source"

    def read_split(role: str, split: str) -> file_io.Table:
        where = f"tfds:{cfg.name}:{split}"
        records = None
        if reader == "data_source":
            try:
                records = tfds.data_source(cfg.name, split=split, data_dir=cfg.tfds_data_dir)
            except Exception as e:  # e.g. data prepared as tfrecord, not array_record
                log.warning("tfds.data_source(%r, %r) failed (%s: %s); reading with tfds.load",
                            cfg.name, split, type(e).__name__, e)
        if records is None:
            records = _tfds_load_records(tfds, cfg.name, split, cfg.tfds_data_dir, wanted)
        if not len(records):
            raise DataError(f"{where}: split {split!r} has no rows to read", "choose another split")
        return file_io.Table(where, records, pretokenized=False, has_text=True,
                             has_pair=fields.pair is not None)

    return _split_datasets(cfg, read_split, fields, label_names)


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
