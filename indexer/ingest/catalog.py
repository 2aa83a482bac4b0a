"""Product catalogs (CSV, JSONL, Parquet) read into rows of images, text and typed metadata.

A column mapping names the id column, the image column(s) and the text columns; every other column
becomes a metadata field whose type is inferred from all its values (bool, integer, float,
datetime, geo for {"lat", "lon"} objects, else keyword) unless overridden (`--field price:float`)
or already declared in the collection (a field keeps its type). A row that cannot be used (no id,
no image, a value that does not fit its field's type, a duplicate) becomes a `BadRow` with its
row number and the reason; the others are read.

Row numbers point into the file: the line where the record starts for CSV (the header is line 1)
and JSONL, the 1-based row for Parquet. Image cells hold a path (relative to the catalog's folder,
or absolute) or an http(s) URL; a cell may hold several, as a JSON list or separated by `|`, and
several image columns may be named. Field names are the column names with characters other than
letters, digits, `_`, `.` and `-` replaced by `_`; the id is stored as `product_id`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from indexer.errors import BadInput
from indexer.ingest.bounds import check_metadata
from indexer.schema import FIELD_TYPES, FieldType
from indexer.settings import LimitsSettings

CATALOG_FORMATS: dict[str, str] = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"
}
PRODUCT_ID = "product_id"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # a scheme: http:, https:, file:, data: ...
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")  # leading zeros mean a code (zip, SKU): keyword
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # what converts to a float
_FLOAT_LOOKING = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # infers one
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?)?")
_TRUE, _FALSE = frozenset({"true", "yes", "y", "1"}), frozenset({"false", "no", "n", "0"})
_INT64 = 2**63


def is_catalog(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in CATALOG_FORMATS


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns are the id, the images and the text; type overrides by column or field name."""

    id_column: str = "id"
    image_columns: tuple[str, ...] = ("image",)
    text_columns: tuple[str, ...] = ()
    fields: Mapping[str, FieldType] = field(default_factory=dict)

    @classmethod
    def from_flags(
        cls,
        id_column: str | None = None,
        image_columns: Sequence[str] = (),
        text_columns: str | None = None,
        fields: Sequence[str] = (),
    ) -> ColumnMapping:
        """From the `index` flags: --image-column repeatable or a comma list, --text-columns a comma
        list, --field NAME:TYPE repeatable."""
        images = tuple(c.strip() for value in image_columns for c in value.split(",") if c.strip())
        texts = tuple(c.strip() for c in (text_columns or "").split(",") if c.strip())
        overrides: dict[str, FieldType] = {}
        for spec in fields:
            name, _, kind = spec.rpartition(":")
            if not name.strip() or kind.strip() not in FIELD_TYPES:
                raise BadInput(
                    f"--field {spec!r}: write NAME:TYPE with TYPE one of {', '.join(FIELD_TYPES)}"
                )
            overrides[name.strip()] = kind.strip()  # type: ignore[assignment]  # checked just above
        return cls(id_column or "id", images or ("image",), texts, overrides)


@dataclass(frozen=True)
class CatalogRow:
    row: int
    product_id: str
    images: tuple[str, ...]  # absolute paths or URLs, as given (resolved against the catalog's folder)
    metadata: dict[str, Any]  # product_id, the text fields and the other columns, typed


@dataclass(frozen=True)
class BadRow:
    row: int
    reason: str


@dataclass
class Catalog:
    path: Path  # absolute
    rows: list[CatalogRow]
    bad: list[BadRow]
    fields: dict[str, FieldType]  # every field the rows may carry, with its type
    text_fields: tuple[str, ...]  # the fields holding the text columns
    # Fields the mapping names (the id, --text-columns, --field): indexed whatever the field cap.
    named_fields: tuple[str, ...] = ()

    def text_of(self, row: CatalogRow) -> str:
        """The row's text columns as one string (what decides, with the image, whether to re-embed)."""
        return "\n".join(str(row.metadata.get(name, "")) for name in self.text_fields)


