"""Product catalogs (CSV, JSONL, Parquet) read into rows of images, text and typed metadata.

A column mapping names the id column, the image column(s) and the text columns; every other column
becomes a metadata field whose type is inferred from all its values (indexer.fieldtypes: bool,
integer, float, datetime, geo for {"lat", "lon"} objects, else keyword) unless overridden
(`--field price:float`) or already declared in the collection (a field keeps its type unless an
override changes it: `Catalog.changes`). A row that cannot be used (no id, no image, a value that
does not fit its field's type, a duplicate) becomes a `BadRow` with its row number and the reason;
the others are read. A type that a minority of values did not fit is said in `Catalog.notes`.

The id column is a keyword field under its own field name (`sku`), and with the text columns it
is *searchable*: its values are words of the keyword (BM25) document, so an exact SKU or model
number is found by keyword and hybrid search, while `--where sku = X` and facets see the exact
value. Text columns are keyword fields too (so a brand can be a facet as well as words to search),
unless the collection already declares them `text`.

Row numbers point into the file: the line where the record starts for CSV (the header is line 1)
and JSONL, the 1-based row for Parquet. Image cells hold a path (relative to the catalog's folder,
or absolute) or an http(s) URL; a cell may hold several, as a JSON list or separated by `|`, and
several image columns may be named. Field names are the column names with characters other than
letters, digits, `_`, `.` and `-` replaced by `_`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from indexer.errors import BadInput
from indexer.fieldtypes import FIELD_TYPES, FieldType, TypeTally, article, convert
from indexer.ingest.bounds import check_metadata
from indexer.settings import LimitsSettings

CATALOG_FORMATS: dict[str, str] = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"
}
LEGACY_ID_FIELD = "product_id"  # where releases before the id column kept its name stored the id
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # a scheme: http:, https:, file:, data: ...


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
    product_id: str  # the id column's value
    images: tuple[str, ...]  # absolute paths or URLs, as given (resolved against the catalog's folder)
    metadata: dict[str, Any]  # the id field, the text fields and the other columns, typed


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
    id_field: str = "id"  # the field holding the id column
    # fields whose values are words of the keyword document: the id field and the text columns
    searchable: tuple[str, ...] = ()
    # fields whose declared type an override changes: name -> (declared type, new type)
    changes: dict[str, tuple[FieldType, FieldType]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # types some values did not fit, with the counts
    # Fields the mapping names (the id, --text-columns, --field): indexed whatever the field cap.
    named_fields: tuple[str, ...] = ()

    def text_of(self, row: CatalogRow) -> str:
        """The row's text columns as one string (what decides, with the image, whether to re-embed)."""
        return "\n".join(str(row.metadata.get(name, "")) for name in self.text_fields)


def read_catalog(
    path: str | os.PathLike[str], mapping: ColumnMapping, declared: Mapping[str, FieldType] | None = None,
    limits: LimitsSettings | None = None,
) -> Catalog:
    """Read and type a catalog; `declared`: the collection's fields, whose types are kept unless an
    override of the mapping says otherwise (`Catalog.changes`). `limits` (the settings' by default): a
    catalog with more columns than they allow is refused before its rows are typed, and a row whose
    metadata is larger is a bad row."""
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
    types = layout.types((number, record) for number, record in records if not isinstance(record, str))
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
    fields = {layout.id_field: "keyword", **types}
    searchable = tuple(dict.fromkeys(
        [layout.id_field, *(name for name in layout.text_fields if types[name] == "keyword")]
    ))
    overridden = [layout.names[c] for c in layout.overrides if c in layout.names]
    named = (layout.id_field, *layout.text_fields, *overridden)
    return Catalog(path, rows, bad, fields, layout.text_fields, layout.id_field, searchable,
                   layout.changes, layout.notes, tuple(dict.fromkeys(named)))


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
        self.id_field = field_name(self.id_column)
        self.overrides: dict[str, FieldType] = {}
        by_field = {field_name(c): c for c in columns}
        for name, kind in mapping.fields.items():
            column = name if name in columns else by_field.get(name)
            if column is None:
                raise BadInput(
                    f"--field {name}:{kind}: the catalog has no column {name!r} (columns: {listed})"
                )
            self.overrides[column] = kind
        # The id column is searchable anyway; naming it among the text columns is no mistake.
        texts = [*mapping.text_columns, *(c for c, k in self.overrides.items() if k == "text")]
        self.text_columns = tuple(dict.fromkeys(c for c in texts if c != self.id_column))
        skipped = {self.id_column, *self.image_columns}
        self.columns = [c for c in columns if c not in skipped]  # text columns and metadata columns
        self.names = {c: field_name(c) for c in self.columns}
        self.changes: dict[str, tuple[FieldType, FieldType]] = {}
        self.notes: list[str] = []
        self._check_names()
        self.text_fields = tuple(self.names[c] for c in self.text_columns)

    def _check_names(self) -> None:
        owners: dict[str, str] = {self.id_field: self.id_column}
        for column, name in self.names.items():
            if name in owners:
                what = "the id column" if owners[name] == self.id_column else "column"
                raise BadInput(f"{self.path}: {what} {owners[name]!r} and column {column!r} both become "
                               f"field {name!r}; rename one")
            owners[name] = column
        for column, kind in self.overrides.items():
            if column == self.id_column and kind != "keyword":
                raise BadInput(f"--field {column}:{kind}: the id column is always a keyword")
        declared_id = self.declared.get(self.id_field)
        if declared_id is not None and declared_id != "keyword":
            raise BadInput(f"{self.path}: field {self.id_field!r} of this collection is {declared_id}, but "
                           f"the id column {self.id_column!r} is a keyword; index into another --collection")

    def types(self, records: Iterator[tuple[int, dict[str, Any]]]) -> dict[str, FieldType]:
        """Each field's type: overrides, then the collection's, then text columns (keyword), then
        inferred. An override that differs from the collection's type is a change (`self.changes`)."""
        tallies = {c: TypeTally() for c in self.columns}
        for number, record in records:
            for column in self.columns:
                if column in record:
                    tallies[column].add(record[column], number)
        types: dict[str, FieldType] = {}
        for column in self.columns:
            name = self.names[column]
            declared = self.declared.get(name)
            override = self.overrides.get(column)
            if override is not None:
                kind: FieldType = override
                if declared is not None and declared != override:
                    self.changes[name] = (declared, override)
            elif declared is not None:
                kind = declared
            elif column in self.text_columns:
                kind = "keyword"
            else:
                inferred = tallies[column].infer()
                kind = inferred.kind
                if inferred.misfits:
                    shown = ", ".join(f"row {row}: {value!r}" for row, value in inferred.examples)
                    shown += ", ..." if inferred.misfits > len(inferred.examples) else ""
                    self.notes.append(
                        f"column {column!r} is {article(kind)} {kind} field, but {inferred.misfits} of its "
                        f"{inferred.total} values are not ({shown}): "
                        f"their rows are bad rows; fix them, or give --field {name}:keyword to keep every "
                        f"value as text"
                    )
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
        metadata: dict[str, Any] = {self.id_field: str(product_id).strip()}
        for column in self.columns:
            if column in record:
                name = self.names[column]
                value = convert(record[column], types[name], column)
                if value is not None:
                    metadata[name] = value
        return CatalogRow(number, metadata[self.id_field], images, metadata)

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
