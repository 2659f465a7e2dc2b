"""Check a store and say exactly what is wrong with it.

Each manifest entry's run file is read and hashed: a matching sha256 proves the bytes are
the ones ``write_run`` validated, so the schema is checked again only for files whose hash
does not match (to say how they are wrong) or with ``full=True``.

Problem kinds: manifest_line (torn, unparsable or invalid), duplicate_run_id,
missing_run_file, unreadable_run_file, hash_mismatch, invalid_run, entry_mismatch,
missing_fingerprint, invalid_fingerprint, symlink, orphan_file (a file that is not part of the layout), index.
Run files no manifest line names (a writer killed between its file and its line) and
temporary files are ``leftovers``: reported apart, harmless, removed by ``repair.repair``;
such a file whose run a damaged line names is ``restorable`` (its line restored from it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neurolens.errors import NeurolensError, StoreError
from neurolens.storage.exchange.importer import fingerprint_problem
from neurolens.storage.exchange.workers import entries_of, parts_of, process_pool, worker_count
from neurolens.storage.index import reading as _index
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.document import prepare_run, run_relpaths
from neurolens.storage.ledger.files import Folders, read_run_file
from neurolens.storage.ledger.manifest import (
    MANIFEST_NAME,
    Progress,
    entry_differences,
    entry_for,
    manifest_size,
)
from neurolens.storage.ledger.mentions import mentioned_ids, run_id_of
from neurolens.storage.ledger.root import require_store


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
    # harmless litter of killed writers: temporary files, run files without a manifest line
    leftovers: list[str] = field(default_factory=list)
    # run files (and fingerprints) without a sound line whose run id a damaged line names:
    # never leftovers, the way to restore the line (``repair``)
    restorable: list[str] = field(default_factory=list)

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
            "restorable": self.restorable,
        }


# Runs one worker process checks at a time; a store of fewer than two such parts is
# checked in this process (starting workers costs more than it saves).
_RUNS_PER_CHECK_PART = 20_000


def verify_store(
    root: str | os.PathLike[str],
    *,
    full: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Every problem of the store at ``root`` (kinds in the module docstring); reads, never writes.

    Consistent beside live writers: a file that no entry of the manifest as first read
    names is checked again against what was appended since. Run files are read and hashed
    by ``workers`` processes (default: one per CPU) when the store is large; the report
    is the same, in the same order.
    """
    root_path = Path(root)
    report = VerifyReport(root=root_path)
    require_store(root_path)
    rows, tail = _index.read_tail(root_path)
    for problem in tail.problems:
        report.add("manifest_line", MANIFEST_NAME, problem)
    unique, duplicates = rows.without_duplicates()
    for run_id in duplicates:
        report.add("duplicate_run_id", MANIFEST_NAME, _index.duplicate_message(run_id))
    report.runs = len(unique)
    paths = unique.columns(["run_json", "fp_json"])
    named: set[str] = {*paths["run_json"], *(p for p in paths["fp_json"] if p)}
    # The run files are checked (by workers, for a large store) while this process lists
    # the store's files and checks the index; problems keep the order: entries, files, index.
    later = VerifyReport(root=root_path)
    with _entry_checks(root_path, unique, full, progress, worker_count(workers)) as entry_problems:
        _check_files(root_path, named, tail.end, later)
        _check_index(root_path, later, unique, tail.end)
        report.problems.extend(entry_problems())
    report.problems.extend(later.problems)
    report.files, report.leftovers = later.files, later.leftovers
    named_again = mentioned_ids(root_path, {i for i in map(run_id_of, report.leftovers) if i is not None})
    report.restorable = [f for f in report.leftovers if run_id_of(f) in named_again]
    report.leftovers = [f for f in report.leftovers if run_id_of(f) not in named_again]
    return report


@contextlib.contextmanager
def _entry_checks(
    root: Path, rows: Rows, full: bool, progress: Progress | None, workers: int
) -> Iterator[Callable[[], list[Problem]]]:
    """Start checking every entry's files (in parts spread over worker processes when
    there are enough); yields the call that waits for their problems, in entry order."""
    total = len(rows)
    if workers < 2 or total < 2 * _RUNS_PER_CHECK_PART:

        def here() -> list[Problem]:
            found = VerifyReport(root=root)
            with Folders(root) as folders:
                for number, entry in enumerate(rows.records(), 1):
                    _check_entry(folders, entry, full, found)
                    if progress is not None and number % 10000 == 0:
                        progress(number, total)
            if progress is not None:
                progress(total, total)
            return found.problems

        yield here
        return
    starts = range(0, total, _RUNS_PER_CHECK_PART)
    parts = parts_of(rows, _RUNS_PER_CHECK_PART)
    with process_pool(min(workers, len(parts))) as pool:
        futures = [pool.submit(_check_part, root, part, full) for part in parts]

        def collect() -> list[Problem]:
            found: list[Problem] = []
            for start, future in zip(starts, futures, strict=True):
                found.extend(future.result())
                done = min(start + _RUNS_PER_CHECK_PART, total)
                if progress is not None:
                    progress(done, total)
            return found

        try:
            yield collect
        finally:
            for future in futures:
                future.cancel()


