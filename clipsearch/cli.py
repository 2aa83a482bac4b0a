"""The `clipsearch` command line: a thin layer over the Collection interface (indexer.collection.
CollectionAPI). A command that reads or changes a collection makes one call on it: on the local
collection, or, when a running `clipsearch serve` holds it, on that server's through the client
(clipsearch.remote.on_collection), the same call either way.

Results go to stdout (one JSON document with --json); progress, logs and errors go to stderr.
An error a user can act on is one line, `error: <message>`, and the exit code of its kind
(indexer.errors.ERROR_KINDS); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import (
    Group,
    collection_option,
    describe_model,
    emit,
    json_option,
    model_options,
    print_error,
    settings_from_flags,
)
from clipsearch.rerank import ItemLabels, VlmFlags, apply_locally, print_results, vlm_options
from clipsearch.search_options import SearchAsk, facets_json, print_facets, search_options
from indexer.errors import (
    ERROR_KINDS,
    BadInput,
    CollectionCorrupt,
    Conflict,
    ErrorKind,
    ImageDecodeError,
    InvalidFilter,
    NothingIndexed,
)
from indexer.settings import Settings


@click.group(cls=Group)
@click.option("-v", "--verbose", is_flag=True, help="Log more to stderr.")
def main(verbose: bool) -> None:
    """Semantic image search over your own collections, with open_clip models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@collection_option
