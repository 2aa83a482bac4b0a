"""A folder of awkward and broken inputs, generated on the spot (nothing is downloaded).

`bad_input_corpus(root)` writes it and says, for every file, whether the indexer must embed it
(`good`) or record it as failed with a reason matching a pattern (`bad`). Every good image has
its own content, so searching by any of them must find that one first.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RUNNING_AS_ROOT = getattr(os, "geteuid", lambda: 0)() == 0
# Whoever runs the indexer as root reads files and folders whatever their mode says: the two
# unreadable inputs are then good ones.
ROOT_NOTE = "running as root, which reads chmod 000 files and folders: nothing is unreadable"


def noise(size: tuple[int, int] = (96, 64), seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(mode)
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG written byte by byte, for what PIL will not write (16-bit RGBA, a header that lies)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr)
    if rows:  # filter type 0 before every row
        chunks += png_chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row for row in rows)))
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


def ycck_jpeg(seed: int) -> bytes:
    """A JPEG whose Adobe marker declares YCCK (transform 2), as Photoshop writes CMYK photos.

    PIL writes CMYK JPEGs with transform 0; flipping the flag makes decoders run the YCCK path."""
    data = bytearray(_encode(noise((64, 48), seed, "CMYK"), "JPEG", quality=90))
    adobe = data.find(b"Adobe")
    assert adobe > 0, "PIL wrote no Adobe marker"
    data[adobe + 11] = 2  # "Adobe", version (2 bytes), flags0 (2), flags1 (2), then the transform
    return bytes(data)


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


@dataclass
class Corpus:
    root: Path
    good: list[str] = field(default_factory=list)  # uris the index must hold, exactly these
    bad: dict[str, str] = field(default_factory=dict)  # uri -> regex its failure reason must match
    odd_names: list[str] = field(default_factory=list)  # good uris with spaces, unicode, newlines


def bad_input_corpus(root: Path) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    seeds = iter(range(1000))

    def good(name: str, data: bytes | Image.Image, fmt: str = "JPEG", **params: object) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else _encode(data, fmt, **params))
        corpus.good.append(str(path))
        return path

    def bad(name: str, data: bytes, reason: str) -> Path:
        path = root / name
        path.write_bytes(data)
        corpus.bad[str(path)] = reason
        return path

    # Colour models and bit depths.
    good("cmyk.jpg", noise(seed=next(seeds), mode="CMYK"), quality=90)
    good("ycck.jpg", ycck_jpeg(next(seeds)))
    rgba16 = np.random.default_rng(next(seeds)).integers(0, 65536, (24, 32, 4), dtype=np.uint16)
    rgba16[:8, :, 3] = 0  # a fully transparent band
    rows = [row.astype(">u2").tobytes() for row in rgba16]
    good("rgba-16bit.png", handmade_png(32, 24, 16, 6, rows))
    palette = noise(seed=next(seeds)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    good("palette-transparent.png", palette, "PNG", transparency=0)
    # Animations: the first frame is what gets indexed.
    for name, fmt, params in (("anim.gif", "GIF", {}), ("anim.webp", "WEBP", {"lossless": True})):
        frames = [noise((48, 48), seed=next(seeds)) for _ in range(3)]
        good(name, frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0, **params)
    # Every EXIF orientation.
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        good(f"orientation-{orientation}.jpg", noise((60, 40), next(seeds)), quality=90, exif=exif)
    good("one-pixel.png", Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")
    good("nested/deeper/still-found.jpg", noise(seed=next(seeds)), quality=90)
    # Names that break naive code: spaces, unicode (NFC and emoji), a newline, a leading dash.
    for name in ("with spaces  twice.jpg", "ünïcødé 写真 📷.png", "new\nline.jpg", "-dash.jpg"):
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        corpus.odd_names.append(str(good(name, noise(seed=next(seeds)), fmt)))
    # A symlink to a good file under the root is that file: one item, under the file's real path.
    os.symlink("cmyk.jpg", root / "link-to-cmyk.jpg")

    # Broken files.
    whole = _encode(noise((256, 256), next(seeds)), "JPEG", quality=90)
    bad("truncated.jpg", whole[: len(whole) // 2], "truncated")
    bad("zero-bytes.jpg", b"", "empty file")
    bad("really-text.jpg", b"this is a shopping list, not a photo\n", "not an image file")
    bad("huge-header.png", handmade_png(50_000, 50_000, 8, 2, rows=[]), "image too large: 50000x50000")
    # Links that lead nowhere: a loop between two files, and a dangling one.
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    os.symlink("no-such-file.jpg", root / "dangling.jpg")
    for name in ("loop-a.jpg", "loop-b.jpg", "dangling.jpg"):
        corpus.bad[str(root / name)] = "cannot stat"
    # A folder link back to the root: must not be followed (it would loop, or index everything twice).
    os.symlink(".", root / "loop-dir")
    # A FIFO named like a photo: opening it would block forever.
    os.mkfifo(root / "pipe.jpg")
    corpus.bad[str(root / "pipe.jpg")] = "not a regular file"
    # A name that is not UTF-8 (from an old Latin-1 disk): reported under a printable spelling.
    latin1 = os.fsencode(root) + b"/caf\xe9.jpg"
    with open(latin1, "wb") as f:
        f.write(_encode(noise(seed=next(seeds)), "JPEG"))
    corpus.bad[str(root) + "/caf\\xe9.jpg"] = "not valid UTF-8"

    # Permissions: unreadable for a normal user, readable (so good) for root.
    locked_file = root / "no-permission.jpg"
    locked_file.write_bytes(_encode(noise(seed=next(seeds)), "JPEG"))
    locked_dir = root / "private"
    locked_dir.mkdir()
    (locked_dir / "inside.jpg").write_bytes(_encode(noise(seed=next(seeds)), "JPEG"))
    locked_file.chmod(0)
    locked_dir.chmod(0)
    if RUNNING_AS_ROOT:
        corpus.good += [str(locked_file), str(locked_dir / "inside.jpg")]
    else:
        corpus.bad[str(locked_file)] = "permission denied"
        corpus.bad[str(locked_dir)] = "unreadable folder"
    return corpus


def unlock(corpus: Corpus) -> None:
    """Make the corpus deletable again (pytest's tmp_path cleanup)."""
    for path in (corpus.root / "no-permission.jpg", corpus.root / "private"):
        if path.exists():
            path.chmod(0o755)