def read_catalog(
    path: str | os.PathLike[str], mapping: ColumnMapping, declared: Mapping[str, FieldType] | None = None,
    limits: LimitsSettings | None = None,
) -> Catalog:
    """Read and type a catalog; `declared`: the collection's fields, whose types are kept. `limits`
    (the settings' by default): a catalog with more columns than they allow is refused before its rows
    are typed, and a row whose metadata is larger is a bad row."""
    limits = limits or LimitsSettings()
    path = Path(os.path.abspath(path))
    kind = CATALOG_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BadInput(f"{path}: not a catalog; use a .csv, .jsonl or .parquet file")
    if not path.is_file():
        raise BadInput(f"no such catalog file: {path}")
    columns, records = _READERS[kind](path)
    if len(columns) > limits.catalog_columns:
        raise BadInput(f"{path}: {len(columns)} columns; a catalog may have {limits.catalog_columns} "
                       "(CLIPSEARCH_LIMITS_CATALOG_COLUMNS)")
    layout = _Layout(columns, mapping, dict(declared or {}), path)
    types = layout.types(record for _, record in records if not isinstance(record, str))
    rows, bad = [], []
    seen: dict[tuple[str, str], int] = {}
    for number, record in records:
        if isinstance(record, str):
            bad.append(BadRow(number, record))
            continue
        try:
            row = layout.row(number, record, types)
            check_metadata(row.metadata, limits)
        except (ValueError, BadInput) as exc:
            bad.append(BadRow(number, str(exc)))
            continue
        duplicate = next((seen[(row.product_id, i)] for i in row.images if (row.product_id, i) in seen), None)
        if duplicate is not None:
            bad.append(BadRow(number, f"duplicate: product {row.product_id!r} with the same image is on "
                                      f"row {duplicate}"))
            continue
        seen.update({(row.product_id, image): number for image in row.images})
        rows.append(row)
    fields = {PRODUCT_ID: "keyword", **types}
    overridden = [layout.names[c] for c in layout.overrides if c in layout.names]
    named = (PRODUCT_ID, *layout.text_fields, *overridden)
    return Catalog(path, rows, bad, fields, layout.text_fields, tuple(dict.fromkeys(named)))


# --- reading each format: (columns, [(row number, record or the reason it is unreadable)]) -------

Records = list[tuple[int, "dict[str, Any] | str"]]


