"""The environment fingerprint of a run: what must match for two runs to be comparable."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose version changes inference speed; read from metadata, never imported.
TRACKED_PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(cwd: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree at ``cwd`` (None where there is none)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def build_fingerprint(cwd: Path, hardware_snapshot: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint document, with ``fingerprint_hash`` over everything else in it."""
    gpus = hardware_snapshot.get("gpus") or []
    body: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": package_versions(),
        **git_state(cwd),
        "gpu_uuids": [g.get("uuid") for g in gpus],
        "gpu_names": [g.get("name") for g in gpus],
        "driver_version": hardware_snapshot.get("driver_version"),
        "cuda_version": hardware_snapshot.get("cuda_version"),
    }
    body["fingerprint_hash"] = fingerprint_hash(body)
    return body


def fingerprint_hash(body: dict[str, Any]) -> str:
    """A stable short hash: equal environments give equal hashes on any machine."""
    payload = {k: v for k, v in body.items() if k != "fingerprint_hash"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
