"""Check a store and say exactly what is wrong with it.

Each manifest entry's run file is read and hashed: a matching sha256 proves the bytes are
the ones ``write_run`` validated, so the schema is checked again only for files whose hash
does not match (to say how they are wrong) or with ``full=True``.

Problem kinds: manifest_line (torn, unparsable or invalid), duplicate_run_id,
missing_run_file, unreadable_run_file, hash_mismatch, invalid_run, entry_mismatch,
missing_fingerprint, orphan_file, index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neurolens.errors import NeurolensError
from neurolens.storage import index as _index
from neurolens.storage.document import prepare_run, run_relpaths
from neurolens.storage.manifest import MANIFEST_NAME, Progress, entry_for, manifest_size


@dataclass
class Problem:
    kind: str
    where: str
    message: str


@dataclass
class VerifyReport:
    root: Path
    runs: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    # harmless litter: temporary files of writers killed before they renamed them
    leftovers: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, where: str, message: str) -> None:
        self.problems.append(Problem(kind, where, message))

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "clean": self.clean,
            "runs": self.runs,
            "files": self.files,
            "counts": self.counts(),
            "problems": [asdict(p) for p in self.problems],
            "leftovers": self.leftovers,
        }


def verify_store(
    root: str | os.PathLike[str], *, full: bool = False, progress: Progress | None = None
) -> VerifyReport:
    """Every problem of the store at ``root`` (kinds in the module docstring); reads, never writes."""
    root_path = Path(root)
    report = VerifyReport(root=root_path)
    if not root_path.is_dir():
        raise NeurolensError(f"no store at {root_path}")
    rows, tail = _index.read_tail(root_path, 0)
    for problem in tail.problems:
        report.add("manifest_line", MANIFEST_NAME, problem)
    unique = _index.drop_duplicates(rows, None, tail)
    for problem in tail.problems[len(report.problems) :]:
        report.add("duplicate_run_id", MANIFEST_NAME, problem)
    entries = unique.table.to_pylist() if unique.table is not None else unique.records
    report.runs = len(entries)
    named: set[str] = set()
    for number, entry in enumerate(entries, 1):
        named.add(entry["run_json"])
        if entry["fp_json"]:
            named.add(entry["fp_json"])
        _check_entry(root_path, entry, full, report)
        if progress is not None and number % 10000 == 0:
            progress(number, len(entries))
    if progress is not None:
        progress(len(entries), len(entries))
    _check_orphans(root_path, named, report)
    _check_index(root_path, report)
    return report


def _check_entry(root: Path, entry: dict[str, Any], full: bool, report: VerifyReport) -> None:
    where = entry["run_json"]
    try:
        data = (root / where).read_bytes()
    except FileNotFoundError:
        report.add("missing_run_file", where, f"run {entry['run_id']}: its run file is missing")
        return
    except OSError as exc:
        report.add("unreadable_run_file", where, f"run {entry['run_id']}: {exc.strerror or exc}")
        return
    hash_ok = hashlib.sha256(data).hexdigest() == entry["sha256"]
    if not hash_ok:
        report.add(
            "hash_mismatch", where, f"run {entry['run_id']}: file content differs from its manifest hash"
        )
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        canonical = prepare_run(document) if full or not hash_ok else document
    except (ValueError, NeurolensError) as exc:
        report.add("invalid_run", where, f"run {entry['run_id']}: {exc}")
        return
    try:
        run_rel, fp_rel = run_relpaths(canonical, with_fingerprint=bool(entry["fp_json"]))
        expected = entry_for(canonical, run_rel, fp_rel, entry["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        report.add("invalid_run", where, f"run {entry['run_id']}: missing or malformed field ({exc})")
        return
    differing = sorted(k for k, v in expected.items() if entry.get(k) != v)
    if differing:
        report.add(
            "entry_mismatch", where, f"run {entry['run_id']}: manifest disagrees on {', '.join(differing)}"
        )
    if entry["fp_json"] and not (root / entry["fp_json"]).is_file():
        report.add(
            "missing_fingerprint", entry["fp_json"], f"run {entry['run_id']}: its fingerprint is missing"
        )


def _check_orphans(root: Path, named: set[str], report: VerifyReport) -> None:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        relative_folder = Path(folder).relative_to(root)
        for name in sorted(files):
            relative = (relative_folder / name).as_posix()
            if relative_folder == Path(".") and name.startswith("_"):
                continue  # manifest, index, locks
            if name.startswith(".") and name.endswith(".tmp"):
                report.leftovers.append(relative)
                continue
            report.files += 1
            if relative not in named:
                report.add("orphan_file", relative, "no manifest entry names this file")


def _check_index(root: Path, report: VerifyReport) -> None:
    if manifest_size(root) == 0:
        return
    state, problem = _index.read_index(root)
    if state is None:
        report.add("index", _index.index_path(root).name, f"{problem} (`neurolens rebuild` restores it)")
        return
    rows, tail = _index.read_tail(root, 0, stop=state.manifest_bytes)
    expected = _index.drop_duplicates(rows, None, tail)
    same = (
        state.rows.table.equals(expected.table)
        if state.rows.table is not None
        else state.rows.records == expected.records
    )
    if not same:
        report.add(
            "index",
            _index.index_path(root).name,
            "index rows differ from the manifest it claims to cover (`neurolens rebuild` restores it)",
        )
