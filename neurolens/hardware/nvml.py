"""GPU facts and utilization through NVML (NVIDIA's ``nvidia-ml-py``, imported as ``pynvml``).

Nothing here raises into a caller: no driver, no GPU, no permission or an unsupported
query gives ``None`` for that field and a reason in ``nvml_error``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


def import_pynvml() -> ModuleType:
    """Import the binding lazily; the deprecated ``pynvml`` distribution warns on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("pynvml")
    return module


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version(value: int) -> str:
    """NVML's integer CUDA driver version (12040) as text ("12.4")."""
    return f"{value // 1000}.{(value % 1000) // 10}"


class Nvml:
    """One NVML session: ``open()`` once, query, ``close()``. Safe without any GPU."""

    def __init__(self) -> None:
        self.lib: ModuleType | None = None
        self.error: str | None = None

    def open(self) -> bool:
        try:
            pynvml = import_pynvml()
        except ImportError as exc:
            self.error = f"nvidia-ml-py is not importable ({exc})"
            return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.error = f"NVML unavailable: {exc}"
            return False
        except OSError as exc:  # a broken libnvidia-ml
            self.error = f"NVML unavailable: {exc}"
            return False
        self.lib = pynvml
        return True

    def close(self) -> None:
        if self.lib is not None:
            # shutting down a session that already failed has nothing to report
            with contextlib.suppress(self.lib.NVMLError):
                self.lib.nvmlShutdown()
            self.lib = None

    def query(self, errors: list[str], label: str, name: str, *args: Any) -> Any:
        """``pynvml.<name>(*args)``, or None with ``label: reason`` added to ``errors``."""
        if self.lib is None:
            return None
        try:
            return getattr(self.lib, name)(*args)
        except self.lib.NVMLError as exc:
            errors.append(f"{label}: {exc}")
            return None

    def snapshot(self) -> dict[str, Any]:
        """Driver, CUDA and NVML versions and every GPU's identity, once per session."""
        errors: list[str] = []
        snap: dict[str, Any] = {
            "driver_version": None,
            "cuda_version": None,
            "nvml_version": None,
            "gpu_count": None,
            "gpus": [],
            "nvml_error": None,
        }
        if self.lib is None and self.error is None:
            self.open()
        if self.lib is None:
            snap["nvml_error"] = self.error
            return snap
        q = self.query
        snap["driver_version"] = _opt(_text, q(errors, "driver_version", "nvmlSystemGetDriverVersion"))
        snap["nvml_version"] = _opt(_text, q(errors, "nvml_version", "nvmlSystemGetNVMLVersion"))
        snap["cuda_version"] = _opt(
            _cuda_version, q(errors, "cuda_version", "nvmlSystemGetCudaDriverVersion")
        )
        count = q(errors, "gpu_count", "nvmlDeviceGetCount")
        snap["gpu_count"] = count
        for index in range(count or 0):
            gpu_errors: list[str] = []
            snap["gpus"].append(self._gpu(index, gpu_errors))
            errors.extend(f"gpu{index}.{e}" for e in gpu_errors)
        snap["nvml_error"] = "; ".join(errors) or None
        return snap

    def _gpu(self, index: int, errors: list[str]) -> dict[str, Any]:
        gpu: dict[str, Any] = {"index": index}
        handle = self.query(errors, "handle", "nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            return gpu
        q = self.query
        gpu["name"] = _opt(_text, q(errors, "name", "nvmlDeviceGetName", handle))
        gpu["uuid"] = _opt(_text, q(errors, "uuid", "nvmlDeviceGetUUID", handle))
        pci = q(errors, "pci_bus_id", "nvmlDeviceGetPciInfo", handle)
        gpu["pci_bus_id"] = None if pci is None else _text(pci.busId)
        memory = q(errors, "memory_total_mb", "nvmlDeviceGetMemoryInfo", handle)
        gpu["memory_total_mb"] = None if memory is None else round(memory.total / 2**20, 1)
        capability = q(errors, "compute_capability", "nvmlDeviceGetCudaComputeCapability", handle)
        gpu["compute_capability"] = None if capability is None else f"{capability[0]}.{capability[1]}"
        mig = q(errors, "mig_mode", "nvmlDeviceGetMigMode", handle)
        gpu["mig_mode"] = None if mig is None else ("enabled" if mig[0] else "disabled")
        power = q(errors, "power_limit_w", "nvmlDeviceGetPowerManagementLimit", handle)
        gpu["power_limit_w"] = None if power is None else power / 1000
        return gpu


def _opt(convert: Any, value: Any) -> Any:
    return None if value is None else convert(value)


def select_gpu(snapshot: dict[str, Any], visible_index: int = 0) -> tuple[dict[str, Any] | None, str | None]:
    """The GPU a run used: ``visible_index`` among ``CUDA_VISIBLE_DEVICES`` (by index or
    UUID), or among all GPUs when it is unset. (None, why) when there is none."""
    gpus: list[dict[str, Any]] = snapshot["gpus"]
    if not gpus:
        return None, snapshot["nvml_error"] or "no GPU found"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        chosen = list(range(len(gpus)))
    else:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        chosen = []
        for entry in entries:
            if entry.lstrip("-").isdigit():
                if int(entry) < 0:
                    break  # CUDA stops at the first invalid ordinal
                if int(entry) < len(gpus):
                    chosen.append(int(entry))
            else:
                matches = [g["index"] for g in gpus if (g.get("uuid") or "").startswith(entry)]
                if not matches and not entry.startswith(("GPU-", "MIG-")):
                    matches = [g["index"] for g in gpus if (g.get("uuid") or "")[4:].startswith(entry)]
                chosen.extend(matches[:1])
        if not chosen:
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} makes no GPU visible"
    if visible_index >= len(chosen):
        return None, f"GPU {visible_index} requested but {len(chosen)} visible"
    return gpus[chosen[visible_index]], None


