"""Property-based tests of the whole HTTP API with schemathesis, against a real server on loopback.

Specification: for every operation in the live /openapi.json, the requests schemathesis generates from
the schema (its examples, coverage and fuzzing phases; valid data and invalid data: wrong types,
missing fields, out-of-range values, other methods) never get a 5xx, and every answer conforms to the
schema: a documented status code, a documented content type, the documented headers and a body that
validates against the documented response schema; with every check schemathesis has (valid data is
never refused with 422, invalid data never accepted, 405s name the path's methods, ...). Checked on a
server without an API key and on one with a key, where the key is sent as X-API-Key, and where
schemathesis also checks that the same requests without the key, or with a wrong one, are refused
(ignored_auth).

Uploads are generated as multipart forms from the form schemas; in valid cases the served collection's
name and indexed ids replace generated ones now and then, so that the 200 answers are checked too, not
only the 404s for random names and ids. Bounded and seeded: the same cases every run.

Two schema bugs these runs found have their own regression tests below: the uploads were documented
as application/x-www-form-urlencoded (so schema-driven clients could not upload at all), and a JSON
body that is not UTF-8 got an undocumented 400. Also here, on the server with default settings: CORS
is off unless origins are configured.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import events, from_schema
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import TestPhase

from indexer.models.loading import ClipModel
from tests.helpers import Served, indexed_server

KEY = "fuzz-key-0123456789"
PHOTOS = 12
MAX_EXAMPLES = 40  # per operation, in the fuzzing phase
SEED = 20240601
OPERATIONS = {  # every operation the API documents; the run fails if the schema has others or fewer
    "GET /healthz", "GET /readyz", "GET /metrics", "GET /v1/vlm",
    "POST /v1/search", "POST /v1/search/image", "POST /v1/browse", "POST /v1/classify", "GET /v1/images/{id}",
    "POST /v1/explain", "POST /v1/explain/stream",
    "GET /v1/collections", "GET /v1/collections/{collection}/status",
    "GET /v1/collections/{collection}/check",
    "GET /v1/collections/{collection}/items/{id}", "PUT /v1/collections/{collection}/items/{id}",
    "PATCH /v1/collections/{collection}/items/{id}", "DELETE /v1/collections/{collection}/items/{id}",
    "GET /v1/collections/{collection}/vectors", "POST /v1/collections/{collection}/vectors",
    "POST /v1/collections/{collection}/vectors/{name}/activate",
    "DELETE /v1/collections/{collection}/vectors/{name}",
    "GET /v1/collections/{collection}/labels", "GET /v1/collections/{collection}/labels/{run}",
    "GET /v1/collections/{collection}/labels/{run}/items",
    "POST /v1/collections/{collection}/labels/{run}/review",
    "GET /v1/collections/{collection}/duplicates", "GET /v1/collections/{collection}/clusters",
    "GET /v1/collections/{collection}/outliers",
    "POST /v1/collections/{collection}/labels", "POST /v1/collections/{collection}/export",
    "POST /v1/collections/{collection}/snapshot", "POST /v1/collections/{collection}/sync",
    "POST /v1/collections/{collection}/export/archive", "POST /v1/collections/{collection}/eval",
    "POST /v1/collections/{collection}/restore", "POST /v1/collections/{collection}/copy",
}
# Operations whose success the fuzzer cannot reach on its own, and why (every other one must answer 200
# at least once): starting a re-embedding needs a real model name; dropping a vector needs one that is
# not the active one; a label run's routes need a run's name that random text never is; random bytes are
# never an image (uploads: their 200s are specified with real photos in test_api.py, test_write_api.py);
# k clusters need k items, and random k is larger than the 12 served photos (test_clusters.py has the 200s).
# A sync needs a server started with --watch (these are not: 409; test_watch.py has the 200s).
# Random bytes are never a snapshot archive, random paths never the served photos' paths, an imagefolder
# export needs a label run's name, and a copy's random target is often taken or the source itself
# (test_collection_transfer_api.py has the 200s of restore, eval, folder exports and copy).
# Real photos are not put into generated uploads: schemathesis then counted some altered cases as
# invalid data that was accepted.
SUCCESS_NOT_REQUIRED = {
    "POST /v1/search/image", "POST /v1/classify", "PUT /v1/collections/{collection}/items/{id}",
    "GET /v1/collections/{collection}/clusters", "POST /v1/collections/{collection}/sync",
    "POST /v1/collections/{collection}/vectors", "DELETE /v1/collections/{collection}/vectors/{name}",
    "GET /v1/collections/{collection}/labels/{run}", "GET /v1/collections/{collection}/labels/{run}/items",
    "POST /v1/collections/{collection}/labels/{run}/review",
    "POST /v1/collections/{collection}/restore", "POST /v1/collections/{collection}/eval",
    "POST /v1/collections/{collection}/export/archive", "POST /v1/collections/{collection}/copy",
}
# Every check schemathesis has (`--checks all`). Valid data may still get 400 (an upload that is not an
# image, a filter naming an undeclared field), 404 (an id or collection that does not exist) or 409 (a
# vector that is busy): meanings no schema can carry. It must never get 422: the schema says what the
# server validates (exactly one of text/image_id/..., non-empty labels, a non-empty file).
ALL_CHECKS = [
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "positive_data_acceptance", "missing_required_header", "unsupported_method",
    "allow_header_conformance", "use_after_free", "ensure_resource_availability",
    "object_level_authorization",
]
POSITIVE_STATUSES = ["2xx", "400", "401", "403", "404", "409"]
MULTIPART = {"/v1/search/image", "/v1/classify", "/v1/collections/{collection}/items/{id}"}


@dataclass
class FuzzReport:
    failures: list[str] = field(default_factory=list)  # check failures and engine errors, with a curl
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # by operation

    def summary(self) -> str:
        return "\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in
                         sorted(self.statuses.items()))


def run_schemathesis(served: Served, headers: dict[str, str], checks: list[str]) -> FuzzReport:
    """One schemathesis run (as `schemathesis run` does it) over the live schema of `served`."""
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": headers,
        "generation": {
            "mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
        },
        "checks": {
            "enabled": False,
            **{name: {"enabled": True} for name in checks},
            "positive_data_acceptance": {
                "enabled": "positive_data_acceptance" in checks, "expected-statuses": POSITIVE_STATUSES,
            },
        },
        "request-timeout": 60,
        # Multipart sends every value as text: a "wrong type" case (labels=false) arrives as valid text,
        # which the server rightly takes. Negative data is still checked on every JSON and query operation.
        "operations": [{
            "include-path": sorted(MULTIPART),
            "checks": {"negative_data_rejection": {"enabled": False}},
        }],
    })
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config, headers=headers,
                                           timeout=30)
    assert {operation.ok().label for operation in schema.get_all_operations()} == OPERATIONS
    _use_real_data(schema, served)

    report = FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                status = interaction.response.status_code if interaction.response else "no response"
                report.statuses[event.label or "?"][status] += 1
            for case_id, check_results in event.recorder.checks.items():
                interaction = event.recorder.interactions.get(case_id)
                answer = interaction.response if interaction else None
                got = f"{answer.status_code} {answer.content[:200]!r}" if answer else "no response"
                for check in check_results:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        report.failures.append(f"{event.label} [{check.name}] {failure.title}: "
                                               f"{failure.message}\n  answered {got}\n  "
                                               f"{check.failure_info.code_sample[:1500]}")
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.failures.append(f"schemathesis failed: {event.exception!r}")
    return report


def _use_real_data(schema: Any, served: Served) -> None:
    """In valid cases, sometimes a real photo as the uploaded file and an indexed id as the image id."""

    def replace(case: Any, where: str, value: Any) -> Any:
        if value is not None:
            setattr(case, where, {**getattr(case, where), "file" if where == "body" else "id": value})
            case.meta.mark_dirty(ParameterLocation.BODY if where == "body" else ParameterLocation.PATH)
        return case

    def replace_image_id(case: Any, value: str | None) -> Any:
        if value is not None:
            case.body = {**case.body, "image_id": value}
            case.meta.mark_dirty(ParameterLocation.BODY)
        return case

    @schema.hook
    def flatmap_case(context: Any, case: Any) -> st.SearchStrategy:
        meta = case.meta
        if (
            meta is None
            or meta.phase.name != TestPhase.FUZZING  # coverage cases mutate around a template: leave them
            or meta.generation.mode != GenerationMode.POSITIVE
            or any(component.mode.is_negative for component in meta.components.values())
        ):
            return st.just(case)  # only valid cases get real data: an invalid one must stay invalid
        if isinstance(case.body, dict) and "query" in case.body and "image_id" in case.body:
            ids = st.sampled_from([None, *served.ids])  # /v1/explain: an indexed image, sometimes
            return ids.map(lambda item: replace_image_id(case, item))
        if isinstance(case.path_parameters, dict) and "collection" in case.path_parameters:
            # The served collection (and, with an id, one of its items), sometimes.
            names = st.sampled_from([None, served.settings.collection])
            case = st.just(case).flatmap(lambda c: names.map(lambda n: replace_path(c, "collection", n)))
            return case.flatmap(lambda c: st.sampled_from([None, *served.ids]).map(
                lambda item: replace_path(c, "id", item) if "id" in c.path_parameters else c))
        if isinstance(case.path_parameters, dict) and "id" in case.path_parameters:
            ids = st.sampled_from([None, *served.ids])
            return ids.map(lambda item: replace(case, "path_parameters", item))
        return st.just(case)

    def replace_path(case: Any, name: str, value: str | None) -> Any:
        if value is not None:
            case.path_parameters = {**case.path_parameters, name: value}
            case.meta.mark_dirty(ParameterLocation.PATH)
        return case


def assert_clean(report: FuzzReport) -> None:
    assert not report.failures, "\n\n".join(report.failures)
    # Every operation was called, and the success paths were reached, not only the errors.
    # ("?": the stateful phase's chains of calls, which belong to no one operation)
    assert set(report.statuses) - {"?"} == OPERATIONS, report.summary()
    for label in OPERATIONS - SUCCESS_NOT_REQUIRED:
        assert sum(report.statuses[label][s] for s in (200, 201, 202)) > 0, report.summary()
    for label in ("POST /v1/search", "POST /v1/search/image", "POST /v1/classify"):
        assert report.statuses[label][422] > 0, report.summary()  # invalid data was sent, and refused
    for label in ("POST /v1/search/image", "POST /v1/classify"):
        assert report.statuses[label][400] > 0, report.summary()  # bytes that are not an image
    assert 500 not in {status for counts in report.statuses.values() for status in counts}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
                tiny_model: ClipModel) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz-open")
    with indexed_server(root, imagenet_dir, tiny_checkpoint, tiny_model, PHOTOS) as served:
        yield served


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
                 tiny_model: ClipModel) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz-key")
    with indexed_server(root, imagenet_dir, tiny_checkpoint, tiny_model, PHOTOS, api_key=KEY) as served:
        yield served


def test_schemathesis_without_api_key(open_server: Served) -> None:
    assert_clean(run_schemathesis(open_server, {}, ALL_CHECKS))


def test_schemathesis_with_api_key(keyed_server: Served) -> None:
    report = run_schemathesis(keyed_server, {"X-API-Key": KEY}, [*ALL_CHECKS, "ignored_auth"])
    assert_clean(report)
    # Requests without the key were sent, and refused (schemathesis retries without it what succeeded).
    for label in OPERATIONS - SUCCESS_NOT_REQUIRED - {"GET /healthz", "GET /readyz"}:
        assert report.statuses[label][401] > 0, report.summary()


# --- regressions and defaults ----------------------------------------------------------------------------


def test_uploads_are_documented_as_multipart(open_server: Served) -> None:
    paths = httpx.get(f"{open_server.url}/openapi.json", timeout=30).json()["paths"]
    for path in ("/v1/search/image", "/v1/classify"):
        assert list(paths[path]["post"]["requestBody"]["content"]) == ["multipart/form-data"], path


@pytest.mark.parametrize("body", [b"\xff", b'{"text": "caf\xe9"}'])  # (\xff\xfe would read as UTF-16)
def test_a_body_that_is_not_utf8_is_a_documented_400(open_server: Served, body: bytes) -> None:
    response = httpx.post(f"{open_server.url}/v1/search", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    paths = httpx.get(f"{open_server.url}/openapi.json", timeout=30).json()["paths"]
    assert {"400", "413"} <= set(paths["/v1/search"]["post"]["responses"])


def test_cors_is_off_unless_configured(open_server: Served) -> None:
    origin = {"Origin": "http://ui.example"}
    preflight = httpx.options(f"{open_server.url}/v1/search", timeout=30,
                              headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 405
    answer = httpx.post(f"{open_server.url}/v1/search", json={"text": "a cat"}, headers=origin, timeout=30)
    assert answer.status_code == 200
    for response in (preflight, answer):
        assert not any(name.startswith("access-control-") for name in response.headers)


def test_the_schema_declares_what_the_server_enforces(open_server: Served) -> None:
    """What schemathesis with every check found (issue 16): the collection-name pattern on every
    per-collection route, a query of negative weights only, and null in multipart form fields."""
    from indexer.stores import COLLECTION_NAME_PATTERN

    document = httpx.get(f"{open_server.url}/openapi.json", timeout=30).json()
    per_collection = [(path, method, operation) for path, methods in document["paths"].items()
                      for method, operation in methods.items() if "{collection}" in path]
    assert len(per_collection) >= 15
    for path, method, operation in per_collection:
        [name] = [p for p in operation["parameters"] if p["name"] == "collection"]
        assert name["schema"]["pattern"] == COLLECTION_NAME_PATTERN, (method, path)
    refused = httpx.get(f"{open_server.url}/v1/collections/-bad name/status", timeout=30)
    assert refused.status_code == 422 and "pattern" in refused.json()["detail"]

    terms = document["components"]["schemas"]["SearchRequest"]["properties"]["query"]
    assert "contains" in str(terms)
    negative = httpx.post(f"{open_server.url}/v1/search", timeout=30,
                          json={"query": [{"text": "a cat", "weight": -1}]})
    assert negative.status_code == 422 and "positive weight" in negative.text

    form = document["components"]["schemas"]["ImageSearchForm"]["properties"]
    nullable = [name for name, schema in form.items() if '"type": "null"' in json.dumps(schema)]
    assert nullable == [], "multipart sends text: a form field is never null"
