"""What a photo says about itself: EXIF date taken, camera, GPS position, and where the file lies.

Read in the decode worker from the image it already opened (`decode_image` keeps the file's raw
EXIF block in `image.info["exif"]`), so nothing is read twice. Every value is optional: broken or
missing metadata leaves the field out and never costs the image. The fields are declared as
`indexer.schema.IMAGE_FIELDS`; width and height (upright) come from the decoder itself.

- `taken`: DateTimeOriginal (else DateTimeDigitized, else DateTime) as RFC 3339. EXIF 2.31's
  OffsetTimeOriginal gives the zone when the camera wrote one; without it the camera's clock time
  is taken as UTC (its zone is unknown), so `taken` sorts and filters by the time on the clock.
- `camera_make`, `camera_model`: as the camera wrote them, NULs and padding stripped.
- `location`: GPS latitude and longitude as {"lat", "lon"} in degrees (south and west negative).
- `folder`, `file_name`: the containing folder's name and the file's name.
"""

from __future__ import annotations

import math
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import Image

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_DATE_ORIGINAL, _DATE_DIGITIZED = 0x9003, 0x9004
_OFFSET_ORIGINAL, _OFFSET_DIGITIZED, _OFFSET = 0x9011, 0x9012, 0x9010
_LAT_REF, _LAT, _LON_REF, _LON = 1, 2, 3, 4
_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET_TEXT = re.compile(r"([+-])(\d{2}):(\d{2})")


def photo_metadata(image: Image.Image, path: str) -> dict[str, Any]:
    """The metadata fields of one photo; `image` as `decode_image` returned it (or as opened)."""
    fields: dict[str, Any] = {
        "folder": os.path.basename(os.path.dirname(path)),
        "file_name": os.path.basename(path),
    }
    exif = _exif(image)
    if exif is None:
        return {k: v for k, v in fields.items() if v}
    for tag, name in ((_MAKE, "camera_make"), (_MODEL, "camera_model")):
        text = _text(exif.get(tag))
        if text:
            fields[name] = text
    details = _ifd(exif, _EXIF_IFD)
    taken = _taken(exif, details)
    if taken:
        fields["taken"] = taken
    location = _location(_ifd(exif, _GPS_IFD))
    if location:
        fields["location"] = location
    return {k: v for k, v in fields.items() if v}


def _exif(image: Image.Image) -> Image.Exif | None:
    try:
        raw = image.info.get("exif")
        if raw:
            exif = Image.Exif()
            exif.load(raw)
            return exif
        exif = Image.Image.getexif(image)  # the base class: never decodes pixels looking for it
        return exif if len(exif) else None
    except Exception:  # metadata is optional: a broken EXIF block costs the fields, not the photo
        return None


def _ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:
        return {}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    return " ".join(value.replace("\x00", " ").split())[:200]


def _taken(exif: Image.Exif, details: dict[int, Any]) -> str | None:
    for date_tag, offset_tag, where in (
        (_DATE_ORIGINAL, _OFFSET_ORIGINAL, details),
        (_DATE_DIGITIZED, _OFFSET_DIGITIZED, details),
        (_DATETIME, _OFFSET, None),
    ):
        text = _text((where if where is not None else exif).get(date_tag))
        match = _EXIF_DATE.match(text)
        if not match:
            continue  # blank ("    :  :     :  :  ") or malformed: try the next one
        try:
            moment = datetime(*(int(g) for g in match.groups()))
        except ValueError:  # 0000:00:00 00:00:00 and the like
            continue
        zone = _zone(_text(details.get(offset_tag)))
        return moment.replace(tzinfo=zone).isoformat().replace("+00:00", "Z")
    return None


def _zone(text: str) -> timezone:
    match = _OFFSET_TEXT.fullmatch(text)
    if not match:
        return timezone.utc
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14):
        return timezone.utc
    return timezone(-delta if sign == "-" else delta)


def _location(gps: dict[int, Any]) -> dict[str, float] | None:
    try:
        lat = _degrees(gps[_LAT], _text(gps.get(_LAT_REF)) or "N", "S")
        lon = _degrees(gps[_LON], _text(gps.get(_LON_REF)) or "E", "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None  # (0, 0) is what cameras without a fix write
    return {"lat": round(lat, 7), "lon": round(lon, 7)}


def _degrees(value: Any, ref: str, negative: str) -> float:
    """(degrees, minutes, seconds) rationals -> signed decimal degrees."""
    parts = [float(part) for part in value]
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts):
        raise ValueError("not three numbers")
    degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    return -degrees if ref.upper().startswith(negative) else degrees
