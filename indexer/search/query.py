"""Query algebra: a query as a weighted sum of texts, indexed items and images.

    query = normalise( sum over terms of  weight * unit(embedding of the term) )

A term is a text (the text encoder), an indexed item by id (its stored vector: no re-encoding) or an
image (upload bytes or a file path: decoded as the index decoded files, then the image encoder).
Each embedding is made unit length before weighing, so a weight says how much a term counts
whatever its kind; the sum is made unit length again, so scores stay cosine similarities. A single
term of positive weight is its embedding as it is.

The command line writes terms in rclip's style, split by standalone `+` and `-` arguments:

    clipsearch search "red dress" + image:ID - "long sleeves" + 0.5:shoe.jpg

`W:` before a term weighs it (`0.5:shoe.jpg`, `2:red dress`); `-` negates the weight that follows.
A term is an indexed item with `image:ID`, an image file with `file:PATH` or when it names an
existing file with an image suffix, a text otherwise (`text:...` forces a text). Words between two
operators form one text (`clipsearch search red dress` is the text "red dress").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.errors import BadInput

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
_WEIGHT = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?):(.*)", re.DOTALL)
MAX_TERMS = 32


@dataclass(frozen=True)
class Term:
    """One term of a query: exactly one of text, image_id, image (bytes or a file path)."""

    text: str | None = None
    image_id: str | None = None
    image: bytes | str | Path | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.text, self.image_id, self.image))
        if given != 1:
            raise BadInput("a query term is exactly one of a text, an image id or an image")
        if not math.isfinite(self.weight) or self.weight == 0:
            raise BadInput(f"a query term's weight must be a finite number other than 0, not {self.weight}")
        if self.text is not None and not self.text.strip():
            raise BadInput("a query term's text must not be empty")

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image_id" if self.image_id is not None else "image"


def check_terms(terms: Sequence[Term]) -> None:
    if not terms:
        raise BadInput("a query needs at least one term")
    if len(terms) > MAX_TERMS:
        raise BadInput(f"a query has at most {MAX_TERMS} terms, not {len(terms)}")
    if not any(t.weight > 0 for t in terms):
        raise BadInput("a query needs at least one term of positive weight (something to look for)")


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """normalise(sum of weight * unit(vector)); the one vector itself for a single positive term."""
    if len(vectors) != len(weights) or not vectors:
        raise BadInput("a query needs one weight per term, and at least one term")
    if len(vectors) == 1 and weights[0] > 0:
        return np.asarray(vectors[0], dtype=np.float32)
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for vector, weight in zip(vectors, weights, strict=True):
        v = np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if not norm > 0:
            raise BadInput("a query term has a zero embedding")
        total += weight * v / norm
    norm = float(np.linalg.norm(total))
    if not norm > 1e-6:
        raise BadInput("the query's terms cancel out: nothing to search for")
    return (total / norm).astype(np.float32)


def embed_terms(terms: Sequence[Term], embed: Callable[[Term], np.ndarray]) -> np.ndarray:
    """The query vector of `terms`, each embedded by `embed`."""
    check_terms(terms)
    return combine([embed(t) for t in terms], [t.weight for t in terms])


def keyword_text(terms: Sequence[Term]) -> str | None:
    """The text a keyword ranking searches: the texts of positive weight, joined; None without one."""
    texts = [t.text for t in terms if t.text is not None and t.weight > 0]
    return " ".join(texts) if texts else None


# --- the command line's spelling -------------------------------------------------------------------


def parse_terms(args: Sequence[str], cwd: Path | None = None) -> list[Term]:
    """Terms from command-line arguments split by standalone `+` and `-` (see the module's doc)."""
    terms: list[Term] = []
    sign, words, dangling = 1.0, list[str](), False
    for arg in args:
        if arg not in ("+", "-"):
            words.append(arg)
            dangling = False
            continue
        if words:
            terms.append(parse_term(" ".join(words), sign, cwd))
            words = []
        elif terms or dangling:
            raise _no_term(args)
        sign, dangling = (-1.0 if arg == "-" else 1.0), True
    if words:
        terms.append(parse_term(" ".join(words), sign, cwd))
    elif dangling:
        raise _no_term(args)
    return terms


def _no_term(args: Sequence[str]) -> BadInput:
    return BadInput(f"the query {' '.join(args)!r} has an operator with no term after it; write terms "
                    f"as: \"red dress\" + image:ID - \"long sleeves\" + 0.5:shoe.jpg")


def parse_term(spelled: str, sign: float = 1.0, cwd: Path | None = None) -> Term:
    """One term: `[W:](image:ID | file:PATH | text:TEXT | an image file | a text)`."""
    weight, body = 1.0, spelled
    match = _WEIGHT.fullmatch(spelled)
    if match and match.group(2).strip():
        weight, body = float(match.group(1)), match.group(2)
    weight *= sign
    prefix, _, rest = body.partition(":")
    if prefix == "image" and rest:
        return Term(image_id=rest.strip(), weight=weight)
    if prefix == "text" and rest:
        return Term(text=rest, weight=weight)
    if prefix == "file" and rest:
        return Term(image=_image_file(rest, cwd, explicit=True), weight=weight)
    if Path(body).suffix.lower() in IMAGE_SUFFIXES and " " not in body.strip():
        return Term(image=_image_file(body, cwd, explicit=False), weight=weight)
    return Term(text=body, weight=weight)


def _image_file(path: str, cwd: Path | None, explicit: bool) -> Path:
    full = Path(os.path.expanduser(path))
    if not full.is_absolute():
        full = (cwd or Path.cwd()) / full
    if not full.is_file():
        hint = "" if explicit else f" (to search for the words, write text:{path})"
        raise BadInput(f"query term {path!r}: no such image file{hint}")
    return full.resolve()
