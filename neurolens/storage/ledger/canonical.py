"""Canonical bytes of a run document: sorted keys, UTF-8, no NaN, so equal documents give
equal bytes (the store's hashes and a rebuild's byte-for-byte promise rest on this)."""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

# Limits that keep every accepted document readable by every reader: nesting stays far
# from recursion limits (``document.check_json_value`` refuses deeper documents).
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
