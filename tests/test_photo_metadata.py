"""Photo metadata for folders (indexer.ingest.photo_metadata): EXIF date taken, camera, GPS, upright size,
folder and file name, read from real photos and from JPEGs made here with known EXIF, then declared,
indexed and filtered on in a collection."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from indexer.ingest.batches import decode_item
from indexer.ingest.decode import decode_image
from indexer.ingest.photo_metadata import photo_metadata
from indexer.ingest.pipeline import index_sources
from indexer.ingest.sources import SourceItem
from indexer.schema import IMAGE_FIELDS
from indexer.stores import open_store
from indexer.stores.filters import Filter
from tests.exif import LISBON, SYDNEY, jpeg_with_exif
from tests.helpers import require_imagenet


def read(path: Path) -> dict:
    return photo_metadata(decode_image(path), str(path))


def test_real_photos_from_cameras() -> None:
    folder = require_imagenet()
    assert read(folder / "n01622779_great_grey_owl.JPEG") == {
        "folder": "imagenet-samples", "file_name": "n01622779_great_grey_owl.JPEG",
        "camera_make": "Canon", "camera_model": "Canon EOS 10D", "taken": "2005-01-30T13:40:31Z",
    }
    # NUL-padded strings from the camera: stripped
    frog = read(folder / "n01644373_tree_frog.JPEG")
    assert (frog["camera_model"], frog["taken"]) == ("Canon EOS DIGITAL REBEL XTi", "2008-04-08T18:13:05Z")
    # no camera fields, only the date the editor wrote (DateTime, no DateTimeOriginal)
    assert read(folder / "n01749939_green_mamba.JPEG") == {
        "folder": "imagenet-samples", "file_name": "n01749939_green_mamba.JPEG",
        "taken": "2008-02-27T17:59:27Z",
    }
    assert read(folder / "n01440764_tench.JPEG") == {"folder": "imagenet-samples",
                                                      "file_name": "n01440764_tench.JPEG"}


def test_gps_date_with_its_zone_and_camera(tmp_path: Path) -> None:
    north = read(jpeg_with_exif(tmp_path / "lisbon.jpg"))
    assert north["location"] == pytest.approx({"lat": LISBON[0], "lon": LISBON[1]}, abs=1e-5)
    assert north["taken"] == "2019-06-01T12:30:00+01:00"
    assert (north["camera_make"], north["camera_model"]) == ("Fujifilm", "X-T3")
    south = read(jpeg_with_exif(tmp_path / "sydney.jpg", where=SYDNEY, offset=None))
    assert south["location"] == pytest.approx({"lat": SYDNEY[0], "lon": SYDNEY[1]}, abs=1e-5)
    assert south["taken"] == "2019-06-01T12:30:00Z", "no offset recorded: the clock time, as UTC"


def test_orientation_gives_the_upright_size(tmp_path: Path) -> None:
    item = SourceItem(str(tmp_path / "turned.jpg"), str(tmp_path / "turned.jpg"), "f")
    jpeg_with_exif(Path(item.path), size=(60, 40), orientation=6)
    decoded = decode_item(item, lambda image: image.resize((8, 8)), 10**8)
    assert (decoded.width, decoded.height) == (40, 60)
    assert decoded.photo["file_name"] == "turned.jpg" and decoded.photo["folder"] == tmp_path.name


@pytest.mark.parametrize(
    ("kwargs", "absent"),
    [
        ({"taken": "0000:00:00 00:00:00"}, "taken"),
        ({"taken": "    :  :     :  :  "}, "taken"),
        ({"where": (0.0, 0.0)}, "location"),  # what a camera without a fix writes
        ({"where": None, "gps_raw": {1: "N", 2: (Fraction(95), Fraction(0), Fraction(0)), 3: "E",
                                     4: (Fraction(1), Fraction(0), Fraction(0))}}, "location"),
        ({"where": None, "gps_raw": {1: "N", 2: (Fraction(10),), 3: "E", 4: (Fraction(1),)}}, "location"),
        ({"make": None, "model": None}, "camera_make"),
    ],
)
def test_broken_or_missing_metadata_leaves_the_field_out(tmp_path: Path, kwargs: dict, absent: str) -> None:
    fields = read(jpeg_with_exif(tmp_path / "odd.jpg", **kwargs))
    assert absent not in fields and fields["file_name"] == "odd.jpg"


def test_a_png_without_exif_and_garbage_exif(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "plain.png")
    assert read(tmp_path / "plain.png") == {"folder": tmp_path.name, "file_name": "plain.png"}
    image = decode_image(jpeg_with_exif(tmp_path / "x.jpg"))
    image.info["exif"] = b"Exif\0\0garbage that is no TIFF header"
    assert photo_metadata(image, str(tmp_path / "x.jpg")) == {"folder": tmp_path.name, "file_name": "x.jpg"}


@pytest.mark.parametrize("store", ["edge", "faiss"])
def test_a_folder_collection_declares_indexes_and_filters_them(tmp_path, tiny_checkpoint, tiny_model,
                                                               store) -> None:
    from tests.helpers import make_settings

    trip = tmp_path / "photos" / "Lisbon 2019"
    trip.mkdir(parents=True)
    jpeg_with_exif(trip / "tram.jpg")
    jpeg_with_exif(trip / "later.jpg", taken="2021:08:15 09:00:00", offset="+00:00")
    jpeg_with_exif(tmp_path / "photos" / "opera.jpg", where=SYDNEY, taken="2018:01:02 03:04:05", offset=None)
    shutil.copy2(require_imagenet() / "n01622779_great_grey_owl.JPEG", tmp_path / "photos")
    settings = make_settings(tmp_path / "home", tiny_checkpoint, store=store)
    assert index_sources(settings, [tmp_path / "photos"], model=tiny_model, progress=False).embedded == 4

    collection = open_store(settings, settings.collection)
    try:
        assert IMAGE_FIELDS.items() <= collection.schema.fields.items()

        def count(condition: dict) -> int:
            return collection.count(Filter.parse({"must": [condition]}).resolve(collection.schema))

        lisbon = {"center": {"lat": 38.7, "lon": -9.1}, "radius": 10_000}
        near_lisbon = {"key": "location", "geo_radius": lisbon}
        assert count(near_lisbon) == 2
        assert count({"key": "taken", "range": {"gte": "2019-01-01T00:00:00Z"}}) == 2
        assert count({"key": "taken", "range": {"lt": "2010-01-01T00:00:00Z"}}) == 1  # the owl, 2005
        assert count({"key": "camera_model", "match": {"value": "Canon EOS 10D"}}) == 1
        assert count({"key": "folder", "match": {"value": "Lisbon 2019"}}) == 2
        assert count({"key": "file_name", "match": {"value": "opera.jpg"}}) == 1
        [owl] = [r for r in collection.scan() if r.payload["metadata"]["file_name"].endswith("owl.JPEG")]
        assert owl.payload["metadata"]["taken"] == "2005-01-30T13:40:31Z"
    finally:
        collection.close()
