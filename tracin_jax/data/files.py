"""Local data files → rows: csv / tsv (with or without a header), jsonl, parquet.

`read_table(path, fmt, ...)` reads one file into a `Table` of rows (dicts keyed by the
wanted field names); `format_for(path)` picks the format from the file's extension
(`EXTENSIONS`). Rows are numbered from 0 in file order, not counting a header or
blank lines: the row number is the example id.

- csv: standard quoting; tsv: tab separated, no quoting (the GLUE layout). Both start
  with a header row naming the columns, unless `columns` names them (then the file has
  no header and every row has exactly those columns). Text is decoded with `encoding`;
  an undecodable byte is a `DataError` naming the row and its byte offset.
- jsonl: one JSON object per line (blank lines skipped), decoded with `encoding`.
- parquet: read with `pyarrow.parquet`; strings are UTF-8 by the format.

A file holds either text or token ids, the same in every row. It is pre-tokenised when
it has an `input_ids` column (for jsonl: when its first row has an `input_ids` key);
then every row needs `input_ids` (a list of ints; in csv / tsv a string of ints
separated by spaces or commas, optionally in brackets) and may have `attention_mask`
(0/1) and `token_type_ids` of the same length (if the file has them, every row does).
The text field is then optional (kept for display when present, else empty).
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tracin_jax.errors import ConfigError, DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
TOKEN_FIELDS = ("input_ids", "attention_mask", "token_type_ids")
_INT_RE = re.compile(r"[+-]?\d+")
_SEQ_SPLIT = re.compile(r"[\s,]+")
_ENCODING_HINT = "set data.encoding (e.g. --config.data.encoding=latin-1) or fix the file"
_MIXED_HINT = "a file holds text in every row or input_ids in every row; split it, or tokenise every row"


@dataclasses.dataclass
class Table:
    """The rows of one file. `rows[i]` maps each wanted field the file has (and, when
    `pretokenized`, the token fields as int64 arrays) to its value."""

    path: str
    rows: list[dict[str, Any]]
    pretokenized: bool
    has_text: bool  # the file has the text field (always, unless pretokenized)
    has_pair: bool  # the file has the pair field

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def format_for(path: str | Path) -> str:
    """The reader for `path` by its extension (`EXTENSIONS`)."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(f"{path}: cannot tell the file format from the extension {suffix!r}; "
                          f"known: {sorted(EXTENSIONS)}",
                          "rename the file, or set data.source to one of csv, tsv, jsonl, parquet")
    return EXTENSIONS[suffix]


