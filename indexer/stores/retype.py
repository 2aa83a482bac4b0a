"""Changing a declared field's type in place, when every stored value of it converts.

A field keeps its type while values are written (a catalog re-run, the write API); changing it is an
explicit act (`clipsearch index CATALOG --field price:float` when `price` is declared keyword). Every
point's value is converted with the one rule of indexer.fieldtypes; if any value does not convert,
nothing changes and the error says how many and which. Otherwise the field is undeclared (the stores
drop its native index), the payloads are rewritten, and the field is declared again with its new type
(the stores index it afresh from the payloads). Work: one scan of the collection, one payload write
per point holding the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from indexer.errors import SchemaError
from indexer.fieldtypes import FieldType, convert
from indexer.stores.base import Record, VectorStore

_PAGE = 1024  # payloads written at once


def retype_field(store: VectorStore, name: str, kind: FieldType,
                 rewritten: Callable[[Record], bool] | None = None) -> int:
    """Make declared field `name` of type `kind`, converting every stored value; the number of values
    converted (those of `rewritten` points not counted). SchemaError (nothing changed) when some value
    does not convert.
    `rewritten`: points the caller writes again next (a catalog's own points, from the file): their
    value is dropped instead of converted."""
    schema = store.schema
    old = schema.field_type(name)
    if old == kind:
        return 0
    converted: dict[str, dict[str, Any]] = {}
    misfits: list[str] = []
    count = 0
    for record in store.scan():
        metadata = record.payload.get("metadata", {})
        if name not in metadata:
            continue
        rest = {k: v for k, v in metadata.items() if k != name}
        if rewritten is not None and rewritten(record):
            converted[record.id] = {**record.payload, "metadata": rest}
            continue
        count += 1
        try:
            value = convert(metadata[name], kind, name)
        except ValueError as exc:
            misfits.append(f"{record.payload.get('uri') or record.id}: {str(exc).split(': ', 1)[-1]}")
            continue
        kept = {**rest, name: value} if value is not None else rest
        converted[record.id] = {**record.payload, "metadata": kept}
    if misfits:
        shown = "; ".join(misfits[:3]) + ("; ..." if len(misfits) > 3 else "")
        raise SchemaError(
            f"field {name!r} cannot become {kind}: {len(misfits)} of its {count} stored values do not "
            f"convert ({shown}); fix or remove those, or keep {name!r} {old}"
        )
    target = schema.with_field_type(name, kind)
    store.set_schema(schema.without_field(name))
    ids = list(converted)
    for start in range(0, len(ids), _PAGE):
        store.set_payloads({i: converted[i] for i in ids[start:start + _PAGE]})
    store.set_schema(target)
    store.flush()
    return count - len(misfits)
