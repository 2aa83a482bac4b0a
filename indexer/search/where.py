"""The command line's filter grammar: `--where` expressions and `--near`, into a query Filter.

    --where 'category = shoes'            match (keyword, integer, bool, text fields)
    --where 'brand != acme'               some value other than acme (a missing field does not pass)
    --where 'price < 50'                  also <=, >, >= (integer, float, datetime fields)
    --where 'taken >= 2019-06-01'         dates and RFC 3339 datetimes (UTC when no zone)
    --where 'brand in (acme, zenith)'     any of; `not in (...)`: some value none of them
    --where 'title = "red dress"'         quote values holding spaces or ( ) , ' " (\\ escapes)
    --where 'brand is empty'              missing, null or []; `is not empty`: has a value
    --near 38.72,-9.14,5                  within 5 km of (lat, lon), on the collection's geo field

Several --where are ANDed. On a float or datetime field `=` means "exactly this value" (a range from
it to itself), since those fields have no exact match in the stores. Values stay text here; the
filter is then resolved against the collection's schema (indexer.stores.filters), which types them. With
the collection's fields at hand (`fields=`), a bad expression is refused here already, its error
pointing at the token: the column and a caret under it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.errors import InvalidFilter
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.stores.filters import (
    FieldCondition,
    Filter,
    GeoPoint,
    GeoRadius,
    IsEmptyCondition,
    IsEmptyKey,
    MatchAny,
    MatchExcept,
    MatchValue,
    Range,
)

OPERATORS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "is empty", "is not empty")
_RANGE_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_MATCH_KINDS = {"keyword", "integer", "bool", "text"}
_RANGE_KINDS = {"integer", "float", "datetime"}
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_SYMBOL = re.compile(r"==|!=|<=|>=|=|<|>")
_WORD = re.compile(r"[^\s(),'\"]+")
_HINT = ("write FIELD OP VALUE with OP one of =, !=, <, <=, >, >=, in (...), not in (...), is empty, "
         "is not empty (see `clipsearch search --help`)")


@dataclass(frozen=True)
class Token:
    kind: str  # name, op, value, open, close, comma, end
    text: str
    column: int  # 0-based position in the expression


def where_error(expression: str, column: int, message: str) -> InvalidFilter:
    """An InvalidFilter naming the expression, the 1-based column and a caret line under it."""
    return InvalidFilter(
        f"--where {expression!r}, column {column + 1}: {message}\n  {expression}\n  {' ' * column}^"
    )


def tokens(expression: str) -> list[Token]:
    """The tokens of one expression; operators are words only after the field name (so values may be
    `in` or `not`)."""
    out: list[Token] = []
    i = 0
    while i < len(expression):
        char = expression[i]
        if char.isspace():
            i += 1
        elif char in "(),":
            out.append(Token({"(": "open", ")": "close", ",": "comma"}[char], char, i))
            i += 1
        elif char in "'\"":
            value, end = _quoted(expression, i)
            out.append(Token("value", value, i))
            i = end
        elif (symbol := _SYMBOL.match(expression, i)) and out:
            out.append(Token("op", symbol.group(), i))
            i = symbol.end()
        else:
            # The field name ends where its characters do (`price<50`); a value at a space or ( ) , ' "
            word = (_FIELD.match(expression, i) if not out else None) or _WORD.match(expression, i)
            assert word is not None  # every other character starts a word
            out.append(Token("value" if out else "name", word.group(), i))
            i = word.end()
    out.append(Token("end", "", len(expression)))
    return out


def _quoted(expression: str, start: int) -> tuple[str, int]:
    quote, i, chars = expression[start], start + 1, []
    while i < len(expression):
        char = expression[i]
        if char == "\\" and i + 1 < len(expression):
            chars.append(expression[i + 1])
            i += 2
            continue
        if char == quote:
            return "".join(chars), i + 1
        chars.append(char)
        i += 1
    raise where_error(expression, start, f"the quote {quote} is never closed")


@dataclass(frozen=True)
class Expression:
    """One parsed --where: the field, the operator, the values, and where each was written."""

    text: str
    field: Token
    op: Token
    values: tuple[Token, ...]


def parse_expression(expression: str) -> Expression:
    """One --where expression, checked against the grammar (not yet against a schema)."""
    toks = tokens(expression)
    field = toks[0]
    if field.kind == "end":
        raise where_error(expression, 0, f"empty expression; {_HINT}")
    if field.kind != "name" or not _FIELD.fullmatch(field.text):
        raise where_error(expression, field.column, f"expected a field name, not {field.text!r}")
    op, rest = _operator(expression, toks)
    if op.text in ("is empty", "is not empty"):
        return Expression(expression, field, op, ())
    if op.text in ("in", "not in"):
        values = _list(expression, rest)
    else:
        value = rest[0]
        if value.kind != "value":
            raise where_error(expression, value.column, f"expected a value after {op.text!r}"
                              + ("" if value.kind == "end" else f", not {value.text!r}"))
        values, rest = (value,), rest[1:]
        if rest[0].kind != "end":
            raise where_error(expression, rest[0].column, f"unexpected {rest[0].text!r} after the value "
                              f"(quote a value with spaces: {field.text} {op.text} \"a b\")")
    return Expression(expression, field, op, tuple(values))


def _operator(expression: str, toks: list[Token]) -> tuple[Token, list[Token]]:
    """The operator token (words joined: `not in`, `is not empty`) and the tokens after it."""
    first = toks[1]
    if first.kind == "op":
        return first, toks[2:]
    words: list[str] = []
    for tok in toks[1:4]:
        if tok.kind != "value" or tok.text.lower() not in ("in", "not", "is", "empty"):
            break
        words.append(tok.text.lower())
        phrase = " ".join(words)
        if phrase in ("in", "not in", "is empty", "is not empty"):
            after = toks[1 + len(words):]
            if phrase.startswith("is") and after[0].kind != "end":
                raise where_error(expression, after[0].column, f"unexpected {after[0].text!r} after "
                                  f"{phrase!r}")
            return Token("op", phrase, first.column), after
    found = "the end" if first.kind == "end" else repr(first.text)
    raise where_error(expression, first.column, f"expected an operator after {toks[0].text!r}, found "
                      f"{found}; {_HINT}")


def _list(expression: str, toks: list[Token]) -> tuple[Token, ...]:
    """`(a, b, "c d")`: at least one value, then the end."""
    if toks[0].kind != "open":
        raise where_error(expression, toks[0].column, "expected ( and a list of values, e.g. in (a, b)")
    values: list[Token] = []
    i = 1
    while True:
        tok = toks[i]
        if tok.kind != "value":
            raise where_error(expression, tok.column, "expected a value in the list"
                              + ("" if tok.kind == "end" else f", not {tok.text!r}"))
        values.append(tok)
        sep = toks[i + 1]
        if sep.kind == "close":
            after = toks[i + 2]
            if after.kind != "end":
                raise where_error(expression, after.column, f"unexpected {after.text!r} after the list")
            return tuple(values)
        if sep.kind != "comma":
            raise where_error(expression, sep.column, "expected , or ) in the list"
                              + ("" if sep.kind == "end" else f", not {sep.text!r}"))
        i += 2


def condition(parsed: Expression, kind: str | None = None) -> Any:
    """The filter condition of a parsed expression; `kind`: the field's declared type, when known."""
    key, op, values = parsed.field.text, parsed.op.text, [v.text for v in parsed.values]
    if op == "is empty":
        return IsEmptyCondition(is_empty=IsEmptyKey(key=key))
    if op == "is not empty":
        return Filter(must_not=[IsEmptyCondition(is_empty=IsEmptyKey(key=key))])
    if op in _RANGE_OPS:
        return FieldCondition(key=key, range=Range(**{_RANGE_OPS[op]: values[0]}))
    if op in ("=", "==") and kind in ("float", "datetime"):
        return FieldCondition(key=key, range=Range(gte=values[0], lte=values[0]))
    if op in ("=", "=="):
        return FieldCondition(key=key, match=MatchValue(value=values[0]))
    if op == "!=" and kind == "bool":  # bool fields take no lists: the other value
        other = {"true": "false", "false": "true"}.get(values[0].lower(), values[0])
        return FieldCondition(key=key, match=MatchValue(value=other))
    if op == "in":
        return FieldCondition(key=key, match=MatchAny(any=values))
    return FieldCondition(key=key, match=MatchExcept(except_=values))  # != and not in


