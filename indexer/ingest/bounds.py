"""What one item write or catalog run may ask a collection for: checked before anything is stored.

An item's metadata is bounded in fields, bytes and nesting (`check_item_write`), and a collection in
the fields it indexes (`indexable_fields`): each declared field is a payload index that every write
updates and every open loads, so fields past `CLIPSEARCH_LIMITS_INDEXED_FIELDS` that nobody declared
are kept with the item, unindexed, and the write says which.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from indexer.errors import BadInput
from indexer.limits import check_depth, check_item_id
from indexer.schema import FieldType, check_name
from indexer.settings import LimitsSettings


def metadata_bytes(values: Mapping[str, Any]) -> int:
    """The size of metadata as compact JSON, the measure of `CLIPSEARCH_LIMITS_METADATA_BYTES`."""
    return len(json.dumps(values, ensure_ascii=False, separators=(",", ":"), default=str).encode())


def check_metadata(values: Mapping[str, Any], limits: LimitsSettings) -> None:
    """BadInput when metadata nests deeper or is larger than `limits` allow (checked in that order:
    measuring the size of a deep value would recurse)."""
    check_depth(dict(values), limits.json_depth, "metadata")
    try:
        size = metadata_bytes(values)
    except UnicodeEncodeError:  # a lone surrogate, from a JSON \udcff escape
        raise BadInput("metadata holds text that is not valid UTF-8 (a lone surrogate escape)") from None
    if size > limits.metadata_bytes:
        raise BadInput(
            f"metadata is {size} bytes as JSON; the limit is {limits.metadata_bytes} "
            "(CLIPSEARCH_LIMITS_METADATA_BYTES)"
        )


def check_item_write(client_id: str, values: Mapping[str, Any], limits: LimitsSettings) -> None:
    """Everything about one item write that needs no collection: its id (used byte-exact), and its
    metadata and text (`values`, by field name): the number of fields, their names, nesting and size.
    BadInput (400) saying what is wrong; nothing has been stored when it is raised."""
    check_item_id(client_id)
    if len(values) > limits.item_fields:
        raise BadInput(
            f"{len(values)} metadata fields; an item may have {limits.item_fields} "
            "(CLIPSEARCH_LIMITS_ITEM_FIELDS)"
        )
    for name in values:
        check_name(name, "metadata field")
    check_metadata(values, limits)


def indexable_fields(
    declared: Mapping[str, FieldType], new: Mapping[str, FieldType], cap: int, explicit: Collection[str] = ()
) -> tuple[dict[str, FieldType], list[str]]:
    """(fields to declare, names to keep unindexed) of `new` fields for a collection that declares
    `declared`: those named in `explicit` (a `--field`, a text column, the id) always, the others
    while the collection stays within `cap` fields."""
    to_declare: dict[str, FieldType] = {}
    unindexed: list[str] = []
    for name, kind in new.items():
        if name in declared:
            continue
        if name in explicit or len(declared) + len(to_declare) < cap:
            to_declare[name] = kind
        else:
            unindexed.append(name)
    return to_declare, unindexed