def _check_part(root: Path, part: Any, full: bool) -> list[Problem]:
    """A worker's share: the problems of a slice of entries (Arrow IPC bytes, or dicts)."""
    report = VerifyReport(root=root)
    with Folders(root) as folders:
        for entry in entries_of(part):
            _check_entry(folders, entry, full, report)
    return report.problems


def _check_entry(folders: Folders, entry: dict[str, Any], full: bool, report: VerifyReport) -> None:
    where = entry["run_json"]
    try:
        data = folders.read_run_file(where)
    except FileNotFoundError:
        report.add("missing_run_file", where, f"run {entry['run_id']}: its run file is missing")
        return
    except (OSError, StoreError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        report.add("unreadable_run_file", where, f"run {entry['run_id']}: {reason}")
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
        canonical = prepare_run(document, parsed=True) if full or not hash_ok else document
    except (ValueError, NeurolensError, RecursionError) as exc:
        report.add("invalid_run", where, f"run {entry['run_id']}: {exc}")
        return
    try:
        run_rel, fp_rel = run_relpaths(canonical, with_fingerprint=bool(entry["fp_json"]))
        expected = entry_for(canonical, run_rel, fp_rel, entry["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        report.add("invalid_run", where, f"run {entry['run_id']}: missing or malformed field ({exc})")
        return
    differing = entry_differences(expected, entry)
    if differing:
        report.add(
            "entry_mismatch", where, f"run {entry['run_id']}: manifest disagrees on {', '.join(differing)}"
        )
    if entry["fp_json"]:
        try:
            problem = fingerprint_problem(folders.read_run_file(entry["fp_json"]))
        except (OSError, StoreError):
            report.add(
                "missing_fingerprint", entry["fp_json"], f"run {entry['run_id']}: its fingerprint is missing"
            )
            return
        if problem is not None:
            report.add(
                "invalid_fingerprint", entry["fp_json"], f"run {entry['run_id']}: its fingerprint {problem}"
            )


def _check_files(root: Path, named: set[str], manifest_end: int, report: VerifyReport) -> None:
    """Files no manifest entry names: leftovers of killed writers, or damage."""
    unnamed: list[str] = []
    for relative, link in _store_files(str(root), ""):
        name = relative.rpartition("/")[2]
        if "/" not in relative and name.startswith("_"):
            continue  # manifest, index, locks
        if link:
            report.add("symlink", relative, "a symlink inside the store (never followed; remove it)")
            continue
        if name.startswith(".") and name.endswith(".tmp"):
            report.leftovers.append(relative)
            continue
        report.files += 1
        if relative not in named:
            unnamed.append(relative)
    if unnamed:  # a live writer may have appended their lines since the manifest was read
        named |= {
            name for entry in _index.read_tail(root, manifest_end)[0].records() for name in _names(entry)
        }
    for relative in unnamed:
        if relative in named:
            continue
        if _written_by_a_killed_writer(root, relative):
            report.leftovers.append(relative)
        else:
            report.add("orphan_file", relative, "no manifest entry names this file")


def _store_files(root: str, folder: str) -> Iterator[tuple[str, bool]]:
    """(path under the root, whether it is a symlink) of everything but folders, a folder's
    entries by name before its subfolders', never following a link (a linked folder is a
    link here). One ``scandir`` per folder: no ``stat`` per file."""
    try:
        with os.scandir(os.path.join(root, folder) if folder else root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:  # an unreadable folder: what is in it cannot be listed
        return
    prefix = f"{folder}/" if folder else ""
    subfolders = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subfolders.append(prefix + entry.name)
        else:
            yield prefix + entry.name, entry.is_symlink()
    for subfolder in subfolders:
        yield from _store_files(root, subfolder)


def _written_by_a_killed_writer(root: Path, relative: str) -> bool:
    """A sound run file (or fingerprint) at the path its own id, day and backend give:
    what ``write_run`` leaves when it is killed between the file and the manifest line."""
    try:
        document = json.loads(read_run_file(root, relative))
        if relative.endswith(".fp.json"):
            return isinstance(document, dict)
        return run_relpaths(prepare_run(document), with_fingerprint=False)[0] == relative
    except (OSError, ValueError, RecursionError, NeurolensError):
        return False


def _names(entry: dict[str, Any]) -> list[str]:
    return [entry["run_json"], *([entry["fp_json"]] if entry["fp_json"] else [])]


def _check_index(root: Path, report: VerifyReport, unique: Rows, end: int) -> None:
    """The index against the manifest it claims to cover; ``unique``: the manifest's rows
    up to byte ``end``, already read (duplicates dropped)."""
    if manifest_size(root) == 0:
        return
    state, problem = _index.read_index(root)
    if state is None:
        report.add("index", _index.index_path(root).name, f"{problem} (`neurolens rebuild` restores it)")
        return
    if state.manifest_bytes == end:
        expected = unique
    else:
        expected = _index.read_tail(root, 0, stop=state.manifest_bytes)[0].without_duplicates()[0]
    if not state.rows.equals(expected):
        report.add(
            "index",
            _index.index_path(root).name,
            "index rows differ from the manifest it claims to cover (`neurolens rebuild` restores it)",
        )
