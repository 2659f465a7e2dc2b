"""NVML through the real nvidia-ml-py binding over a fake C library (and the real no-driver path)."""

from __future__ import annotations

import ctypes.util
import itertools
import subprocess
import sys
import time

import pynvml
import pytest

from neurolens.hardware.nvml import Nvml, UtilizationSampler, run_hardware, select_gpu
from tests.fake_nvml import FakeGpu, install, make_fake_lib, two_gpus


@pytest.fixture
def fake_lib(monkeypatch: pytest.MonkeyPatch):
    lib = make_fake_lib(two_gpus())
    install(monkeypatch, lib)
    return lib


def test_snapshot_of_two_gpus_with_one_unsupported_field(fake_lib) -> None:
    nvml = Nvml()
    assert nvml.open()
    snap = nvml.snapshot()
    nvml.close()
    assert snap["driver_version"] == "550.54.15"
    assert snap["cuda_version"] == "12.4"
    assert snap["nvml_version"] == "12.550.54.15"
    assert snap["gpu_count"] == 2
    h100, a10 = snap["gpus"]
    assert h100 == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-aaaaaaaa-1111-2222-3333-444444444444",
        "pci_bus_id": "00000000:17:00.0",
        "memory_total_mb": 81920.0,
        "compute_capability": "9.0",
        "mig_mode": "disabled",
        "power_limit_w": 700.0,
    }
    assert a10["name"] == "NVIDIA A10G" and a10["compute_capability"] == "8.6"
    assert a10["power_limit_w"] is None  # NotSupported -> null, with the reason
    assert snap["nvml_error"] == "gpu1.power_limit_w: Not Supported"
    assert "nvmlShutdown" in fake_lib.calls


def test_run_hardware_is_flat_and_carries_only_its_gpus_errors(fake_lib) -> None:
    snap = Nvml().snapshot()
    gpu, reason = select_gpu(snap, 0)
    hardware = run_hardware(snap, gpu, reason)
    assert hardware["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert hardware["driver_version"] == "550.54.15" and hardware["cuda_version"] == "12.4"
    assert hardware["nvml_error"] is None
    assert all(not isinstance(v, (dict, list)) for v in hardware.values())
    gpu, reason = select_gpu(snap, 1)
    assert run_hardware(snap, gpu, reason)["nvml_error"] == "gpu1.power_limit_w: Not Supported"


@pytest.mark.parametrize(
    ("visible", "index", "expected"),
    [
        (None, 0, "NVIDIA H100 80GB HBM3"),
        (None, 1, "NVIDIA A10G"),
        ("1", 0, "NVIDIA A10G"),
        ("1,0", 1, "NVIDIA H100 80GB HBM3"),
        ("GPU-bbbbbbbb", 0, "NVIDIA A10G"),
        ("GPU-bbbbbbbb-1111-2222-3333-444444444444,0", 1, "NVIDIA H100 80GB HBM3"),
    ],
)
def test_gpu_is_chosen_through_cuda_visible_devices(
    fake_lib, monkeypatch: pytest.MonkeyPatch, visible: str | None, index: int, expected: str
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpu, reason = select_gpu(Nvml().snapshot(), index)
    assert reason is None and gpu is not None and gpu["name"] == expected


@pytest.mark.parametrize("visible", ["", "-1", "GPU-nope"])
def test_no_visible_gpu_gives_nulls_and_a_reason(
    fake_lib, monkeypatch: pytest.MonkeyPatch, visible: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    snap = Nvml().snapshot()
    gpu, reason = select_gpu(snap, 0)
    hardware = run_hardware(snap, gpu, reason)
    assert gpu is None and hardware["gpu_name"] is None
    assert "CUDA_VISIBLE_DEVICES" in hardware["nvml_error"]


def test_init_failing_with_driver_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, make_fake_lib(two_gpus(), init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    nvml = Nvml()
    assert not nvml.open()
    snap = nvml.snapshot()
    assert snap["gpus"] == [] and snap["driver_version"] is None
    assert snap["nvml_error"] == "NVML unavailable: Driver Not Loaded"
    hardware = run_hardware(snap, *select_gpu(snap, 0))
    assert hardware["gpu_name"] is None and hardware["nvml_error"] == "NVML unavailable: Driver Not Loaded"


def test_library_not_found_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    nvml = Nvml()
    assert not nvml.open()
    assert nvml.error == "NVML unavailable: NVML Shared Library Not Found"
    assert nvml.snapshot()["nvml_error"] == nvml.error


@pytest.mark.skipif(bool(ctypes.util.find_library("nvidia-ml")), reason="this machine has an NVIDIA driver")
def test_real_no_driver_path_on_this_machine() -> None:
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from neurolens.hardware.nvml import Nvml\n"
        "n = Nvml(); print(n.open(), n.snapshot()['nvml_error'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False NVML unavailable: NVML Shared Library Not Found"


def test_sampler_averages_utilization_and_tracks_peak_memory_and_energy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = two_gpus()
    gpus[0].utilization = itertools.cycle([20, 40, 60, 80])
    gpus[0].memory_used = itertools.cycle([1 * 2**30, 3 * 2**30, 2 * 2**30])
    install(monkeypatch, make_fake_lib(gpus))
    nvml = Nvml()
    nvml.open()
    with UtilizationSampler(nvml, 0, interval_s=0.005) as sampler:
        time.sleep(0.1)
    metrics = sampler.metrics()
    samples = sampler.utilization
    assert metrics["gpu_samples"] == len(samples) >= 4
    assert metrics["gpu_utilization"] == pytest.approx(sum(samples) / len(samples))
    assert set(samples) <= {20, 40, 60, 80} and metrics["gpu_utilization_max"] == max(samples)
    assert metrics["gpu_memory_peak_mb"] == 3072.0
    assert metrics["energy_j"] == 0.5  # two counter reads, 500 mJ apart
    assert sampler.error is None


def test_sampler_records_at_least_the_window_edges_for_a_short_window(fake_lib) -> None:
    nvml = Nvml()
    nvml.open()
    with UtilizationSampler(nvml, 0, interval_s=10) as sampler:
        pass
    assert sampler.metrics()["gpu_samples"] == 2 and sampler.metrics()["gpu_utilization"] == 50


def test_sampler_on_unsupported_utilization_gives_null_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(
        "X",
        "GPU-x",
        "0:0",
        unsupported={"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTotalEnergyConsumption"},
    )
    install(monkeypatch, make_fake_lib([gpu]))
    nvml = Nvml()
    nvml.open()
    with UtilizationSampler(nvml, 0, interval_s=0.001) as sampler:
        time.sleep(0.01)
    metrics = sampler.metrics()
    assert metrics["gpu_utilization"] is None and metrics["energy_j"] is None
    assert sampler.error == "utilization: Not Supported"


def test_sampler_without_nvml_is_inert() -> None:
    nvml = Nvml()
    nvml.error = "NVML unavailable: test"
    with UtilizationSampler(nvml, None) as sampler:
        pass
    assert sampler.metrics()["gpu_utilization"] is None
    assert sampler.error == "NVML unavailable: test"


def test_deprecated_pynvml_distribution_warning_does_not_escape(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the deprecated `pynvml` distribution does on import, in a module of that name.
    (tmp_path / "pynvml.py").write_text(
        "import warnings\n"
        "warnings.warn('The pynvml package is deprecated.', FutureWarning, stacklevel=2)\n"
        "class NVMLError(Exception):\n    pass\n"
        "def nvmlInit():\n    raise NVMLError('no driver')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nvml = Nvml()
        assert not nvml.open()
    assert nvml.error == "NVML unavailable: no driver"
