"""Specification of ingest.decode: every input is generated here with PIL/numpy, nothing is downloaded."""

from __future__ import annotations

import io
import os
import random
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from indexer.errors import ImageDecodeError
from indexer.ingest import decode
from indexer.ingest.decode import IMAGE_EXTENSIONS, decode_image, image_size
from tests.corpus import handmade_png

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def assert_near(pixel, expected, tol: int = 10) -> None:
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), f"{pixel} != {expected}"


def save(tmp_path: Path, im: Image.Image, name: str, **params) -> Path:
    path = tmp_path / name
    im.save(path, **params)
    return path


def noise(size: tuple[int, int] = (128, 96), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- orientation -----------------------------------------------------------------------------------

# Where the stored image's top-left and top-right corners appear once displayed, per the EXIF spec
# ("the 0th row is the visual ..., the 0th column is the visual ...").
DISPLAYED_CORNERS = {
    1: ("top-left", "top-right"),
    2: ("top-right", "top-left"),
    3: ("bottom-right", "bottom-left"),
    4: ("bottom-left", "bottom-right"),
    5: ("top-left", "bottom-left"),
    6: ("top-right", "bottom-right"),
    7: ("bottom-right", "top-right"),
    8: ("bottom-left", "top-left"),
}


def corner(im: Image.Image, name: str) -> tuple[int, ...]:
    inset = 4
    x = inset if name.endswith("left") else im.width - 1 - inset
    y = inset if name.startswith("top") else im.height - 1 - inset
    return im.getpixel((x, y))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_puts_corners_where_the_spec_says(tmp_path, orientation, fmt):
    stored = Image.new("RGB", (60, 30), (128, 128, 128))
    stored.paste(RED, (0, 0, 15, 15))  # stored top-left
    stored.paste(BLUE, (45, 0, 60, 15))  # stored top-right
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path, stored, f"o{orientation}.{fmt.lower()}", format=fmt, exif=exif)

    out = decode_image(path)

    assert out.mode == "RGB"
    assert out.size == ((60, 30) if orientation <= 4 else (30, 60))
    red_at, blue_at = DISPLAYED_CORNERS[orientation]
    assert_near(corner(out, red_at), RED, tol=40)
    assert_near(corner(out, blue_at), BLUE, tol=40)
    assert image_size(path) == out.size  # the header-only size agrees with the decoded one


# --- colour modes ----------------------------------------------------------------------------------


def test_cmyk_jpeg_colours_come_out_right(tmp_path):
    # PIL writes CMYK JPEGs Adobe-style (inverted); reading them back must not invert the colours.
    swatches = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]
    expected = [(0, 255, 255), (255, 0, 255), (255, 255, 0), BLACK, WHITE]
    im = Image.new("CMYK", (16 * len(swatches), 16))
    for i, colour in enumerate(swatches):
        im.paste(colour, (16 * i, 0, 16 * (i + 1), 16))
    path = save(tmp_path, im, "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"

    out = decode_image(path)

    assert out.mode == "RGB"
    for i, colour in enumerate(expected):
        assert_near(out.getpixel((16 * i + 8, 8)), colour)


def test_palette_png_transparent_index_becomes_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0])  # index 0 black (and transparent), index 1 red
    im.putpixel((1, 0), 1)
    path = save(tmp_path, im, "p.png", transparency=0)

    out = decode_image(path)

    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE  # not the black the palette holds
    assert out.getpixel((1, 0)) == RED


