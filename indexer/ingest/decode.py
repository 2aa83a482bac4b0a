"""Turn untrusted image files and uploads into fully loaded RGB images, or a short reason why not.

Used by the indexer's worker processes and by the HTTP API for uploads, so every failure, whatever PIL
or the OS raised, comes out as `ImageDecodeError` and its str is fit for the failure log and for users.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from indexer.errors import ImageDecodeError

try:  # HEIC/HEIF (iPhone photos) only when the optional pillow-heif plugin is installed
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    register_heif_opener()

Image.init()  # load every plugin now, so Image.OPEN lists all formats this Pillow can read

# An allowlist rather than "whatever PIL opens": it keeps uploads away from formats that shell out
# (EPS runs Ghostscript) or are rarely fuzzed. The JPEG plugin also opens MPO, which phone cameras write.
_FORMATS = tuple(
    f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "HEIF", "AVIF") if f in Image.OPEN
)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | ({".heic", ".heif"} if "HEIF" in Image.OPEN else set())
    | ({".avif"} if "AVIF" in Image.OPEN else set())
)

DEFAULT_MAX_PIXELS = 100_000_000
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

# EXIF Orientation value -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset(_UPRIGHT[o] for o in (5, 6, 7, 8))


def decode_image(
    source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode a path or the bytes of an image file into a fully loaded RGB image.

    The pixel count is checked from the header before anything is decoded. EXIF orientation is applied,
    animations give their first frame, and transparency is composited onto white.

    `draft_size`, for callers that shrink the image anyway (the indexer): a JPEG is decoded by libjpeg
    at 1/2, 1/4 or 1/8 scale (DCT scaling, several times faster on large photos) as long as both sides
    stay >= draft_size, and only at a scale that divides both sides, so the smaller image covers
    exactly the same picture (no partial edge block) and any later resize keeps the same geometry.
    Other formats are unaffected. The returned image is then smaller than the file;
    `image.info["original_size"]` always holds the file's upright (width, height).
    """
    with _open(source) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}"
            )
        scale = _draft_scale(width, height, draft_size) if draft_size and im.format == "JPEG" else 1
        if scale > 1:
            im.draft(None, (width // scale, height // scale))
        im.load()  # open() leaves animations at frame 0, so this decodes the first frame only
        method = _UPRIGHT.get(_orientation(im))
        rgb = _to_rgb(im.transpose(method) if method is not None else im)
        rgb.info["original_size"] = (height, width) if method in _SWAPS_SIDES else (width, height)
        return rgb


def _draft_scale(width: int, height: int, draft_size: int) -> int:
    """The largest DCT scale (8, 4, 2) that divides both sides and keeps both >= draft_size, else 1."""
    for scale in (8, 4, 2):
        if width % scale == 0 and height % scale == 0 and min(width, height) // scale >= draft_size:
            return scale
    return 1


def image_size(source: str | os.PathLike | bytes) -> tuple[int, int]:
    """(width, height) as `decode_image` would return it (EXIF rotation applied), from headers only.

    Metadata stored after the pixel data (a late PNG eXIf chunk) is not seen.
    """
    with _open(source) as im:
        width, height = im.size
        return (height, width) if _orientation(im) in (5, 6, 7, 8) else (width, height)


def pixel_count(source: str | os.PathLike | bytes) -> int:
    """width x height from the header, what decoding will cost (`limits.PixelBudget`); 0 for what is
    not an image (the decode that follows says why)."""
    try:
        width, height = image_size(source)
    except ImageDecodeError:
        return 0
    return width * height


@contextlib.contextmanager
def _open(source: str | os.PathLike | bytes) -> Iterator[Image.Image]:
    """Image.open with the file handled by us, PIL's global pixel limit lifted and all errors mapped."""
    head = b""
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, (bytes, bytearray, memoryview)):
                fp = io.BytesIO(source)
            else:
                fp = stack.enter_context(open(source, "rb"))
            head = fp.read(32)  # enough for every format's signature, to explain open() failures
            if not head:
                raise ImageDecodeError("empty file")
            fp.seek(0)
            stack.enter_context(_pil_pixel_limit_lifted())
            yield stack.enter_context(Image.open(fp, formats=_FORMATS))
    except ImageDecodeError:
        raise
    except Exception as exc:  # the contract: nothing but ImageDecodeError escapes
        raise ImageDecodeError(_reason(exc, head)) from exc


def _reason(exc: Exception, head: bytes) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "unreadable: is a directory"
    if isinstance(exc, UnidentifiedImageError):
        # PIL says the same for text files, unsupported formats and broken headers; tell them apart.
        fmt = _signature_format(head)
        if fmt is None:
            return "not an image file"
        if fmt in _FORMATS:
            return f"corrupt or truncated {fmt} header"
        return f"unsupported image format {fmt}"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated image data"
    if isinstance(exc, OSError) and exc.filename is not None:  # the OS, not PIL, refused
        return f"unreadable: {exc.strerror or exc}"
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"corrupt image data: {detail}"


def _signature_format(head: bytes) -> str | None:
    """The format whose magic bytes `head` starts with (ours first), None when nothing matches."""
    for fmt in (*_FORMATS, *Image.OPEN):
        accept = Image.OPEN[fmt][1]
        with contextlib.suppress(Exception):
            if accept is not None and accept(head):  # None: formats without a signature, which take anything
                return fmt
    return None


# PIL applies its own process-wide MAX_IMAGE_PIXELS inside open() and load() (a warning above it, an
# error above twice it). Our per-call max_pixels, checked from the header, is the limit that counts, so
# PIL's is lifted while any of our decodes runs. Reference-counted: concurrent decodes in API threads
# restore the original value only when the last one finishes.
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextlib.contextmanager
def _pil_pixel_limit_lifted() -> Iterator[None]:
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _orientation(im: Image.Image) -> int:
    """EXIF (or XMP) Orientation, 1 when absent or unreadable: broken metadata should not cost a good image.

    Read by hand rather than with ImageOps.exif_transpose, which also rewrites the metadata (and can fail
    doing so). The base-class getexif only parses what was already read: PngImageFile.getexif would decode
    the whole image looking for an eXIf chunk after the pixel data, defeating image_size.
    """
    try:
        return int(Image.Image.getexif(im).get(0x0112, 1))
    except Exception:
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Always a new RGB image, detached from the (soon closed) file."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # Scale 0..65535 onto 0..255 (a plain convert would clip everything above 255 to white).
        # "I" is 32-bit but in practice holds 16-bit samples (PNG, TIFF); larger values clip to white.
        a = np.clip(np.asarray(im, dtype=np.int32), 0, 65535)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        # Float images are usually 0..1; anything brighter is taken to be 0..255 already.
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Composite onto white: dropping alpha would show whatever colour transparent pixels hold
        # (usually black), which CLIP would see as a black background.
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", im.size, _WHITE)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    try:
        return im.convert("RGB")  # 1, L, P, CMYK (Adobe-inverted handled by the JPEG plugin), YCbCr...
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported colour mode {im.mode}") from exc
