"""neuron.gpu: NEURON_FAKE_GPUS parsing and accounting, the CPU-host probe, NVML via a stub module.

The NVML tests swap a small stand-in for `pynvml` into sys.modules: it mimics the calls NvmlProbe
makes (names as str or bytes, NVMLError subclasses, "Not Supported" metrics) so the code path that
only a GPU host runs is exercised here too.
"""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from neuron.gpu import (
    DeviceInfo,
    DeviceStatus,
    FakeProbe,
    NoGpuProbe,
    NvmlProbe,
    open_probe,
    parse_fake_gpus,
)

GIB = 1024


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0:24GiB,1:12GiB", {0: 24 * GIB, 1: 12 * GIB}),
        ("0:24GB", {0: 24 * GIB}),
        ("0:24gib", {0: 24 * GIB}),
        ("0:2G", {0: 2 * GIB}),
        ("0:512MiB", {0: 512}),
        ("0:512MB", {0: 512}),
        ("0:512m", {0: 512}),
        ("0:8192", {0: 8192}),
        ("0:1.5GiB", {0: 1536}),
        (" 1 : 12 GiB , 0:8GiB ", {0: 8 * GIB, 1: 12 * GIB}),
        ("24GiB,12GiB", {0: 24 * GIB, 1: 12 * GIB}),  # bare sizes take their position
        ("3:80GiB", {3: 80 * GIB}),
    ],
)
def test_parse_fake_gpus(spec: str, expected: dict[int, int]) -> None:
    assert parse_fake_gpus(spec) == expected


@pytest.mark.parametrize(
    ("spec", "bad_part"),
    [
        ("0:", "'0:'"),
        ("0:GiB", "'0:GiB'"),
        ("x:1GiB", "'x:1GiB'"),
        ("-1:1GiB", "'-1:1GiB'"),
        ("0:-1GiB", "'0:-1GiB'"),
        ("0:0", "'0:0'"),
        ("0:0.1", "'0:0.1'"),  # rounds to 0 MiB
        ("0:1TB", "'0:1TB'"),
        ("0:24GiB,0:12GiB", "'0:12GiB'"),  # index given twice
        ("0:24GiB,", "''"),
        ("0:1:2GiB", "'0:1:2GiB'"),
        ("lots", "'lots'"),
    ],
)
def test_parse_fake_gpus_rejects(spec: str, bad_part: str) -> None:
    with pytest.raises(ValueError, match="NEURON_FAKE_GPUS") as info:
        parse_fake_gpus(spec)
    assert f"bad entry {bad_part}" in str(info.value)


def test_malformed_env_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="'1:twelve'"):
        open_probe({"NEURON_FAKE_GPUS": "0:24GiB,1:twelve"})


def test_fake_probe_from_env() -> None:
    probe = open_probe({"NEURON_FAKE_GPUS": "0:24GiB,1:12GiB"})
    assert isinstance(probe, FakeProbe)
    assert (probe.kind, probe.backend_reason) == ("fake", None)
    assert probe.devices() == [
        DeviceInfo(0, "Fake GPU 0", 24576, None, "FAKE-GPU-0"),
        DeviceInfo(1, "Fake GPU 1", 12288, None, "FAKE-GPU-1"),
    ]
    assert probe.status() == [
        DeviceStatus(0, 24576, 0, 24576, 0, None),
        DeviceStatus(1, 12288, 0, 12288, 0, None),
    ]


def _free(probe: FakeProbe) -> list[int]:
    return [s.vram_free_mb for s in probe.status()]


def test_fake_reservations_fill_and_free_memory() -> None:
    probe = FakeProbe({0: 1000, 1: 500})
    probe.reserve("a", {0: 300.2, 1: 100})
    assert _free(probe) == [699, 400]  # used rounds up: never promise memory that is not there
    assert [s.vram_used_mb for s in probe.status()] == [301, 100]
    probe.reserve("b", {0: 200})
    assert _free(probe) == [499, 400]
    probe.reserve("a", {1: 50})  # replaces a's earlier reservation
    assert _free(probe) == [800, 450]
    probe.release("a")
    assert _free(probe) == [800, 500]
    probe.release("a")  # releasing twice, or an unknown owner, is harmless
    probe.release("nobody")
    probe.reserve("huge", {0: 5000})
    assert probe.status()[0] == DeviceStatus(0, 1000, 1000, 0, 0, None)  # clamped, not negative
    probe.release("huge")
    probe.release("b")
    assert _free(probe) == [1000, 500]


@pytest.mark.parametrize(
    ("plan", "match"),
    [({2: 10}, "no fake GPU 2"), ({0: -1}, ">= 0"), ({0: float("nan")}, "finite")],
)
def test_fake_reserve_rejects(plan: dict[int, float], match: str) -> None:
    probe = FakeProbe({0: 1000})
    probe.reserve("keep", {0: 100})
    with pytest.raises(ValueError, match=match):
        probe.reserve("keep", plan)
    assert _free(probe) == [900]  # a refused reservation leaves the old one in place