def test_rgba_png_is_composited_onto_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putdata([(0, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)])
    out = decode_image(save(tmp_path, im, "rgba.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert_near(out.getpixel((1, 0)), (255, 127, 127), tol=2)  # half red over white
    assert out.getpixel((2, 0)) == BLUE


def test_rgb_png_with_colour_key_transparency_is_white(tmp_path):
    im = Image.new("RGB", (2, 1))
    im.putpixel((1, 0), GREEN)
    out = decode_image(save(tmp_path, im, "trns.png", transparency=BLACK))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == GREEN


def test_la_png_is_composited_onto_white(tmp_path):
    im = Image.new("LA", (3, 1))
    im.putdata([(0, 0), (0, 255), (100, 255)])
    out = decode_image(save(tmp_path, im, "la.png"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [WHITE, BLACK, (100, 100, 100)]


def test_bilevel_and_grayscale(tmp_path):
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    out = decode_image(save(tmp_path, bilevel, "1.png"))
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(2)] == [BLACK, WHITE]

    gray = Image.new("L", (1, 1), 77)
    assert decode_image(save(tmp_path, gray, "l.png")).getpixel((0, 0)) == (77, 77, 77)


SIXTEEN_BIT = [0, 257, 32768, 65535]
EIGHT_BIT = [0, 1, 128, 255]  # scaled, not clipped: a plain convert would make all but 0 white


def test_16bit_grayscale_png_is_scaled_to_8bit(tmp_path):
    im = Image.fromarray(np.array([SIXTEEN_BIT], dtype=np.uint16))
    path = save(tmp_path, im, "gray16.png")
    assert Image.open(path).mode in ("I;16", "I")  # which one depends on the Pillow version

    out = decode_image(path)

    assert out.mode == "RGB"
    assert [out.getpixel((x, 0))[0] for x in range(4)] == EIGHT_BIT


def test_32bit_int_tiff_holding_16bit_samples_is_scaled(tmp_path):
    im = Image.fromarray(np.array([SIXTEEN_BIT], dtype=np.int32))
    path = save(tmp_path, im, "int.tif")
    assert Image.open(path).mode == "I"
    out = decode_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == EIGHT_BIT


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    path = save(tmp_path, im, "float.tif")
    assert Image.open(path).mode == "F"
    out = decode_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_16bit_rgb_png_is_scaled_to_8bit(tmp_path):
    pixels = [(65535, 32768, 0), (0, 65535, 257)]
    row = b"".join(struct.pack(">HHH", *p) for p in pixels)
    path = tmp_path / "rgb16.png"
    path.write_bytes(handmade_png(2, 1, 16, 2, [row]))

    out = decode_image(path)

    assert out.mode == "RGB"
    assert_near(out.getpixel((0, 0)), (255, 128, 0), tol=1)
    assert_near(out.getpixel((1, 0)), (0, 255, 1), tol=1)


# --- animations and tiny images --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "params"),
    [
        ("GIF", "anim.gif", {}),
        ("WEBP", "anim.webp", {"lossless": True}),
        ("PNG", "anim.png", {}),  # APNG
    ],
)
def test_animation_gives_its_first_frame(tmp_path, fmt, name, params):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / name
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    assert getattr(Image.open(path), "n_frames", 1) == 3

    out = decode_image(path)

    assert out.mode == "RGB" and out.size == (8, 8)
    assert_near(out.getpixel((4, 4)), RED, tol=2)


def test_mpo_from_a_phone_camera_gives_its_first_image(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (8, 8), RED).save(
        path, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8), BLUE)]
    )
    assert Image.open(path).format == "MPO"
    assert_near(decode_image(path).getpixel((4, 4)), RED, tol=4)


@pytest.mark.parametrize(("fmt", "ext"), [("HEIF", ".heic"), ("AVIF", ".avif")])
def test_optional_formats_when_a_plugin_is_installed(tmp_path, fmt, ext):
    if ext not in IMAGE_EXTENSIONS:
        pytest.skip(f"no {fmt} plugin installed (pillow-heif, or a Pillow built with AVIF)")
    path = save(tmp_path, Image.new("RGB", (32, 24), RED), "x" + ext, format=fmt, quality=90)
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == image_size(path) == (32, 24)
    assert_near(out.getpixel((8, 8)), RED, tol=6)


def test_one_pixel_image(tmp_path):
    out = decode_image(save(tmp_path, Image.new("RGB", (1, 1), GREEN), "one.png"))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == GREEN


# --- failures ----------------------------------------------------------------------------------------


def test_truncated_jpeg_is_an_error_not_grey(tmp_path):
    data = (path := save(tmp_path, noise((256, 256)), "full.jpg", quality=90)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])

    for source in (cut, cut.read_bytes()):
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(source)
    assert image_size(cut) == (256, 256)  # the header alone is intact
    assert decode_image(path).size == (256, 256)


def test_empty_file_and_empty_bytes(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    for source in (empty, b""):
        with pytest.raises(ImageDecodeError, match="empty"):
            decode_image(source)
        with pytest.raises(ImageDecodeError, match="empty"):
            image_size(source)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageDecodeError, match="^not an image file$"):
        decode_image(path)


def test_cut_inside_the_header_says_so(tmp_path):
    data = save(tmp_path, noise(), "h.gif").read_bytes()[:300]  # inside the global colour table
    with pytest.raises(ImageDecodeError, match="^corrupt or truncated GIF header$"):
        decode_image(data)


