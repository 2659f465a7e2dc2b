"""A fake ``libnvidia-ml`` at the ctypes boundary: ``pynvml.nvmlLib`` replaced by plain
functions that take the same ctypes arguments the real C functions get. The binding's
own marshalling, struct decoding and error mapping run unchanged on top of it.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

SUCCESS = pynvml.NVML_SUCCESS
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
_HANDLE_BASE = 0x1000


@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus_id: str
    memory_total: int = 80 * 2**30
    memory_used: Iterator[int] = field(default_factory=lambda: itertools.repeat(2 * 2**30))
    capability: tuple[int, int] = (9, 0)
    mig: int = 0
    power_limit_mw: int = 700_000
    utilization: Iterator[int] = field(default_factory=lambda: itertools.repeat(50))
    energy_mj: Iterator[int] = field(default_factory=lambda: itertools.count(1_000_000, 500))
    unsupported: set[str] = field(default_factory=set)  # C function names answering NotSupported


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA H100 80GB HBM3", "GPU-aaaaaaaa-1111-2222-3333-444444444444", "00000000:17:00.0"),
        FakeGpu(
            "NVIDIA A10G",
            "GPU-bbbbbbbb-1111-2222-3333-444444444444",
            "00000000:65:00.0",
            memory_total=24 * 2**30,
            capability=(8, 6),
            unsupported={"nvmlDeviceGetPowerManagementLimit"},
        ),
    ]


def _out(ref: Any) -> Any:
    """The ctypes object behind ``byref(obj)``."""
    return ref._obj


def make_fake_lib(gpus: list[FakeGpu], init_error: int = SUCCESS) -> SimpleNamespace:
    calls: list[str] = []

    def gpu_of(handle: Any) -> FakeGpu:
        return gpus[ctypes.cast(handle, ctypes.c_void_p).value - _HANDLE_BASE]  # type: ignore[operator]

    def device_fn(name: str, body: Callable[..., None]) -> Callable[..., int]:
        def fn(handle: Any, *args: Any) -> int:
            calls.append(name)
            gpu = gpu_of(handle)
            if name in gpu.unsupported:
                return NOT_SUPPORTED
            body(gpu, *args)
            return SUCCESS

        return fn

    def set_uint(ref: Any, value: int) -> None:
        _out(ref).value = value

    def init(flags: Any) -> int:
        calls.append("nvmlInitWithFlags")
        return init_error

    def shutdown() -> int:
        calls.append("nvmlShutdown")
        return SUCCESS

    def error_string(code: Any) -> bytes:
        return b"fake error %d" % int(code)

    def string_fn(value: bytes) -> Callable[..., int]:
        def fn(buffer: Any, size: Any) -> int:
            buffer.value = value
            return SUCCESS

        return fn

    def cuda_version(ref: Any) -> int:
        set_uint(ref, 12040)
        return SUCCESS

    def count(ref: Any) -> int:
        set_uint(ref, len(gpus))
        return SUCCESS

    def handle_by_index(index: Any, ref: Any) -> int:
        if index.value >= len(gpus):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        ctypes.c_void_p.from_address(ctypes.addressof(_out(ref))).value = _HANDLE_BASE + index.value
        return SUCCESS

    def name(gpu: FakeGpu, buffer: Any, size: Any) -> None:
        buffer.value = gpu.name.encode()

    def uuid(gpu: FakeGpu, buffer: Any, size: Any) -> None:
        buffer.value = gpu.uuid.encode()

    def pci(gpu: FakeGpu, ref: Any) -> None:
        _out(ref).busId = gpu.bus_id.encode()

    def memory(gpu: FakeGpu, ref: Any) -> None:
        info = _out(ref)
        info.total = gpu.memory_total
        info.used = next(gpu.memory_used)
        info.free = info.total - info.used

    def capability(gpu: FakeGpu, major: Any, minor: Any) -> None:
        set_uint(major, gpu.capability[0])
        set_uint(minor, gpu.capability[1])

    def mig(gpu: FakeGpu, current: Any, pending: Any) -> None:
        set_uint(current, gpu.mig)
        set_uint(pending, gpu.mig)

    def power(gpu: FakeGpu, ref: Any) -> None:
        set_uint(ref, gpu.power_limit_mw)

    def utilization(gpu: FakeGpu, ref: Any) -> None:
        rates = _out(ref)
        rates.gpu = next(gpu.utilization)
        rates.memory = 10

    def energy(gpu: FakeGpu, ref: Any) -> None:
        set_uint(ref, next(gpu.energy_mj))

    return SimpleNamespace(
        calls=calls,
        nvmlInitWithFlags=init,
        nvmlShutdown=shutdown,
        nvmlErrorString=error_string,
        nvmlSystemGetDriverVersion=string_fn(b"550.54.15"),
        nvmlSystemGetNVMLVersion=string_fn(b"12.550.54.15"),
        nvmlSystemGetCudaDriverVersion=cuda_version,
        nvmlDeviceGetCount_v2=count,
        nvmlDeviceGetHandleByIndex_v2=handle_by_index,
        nvmlDeviceGetName=device_fn("nvmlDeviceGetName", name),
        nvmlDeviceGetUUID=device_fn("nvmlDeviceGetUUID", uuid),
        nvmlDeviceGetPciInfo_v3=device_fn("nvmlDeviceGetPciInfo_v3", pci),
        nvmlDeviceGetMemoryInfo=device_fn("nvmlDeviceGetMemoryInfo", memory),
        nvmlDeviceGetCudaComputeCapability=device_fn("nvmlDeviceGetCudaComputeCapability", capability),
        nvmlDeviceGetMigMode=device_fn("nvmlDeviceGetMigMode", mig),
        nvmlDeviceGetPowerManagementLimit=device_fn("nvmlDeviceGetPowerManagementLimit", power),
        nvmlDeviceGetUtilizationRates=device_fn("nvmlDeviceGetUtilizationRates", utilization),
        nvmlDeviceGetTotalEnergyConsumption=device_fn("nvmlDeviceGetTotalEnergyConsumption", energy),
    )


def install(monkeypatch: Any, lib: Any) -> None:
    """Make ``pynvml`` use ``lib`` as its loaded C library (and forget cached pointers)."""
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
