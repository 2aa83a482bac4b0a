"""JPEGs with the EXIF a camera writes (date taken, camera, GPS), made with PIL for the tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from PIL import Image

LISBON = (38.7223, -9.1393)  # 38°43'20.28"N 9°8'21.48"W
SYDNEY = (-33.8688, 151.2093)


def dms(value: float) -> tuple[Fraction, Fraction, Fraction]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction(round((value - degrees - minutes / 60) * 3600 * 100), 100)
    return Fraction(degrees), Fraction(minutes), seconds


def jpeg_with_exif(path: Path, size: tuple[int, int] = (60, 40), *, make: str | None = "Fujifilm",
                   model: str | None = "X-T3", taken: str | None = "2019:06:01 12:30:00",
                   offset: str | None = "+01:00", where: tuple[float, float] | None = LISBON,
                   orientation: int = 1, gps_raw: dict[int, object] | None = None) -> Path:
    """A real JPEG written by PIL with the EXIF a camera would write."""
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    exif[0x0112] = orientation
    details = exif.get_ifd(0x8769)
    if taken:
        details[0x9003] = taken
    if offset:
        details[0x9011] = offset
    if where or gps_raw:
        gps = exif.get_ifd(0x8825)
        if where:
            gps.update({1: "N" if where[0] >= 0 else "S", 2: dms(where[0]),
                        3: "E" if where[1] >= 0 else "W", 4: dms(where[1])})
        gps.update(gps_raw or {})
    Image.new("RGB", size, (90, 140, 200)).save(path, "JPEG", exif=exif.tobytes())
    return path
