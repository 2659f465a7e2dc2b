"""The run document: schema validation, generated fields and canonical bytes."""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import math
import re
import types
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from neurolens.errors import RunValidationError
from neurolens.storage.ledger.canonical import (
    INT_MAX,
    SEGMENT_MAX_BYTES,
    canonical_bytes,
    check_json_value,
    field_path,
)
from neurolens.storage.ledger.run_ids import generate_run_id

SCHEMA_VERSION = 1

# Fixed width so that string order is time order (the index sorts on it).
_CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The run schema: packaged in the wheel, or the top-level copy in a source checkout."""
    packaged = resources.files("neurolens") / "schema" / "run.schema.json"
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        text = (Path(__file__).resolve().parents[3] / "schema" / "run.schema.json").read_text(
            encoding="utf-8"
        )
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def _compiled() -> tuple[Any, type[Exception]] | None:
    """The schema compiled to Python (fastjsonschema: ~15x faster than jsonschema, on every
    write), or None without it. The schema uses draft-07 keywords only, so it compiles
    under that draft; jsonschema (2020-12) stays the reference: it names the field of a
    refusal and has the last word (a test checks that the two agree on acceptance)."""
    try:
        import fastjsonschema
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    schema = {**load_schema(), "$schema": "http://json-schema.org/draft-07/schema#"}
    return fastjsonschema.compile(schema), fastjsonschema.JsonSchemaException


def schema_problems(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of every way ``document`` breaks the schema; [] when it is valid."""
    compiled = _compiled()
    if compiled is not None:
        check, failure = compiled
        try:
            check(document)
            return []
        except failure:
            pass  # jsonschema decides, and says where
    return sorted(_describe(e) for e in _validator().iter_errors(document))


# The normalised form itself (years 1000-9999): returned as it is once it names a real
# moment, which spares the strftime that every stored, merged and verified run would pay.
_NORMALISED = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def normalize_created_at(value: Any) -> str:
    """RFC 3339 text or an aware datetime -> fixed-width UTC ``...Z`` text."""
    if type(value) is str and len(value) == 27 and _NORMALISED.fullmatch(value):
        try:
            dt.datetime.fromisoformat(value[:-1])
        except ValueError:  # 2025-02-30, hour 24...
            raise RunValidationError("created_at", f"{value!r} is not an RFC 3339 timestamp") from None
        return value
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise RunValidationError("created_at", f"{value!r} is not an RFC 3339 timestamp") from None
        if "T" not in text.upper() and " " not in text:
            raise RunValidationError("created_at", f"{value!r} has no time of day")
    else:
        raise RunValidationError("created_at", f"{value!r} is not an RFC 3339 timestamp")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RunValidationError("created_at", f"{value!r} has no UTC offset (add 'Z' or '+HH:MM')")
    try:
        utc = moment.astimezone(dt.timezone.utc)
    except OverflowError:
        utc = None
    # four-digit years only: the text sorts as time and names the day folder
    if utc is None or not 1000 <= utc.year <= 9999:
        raise RunValidationError("created_at", f"{value!r} is outside the years 1000 to 9999 in UTC")
    return utc.strftime(_CREATED_AT_FORMAT)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(_CREATED_AT_FORMAT)


def prepare_run(run: Mapping[str, Any], *, parsed: bool = False) -> dict[str, Any]:
    """Validate ``run`` and return the canonical document (a new dict, or ``run`` itself
    when ``parsed``: a dict fresh from ``json.loads``, already a plain copy of its own).

    Fills ``run_id``, ``created_at`` (normalised to UTC) and ``schema_version``.
    Raises RunValidationError naming the first offending field.
    """
    if not isinstance(run, Mapping):
        raise RunValidationError("", f"a run must be a mapping, not {type(run).__name__}")
    check_json_value(dict(run), "")
    document: dict[str, Any] = (
        run if parsed and isinstance(run, dict) else json.loads(json.dumps(dict(run)))  # deep, plain copy
    )
    if document.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise RunValidationError(
            "schema_version",
            f"{document['schema_version']!r} is not supported (this is version {SCHEMA_VERSION})",
        )
    document["schema_version"] = SCHEMA_VERSION
    if document.get("run_id") is None:
        document["run_id"] = generate_run_id()  # made here, stored by this caller
    created = run.get("created_at")  # the original, which may be a datetime
    document["created_at"] = utc_now() if created is None else normalize_created_at(created)

    for name in ("batch_size", "seq_len"):  # JSON Schema calls 1.0 an integer; the index does not
        if isinstance(document.get(name), float):
            raise RunValidationError(name, f"{document[name]!r} is not an integer (write {name}=1, not 1.0)")
    test = document.get("test")
    if isinstance(test, dict) and isinstance(test.get("repeat"), float):
        raise RunValidationError("test.repeat", f"{test['repeat']!r} is not an integer")
    problems = schema_problems(document)
    if problems:
        field, message = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise RunValidationError(field, message + more)
    for name in ("backend", "run_id"):  # folder and file names
        size = len(document[name].encode("utf-8"))
        if size > SEGMENT_MAX_BYTES:
            raise RunValidationError(
                name,
                f"is {size} bytes in UTF-8; as a file or folder name it may have {SEGMENT_MAX_BYTES} at most",
            )
    return document


