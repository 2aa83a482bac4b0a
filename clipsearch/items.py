"""`clipsearch item get|put|patch|delete` and `clipsearch review`: single items by their id (the write
API's operations) and people's decisions on a label run, on the collection or through the server that
holds it (clipsearch.remote.on_collection): the same Collection methods either way."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.errors import BadInput


def _on_collection(collection: str | None, fn: Any) -> Any:
    settings = settings_from_flags(collection=collection)
    return remote.on_collection(settings, settings.collection, fn)


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInput(f"{flag} must be a JSON object, not {type(value).__name__}")
    return value


def _text(text: str | None) -> str | dict[str, str] | None:
    """--text: plain words (field `text`), or a JSON object {field: text}."""
    if text is not None and text.lstrip().startswith("{"):
        return _json_object(text, "--text")
    return text


@click.group()
def item() -> None:
    """Read, write and delete single items by id (a SKU, a key, or an id from results)."""


@item.command("get")
@click.argument("item_id")
@collection_option
@json_option
def get_item(item_id: str, collection: str | None, as_json: bool) -> None:
    """An item's uri and metadata."""
    found = _on_collection(collection, lambda c: c.get_item(item_id))
    if as_json:
        emit(asdict(found))
        return
    click.echo(f"{found.id}\t{found.uri}")
    for name, value in sorted(found.metadata.items()):
        click.echo(f"  {name}: {value}")


@item.command("put")
@click.argument("item_id")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The item's image file [an existing item keeps its own without it].")
@click.option("--image-url", default=None, help="The item's image by http(s) URL instead.")
@click.option("--metadata", default=None, help='Metadata as a JSON object, e.g. \'{"price": 39.5}\'.')
@click.option("--text", default=None, help="Words for keyword search, or a JSON object {field: text}.")
@collection_option
@json_option
def put_item(item_id: str, image: Path | None, image_url: str | None, metadata: str | None, text: str | None,
             collection: str | None, as_json: bool) -> None:
    """Create or replace an item: its image, metadata and text."""
    values = _json_object(metadata, "--metadata")
    written = _on_collection(collection, lambda c: c.put_item(item_id, image, image_url=image_url,
                                                              metadata=values, text=_text(text)))
    _written(written, as_json)


@item.command("patch")
@click.argument("item_id")
@click.option("--metadata", default=None, help="Fields to change as a JSON object; null removes one.")
@click.option("--text", default=None, help="Words for keyword search, or a JSON object {field: text}.")
@collection_option
@json_option
def patch_item(item_id: str, metadata: str | None, text: str | None, collection: str | None,
               as_json: bool) -> None:
    """Change an item's metadata and text (nothing is re-embedded)."""
    values = _json_object(metadata, "--metadata")
    _written(_on_collection(collection, lambda c: c.patch_item(item_id, values, _text(text))), as_json)


@item.command("delete")
@click.argument("item_id")
@collection_option
@json_option
def delete_item(item_id: str, collection: str | None, as_json: bool) -> None:
    """Remove an item."""
    _written(_on_collection(collection, lambda c: c.delete_item(item_id)), as_json)


def _written(written: Any, as_json: bool) -> None:
    if as_json:
        emit(asdict(written))
        return
    embedded = " (embedded)" if written.embedded else ""
    click.echo(f"{written.id}: {written.action}{embedded}; id in results {written.point_id}")


@click.command()
@click.option("--run", default="label", show_default=True, help="The label run (`clipsearch label --run`).")
@click.option("--label", "label_name", default=None,
              help='List the items of this label (or "unsure"), most confident first.')
@click.option("--pending", is_flag=True, help="With --label: only items nobody has decided on yet.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("-k", "--limit", "limit", type=click.IntRange(1, 500), default=48, show_default=True,
              help="Items listed.")
@click.option("--accept", "accept", multiple=True, metavar="ID", help="Accept the zero-shot label of ID.")
@click.option("--reject", "reject", multiple=True, metavar="ID", help="No label fits ID.")
@click.option("--clear", "clear", multiple=True, metavar="ID", help="Forget the decision on ID.")
@click.option("--change", "change", multiple=True, metavar="ID=LABEL", help="Label ID as LABEL.")
@collection_option
@json_option
def review(run: str, label_name: str | None, pending: bool, offset: int, limit: int, accept: tuple[str, ...],
           reject: tuple[str, ...], clear: tuple[str, ...], change: tuple[str, ...], collection: str | None,
           as_json: bool) -> None:
    """Review a label run: counts per label, the items of one label, and decisions on items
    (what the UI's Review page does)."""
    changes = []
    for spec in change:
        ident, sep, new = spec.partition("=")
        if not sep or not ident.strip() or not new.strip():
            raise BadInput(f"--change {spec!r}: expected ID=LABEL")
        changes.append((ident.strip(), new.strip()))

    def run_review(shop: Any) -> dict[str, Any]:
        decided = []
        for action, ids in (("accept", accept), ("reject", reject), ("clear", clear)):
            if ids:
                decided += shop.review(run, list(ids), action)
        for ident, new in changes:
            decided += shop.review(run, [ident], "change", new)
        answer: dict[str, Any] = {"run": run, "updated": len(decided),
                                  "counts": asdict(shop.label_counts(run))}
        if label_name is not None:
            page = shop.review_items(run, label_name, pending=pending, offset=offset, limit=limit)
            answer["items"] = [asdict(i) for i in page.items]
            answer["total"] = page.total
        return answer

    answer = _on_collection(collection, run_review)
    if as_json:
        emit(answer)
        return
    counts = answer["counts"]
    if answer["updated"]:
        click.echo(f"{answer['updated']} decisions recorded")
    click.echo(f"run {run!r}: {counts['total']} items, {counts['reviewed']} reviewed")
    for name, count in counts["counts"].items():
        click.echo(f"{count}\t{name}")
    for entry in answer.get("items", []):
        score = f"{entry['score']:.3f}" if entry["score"] is not None else "-"
        click.echo(f"{entry['id']}\t{score}\t{entry['effective_label']}\t{entry['uri']}")


COMMANDS = [item, review]