def _checked(parsed: Expression, fields: Mapping[str, str]) -> Any:
    """The condition, refused (pointing at the token at fault) when it does not fit the schema."""
    text, key, op = parsed.text, parsed.field.text, parsed.op.text
    if key not in fields:
        declared = ", ".join(sorted(fields)) or "none"
        raise where_error(text, parsed.field.column, f"field {key!r} is not declared in this collection "
                          f"(declared: {declared})")
    kind = fields[key]
    if op in _RANGE_OPS and kind not in _RANGE_KINDS:
        raise where_error(text, parsed.op.column, f"{op} compares numbers and dates; field {key!r} is {kind}")
    if op not in _RANGE_OPS and not op.startswith("is") and kind not in _MATCH_KINDS | {"float", "datetime"}:
        raise where_error(text, parsed.op.column, f"{op} does not apply to field {key!r} ({kind}); "
                          f"use --near for geo fields")
    if op in ("in", "not in") and kind in ("float", "datetime", "bool"):
        raise where_error(text, parsed.op.column, f"{op} (...) does not apply to field {key!r} ({kind}); "
                          f"use = or a range")
    built = condition(parsed, kind)
    for value in parsed.values:  # each value on its own, so the caret finds the bad one
        single = Expression(text, parsed.field, parsed.op, (value,))
        try:
            Filter(must=[condition(single, kind)]).resolve(_schema_of(fields))
        except InvalidFilter as exc:
            raise where_error(text, value.column, str(exc)) from None
    return built


