"""A tolerant reader of what models answer: structured output is asked for, but not every server
enforces it, and small models wrap JSON in prose, code fences or <think> blocks, write "seven" for 7
or rate 12 out of 10. Each function returns None when nothing usable is there (the caller retries
once, then gives up on the hit).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_SCORE = 10.0
_MAX_REASON_CHARS = 300

_WORDS = {
    "zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}
_NUMBER = r"-?\d+(?:\.\d+)?"
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_SCORE_IN_TEXT = re.compile(
    rf"(?:score|rating|relevance)\W{{0,4}}({_NUMBER}|{'|'.join(_WORDS)})\b", re.IGNORECASE
)
_OUT_OF_TEN = re.compile(rf"({_NUMBER})\s*(?:/|out of)\s*10\b", re.IGNORECASE)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first {...} in `text` that parses as a JSON object (after any <think> block)."""
    text = _THINK.sub("", text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def number(value: Any) -> float | None:
    """A finite number from 7, 7.5, "7", "7/10", "seven" or "Seven."; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        word = value.strip().strip(".!").lower()
        if word in _WORDS:
            return float(_WORDS[word])
        match = re.match(rf"\s*({_NUMBER})", value)
        if not match:
            return None
        result = float(match.group(1))
    else:
        return None
    return result if math.isfinite(result) else None


def clamp_score(value: float) -> float:
    return min(MAX_SCORE, max(0.0, value))


def parse_score(text: str) -> tuple[float, str] | None:
    """(score clamped to 0-10, reason) from a pointwise answer."""
    obj = first_json_object(text)
    if obj is not None:
        raw = next((obj[k] for k in ("score", "rating", "relevance") if k in obj), None)
        score = number(raw)
        if score is not None:
            reason = obj.get("reason", obj.get("explanation", ""))
            return clamp_score(score), _reason(reason)
    bare = _THINK.sub("", text).strip()
    for pattern in (_SCORE_IN_TEXT, _OUT_OF_TEN):
        match = pattern.search(bare)
        if match and (score := number(match.group(1))) is not None:
            return clamp_score(score), _reason(bare)
    score = number(bare) if len(bare) <= 12 else None  # an answer that is just "7" or "seven"
    return (clamp_score(score), "") if score is not None else None


def parse_order(text: str, count: int) -> list[int] | None:
    """0-based candidate indices, best first, from a listwise answer numbering candidates 1..count:
    duplicates and numbers out of range dropped; None when no valid number is left."""
    obj = first_json_object(text)
    raw: Any = None
    if obj is not None:
        raw = next((obj[k] for k in ("order", "ranking", "ranks") if k in obj), None)
    if not isinstance(raw, list):
        raw = re.findall(r"\d+", _THINK.sub("", text))  # prose such as "3, 1, then 2"
    order: list[int] = []
    for item in raw:
        value = number(item)
        if value is not None and value == int(value) and 1 <= value <= count and int(value) - 1 not in order:
            order.append(int(value) - 1)
    return order or None


def _reason(value: Any) -> str:
    return " ".join(str(value).split())[:_MAX_REASON_CHARS] if value is not None else ""