def _read_csv(path: Path) -> tuple[list[str], Records]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        first = file.readline()
        # The delimiter the header uses most: European spreadsheets write ';', some exports tabs.
        delimiter = max(",;\t", key=first.count) if first.strip() else ","
        file.seek(0)
        reader = csv.reader(file, delimiter=delimiter)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise BadInput(f"{path}: the catalog is empty (no header line)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BadInput(f"{path}: unreadable header: {exc}") from None
        records: Records = []
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                records.append((start, f"unreadable CSV: {exc}"))
                continue
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(cells) > len(header):
                records.append((start, f"{len(cells)} cells, but the header names {len(header)} columns"))
                continue
            # a short record leaves its last columns empty
            cells = cells + [""] * (len(header) - len(cells))
            record = {name: cell for name, cell in zip(header, cells, strict=True) if cell.strip()}
            records.append((start, record))
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], Records]:
    columns: dict[str, None] = {}
    records: Records = []
    with open(path, encoding="utf-8-sig", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                records.append((number, f"not valid JSON: {exc}"))
                continue
            if not isinstance(record, dict):
                records.append((number, f"not a JSON object but {type(record).__name__}"))
                continue
            columns.update(dict.fromkeys(record))
            records.append((number, {k: v for k, v in record.items() if v not in (None, "", [])}))
    return list(columns), records


def _read_parquet(path: Path) -> tuple[list[str], Records]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid, OSError...
        raise BadInput(f"{path}: unreadable Parquet file: {exc}") from None
    records: Records = []
    number = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            number += 1
            records.append((number, {k: _plain(v) for k, v in record.items() if v not in (None, "", [])}))
    return list(parquet.schema_arrow.names), records


def _plain(value: Any) -> Any:
    """Parquet's Python values as JSON's: decimals as floats, dates as datetimes, bytes as text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value if v is not None]
    return value


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


# --- columns, types and values ------------------------------------------------------------------


def field_name(column: str) -> str:
    """A column's field name: a letter first, then letters, digits, '_', '.', '-' (64 at most)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", column.strip()).strip("_")
    if not name or not name[0].isalpha():
        name = "f_" + name
    return name[:64]


class _Layout:
    """The mapping checked against the catalog's columns: which column is what, and its field name."""

    def __init__(self, columns: list[str], mapping: ColumnMapping, declared: dict[str, FieldType],
                 path: Path) -> None:
        self.declared, self.path = declared, path
        listed = ", ".join(repr(c) for c in columns) or "none"
        for flag, wanted in (("--id-column", [mapping.id_column]), ("--image-column", mapping.image_columns),
                             ("--text-columns", mapping.text_columns)):
            for column in wanted:
                if column not in columns:
                    raise BadInput(f"{path}: no column {column!r} for {flag} (columns: {listed})")
        self.id_column, self.image_columns = mapping.id_column, tuple(mapping.image_columns)
        self.overrides: dict[str, FieldType] = {}
        by_field = {field_name(c): c for c in columns}
        for name, kind in mapping.fields.items():
            column = name if name in columns else by_field.get(name)
            if column is None:
                raise BadInput(
                    f"--field {name}:{kind}: the catalog has no column {name!r} (columns: {listed})"
                )
            self.overrides[column] = kind
        texts = [*mapping.text_columns, *(c for c, k in self.overrides.items() if k == "text")]
        self.text_columns = tuple(dict.fromkeys(c for c in texts if c != self.id_column))
        skipped = {self.id_column, *self.image_columns}
        self.columns = [c for c in columns if c not in skipped]  # text columns and metadata columns
        self.names = {c: field_name(c) for c in self.columns}
        self._check_names()
        self.text_fields = tuple(self.names[c] for c in self.text_columns)

    def _check_names(self) -> None:
        owners: dict[str, str] = {}
        for column, name in self.names.items():
            if name == PRODUCT_ID:
                raise BadInput(f"{self.path}: column {column!r} would overwrite the product id field "
                               f"{PRODUCT_ID!r}; make it the --id-column or rename it")
            if name in owners:
                raise BadInput(f"{self.path}: columns {owners[name]!r} and {column!r} both become field "
                               f"{name!r}; rename one")
            owners[name] = column
        for column, kind in self.overrides.items():
            if column in self.names:
                self._check_declared(self.names[column], kind)
            elif column == self.id_column and kind != "keyword":
                raise BadInput(f"--field {column}:{kind}: the id column is always a keyword")

    def _check_declared(self, name: str, kind: FieldType) -> None:
        if name in self.declared and self.declared[name] != kind:
            raise BadInput(f"field {name!r} is already declared as {self.declared[name]} in this collection "
                           f"and a field keeps its type; index into a new --collection to change it")

    def types(self, records: Iterator[dict[str, Any]]) -> dict[str, FieldType]:
        """Each field's type: text columns, then overrides, then the collection's, then inferred."""
        kinds: dict[str, set[str]] = {c: set() for c in self.columns}
        for record in records:
            for column in self.columns:
                if column in record:
                    for value in _elements(record[column]):
                        kinds[column].add(_kind_of(value))
        types: dict[str, FieldType] = {}
        for column in self.columns:
            name = self.names[column]
            if column in self.text_columns:
                kind: FieldType = "text"
                self._check_declared(name, kind)
            else:
                kind = self.overrides.get(column) or self.declared.get(name) or _infer(kinds[column])
            types[name] = kind
        return types

    def row(self, number: int, record: dict[str, Any], types: dict[str, FieldType]) -> CatalogRow:
        product_id = record.get(self.id_column)
        if isinstance(product_id, (list, dict)) or product_id is None or not str(product_id).strip():
            raise ValueError(f"missing id (column {self.id_column!r})")
        images = tuple(dict.fromkeys(
            self._resolve(ref) for column in self.image_columns for ref in _image_refs(record.get(column))
        ))
        if not images:
            raise ValueError(f"no image (column {', '.join(repr(c) for c in self.image_columns)})")
        metadata: dict[str, Any] = {PRODUCT_ID: str(product_id).strip()}
        for column in self.columns:
            if column in record:
                name = self.names[column]
                value = convert(record[column], types[name], column)
                if value is not None:
                    metadata[name] = value
        return CatalogRow(number, metadata[PRODUCT_ID], images, metadata)

    def _resolve(self, ref: str) -> str:
        if _URL.match(ref) and not re.match(r"^[A-Za-z]:[\\/]", ref):  # C:\ is a Windows path
            return ref
        return os.path.normpath(os.path.join(self.path.parent, os.path.expanduser(ref)))


def _image_refs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                return [text]
        else:
            return [part.strip() for part in text.split("|") if part.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [str(value).strip()]


def _elements(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _kind_of(value: Any) -> str:
    """What one value looks like: bool, integer, float, datetime, geo or keyword."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer" if -_INT64 <= value < _INT64 else "float"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "keyword"
    if isinstance(value, (datetime, date)):
        return "datetime"
    if isinstance(value, dict):
        return "geo" if _geo(value) is not None else "keyword"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return "bool"
        if _INT.fullmatch(text):
            return "integer" if -_INT64 <= int(text) < _INT64 else "keyword"
        if _FLOAT_LOOKING.fullmatch(text):
            return "float"
        if _DATE.fullmatch(text) and _datetime(text) is not None:
            return "datetime"
    return "keyword"


def _infer(kinds: set[str]) -> FieldType:
    if not kinds or len(kinds) == 1 and next(iter(kinds)) == "keyword":
        return "keyword"
    if len(kinds) == 1:
        return next(iter(kinds))  # type: ignore[return-value]  # one of the kinds _kind_of answers
    if kinds == {"integer", "float"}:
        return "float"
    return "keyword"


def convert(value: Any, kind: FieldType, column: str) -> Any:
    """A cell as a value of a field of type `kind` (lists element-wise; None when nothing is left);
    ValueError naming the column and the value when it does not fit."""
    if kind == "text":
        parts = [str(v) for v in _elements(value) if v is not None]
        return " ".join(parts) or None
    if isinstance(value, list):
        values = [convert(v, kind, column) for v in value]
        values = [v for v in values if v is not None]
        return values or None
    converted = _CONVERTERS[kind](value)
    if converted is None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"column {column!r}: {shown} is not {article} {kind}")
    return converted


def _keyword(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value).strip()


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            value = int(text)
        elif _FLOAT.fullmatch(text) and float(text).is_integer():
            value = int(float(text))
    return value if isinstance(value, int) and -_INT64 <= value < _INT64 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    return True if text in _TRUE else False if text in _FALSE else None


def _datetime(value: Any) -> str | None:
    """RFC 3339 in UTC ("...Z"); a time without a zone is taken as UTC, a date as its midnight."""
    if isinstance(value, str):
        text = value.strip()
        if not _DATE.fullmatch(text):
            return None
        try:
            value = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        return None
    moment = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def _geo(value: Any) -> dict[str, float] | None:
    """{"lat", "lon"} from such an object or a "lat,lon" string, in range."""
    if isinstance(value, str) and value.count(",") == 1:
        lat_text, lon_text = value.split(",")
        value = {"lat": _float(lat_text), "lon": _float(lon_text)}
    if not isinstance(value, dict) or set(value) != {"lat", "lon"}:
        return None
    lat, lon = _float(value["lat"]), _float(value["lon"])
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"lat": lat, "lon": lon}


_CONVERTERS = {
    "keyword": _keyword, "integer": _integer, "float": _float, "bool": _bool, "datetime": _datetime,
    "geo": _geo,
}
