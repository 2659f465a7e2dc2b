"""The context of a run: marker fields, checked and merged (the closest marker wins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

MARKER = (
    "neurolens(model=None, backend=None, precision=None, batch_size=None, seq_len=None, tags=None): "
    "context of the runs the neurolens fixture records in this test, class or module; "
    "the closest marker wins field by field and tags merge key by key."
)

CONTEXT_FIELDS = ("model", "backend", "precision", "batch_size", "seq_len")
REQUIRED_FIELDS = ("model", "backend", "precision", "batch_size")


class NeurolensContextError(ValueError):
    """A marker or a call gives a wrong or missing context field; names the field."""


def _check_field(name: str, value: Any, where: str) -> None:
    if name in ("model", "backend", "precision"):
        if not isinstance(value, str) or not value:
            raise NeurolensContextError(f"{where}: {name} must be a non-empty string, got {value!r}")
    elif name == "batch_size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NeurolensContextError(f"{where}: batch_size must be an integer >= 1, got {value!r}")
    elif name == "seq_len" and (
        value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
    ):
        raise NeurolensContextError(f"{where}: seq_len must be an integer >= 0 or None, got {value!r}")


def _check_tags(tags: Any, where: str) -> dict[str, str]:
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise NeurolensContextError(f"{where}: tags must map strings to strings, got {tags!r}")
    return dict(tags)


def merge_context(base: Mapping[str, Any], layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``layer`` over ``base``: fields replace, tags merge key by key. Checks every field."""
    unknown = sorted(set(layer) - {*CONTEXT_FIELDS, "tags"})
    if unknown:
        raise NeurolensContextError(f"{where}: unknown field(s) {', '.join(unknown)}")
    merged = dict(base)
    for name in CONTEXT_FIELDS:
        if name in layer and (layer[name] is not None or name == "seq_len"):
            _check_field(name, layer[name], where)
            merged[name] = layer[name]
    if layer.get("tags") is not None:
        merged["tags"] = {**merged.get("tags", {}), **_check_tags(layer["tags"], where)}
    return merged


def item_context(item: pytest.Item, session_tags: Mapping[str, str]) -> dict[str, Any]:
    """Session tags, then module, class and function markers: the closest wins."""
    context: dict[str, Any] = {"tags": dict(session_tags)}
    for marker in reversed(list(item.iter_markers("neurolens"))):
        if marker.args:
            raise NeurolensContextError("@pytest.mark.neurolens takes keyword arguments only")
        context = merge_context(context, marker.kwargs, "@pytest.mark.neurolens")
    return context


def require_fields(context: Mapping[str, Any], nodeid: str) -> None:
    for name in REQUIRED_FIELDS:
        if context.get(name) is None:
            raise NeurolensContextError(
                f"{name} is not set for {nodeid}: give it in "
                f"@pytest.mark.neurolens({name}=...) or as a keyword of this call"
            )
