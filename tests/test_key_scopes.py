"""Keys with scopes (search_api/security.py): CLIPSEARCH_API_KEY may do everything, each of
CLIPSEARCH_API_READ_KEYS may only read. Every operation of the OpenAPI document is tried with each
kind of key: a read key gets 403 with a message on every write and passes on every read; no key or
a wrong one gets 401; the full key passes everywhere. Real server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.settings import Settings
from search_api import create_app
from search_api.security import is_read
from tests.helpers import assert_error, make_settings, png_bytes, serve
from tests.shop import build_shop

FULL, READ, OTHER_READ = "full-key-1", "read-key-1", "read-key-2"
ITEM = "00000000-0000-0000-0000-000000000001"
SWEPT = "00000000-0000-0000-0000-000000000002"  # what the sweeps over every operation write to and delete


@dataclass
class Keyed:
    client: httpx.Client
    operations: list[tuple[str, str]]  # (method, path template) from the OpenAPI document


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
          tiny_model: Any) -> Iterator[Keyed]:
    root = tmp_path_factory.mktemp("keys")
    keys = {"key": FULL, "read_keys": [READ, OTHER_READ]}
    settings = make_settings(root / "home", tiny_checkpoint, api=keys)
    build_shop(settings, tiny_model, products=10)
    app = create_app(settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        document = client.get("/openapi.json", headers={"X-API-Key": READ}).json()
        operations = [(method.upper(), path) for path, ops in document["paths"].items() for method in ops]
        yield Keyed(client, operations)


def concrete(path: str) -> str:
    return (path.replace("{collection}", "default").replace("{id}", SWEPT).replace("{name}", "default")
            .replace("{run}", "none"))


def request(keyed: Keyed, method: str, path: str, key: str | None, bearer: bool = False) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    return keyed.client.request(method, concrete(path), headers=headers, json={})


def test_the_document_lists_writes_and_reads(keyed: Keyed) -> None:
    writes = {(m, p) for m, p in keyed.operations if not is_read(m, p)}
    c = "/v1/collections/{collection}"
    assert {("PUT", f"{c}/items/{{id}}"), ("PATCH", f"{c}/items/{{id}}"), ("DELETE", f"{c}/items/{{id}}"),
            ("POST", f"{c}/vectors"), ("POST", f"{c}/vectors/{{name}}/activate"),
            ("DELETE", f"{c}/vectors/{{name}}"), ("POST", f"{c}/labels/{{run}}/review")} <= writes
    assert not {p for _, p in writes} & {"/v1/search", "/v1/search/image", "/v1/classify", "/v1/explain"}


def test_a_read_key_gets_403_on_every_write(keyed: Keyed) -> None:
    writes = [(m, p) for m, p in keyed.operations if not is_read(m, p)]
    assert len(writes) >= 7
    for method, path in writes:
        for bearer in (False, True):
            detail = assert_error(request(keyed, method, path, OTHER_READ, bearer), 403, "may only read")
            assert method in detail and "CLIPSEARCH_API_KEY" in detail


def test_a_read_key_passes_on_every_read(keyed: Keyed) -> None:
    for method, path in keyed.operations:
        if is_read(method, path) and path not in ("/healthz", "/readyz"):
            answer = request(keyed, method, path, READ)
            assert answer.status_code not in (401, 403), (method, path, answer.text)


def test_no_key_or_a_wrong_one_gets_401_everywhere(keyed: Keyed) -> None:
    for method, path in keyed.operations:
        if path in ("/healthz", "/readyz"):
            continue
        for key in (None, "wrong", READ + "x", FULL[:-1]):
            assert_error(request(keyed, method, path, key), 401, "API key")


def test_the_full_key_passes_everywhere(keyed: Keyed) -> None:
    for method, path in keyed.operations:
        answer = request(keyed, method, path, FULL)
        assert answer.status_code not in (401, 403), (method, path, answer.text)


def test_reads_answer_and_writes_happen_only_with_the_full_key(keyed: Keyed) -> None:
    c, read, full = keyed.client, {"X-API-Key": READ}, {"X-API-Key": FULL}
    assert c.post("/v1/search", json={"text": "a red cap", "k": 2}, headers=read).status_code == 200
    files = {"file": ("q.png", png_bytes((32, 32)), "image/png")}
    assert c.post("/v1/search/image", files=files, headers=read).status_code == 200
    assert c.get(f"/v1/collections/default/items/{ITEM}", headers=read).status_code == 200
    patch = {"metadata": {"stock": 7}}
    assert_error(c.patch(f"/v1/collections/default/items/{ITEM}", json=patch, headers=read), 403)
    assert c.get(f"/v1/collections/default/items/{ITEM}", headers=read).json()["metadata"]["stock"] != 7
    assert c.patch(f"/v1/collections/default/items/{ITEM}", json=patch, headers=full).status_code == 200
    assert c.get(f"/v1/collections/default/items/{ITEM}", headers=read).json()["metadata"]["stock"] == 7
    put = {"file": ("n.png", png_bytes((40, 30)), "image/png")}
    data = {"metadata": json.dumps({"brand": "acme"})}
    assert_error(c.put("/v1/collections/default/items/NEW-1", files=put, data=data, headers=read), 403)
    assert_error(c.get("/v1/collections/default/items/NEW-1", headers=read), 404)
    created = c.put("/v1/collections/default/items/NEW-1", files=put, data=data, headers=full)
    assert created.json()["action"] == "created"
    assert_error(c.delete("/v1/collections/default/items/NEW-1", headers=read), 403)
    assert c.delete("/v1/collections/default/items/NEW-1", headers=full).json()["action"] == "deleted"


def test_the_openapi_document_says_which_operations_a_read_key_cannot_use(keyed: Keyed) -> None:
    document = keyed.client.get("/openapi.json", headers={"X-API-Key": READ}).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert ("403" in operation["responses"]) == (not is_read(method, path)), (method, path)


def test_read_keys_come_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_API_READ_KEYS", " r1, r2 ,,r3")
    monkeypatch.setenv("CLIPSEARCH_API_KEY", "k")
    settings = Settings()
    assert settings.api.read_keys == ["r1", "r2", "r3"] and settings.api.key == "k"


def test_read_keys_alone_make_a_read_only_server(tmp_path: Path, tiny_checkpoint: Path,
                                                 tiny_model: Any) -> None:
    settings = make_settings(tmp_path / "home", tiny_checkpoint, api={"read_keys": [READ]})
    build_shop(settings, tiny_model, products=3)
    with serve(create_app(settings, model=tiny_model)) as url:
        found = httpx.post(f"{url}/v1/search", json={"text": "x"}, headers={"X-API-Key": READ})
        assert found.status_code == 200
        assert_error(httpx.post(f"{url}/v1/search", json={"text": "x"}), 401)
        gone = httpx.delete(f"{url}/v1/collections/default/items/{ITEM}", headers={"X-API-Key": READ})
        assert_error(gone, 403)
