"""Queries without torch: the ONNX export of a model's towers (models.onnx_export) and the encoder that
runs it (indexer.models.encoders.OnnxEncoder), through the engine's ModelCache, the CLI and the API server.

Specification:
- the ported tokenizer gives open_clip's token ids exactly, for each of open_clip's cleanings, on plain
  ASCII, HTML entities, control characters, non-Latin scripts, mojibake and over-long texts;
- the ported image geometry gives exactly open_clip's pixels, for the tiny model and ViT-B-32's 224
  transform, on real photos decoded as the index decodes them (JPEG draft size);
- the tiny model's export embeds texts and real photos within cosine 0.9999 of the torch model, one at
  a time and in batches, with the same draft size and logit scale; it is made once per model identity
  under CLIPSEARCH_HOME/models (another checkpoint: another directory; random weights: none);
- a model the export cannot handle (a text tower pooled at its last token) keeps answering on torch:
  ModelCache.query gives the torch model after one warning, and the failure is remembered, not retried;
- `clipsearch search` on a collection whose export exists never imports torch or open_clip (the real
  CLI in a subprocess, under -X importtime), and finds what the torch path finds;
- the API server (`clipsearch serve`) answers text and image queries, and classifies, without importing
  torch once the export exists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.ingest.decode import decode_image
from indexer.models.encoders import (
    TEXT_GROUP,
    BpeTokenizer,
    OnnxEncoder,
    QueryEncoder,
    ResizeCrop,
    export_dir,
    read_meta,
)
from indexer.models.loading import ClipModel, ModelCache, load_model
from indexer.models.onnx_export import ensure_export, failure_path
from indexer.settings import Settings
from tests.clirun import CLI, REPO, cli_home, run_json, served_url, wait_for
from tests.helpers import TINY_CONFIG, copy_photos

TEXTS = [
    "a photo of a dog",
    "A red car parked on the street at night, next to a WOODEN bench!",
    "",
    "   spaces   everywhere   ",
    "Fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39;",
    "bell\x07 and escape\x1b[31m red",
    "tabs\tand\nnew lines\r\n",
    "naïve café, crème brûlée",
    "日本語のテキストと中文文本",
    "собака на пляже",
    "emoji 🐶🐱 and ﬁne ligatures",
    "mojibake: Ã©tÃ© Ã  la plage",
    "can't won't I'll we've they'd it's",
    "numbers 12345 and 3.14159, 1st 2nd",
    "snake_case_words and CamelCase",
    " ".join(["a very long caption that goes on and on"] * 12),
]


def photos(imagenet_dir: Path, count: int) -> list[Path]:
    return sorted(imagenet_dir.glob("*.JPEG"))[:count]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_model: ClipModel) -> OnnxEncoder:
    home = tmp_path_factory.mktemp("home")
    directory = ensure_export(tiny_model, home)
    assert directory == export_dir(home, tiny_model.identity)
    return OnnxEncoder(directory, tiny_model.identity)


# --- the ports ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_tokenizer_gives_open_clips_ids(clean: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    theirs = SimpleTokenizer(clean=clean)(TEXTS).numpy()
    ours = BpeTokenizer(Path(default_bpe()), clean=clean)(TEXTS)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[-1] != 0).all() and ours[-1, -1] == 49407  # cut at 77 tokens, ending with the end token


@pytest.mark.parametrize("size", [64, 224])
def test_image_geometry_gives_open_clips_pixels(size: int, imagenet_dir: Path) -> None:
    from open_clip import image_transform

    from indexer.models.loading import _split_preprocess

    theirs = _split_preprocess(image_transform(size, is_train=False))[0]
    ours = ResizeCrop(size, None, (size, size), "bicubic")
    for path in photos(imagenet_dir, 12):
        picture = decode_image(str(path), draft_size=2 * size)  # as indexing and queries decode
        expected = np.asarray(theirs(picture))
        assert expected.shape == (size, size, 3)
        np.testing.assert_array_equal(np.asarray(ours(picture)), expected)


# --- the export -----------------------------------------------------------------------------------------


def test_export_matches_the_torch_model(
    exported: OnnxEncoder, tiny_model: ClipModel, imagenet_dir: Path
) -> None:
    assert isinstance(exported, QueryEncoder)
    assert exported.draft_size == tiny_model.draft_size
    assert exported.logit_scale == pytest.approx(tiny_model.logit_scale)
    expected = tiny_model.encode_texts(TEXTS)
    for got in (exported.encode_texts(TEXTS), np.concatenate([exported.encode_texts([t]) for t in TEXTS])):
        assert got.shape == expected.shape and got.dtype == np.float32
        assert cosines(got, expected).min() >= 0.9999
    # A batch larger than a length group (label prompts): grouped by length, answered in its own order.
    many = [f"{TEXTS[i % len(TEXTS)]} {'x ' * (i % 13)}" for i in range(3 * TEXT_GROUP + 5)]
    alone = np.concatenate([tiny_model.encode_texts([t]) for t in many])
    assert cosines(exported.encode_texts(many), alone).min() >= 0.9999

    pictures = [decode_image(str(p), draft_size=exported.draft_size) for p in photos(imagenet_dir, 6)]
    expected = tiny_model.encode_images(pictures)
    one_by_one = np.concatenate([exported.encode_images([p]) for p in pictures])
    for got in (exported.encode_images(pictures), one_by_one):
        assert cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # and a real difference shows: another photo's embedding is not within that cosine
    assert cosines(got[:1], expected[1:2]).min() < 0.9999


def test_export_is_made_once_per_model_identity(
    exported: OnnxEncoder, tiny_model: ClipModel, tiny_checkpoint: Path
) -> None:
    home = exported.directory.parent.parent
    meta = exported.directory / "meta.json"
    written = meta.stat().st_mtime_ns
    assert ensure_export(tiny_model, home) == exported.directory
    assert meta.stat().st_mtime_ns == written
    assert read_meta(exported.directory)["check"]["text_cosine_min"] >= 0.9999
    identity = tiny_model.identity
    assert export_dir(home, dataclasses.replace(identity, weights="sha256:" + "0" * 64)) != exported.directory
    assert export_dir(home, dataclasses.replace(identity, precision="int8")) != exported.directory
    random = load_model(str(TINY_CONFIG), "", "cpu")
    assert ensure_export(random, home) is None  # random weights are drawn anew at each load
    assert sorted(p.name for p in (home / "models").iterdir()) == [exported.directory.name]


def test_the_model_cache_answers_queries_with_the_export(
    exported: OnnxEncoder, tiny_model: ClipModel
) -> None:
    home = exported.directory.parent.parent
    encoder = ModelCache("cpu", home).query(tiny_model.identity)
    assert isinstance(encoder, OnnxEncoder) and encoder.directory == exported.directory
    assert isinstance(ModelCache("cpu").query(tiny_model.identity), ClipModel)  # no home: torch


def test_a_model_the_export_cannot_handle_stays_on_torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import open_clip
    import torch

    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"]["pool_type"] = "last"  # not the causal end-token pooling the export relies on
    path = tmp_path / "tiny-last-pool.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(1)
    checkpoint = tmp_path / "last-pool.pt"
    torch.save(open_clip.create_model(path.stem).state_dict(), checkpoint)
    identity = load_model(str(path), str(checkpoint), "cpu").identity

    home = tmp_path / "home"
    with caplog.at_level(logging.WARNING, logger="indexer.models.onnx_export"):
        encoder = ModelCache("cpu", home).query(identity)
    assert isinstance(encoder, ClipModel)
    assert encoder.encode_texts(["a dog"]).shape == (1, 32)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "indexer.models.onnx_export"]
    assert "ONNX export failed" in warning and "pooled at its end token" in warning
    failed = failure_path(export_dir(home, identity))
    recorded = failed.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexer.models.onnx_export"):
        assert isinstance(ModelCache("cpu", home).query(identity), ClipModel)
    [again] = [r.getMessage() for r in caplog.records if r.name == "indexer.models.onnx_export"]
    assert "failed earlier" in again
    assert failed.stat().st_mtime_ns == recorded  # not tried again
    assert not export_dir(home, identity).exists()


# --- whole processes without torch ------------------------------------------------------------------------


def imported(stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.fixture(scope="module")
def cli_settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    with cli_home(tmp_path_factory.mktemp("home"), tiny_checkpoint) as settings:
        yield settings


@pytest.fixture(scope="module")
def indexed(cli_settings: Settings, tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path,
            tiny_model: ClipModel) -> Path:
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("photos"), 12)
    assert run_json("index", str(folder))["embedded"] == 12
    run_json("search", "warm-up")  # exports on first use if the index run did not
    assert read_meta(export_dir(cli_settings.home, tiny_model.identity)) is not None
    return folder


def test_cli_search_imports_no_torch(indexed: Path, cli_settings: Settings, tiny_model: ClipModel) -> None:
    from indexer.search.engine import SearchEngine

    done = subprocess.run([sys.executable, "-X", "importtime", *CLI[1:], "search", "a dog on the beach",
                           "-k", "5", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    names = imported(done.stderr)
    assert "onnxruntime" in names and "clipsearch" in names  # the check sees what was imported
    assert not names & {"torch", "open_clip", "torchvision"}
    results = json.loads(done.stdout)["results"]

    models = ModelCache("cpu")  # no home: the torch path
    models.add(tiny_model)
    with SearchEngine(cli_settings, models=models) as engine:
        assert isinstance(engine.model_for()[1], ClipModel)
        expected = engine.search_text("a dog on the beach", 5).results
    assert [r["id"] for r in results] == [r.id for r in expected]
    np.testing.assert_allclose([r["score"] for r in results], [r.score for r in expected], atol=1e-4)


def test_api_server_answers_without_torch(indexed: Path, cli_settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        command = [sys.executable, "-X", "importtime", *CLI[1:], "serve", "--port", "0"]
        server = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        url = served_url(server, cli_settings)
        def ready() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "the API server", every=0.2)
        photo = sorted(indexed.glob("*.JPEG"))[0]
        with httpx.Client(base_url=url, timeout=60) as client:
            text = client.post("/v1/search", json={"text": "a red car", "k": 3})
            assert text.status_code == 200 and len(text.json()["results"]) == 3
            files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
            image = client.post("/v1/search/image", data={"k": "1"}, files=files)
            assert image.status_code == 200
            assert image.json()["results"][0]["uri"].endswith(photo.name)  # finds itself first
            classify = client.post("/v1/classify", data={"labels": "dog,car"}, files=files)
            assert classify.status_code == 200, classify.text
    finally:
        server.terminate()
        server.wait(30)
    names = imported(log.read_text())
    assert "onnxruntime" in names and "uvicorn" in names
    assert not names & {"torch", "open_clip", "torchvision"}