def check_encoding(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ConfigError(f"data.encoding={encoding!r} is not a known text encoding",
                          "use e.g. utf-8, latin-1 or cp1252") from None


def read_table(path: str | Path, fmt: str, *, text: str, pair: str | None, label: str,
               columns: tuple[str, ...] | None = None, encoding: str = "utf-8",
               split: str = "") -> Table:
    """Reads `path` as `fmt` (one of `FORMATS`), keeping fields `text`, `pair`, `label`.

    `columns`: csv / tsv only; None: the first row is a header, else the file has no
    header and these are its column names in order. `split` only names the split in
    errors. Raises `DataError` for an unreadable file, a missing column, mixed text and
    token-id rows, malformed ids, or a file without rows.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown file format {fmt!r}; expected one of {FORMATS}")

    def nothing(note: str) -> DataError:
        return DataError(f"{path}: split {split!r} has no rows to read ({note})",
                         "point data.files at a file with examples")

    if fmt in ("csv", "tsv"):
        header, records, note = _read_delimited(path, fmt, columns, encoding)
        if not records:
            raise nothing(note)
        named = "the header has" if columns is None else "data.columns names"
        table = _table_from_records(path, header, records, text, pair, label, named)
    elif fmt == "jsonl":
        table, note = _read_jsonl(path, text, pair, label, encoding), "the file has no JSON lines"
    else:
        table, note = _read_parquet(path, text, pair, label), "the file has no rows"
    if not table.rows:
        raise nothing(note)
    return table


# ----------------------------------------------------------------------------- decoding


def _decode(path: Path, encoding: str, row_of_offset) -> str:
    """The file's text; an undecodable byte → DataError naming the row and byte offset."""
    encoding = check_encoding(encoding)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        prefix = data[:e.start].decode(encoding, errors="replace")
        where = row_of_offset(prefix)
        raise DataError(f"{path}: {where} (byte offset {e.start}) is not valid {encoding}",
                        _ENCODING_HINT) from None
    return text.removeprefix("\ufeff")  # a byte order mark is not part of the first column name


def _csv_kwargs(fmt: str) -> dict:
    """csv: standard quoting; tsv: GLUE layout (tab separated, no quoting)."""
    return dict(delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(delimiter=",")


# ----------------------------------------------------------------------------- csv / tsv


def _read_delimited(path: Path, fmt: str, columns: tuple[str, ...] | None,
                    encoding: str) -> tuple[list[str], list[list[str]], str]:
    """(header, data records without blank lines, why-empty note)."""
    kwargs = _csv_kwargs(fmt)
    has_header = columns is None

    def row_of_offset(prefix: str) -> str:
        # The record holding the bad byte is the last one of prefix + a marker character.
        n = sum(1 for rec in csv.reader(io.StringIO(prefix + "X", newline=""), **kwargs) if rec)
        row = n - 1 - int(has_header)
        return "the header row" if row < 0 else f"row {row}"

    text = _decode(path, encoding, row_of_offset)
    reader = csv.reader(io.StringIO(text, newline=""), **kwargs)
    try:
        records = [rec for rec in reader if rec]  # a blank line is not a row
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num} cannot be parsed as {fmt} ({e})") from None
    if has_header:
        if not records:
            return [], [], "the file is empty"
        header, records = records[0], records[1:]
        return header, records, "the file holds only a header"
    header = list(columns)
    if records and records[0] == header:
        raise DataError(f"{path}: the first row {records[0]} is a header, but data.columns={tuple(header)} "
                        "says the file has none",
                        "set data.columns=None for a file with a header row")
    return header, records, "the file is empty"


def _table_from_records(path: Path, header: list[str], records: list[list[str]], text: str,
                        pair: str | None, label: str, named: str) -> Table:
    pretokenized = "input_ids" in header
    required = [label, "input_ids"] if pretokenized else [text] + ([pair] if pair else []) + [label]
    _check_columns(path, header, required)
    wanted = [text, pair, label] + (list(TOKEN_FIELDS) if pretokenized else [])
    index = {w: header.index(w) for w in dict.fromkeys(wanted) if w is not None and w in header}
    dup = [w for w in index if header.count(w) > 1]
    if dup:
        raise DataError(f"{path}: column(s) {dup} appear more than once in {header}",
                        "rename the duplicate columns")
    rows = []
    for r, rec in enumerate(records):
        if len(rec) != len(header):
            raise DataError(f"{path}: row {r} has {len(rec)} fields but {named} {len(header)} "
                            f"({header})", "fix the row (a stray delimiter or quote?)")
        row = {w: rec[c] for w, c in index.items()}
        if pretokenized:
            for key in TOKEN_FIELDS:
                if key in row and not row[key].strip():
                    row[key] = None  # an empty cell: no value
        rows.append(row)
    return _finish(path, rows, set(header), text, pair, pretokenized)


def _check_columns(path: Path, available, required: list[str]) -> None:
    missing = [w for w in required if w not in available]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; available columns: {list(available)}",
                        "set data.text_field / data.pair_field / data.label_field to the file's "
                        "column names (data.columns for a csv / tsv file without a header)")


# ----------------------------------------------------------------------------- jsonl


def _read_jsonl(path: Path, text: str, pair: str | None, label: str, encoding: str) -> Table:
    def row_of_offset(prefix: str) -> str:
        lines = (prefix + "X").split("\n")
        row = sum(1 for line in lines if line.strip()) - 1
        return f"row {row} (line {len(lines)})"

    content = _decode(path, encoding, row_of_offset)
    rows, first_keys, pretokenized = [], None, False
    for line_no, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {line_no} is not JSON: {e}", "one JSON object per line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {line_no} is {type(rec).__name__}, expected an object",
                            "one JSON object per line")
        r = len(rows)
        has_ids = rec.get("input_ids") is not None
        if first_keys is None:
            first_keys, pretokenized = set(rec), has_ids
        elif has_ids != pretokenized:
            raise DataError(f"{path}: row {r} (line {line_no}) {'has' if has_ids else 'has no'} input_ids "
                            f"but row 0 {'has' if pretokenized else 'has no'} input_ids", _MIXED_HINT)
        required = [label, "input_ids"] if pretokenized else [text] + ([pair] if pair else []) + [label]
        missing = [w for w in required if w not in rec]
        if missing:
            raise DataError(f"{path}: row {r} (line {line_no}) is missing column(s) {missing}; "
                            f"available columns: {sorted(rec)}",
                            "set data.text_field / data.pair_field / data.label_field to the file's keys")
        keep = [text, pair, label] + (list(TOKEN_FIELDS) if pretokenized else [])
        rows.append({w: rec.get(w) for w in keep if w is not None and w in rec})
    return _finish(path, rows, first_keys or set(), text, pair, pretokenized)