def test_format_outside_the_allowlist_is_refused(tmp_path):
    # PPM is harmless, but stands for all formats we do not take (EPS would run Ghostscript).
    path = save(tmp_path, Image.new("RGB", (4, 4)), "x.ppm")
    with pytest.raises(ImageDecodeError, match="^unsupported image format PPM$"):
        decode_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path)


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 0)() == 0, reason="root reads files despite chmod 000")
def test_unreadable_file(tmp_path):
    path = save(tmp_path, Image.new("RGB", (4, 4)), "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(ImageDecodeError, match="permission denied"):
            decode_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_is_mapped(tmp_path, monkeypatch):
    # Runs as root too: simulate the OS refusing, as chmod 000 would for another user.
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode, "open", refuse, raising=False)
    with pytest.raises(ImageDecodeError, match="^unreadable: permission denied$"):
        decode_image(tmp_path / "any.jpg")


def test_memory_error_is_mapped(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (4, 4)), "small.png")

    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(ImageDecodeError, match="out of memory"):
        decode_image(path)


# --- decompression bombs ----------------------------------------------------------------------------


def test_huge_png_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(handmade_png(50_000, 50_000, 8, 2, rows=[]))  # header only: decoding would fail anyway
    pil_limit = Image.MAX_IMAGE_PIXELS

    with pytest.raises(ImageDecodeError) as info:  # the file has no pixel data: only the header was read
        decode_image(path)
    assert str(info.value) == "image too large: 50000x50000 pixels exceeds the limit of 100000000"
    assert image_size(path) == (50_000, 50_000)  # header-only, so no limit applies
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global setting is left as it was


def test_max_pixels_is_ours_not_pils(tmp_path, monkeypatch):
    path = save(tmp_path, noise((64, 64)), "64.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would refuse 4096 pixels

    assert decode_image(path, max_pixels=64 * 64).size == (64, 64)  # the limit is inclusive
    with pytest.raises(ImageDecodeError, match="64x64 pixels exceeds the limit of 4095"):
        decode_image(path, max_pixels=64 * 64 - 1)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_concurrent_decodes_restore_pils_limit(tmp_path):
    paths = [save(tmp_path, noise((64, 48), seed=i), f"{i}.jpg") for i in range(16)]
    pil_limit = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda p: decode_image(p).size, paths * 4))
    assert sizes == [(64, 48)] * 64
    assert Image.MAX_IMAGE_PIXELS == pil_limit


# --- sources and contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("a.jpg", {"quality": 90}),
        ("a.png", {}),
        ("a.webp", {"quality": 90}),
        ("a.gif", {}),
        ("a.bmp", {}),
        ("a.tiff", {}),
    ],
)
def test_bytes_input_works_like_path_input(tmp_path, name, params):
    path = save(tmp_path, noise(), name, **params)
    from_path, from_bytes = decode_image(path), decode_image(path.read_bytes())
    assert from_path.mode == from_bytes.mode == "RGB"
    assert from_path.size == from_bytes.size == image_size(path) == image_size(path.read_bytes()) == (128, 96)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))
    assert decode_image(str(path)).size == (128, 96)  # str paths too


def test_result_is_detached_from_the_file(tmp_path):
    path = save(tmp_path, noise(), "gone.png")
    out = decode_image(path)
    path.unlink()
    assert out.copy().resize((8, 8)).size == (8, 8)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("c.jpg", {"quality": 80}),
        ("c.png", {}),
        ("c.gif", {}),
        ("c.webp", {}),
        ("c.tiff", {}),
        ("c.bmp", {}),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the broken metadata it skips
def test_corrupted_inputs_raise_only_image_decode_error(tmp_path, name, params):
    data = save(tmp_path, noise((48, 32)), name, **params).read_bytes()
    rng = random.Random(name)
    for _ in range(40):
        mutated = bytearray(data)
        if rng.random() < 0.5:
            mutated = mutated[: rng.randrange(1, len(data))]
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            out = decode_image(bytes(mutated))
        except ImageDecodeError as exc:
            assert str(exc)  # a reason, never an empty message
        else:
            assert out.mode == "RGB"


def test_error_is_bad_input_of_the_one_hierarchy():
    from indexer.errors import BadInput, ErrorKind

    assert issubclass(ImageDecodeError, BadInput) and ImageDecodeError("x").kind is ErrorKind.BAD_INPUT


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_real_photo():
    if not SAMPLES.is_dir():
        pytest.skip(f"shared sample photos not present at {SAMPLES}")
    photo = next(iter(sorted(SAMPLES.glob("*.JPEG"))), None)
    if photo is None:
        pytest.skip(f"no .JPEG files in {SAMPLES}")

    out = decode_image(photo)

    assert out.mode == "RGB"
    assert out.size == image_size(photo) == Image.open(photo).size
    assert np.asarray(out).std() > 5  # real content, not a flat grey fill


def test_bytes_buffer_types():
    data = io.BytesIO()
    Image.new("RGB", (3, 2), RED).save(data, "PNG")
    assert decode_image(data.getvalue()).size == (3, 2)