def _schema_of(fields: Mapping[str, str]) -> CollectionSchema:
    # Filter.resolve takes a schema; only its fields matter here.
    return CollectionSchema.new(ModelIdentity("-", "", "-", "", 1), fields=dict(fields))  # type: ignore[arg-type]


def parse_near(
    value: str, fields: Mapping[str, str] | None = None, near_field: str | None = None
) -> FieldCondition:
    """`LAT,LON,KM` as a geo_radius condition on `near_field`, or on the collection's one geo field."""
    parts = [p.strip() for p in value.split(",")]
    try:
        lat, lon, km = (float(p) for p in parts)
    except ValueError:
        raise InvalidFilter(f"--near {value!r}: write LAT,LON,KM, e.g. --near 38.72,-9.14,5") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not km > 0 or km != km or km == float("inf"):
        raise InvalidFilter(f"--near {value!r}: latitude -90..90, longitude -180..180 and a distance "
                            f"above 0 km")
    key = near_field or _geo_field(fields)
    if fields is not None and fields.get(key) != "geo":
        raise InvalidFilter(f"--near-field {key!r} is not a geo field of this collection "
                            f"(geo fields: {', '.join(_geo_fields(fields)) or 'none'})")
    return FieldCondition(key=key, geo_radius=GeoRadius(center=GeoPoint(lat=lat, lon=lon), radius=km * 1000))


def _geo_fields(fields: Mapping[str, str]) -> list[str]:
    return sorted(name for name, kind in fields.items() if kind == "geo")


def _geo_field(fields: Mapping[str, str] | None) -> str:
    if fields is None:
        raise InvalidFilter("--near needs the collection's fields or --near-field FIELD")
    geo = _geo_fields(fields)
    if len(geo) != 1:
        raise InvalidFilter(f"--near: the collection has {len(geo)} geo fields "
                            f"({', '.join(geo) or 'none'}); name one with --near-field")
    return geo[0]


def where_filter(
    expressions: Sequence[str],
    near: str | None = None,
    near_field: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> Filter | None:
    """The query filter of --where expressions (ANDed) and --near; None when there are none.
    `fields`: the collection's declared fields, to check every expression here (else the schema
    check happens when the filter is resolved, with a plainer error)."""
    conditions = []
    for expression in expressions:
        parsed = parse_expression(expression)
        conditions.append(condition(parsed) if fields is None else _checked(parsed, fields))
    if near is not None:
        conditions.append(parse_near(near, fields, near_field))
    return Filter(must=conditions) if conditions else None