# ----------------------------------------------------------------------------- parquet


def _read_parquet(path: Path, text: str, pair: str | None, label: str) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise ImportError("reading parquet files needs pyarrow: pip install pyarrow") from e
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a corrupt or non-parquet file
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    pretokenized = "input_ids" in names
    required = [label, "input_ids"] if pretokenized else [text] + ([pair] if pair else []) + [label]
    _check_columns(path, names, required)
    keep = [w for w in dict.fromkeys([text, pair, label] + (list(TOKEN_FIELDS) if pretokenized else []))
            if w is not None and w in names]
    try:
        table = pf.read(columns=keep)
    except Exception as e:
        raise DataError(f"{path}: cannot read columns {keep} ({type(e).__name__}: {e})") from None
    values = {w: table.column(w).to_pylist() for w in keep}
    rows = [{w: values[w][i] for w in keep} for i in range(table.num_rows)]
    return _finish(path, rows, set(names), text, pair, pretokenized)


# ----------------------------------------------------------------------------- token ids


def _finish(path: Path, rows: list[dict[str, Any]], available: set, text: str, pair: str | None,
            pretokenized: bool) -> Table:
    """Checks and parses the token fields of a pre-tokenised file (every row alike)."""
    if pretokenized:
        optional = [k for k in TOKEN_FIELDS[1:] if k in available]
        for r, row in enumerate(rows):
            if row.get("input_ids") is None:
                has_text = bool(row.get(text))
                raise DataError(f"{path}: row {r} has no input_ids"
                                f"{' but has text' if has_text else ''}, while row 0 has input_ids",
                                _MIXED_HINT)
            ids = row["input_ids"] = parse_int_sequence(row["input_ids"], path, r, "input_ids")
            for key in optional:
                if row.get(key) is None:
                    raise DataError(f"{path}: row {r} has no {key}, while the file has a {key} column",
                                    f"give every row a {key}, or drop the column")
                seq = row[key] = parse_int_sequence(row[key], path, r, key)
                if seq.shape != ids.shape:
                    raise DataError(f"{path}: row {r} has {seq.size} {key} values for {ids.size} input_ids",
                                    f"{key} must be as long as input_ids")
                if key == "attention_mask" and not np.isin(seq, (0, 1)).all():
                    raise DataError(f"{path}: row {r} attention_mask holds {sorted(set(seq.tolist()))}, "
                                    "not only 0 and 1", "fix the attention_mask")
            for key in TOKEN_FIELDS[1:]:
                if key not in optional:
                    row.pop(key, None)
    return Table(str(path), rows, pretokenized, has_text=text in available,
                 has_pair=pair is not None and pair in available)


def parse_int_sequence(value: Any, path: str | Path, row: int, field: str) -> np.ndarray:
    """A list of non-negative ints (or a string of them, space / comma separated, optional
    brackets) → int64 array; anything else is a `DataError` naming file, row and value."""
    if isinstance(value, str):
        body = value.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        items = [t for t in _SEQ_SPLIT.split(body) if t]
        bad = [t for t in items if not _INT_RE.fullmatch(t)]
        if bad:
            raise DataError(f"{path}: row {row} field {field!r} holds {bad[0]!r}, not an integer",
                            f"{field} must be integers separated by spaces or commas")
        ints = [int(t) for t in items]
    elif isinstance(value, (list, tuple, np.ndarray)):
        ints = []
        for v in (value.tolist() if isinstance(value, np.ndarray) else value):
            if isinstance(v, bool) or not isinstance(v, int):
                raise DataError(f"{path}: row {row} field {field!r} holds {v!r}, not an integer",
                                f"{field} must be a list of integers")
            ints.append(v)
    else:
        raise DataError(f"{path}: row {row} field {field!r} is {type(value).__name__} {value!r}, "
                        "expected a list of integers", f"{field} must be a list of integers")
    try:
        arr = np.asarray(ints, np.int64).reshape(-1)
    except OverflowError:
        raise DataError(f"{path}: row {row} field {field!r} holds an integer beyond int64",
                        "token ids are vocabulary indices") from None
    if arr.size and arr.min() < 0:
        raise DataError(f"{path}: row {row} field {field!r} holds {int(arr.min())} < 0",
                        "token ids, masks and types are non-negative integers")
    return arr