def test_fake_reservations_from_many_threads() -> None:
    probe = FakeProbe({0: 100_000})
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(200):
            probe.reserve(f"{n}-{i}", {0: 1})
            probe.status()
            if i % 2:
                probe.release(f"{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert probe.status()[0].vram_used_mb == 8 * 100


def test_this_host_without_gpu_gets_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # This test machine has no NVIDIA driver; on a GPU host the assertions are skipped.
    probe = open_probe({})
    try:
        if probe.kind == "nvml":
            pytest.skip("a real GPU is present")
        assert isinstance(probe, NoGpuProbe)
        assert probe.backend_reason and probe.backend_reason.startswith("NVML unavailable")
        assert (probe.devices(), probe.status()) == ([], [])
        probe.reserve("x", {0: 1})  # a no-op, not an error
        probe.release("x")
    finally:
        probe.close()
        probe.close()


def test_missing_nvidia_ml_py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = open_probe({})
    assert probe.kind == "none"
    assert probe.backend_reason == "NVML unavailable: nvidia-ml-py is not installed"


def test_empty_fake_env_means_real_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert open_probe({"NEURON_FAKE_GPUS": " "}).kind == "none"


# ---------------------------------------------------------------- NVML through a stub module


class StubNvml:
    """Just enough of pynvml: two GPUs, the second one without utilization/temperature support."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    def __init__(self, gpus: list[dict] | None = None, init_error: Exception | None = None):
        mib = 1024 * 1024
        self.gpus = (
            [
                dict(
                    name="NVIDIA H200",
                    uuid="GPU-aaaa-1111",
                    total=143771 * mib,
                    used=1000 * mib,
                    cc=(9, 0),
                    util=37,
                    temp=41,
                ),
                dict(
                    name=b"NVIDIA L4",
                    uuid=b"GPU-bbbb-2222",
                    total=23034 * mib,
                    used=0,
                    cc=(8, 9),
                    util=None,
                    temp=None,
                ),
            ]
            if gpus is None
            else gpus
        )
        self.init_error = init_error
        self.inits = self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.gpus[i])

    def nvmlDeviceGetName(self, h):
        return h.gpu["name"]

    def nvmlDeviceGetUUID(self, h):
        return h.gpu["uuid"]

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return h.gpu["cc"]

    def nvmlDeviceGetMemoryInfo(self, h):
        g = h.gpu
        if g.get("lost"):
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(total=g["total"], used=g["used"], free=g["total"] - g["used"])

    def nvmlDeviceGetUtilizationRates(self, h):
        if h.gpu["util"] is None:
            raise self.NVMLError_NotSupported()
        return SimpleNamespace(gpu=h.gpu["util"], memory=0)

    def nvmlDeviceGetTemperature(self, h, sensor: int) -> int:
        if h.gpu["temp"] is None:
            raise self.NVMLError_NotSupported()
        return h.gpu["temp"]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> StubNvml:
    stub = StubNvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    return stub


def test_nvml_probe_reports_devices_and_live_status(nvml: StubNvml) -> None:
    probe = open_probe({})
    assert isinstance(probe, NvmlProbe)
    assert (probe.kind, probe.backend_reason) == ("nvml", None)
    assert (probe.driver_version, probe.cuda_version) == ("570.86.15", "12.8")
    assert probe.devices() == [
        DeviceInfo(0, "NVIDIA H200", 143771, "9.0", "GPU-aaaa-1111"),
        DeviceInfo(1, "NVIDIA L4", 23034, "8.9", "GPU-bbbb-2222"),
    ]
    assert probe.status() == [
        DeviceStatus(0, 143771, 1000, 142771, 37, 41),
        DeviceStatus(1, 23034, 0, 23034, None, None),  # unsupported metrics are unknown
    ]
    nvml.gpus[1]["used"] = 20000 * 1024 * 1024  # numbers are live, not cached
    assert probe.status()[1].vram_free_mb == 3034
    probe.reserve("m", {0: 1e6})  # NVML measures real use: reservations change nothing
    assert probe.status()[0].vram_free_mb == 142771
    nvml.gpus[0]["lost"] = True
    assert [s.index for s in probe.status()] == [1]  # a lost GPU is left out
    probe.close()
    probe.close()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
    with pytest.raises(RuntimeError, match="closed"):
        probe.status()


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        ("1", ["NVIDIA L4"]),
        ("1,0", ["NVIDIA L4", "NVIDIA H200"]),
        ("GPU-bbbb", ["NVIDIA L4"]),  # a unique UUID prefix
        ("GPU-aaaa-1111,GPU-bbbb-2222", ["NVIDIA H200", "NVIDIA L4"]),
        ("0,7,1", ["NVIDIA H200"]),  # CUDA stops at the first unknown entry
        ("0,0", ["NVIDIA H200"]),
    ],
)
def test_cuda_visible_devices_renumbers(visible: str, names: list[str], nvml: StubNvml) -> None:
    probe = open_probe({"CUDA_VISIBLE_DEVICES": visible})
    assert [(d.index, d.name) for d in probe.devices()] == list(enumerate(names))
    assert [s.index for s in probe.status()] == list(range(len(names)))


@pytest.mark.parametrize("visible", ["", "-1", "GPU-", "NoDevFiles"])
def test_cuda_visible_devices_hiding_everything(visible: str, nvml: StubNvml) -> None:
    probe = open_probe({"CUDA_VISIBLE_DEVICES": visible})
    assert isinstance(probe, NoGpuProbe)
    assert probe.backend_reason == f"no NVIDIA GPUs found (CUDA_VISIBLE_DEVICES={visible!r})"
    assert nvml.shutdowns == nvml.inits == 1


def test_nvml_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = StubNvml(gpus=[])
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    probe = open_probe({})
    assert (probe.kind, probe.backend_reason) == ("none", "no NVIDIA GPUs found")
    assert stub.shutdowns == 1


def test_nvml_init_failure_is_a_cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = StubNvml(init_error=StubNvml.NVMLError_LibraryNotFound())
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    probe = open_probe({})
    assert probe.kind == "none"
    assert probe.backend_reason == "NVML unavailable: NVML Shared Library Not Found"
    assert probe.devices() == []


def test_fake_env_wins_over_nvml(nvml: StubNvml) -> None:
    assert open_probe({"NEURON_FAKE_GPUS": "0:8GiB"}).kind == "fake"
    assert nvml.inits == 0
