"""Canonical bytes of a run document: sorted keys, UTF-8, no NaN, so equal documents give
equal bytes (the store's hashes and a rebuild's byte-for-byte promise rest on this)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from neurolens.errors import RunValidationError

# Limits that keep every accepted document readable by every reader: nesting stays far
# from recursion limits (``check_json_value`` refuses deeper documents).
MAX_DEPTH = 64


def canonical_bytes(value: Any, *, indent: int | None = 2) -> bytes:
    """Sorted keys, UTF-8, no NaN: equal documents give equal bytes.

    Exactly ``json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False,
    indent=indent)`` and a newline. With an indent, ``json`` leaves its C encoder for a
    Python one; the indent-2 form of plain JSON values is built here instead, 2-3x faster
    (every write, merge and verify encodes each run), and anything else goes to ``json``.
    """
    if indent == 2:
        out: list[str] = []
        try:
            _encode_indented(value, out, "\n", 0)
        except _NotPlain:
            pass
        else:
            out.append("\n")
            return "".join(out).encode("utf-8")
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=indent)
    return (text + "\n").encode("utf-8")


class _NotPlain(Exception):
    """A value ``_encode_indented`` leaves to ``json`` (which encodes it or says why not)."""


_INFINITY = float("inf")


def _encode_indented(value: Any, out: list[str], newline: str, depth: int) -> None:
    """Append ``value`` as ``json.dumps(indent=2, sort_keys=True, ensure_ascii=False)``
    writes it, for exact dict, list, str, int, float, bool and None values only."""
    kind = type(value)
    if kind is str:
        out.append(encode_basestring(value))
    elif kind is dict or kind is list:
        if not value:
            out.append("{}" if kind is dict else "[]")
            return
        if depth > MAX_DEPTH:  # json reports a cycle; a document is never this deep
            raise _NotPlain
        inner = newline + "  "
        separator = ("{" if kind is dict else "[") + inner
        if kind is dict:
            for key, item in sorted(value.items()):
                if type(key) is not str:
                    raise _NotPlain
                out += (separator, encode_basestring(key), ": ")
                _encode_indented(item, out, inner, depth + 1)
                separator = "," + inner
        else:
            for item in value:
                out.append(separator)
                _encode_indented(item, out, inner, depth + 1)
                separator = "," + inner
        out.append(newline + ("}" if kind is dict else "]"))
    elif kind is float:
        if value != value or value in (_INFINITY, -_INFINITY):
            raise _NotPlain
        out.append(float.__repr__(value))
    elif kind is int:
        out.append(int.__repr__(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    else:
        raise _NotPlain


def field_path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


# Integers fit the index's int64 columns (and any JSON parser); MAX_DEPTH bounds nesting.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


# A path segment's most UTF-8 bytes (file systems hold 255 a name; a run id gets ".fp.json").
SEGMENT_MAX_BYTES = 200
_SURROGATE = (
    "holds a lone surrogate (text that is not Unicode, e.g. from a bad decode); UTF-8 cannot store it"
)


def _encodable(text: str) -> bool:
    """Whether UTF-8 can hold ``text`` (it cannot hold a lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find_non_json(value: Any, path: list[str | int]) -> tuple[str, str] | None:
    """First value that JSON cannot hold faithfully (NaN, infinities, huge integers, odd
    types, nesting deeper than MAX_DEPTH)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return field_path(path), f"{value!r} is not allowed (NaN and infinities are rejected)"
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            return field_path(path), "integers must fit in 64 bits (-2**63 to 2**63-1)"
        return None
    if isinstance(value, str):
        return None if _encodable(value) else (field_path(path), _SURROGATE)
    if value is None or isinstance(value, bool):
        return None
    if len(path) > MAX_DEPTH:
        return field_path(path[:MAX_DEPTH]), f"is nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return field_path([*path, repr(key)]), "keys must be strings"
            if not _encodable(key):
                return field_path([*path, ascii(key)]), "key: " + _SURROGATE
            found = _find_non_json(item, [*path, key])
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_non_json(item, [*path, i])
            if found:
                return found
        return None
    return field_path(path), f"{type(value).__name__} is not a JSON value"


def check_json_value(value: Any, where: str) -> None:
    """Raise RunValidationError naming the field if ``value`` is not plain, finite JSON."""
    found = _find_non_json(value, [where] if where else [])
    if found:
        raise RunValidationError(*found)