@model_options
@click.option(
    "--batch-size", type=int, default=None, help="Images per encoder batch [default: 256 on CUDA, 64 on CPU]."
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Decode processes; 1: a decode thread in this process [default: one per core on CUDA, "
    "one per 4 cores on CPU].",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8", "bf16"]),
    default=None,
    help="int8: approximate CPU fast path (int8 image encoder, embeddings within cosine ~0.999 of fp32); "
    "bf16: bfloat16 image encoder (cosine ~0.9999; CPUs with AVX512-BF16/AMX). "
    "A collection keeps the precision it was built with [default: fp32].",
)
@click.option("--id-column", default=None, help="Catalogs: the product id column [default: id].")
@click.option(
    "--image-column",
    "image_columns",
    multiple=True,
    help="Catalogs: image column(s), repeatable or a comma list; cells hold paths relative to the "
    "catalog, or http(s) URLs [default: image].",
)
@click.option("--text-columns", default=None, help="Catalogs: comma list of text columns (title,brand,...).")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME:TYPE",
    help="Catalogs: a column's type instead of the inferred one (keyword, integer, float, bool, "
    "datetime, geo, text); repeatable.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Decode and encode on Ray (clipsearch[ray]): alone, a Ray on this machine; or the cluster at "
    "ADDRESS (auto, ray://head:10001). Give it after SOURCES. Folders and image files. docs/scaling.md.",
)
@json_option
def index(
    sources: tuple[Path, ...],
    collection: str | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    batch_size: int | None,
    workers: int | None,
    precision: str | None,
    id_column: str | None,
    image_columns: tuple[str, ...],
    text_columns: str | None,
    fields: tuple[str, ...],
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Embed new and changed images under SOURCES (folders, image files, or .csv/.jsonl/.parquet
    product catalogs); drop the ones that are gone. See docs/catalogs.md.

    An existing collection keeps the model recorded with it unless --model/--pretrained are given."""
    settings = settings_from_flags(
        model=model,
        pretrained=pretrained,
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
    )
    progress = not as_json or sys.stderr.isatty()
    name = collection or settings.collection
    if ray_address is not None and remote.serving_url(settings, name) is None:
        from indexer.ingest.catalog import is_catalog
        from indexer.ingest.ray_run import index_on_ray
        from indexer.results import IndexReport

        if any(is_catalog(source) for source in sources):
            raise click.UsageError("--ray indexes folders and image files: index catalogs without --ray")
        ray_report = index_on_ray(settings, list(sources), collection, address=ray_address, progress=progress)
        report = IndexReport.from_json(ray_report.summary())
    else:
        fields_given = dict(_field_flag(spec) for spec in fields)

        def run_index(shop: Any) -> Any:
            return shop.index(list(sources), id_column=id_column, image_columns=image_columns,
                              text_columns=text_columns, fields=fields_given, progress=progress)

        report = remote.on_collection(settings, name, run_index)
    s = report.to_json()
    if as_json:
        emit(s)
    else:
        click.echo(
            f"{s['collection']}: {s['embedded']} embedded, {s['unchanged']} unchanged, "
            f"{s['removed']} removed, {s['failed']} failed in {s['seconds']:.1f}s"
        )
        for note in s.get("notes", []):
            click.echo(f"warning: {note}", err=True)
        if s["failed"]:
            click.echo("see `clipsearch status` for the failed files and why", err=True)
        if s.get("unindexed"):
            names = ", ".join(s["unindexed"][:20])
            click.echo(f"{len(s['unindexed'])} columns stored but not indexed (not filterable; the "
                       f"collection has CLIPSEARCH_LIMITS_INDEXED_FIELDS fields): {names}", err=True)
    if report.nothing_indexed:
        raise NothingIndexed(f"every one of the {s['failed']} rows or files failed and nothing was indexed; "
                             f"`clipsearch status --collection {s['collection']}` lists them and why")


@main.command()
@click.argument("query", nargs=-1)
@click.option(
    "--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Find images like this."
)
@click.option("-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Number of results.")
@click.option("--vector", default=None, help="Search this named vector [default: the active one].")
@search_options
@collection_option
@vlm_options
@json_option
def search(
    query: tuple[str, ...], image: Path | None, k: int, vector: str | None, collection: str | None,
    as_json: bool, rerank: bool, top_n: int | None, mode: str | None, explain: bool, **search_flags: Any,
) -> None:
    """Find images by QUERY, or by an example --image. While `clipsearch serve` holds the collection,
    the search goes through that server (and its VLM, for --rerank and --explain).

    \b
    QUERY is text, or a weighted sum of terms split by standalone + and - (docs/search.md):
      clipsearch search red dress
      clipsearch search "red dress" + image:ID - "long sleeves" + 0.5:shoe.jpg
    image:ID is an indexed item, a path to an image file is that image, W: weighs a term.
    \b
    Filters: --where 'category = shoes' --where 'price < 50' --where 'brand in (acme, zenith)'
    --near 38.72,-9.14,5; pages: --offset 10 -k 10; one hit per product: --group-by sku (the id column).
    Browse without a QUERY: --where 'brand = acme' --sort price (-price: falling)."""
    ask = SearchAsk.from_flags(query, image, search_flags)
    settings = settings_from_flags()
    name = collection or settings.collection
    flags = VlmFlags(rerank, top_n, mode, explain)
    labels: list[ItemLabels] = []

    def run_search(shop: Any) -> dict[str, Any]:
        status = shop.status() if ask.filtered or not as_json else None
        if status is not None and not as_json:
            labels.append(ItemLabels.of(status.to_json()))
        return _answer(_search_on(shop, ask, k, vector, status.fields if status else None))

    try:
        if flags.asked:  # the VLM stage: this process's VLM, or the server's that holds the collection
            answer = _search_with_vlm(settings, name, ask, flags, k, vector, as_json, labels)
        else:
            answer = remote.on_collection(settings, name, run_search)
    except InvalidFilter as exc:  # kept on several lines: its caret points at the bad token
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(ERROR_KINDS[ErrorKind.BAD_INPUT].exit_code)
    if not answer["results"]:
        from indexer.search.engine import empty_answer_note

        note = empty_answer_note(answer.get("mode") or "vector", ask.options.min_score, ask.filtered,
                                 ask.options.offset)
        click.echo(note, err=True)
    if as_json:
        emit(answer)
        return
    print_results(answer, flags, labels[0] if labels else None)
    print_facets(answer.get("facets"))


def _search_on(shop: Any, ask: SearchAsk, k: int, vector: str | None, fields: dict[str, str] | None) -> Any:
    """The one call on the collection (indexer.collection.CollectionAPI) that answers a search: a browse,
    more like items, or a query (its plainest form: a text, an image, an item's id, else weighted terms)."""
    query_filter = ask.filter(fields) if ask.filtered else None
    given = query_filter.to_json() if query_filter is not None else None
    o = ask.options
    if ask.browse:
        return shop.browse(k, filter=given, sort=ask.sort, offset=o.offset, facets=o.facets)
    if ask.like:
        return shop.recommend(ask.like, ask.unlike, k=k, filter=given, offset=o.offset, min_score=o.min_score,
                              facets=o.facets, group_by=o.group_by, vector=vector)
    kind: dict[str, Any] = {"query": ask.terms}
    if len(ask.terms) == 1 and ask.terms[0].weight == 1.0:
        [term] = ask.terms
        kind = {"text": term.text} if term.text is not None else \
            {"image": term.image} if term.image is not None else {"like": term.image_id}
    return shop.search(**kind, k=k, filter=given, mode=o.mode, offset=o.offset, min_score=o.min_score,
                       facets=o.facets, group_by=o.group_by, diversity=o.diversity, vector=vector)


def _answer(found: Any) -> dict[str, Any]:
    """SearchResults as `search --json` prints them (the API's answer shape)."""
    facets = {name: [{"value": v, "count": n} for v, n in counts] for name, counts in found.facets.items()}
    return {"results": [{"id": h.id, "uri": h.uri, "score": h.score, "metadata": h.metadata} for h in found],
            "facets": facets or None, "mode": found.mode}


def _search_with_vlm(settings: Settings, name: str, ask: SearchAsk, flags: VlmFlags, k: int,
                     vector: str | None, as_json: bool, labels: list[ItemLabels]) -> dict[str, Any]:
    """search --rerank/--explain: the hits with the VLM stage of this process (CLIPSEARCH_VLM_URL) over
    the collection here, or the stage of the server that holds it (its own VLM settings)."""

    def local() -> dict[str, Any]:
        from indexer.search.engine import SearchEngine

        window = flags.window(k, settings)
        with SearchEngine(settings, name, warm=False) as engine:
            found = ask.run(engine, window, vector)
            if not as_json:
                schema = engine.schema
                labels.append(ItemLabels.of({"fields": schema.fields, "searchable": schema.searchable,
                                             "id_fields": schema.id_fields}))
            # The files, read now: the VLM stage runs after the engine lets the collection go.
            paths = {r.id: engine.item(r.id).get("path") for r in found.results}
            query = ask.vlm_query(lambda item: engine.item(item).get("path"))
        answer = apply_locally(settings, flags, query, found.results, paths, k)
        return {**answer, "facets": facets_json(found.facets), "mode": found.mode}

    def through(url: str) -> dict[str, Any]:
        def fields() -> dict[str, str]:
            return remote.call(settings, url, "GET", f"/v1/collections/{name}/status")["fields"]

        path, request = ask.request(fields, k, name, vector)
        if "files" in request:
            request["data"].update(flags.form_fields())
        else:
            request["json"].update(flags.json_fields())
        answer = remote.call(settings, url, "POST", path, **request)
        if not as_json:
            labels.append(ItemLabels.of(remote.call(settings, url, "GET", f"/v1/collections/{name}/status")))
        return {"results": answer["results"], "facets": answer.get("facets"), "mode": answer.get("mode"),
                "rerank": answer.get("rerank")}

    return remote.local_or_through_server(settings, name, local, through)


Labelled = list[list[tuple[str, float]]]


@main.command()
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--labels", required=True, help='Comma-separated class names, e.g. "cat,dog,car".')
@collection_option
@model_options
@json_option
def classify(
    images: tuple[Path, ...],
    labels: str,
    collection: str | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Score IMAGES against LABELS (zero-shot), with the collection's model unless --model/--pretrained
    are given. A file that is not an image is reported on stderr and the others are still scored."""
    from indexer.models.zero_shot import parse_labels

    label_list = parse_labels(labels)
    if not label_list:
        raise click.UsageError("--labels needs at least one non-empty label")
    from indexer.stores import collection_exists

    settings = settings_from_flags(model=model, pretrained=pretrained, device=device)
    uris = [str(path.resolve()) for path in images]
    name = collection or settings.collection
    explicit = model is not None or pretrained is not None
    # The collection's model (a collection named on the command line must exist; the default one is used
    # when it does), through the server that holds it if one does; else the model of the settings.
    held = remote.serving_url(settings, name) is not None
    if not explicit and (collection or held or collection_exists(settings, name)):
        scored, failures = remote.on_collection(
            settings, name, lambda shop: _classify_each(_classifier(shop), uris, label_list))
    else:
        scored, failures = _classify_each(_with_model(settings), uris, label_list)
    rows = [
        {"uri": uri, "labels": [{"label": lb, "score": s} for lb, s in scored[uri]]}
        for uri in uris
        if uri in scored
    ]
    if as_json:
        emit(rows)
    else:
        for row in rows:
            best = ", ".join(f"{x['label']} {x['score']:.3f}" for x in row["labels"][:5])
            click.echo(f"{row['uri']}\t{best}")
    for uri, reason in failures.items():
        print_error(f"{uri}: {reason}")
    if failures:
        sys.exit(ERROR_KINDS[ErrorKind.BAD_INPUT].exit_code)


def _classify_each(
    run: Callable[[list[str], list[str]], Labelled], uris: list[str], labels: list[str]
) -> tuple[dict[str, list[tuple[str, float]]], dict[str, str]]:
    """All at once; when some file is not an image, one by one, to say which and keep the others."""
    try:
        return dict(zip(uris, run(uris, labels), strict=True)), {}
    except ImageDecodeError:
        pass
    scored, failures = {}, {}
    for uri in uris:
        try:
            [scored[uri]] = run([uri], labels)
        except ImageDecodeError as exc:
            failures[uri] = exc.message
    return scored, failures


def _classifier(shop: Any) -> Callable[[list[str], list[str]], Labelled]:
    """(paths, labels) -> labels per image, by the collection (indexer.collection.CollectionAPI)."""

    def run(paths: list[str], labels: list[str]) -> Labelled:
        try:
            found = shop.classify(paths, labels)
        except ImageDecodeError:
            raise
        except BadInput as exc:  # the server could not read an image: the per-file fallback says which
            if not remote.is_remote(shop):
                raise
            raise ImageDecodeError(exc.message) from None
        return [[(s.label, s.score) for s in each.labels] for each in found]

    return run


def _with_model(settings: Settings) -> Callable[[list[str], list[str]], Labelled]:
    """(paths, labels) -> labels per image, by the model of the settings (--model/--pretrained): no
    collection involved."""
    from indexer.ingest.decode import decode_image
    from indexer.models.loading import load_model
    from indexer.models.zero_shot import classify_embeddings

    clip = load_model(settings.model, settings.pretrained, settings.device)

    def run(paths: list[str], labels: list[str]) -> Labelled:
        pictures = [decode_image(p, settings.max_image_pixels, draft_size=clip.draft_size) for p in paths]
        return classify_embeddings(clip, clip.encode_images(pictures), labels)

    return run


@main.command()
@collection_option
@json_option
def status(collection: str | None, as_json: bool) -> None:
    """Count, vectors (with their models) and failed files of a collection (through the server that
    holds it, if one does)."""
    settings = settings_from_flags()
    name = collection or settings.collection
    report = remote.on_collection(settings, name, lambda c: c.status()).to_json()
    if as_json:
        emit(report)
        return
    click.echo(f"collection: {report['collection']}")
    click.echo(f"count:      {report['count']}")
    click.echo(f"model:      {describe_model(report.get('model'))}")
    for v in report.get("vectors", []):
        active = " (active)" if v.get("active") else ""
        click.echo(
            f"vector:     {v['name']}{active}: {describe_model(v.get('model'))}, {v.get('precision')}, "
            f"{v.get('state')}, {v.get('count')} embedded"
        )
    watch = report.get("watch")
    if watch:  # a `serve --watch` holds the collection
        total = "?" if watch.get("total") is None else watch["total"]
        syncing = watch["state"] == "syncing"
        progress = f" (first sync: {watch.get('done')} of {total} files)" if syncing else ""
        click.echo(f"watch:      {watch['state']}{progress}: {', '.join(watch.get('folders', []))}")
    click.echo(f"failed:     {len(report['failed'])}")
    for entry in report["failed"]:
        click.echo(f"  {entry['uri']}: {entry['reason']}")


@main.command()
@collection_option
@click.option("--repair", is_flag=True, help="Drop the corrupt points, so that the next index run embeds "
              "their files again (not through a running server).")
@json_option
def check(collection: str | None, repair: bool, as_json: bool) -> None:
    """Verify a collection: its vectors, payloads, counts, indexes and files on disk, and say what to do
    about what is wrong (exit 11 when it is corrupt)."""
    settings = settings_from_flags()
    name = collection or settings.collection

    report = remote.on_collection(settings, name, lambda c: c.check(repair=repair))
    if as_json:
        emit(report)
    if not report["ok"] and "repaired" not in report:
        if as_json:
            sys.exit(ERROR_KINDS[ErrorKind.CORRUPT].exit_code)
        raise CollectionCorrupt(report["line"])
    if not as_json:
        click.echo(report["line"])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@collection_option
@model_options
@click.option(
    "--watch",
    "watch",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also index this folder into the collection, and keep it in line (repeatable).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between two full rescans of the --watch folders (file events sync changes within "
    "seconds; the rescan catches missed ones) [default: 300].",
)
def serve(
    host: str,
    port: int,
    collection: str | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    watch: tuple[Path, ...],
    interval: float | None,
) -> None:
    """Run the HTTP API; with --watch, it also indexes folders into the collection.

    --model/--pretrained/--device: the model for a collection that --watch creates (an existing
    collection keeps the model recorded with it)."""
    import uvicorn

    from search_api.app import create_app
    from search_api.watch import DEFAULT_INTERVAL

    settings = settings_from_flags(collection=collection, model=model, pretrained=pretrained, device=device)
    if watch:  # someone else writing the collection: one line now rather than a failed startup later
        from indexer.locking import collection_lock

        with collection_lock(settings.home, settings.collection):
            pass
    # Bound here, so that --port 0 picks a free port and the URL left for the CLI is the real one.
    sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    local_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = (
        f"http://{local_host}:{bound_port}"
        if ":" not in local_host
        else f"http://[{local_host}]:{bound_port}"
    )
    app = create_app(settings, watch=watch, watch_interval=interval or DEFAULT_INTERVAL, url=url)
    click.echo(f"serving collection {settings.collection!r} at {url} (docs: {url}/docs)", err=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal: a normal stop
        pass


def _field_flag(spec: str) -> tuple[str, str]:
    """--field NAME:TYPE as a (name, type) of Collection.index's `fields`."""
    from indexer.fieldtypes import FIELD_TYPES

    name, _, kind = spec.rpartition(":")
    if not name.strip() or kind.strip() not in FIELD_TYPES:
        raise BadInput(f"--field {spec!r}: write NAME:TYPE with TYPE one of {', '.join(FIELD_TYPES)}")
    return name.strip(), kind.strip()


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, its connections without Nagle's algorithm: asyncio turns it off only on
    sockets made with proto=IPPROTO_TCP, which create_server's are not, and with it on, delayed ACKs
    held each response ~40 ms. Accepted connections inherit the option."""
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:  # the port taken, a host not on this machine: the user's to fix, one line
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(
                f"cannot listen on {host}:{port}: the port is in use; give another --port, or stop what "
                "uses it"
            ) from None
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port") \
            from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on; 0.0.0.0 for every one."
)
@click.option("--port", type=int, default=8501, show_default=True)
@click.option("--api-url", default=None, help="Where the API runs [default: CLIPSEARCH_API_URL].")
@click.option(
    "--api-key",
    default=None,
    help="The key the UI sends to an API that wants one (`serve` with CLIPSEARCH_API_KEY set) "
    "[default: CLIPSEARCH_API_KEY].",
)
def ui(host: str, port: int, api_url: str | None, api_key: str | None) -> None:
    """Run the Streamlit UI (it talks to the API over HTTP). It stops when this command stops."""
    import ui as ui_package

    settings = settings_from_flags()
    listening_socket(host, port).close()  # a port in use is one `error:` line here, not Streamlit's
    env = {**os.environ, "CLIPSEARCH_API_URL": api_url or settings.api.url}
    if api_key is not None:  # the child reads it from its environment, never from its command line (ps)
        env["CLIPSEARCH_API_KEY"] = api_key
    app = Path(ui_package.__file__).with_name("app.py")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    # In the app's folder: Streamlit reads the app's .streamlit/config.toml from there (older releases
    # read only the working directory's), which hides the toolbar's developer options.
    sys.exit(_run_child(command, env, cwd=app.parent))


STOP_GRACE_SECONDS = 10.0


def _run_child(command: Sequence[str], env: dict[str, str], cwd: Path) -> int:
    """Run a child process as part of this one: SIGTERM, SIGINT and SIGHUP are passed on to it (and it
    is killed if it has not stopped STOP_GRACE_SECONDS later), and it is killed when we die, even by
    SIGKILL. Returns its exit status (128 + signal number for a signal)."""
    parent = os.getpid()
    child = subprocess.Popen(command, env=env, cwd=cwd, preexec_fn=lambda: _die_with(parent))
    stop_asked: list[float] = []

    def forward(signum: int, frame: object) -> None:
        stop_asked.append(time.monotonic())
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        while True:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > STOP_GRACE_SECONDS:
                    child.kill()
    finally:
        if child.poll() is None:  # we are failing ourselves: never leave it behind
            child.kill()
            child.wait()
    return 128 - code if code < 0 else code


def _die_with(parent: int) -> None:
    """In the child, before exec: its own process group (a terminal's Ctrl-C reaches it once, through
    us), and SIGTERM from the kernel when the parent dies (Linux)."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


# Command modules beside this one, each listing its click commands in COMMANDS, imported only when one
# of their commands runs: a search need not load what backups and curation use (0.1 s of its 2).
COMMAND_MODULES = {
    "clipsearch.vectors": ["reembed", "vectors", "activate", "drop-vector"],
    "clipsearch.backup": ["snapshot", "restore", "copy"],
    "clipsearch.curate": ["label", "export", "eval"],
    "clipsearch.dedupe": ["duplicates", "clusters", "outliers"],
    "clipsearch.items": ["item", "review"],
}
for _module, _names in COMMAND_MODULES.items():
    main.add_lazy_commands(_module, _names)


if __name__ == "__main__":
    main()