class PreparedRun:
    """A run that ``prepare_run`` validated, held as its canonical document: stored as
    it is, without a second check. Only what the pytest plugin learns after the test
    (its outcome and attempt) can change, through ``with_test_result``."""

    __slots__ = ("_document",)

    def __init__(self, run: Mapping[str, Any]) -> None:
        self._document = prepare_run(run)

    @property
    def document(self) -> Mapping[str, Any]:
        return types.MappingProxyType(self._document)

    @property
    def run_id(self) -> str:
        return str(self._document["run_id"])

    def matches(self, run: Mapping[str, Any]) -> bool:
        """Whether ``run`` still holds what was validated (the fields prepare_run adds
        aside). Equality is Python's, so 1 == 1.0 == True: a change between such values
        goes unseen, and what is stored is the validated value."""
        document = self._document
        if "schema_version" not in run:
            document = {k: v for k, v in document.items() if k != "schema_version"}
        return bool(run == document)

    def with_test_result(self, outcome: str | None, attempt: int | None = None) -> PreparedRun:
        if not (outcome is None or type(outcome) is str) or not (attempt is None or type(attempt) is int):
            raise RunValidationError("test", f"outcome {outcome!r}, attempt {attempt!r}: not a test result")
        if attempt is not None and not 1 <= attempt <= INT_MAX:
            raise RunValidationError("test.attempt", f"{attempt!r} is not an attempt (1 or more)")
        test = self._document.get("test")
        if not isinstance(test, dict):
            raise RunValidationError("test", "is missing: a run of no test has no test result")
        changed = copy.copy(self)
        changed._document = {**self._document, "test": {**test, "outcome": outcome}}
        if attempt is not None:
            changed._document["test"]["attempt"] = attempt
        return changed

    def with_measurement(
        self, metrics: Mapping[str, Any], latencies_ms: Sequence[float], hardware: Mapping[str, Any]
    ) -> PreparedRun:
        """This run with what ``measure()`` timed, the rest as validated: only the numbers
        the plugin made are checked (against the schema's rules for them), not the whole
        document again."""
        for name, value in metrics.items():
            if name in _FLAGS:
                if type(value) is not bool:
                    raise RunValidationError(f"metrics.{name}", f"{value!r} is not true or false")
                continue
            if not _finite_or_none(value, minimum=0) and not (type(value) is str and len(value) <= 200):
                raise RunValidationError(f"metrics.{name}", f"{value!r} is not a finite number >= 0")
        total, busy = metrics.get("total_latency_ms"), metrics.get("gpu_utilization")
        if total is None or not _finite_or_none(total, minimum=0):
            raise RunValidationError("metrics.total_latency_ms", f"{total!r} is not a number >= 0")
        if busy is not None and busy > 100:
            raise RunValidationError("metrics.gpu_utilization", f"{busy!r} is above 100")
        for position, value in enumerate(latencies_ms):
            if value is None or not _finite_or_none(value, minimum=0):
                raise RunValidationError(f"latencies_ms.{position}", f"{value!r} is not a number >= 0")
        for name, value in hardware.items():
            if not (value is None or type(value) is str or _finite_or_none(value)):
                raise RunValidationError(f"hardware.{name}", f"{value!r} is not a number, string or null")
        changed = copy.copy(self)
        changed._document = {
            **self._document,
            "metrics": dict(metrics),
            "latencies_ms": list(latencies_ms),
            "hardware": dict(hardware),
        }
        return changed

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self._document)


# metrics the schema types as booleans (how a measurement was made)
_FLAGS = frozenset({"stable", "calibrated"})


def _finite_or_none(value: Any, minimum: float = -math.inf) -> bool:
    if value is None:
        return True
    return type(value) in (int, float) and math.isfinite(value) and value >= minimum


def _describe(error: Any) -> tuple[str, str]:
    """(dotted field, short message) of a jsonschema error, naming the field itself."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return field_path([*path, missing[0]]), "is missing (required)"
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = error.schema.get("properties", {})
        unknown = sorted(k for k in error.instance if k not in known)
        return field_path([*path, unknown[0]]), "is not a known field"
    if error.validator == "pattern" and path == ["run_id"]:
        return "run_id", (
            f"{error.instance!r} is not a safe id "
            "(1-128 letters, digits, '-' or '_', starting with a letter or digit)"
        )
    if error.validator == "pattern":
        return field_path(path), (
            f"{error.instance!r} is not a safe directory name "
            "(1-100 characters, no '/', '\\' or control characters, not '.' or '..')"
        )
    return field_path(path), str(error.message)


def day_of(created_at: str) -> str:
    """The UTC day ``YYYY-MM-DD`` of a normalised ``created_at``."""
    return created_at[:10]


def run_relpaths(document: Mapping[str, Any], with_fingerprint: bool) -> tuple[str, str | None]:
    """Paths, relative to the root and with '/' separators, of a run's files."""
    year, month, day = day_of(document["created_at"]).split("-")
    folder = f"{year}/{month}/{day}/{document['backend']}"
    run_json = f"{folder}/{document['run_id']}.json"
    fp_json = f"{folder}/{document['run_id']}.fp.json" if with_fingerprint else None
    return run_json, fp_json
