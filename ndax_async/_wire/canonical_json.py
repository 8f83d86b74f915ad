"""Canonical JSON bytes: exactly what JavaScript's ``JSON.stringify`` prints.

The NDAX server may verify a signature over the raw bytes it received or over
its own ``JSON.stringify`` of the parsed body (see the spec, "Authentication").
Only bytes that are already in ``JSON.stringify`` form verify under both, so the
SDK encodes every body with :func:`dumps` and signs exactly those bytes.

What differs from ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``:

- object keys that look like array indices (``"0"``, ``"10"``) come first, in
  ascending numeric order, then the other keys in insertion order;
- numbers are formatted the way ECMAScript ``Number::toString`` does
  (``1e21`` and up in exponent form, ``1e-7`` not ``1e-07``, integral floats
  without ``.0``), and integers beyond 2**53 are rounded as a JS double would be;
- ``NaN`` and the infinities become ``null``;
- lone surrogates are written as ``\\uXXXX`` escapes (well-formed stringify).

Most payloads have none of these (no float, no unsafe integer, no key starting
with a digit): for them orjson writes exactly these bytes, about ten times
faster than :mod:`json`. Everything else goes through this module's encoder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring
from typing import Any

import orjson

__all__ = ["dumps", "dumps_fields", "format_number"]

_MAX_SAFE_INTEGER = 2**53
_MAX_ARRAY_INDEX = 2**32 - 2
_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = frozenset("0123456789")


def dumps(value: Any) -> bytes:
    """Return the UTF-8 bytes JavaScript's ``JSON.stringify(value)`` would give.

    Accepts ``dict`` (string keys), ``list``/``tuple``, ``str``, ``int``,
    ``float``, ``bool`` and ``None``; anything else raises ``TypeError``.
    """
    if _stringify_agrees(value):
        # No float, no unsafe integer, no key starting with a digit: here orjson
        # writes what JSON.stringify writes, unless a string holds a lone
        # surrogate (orjson refuses it) or nesting is deeper than orjson goes.
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass
    parts: list[str] = []
    _encode(value, parts.append)
    return "".join(parts).encode("utf-8")


def dumps_fields(fields: dict[str, Any], free: Iterable[str]) -> bytes:
    """:func:`dumps` of a validated payload's wire fields, checking only its ``free`` ones.

    The caller guarantees that ``fields`` has plain names (none starting with a
    digit) and that every value outside ``free`` is a ``str``, a ``bool`` or an
    integer below 2**53: what a validated payload's string, boolean and
    timestamp fields hold. Only the ``free`` fields (free-form objects such as
    ``metadata``) can hold what would keep the fast path from applying.
    """
    for name in free:
        if not _stringify_agrees(fields.get(name)):
            return dumps(fields)
    try:
        return orjson.dumps(fields)
    except orjson.JSONEncodeError:
        return dumps(fields)


def _stringify_agrees(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_SAFE_INTEGER < value < _MAX_SAFE_INTEGER)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or key[:1] in _DIGITS:
                return False
            if type(item) is not str and not _stringify_agrees(item):  # most values are strings
                return False
        return True
    if kind is list or kind is tuple:
        return all(_stringify_agrees(item) for item in value)
    return False


def _encode(value: Any, emit: Any) -> None:
    # Ordered by how often each type occurs in a participant payload.
    if isinstance(value, str):
        emit(_encode_str(value))
    elif value is None:
        emit("null")
    elif value is True:
        emit("true")
    elif value is False:
        emit("false")
    elif isinstance(value, int):
        emit(_format_int(value))
    elif isinstance(value, float):
        emit(format_number(value))
    elif isinstance(value, Mapping):
        _encode_object(value, emit)
    elif isinstance(value, (list, tuple)):
        emit("[")
        first = True
        for item in value:
            if not first:
                emit(",")
            first = False
            _encode(item, emit)
        emit("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_object(value: Mapping[Any, Any], emit: Any) -> None:
    keys = list(value)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
    index_keys = [key for key in keys if _is_array_index(key)]
    if index_keys:
        index_keys.sort(key=int)
        index_set = set(index_keys)
        keys = index_keys + [key for key in keys if key not in index_set]
    emit("{")
    first = True
    for key in keys:
        if not first:
            emit(",")
        first = False
        emit(_encode_str(key))
        emit(":")
        _encode(value[key], emit)
    emit("}")


def _is_array_index(key: str) -> bool:
    """True for keys JavaScript orders first: canonical integers 0 .. 2**32-2."""
    if not key or not key.isascii() or not key.isdigit():
        return False
    if key[0] == "0" and len(key) > 1:
        return False
    return int(key) <= _MAX_ARRAY_INDEX


def _encode_str(value: str) -> str:
    text: str = encode_basestring(value)
    if _SURROGATE.search(text) is None:
        return text
    # Rejoin surrogate pairs (JavaScript sees them as one character), then
    # escape the lone surrogates that remain, as well-formed stringify does.
    joined = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    text = encode_basestring(joined)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _format_int(value: int) -> str:
    if -_MAX_SAFE_INTEGER < value < _MAX_SAFE_INTEGER:
        return str(value)
    try:
        return format_number(float(value))
    except OverflowError:
        return "null"


def format_number(value: float) -> str:
    """Format a float as ECMAScript ``Number::toString`` (JSON flavour)."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    if value < 0:
        return "-" + format_number(-value)
    digits, point = _shortest_digits(value)
    k = len(digits)
    if k <= point <= 21:
        return digits + "0" * (point - k)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * (-point) + digits
    exponent = point - 1
    sign = "+" if exponent >= 0 else "-"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{sign}{abs(exponent)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits ``s`` and ``n`` with value = 0.s * 10**n."""
    mantissa, _, exp_text = repr(value).partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, fraction = mantissa.partition(".")
    raw = whole + fraction
    stripped = raw.lstrip("0")
    point = len(whole) - (len(raw) - len(stripped)) + exponent
    return stripped.rstrip("0"), point