def run_hardware(snapshot: dict[str, Any], gpu: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
    """The flat ``hardware`` object of a run: the session facts plus the GPU it used."""
    gpu = gpu or {}
    errors = [e for e in (snapshot.get("nvml_error") or "").split("; ") if e]
    prefix = f"gpu{gpu.get('index')}."
    own = [e for e in errors if not e.startswith("gpu") or e.startswith(prefix)]
    if reason and reason not in own:
        own.insert(0, reason)
    hardware = {
        "gpu_name": gpu.get("name"),
        "driver_version": snapshot.get("driver_version"),
        "cuda_version": snapshot.get("cuda_version"),
        "nvml_version": snapshot.get("nvml_version"),
        "gpu_count": snapshot.get("gpu_count"),
        "gpu_index": gpu.get("index"),
        "gpu_uuid": gpu.get("uuid"),
        "gpu_pci_bus_id": gpu.get("pci_bus_id"),
        "gpu_memory_total_mb": gpu.get("memory_total_mb"),
        "gpu_compute_capability": gpu.get("compute_capability"),
        "gpu_mig_mode": gpu.get("mig_mode"),
        "gpu_power_limit_w": gpu.get("power_limit_w"),
        "nvml_error": "; ".join(own) or None,
    }
    hardware.update(snapshot.get("host") or {})
    return hardware


@dataclass
class UtilizationSampler:
    """Samples a GPU's utilization and memory in a daemon thread while a measurement runs."""

    nvml: Nvml
    gpu_index: int | None
    interval_s: float = 0.05
    utilization: list[float] = field(default_factory=list)
    memory_used: list[int] = field(default_factory=list)
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _handle: Any = None
    _energy_start: int | None = None
    _energy_end: int | None = None

    def __enter__(self) -> UtilizationSampler:
        if self.nvml.lib is None or self.gpu_index is None:
            self.error = self.nvml.error or "no GPU selected"
            return self
        errors: list[str] = []
        self._handle = self.nvml.query(errors, "handle", "nvmlDeviceGetHandleByIndex", self.gpu_index)
        if self._handle is None:
            self.error = "; ".join(errors)
            return self
        self._energy_start = self.nvml.query(
            [], "energy", "nvmlDeviceGetTotalEnergyConsumption", self._handle
        )
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="neurolens-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._sample():
                return

    def _sample(self) -> bool:
        lib = self.nvml.lib
        if lib is None:
            return False
        try:
            rates = lib.nvmlDeviceGetUtilizationRates(self._handle)
            memory = lib.nvmlDeviceGetMemoryInfo(self._handle)
        except lib.NVMLError as exc:
            self.error = f"utilization: {exc}"
            return False
        self.utilization.append(float(rates.gpu))
        self.memory_used.append(int(memory.used))
        return True

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self.error is None:
                self._sample()  # the end of the window, however short it was
            self._energy_end = self.nvml.query(
                [], "energy", "nvmlDeviceGetTotalEnergyConsumption", self._handle
            )

    def metrics(self) -> dict[str, Any]:
        samples = self.utilization
        energy = None
        if self._energy_start is not None and self._energy_end is not None:
            energy = (self._energy_end - self._energy_start) / 1000  # mJ -> J
        return {
            "gpu_utilization": sum(samples) / len(samples) if samples else None,
            "gpu_utilization_max": max(samples) if samples else None,
            "gpu_samples": len(samples),
            "gpu_memory_peak_mb": round(max(self.memory_used) / 2**20, 1) if self.memory_used else None,
            "energy_j": energy,
        }
