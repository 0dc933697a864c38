"""GPU inventory through a fake pynvml module (no GPU here): never crashes."""

from types import SimpleNamespace

import pytest

from node.popw.inventory import read_inventory


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's naming)
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class FakeNvml:
    """Same function names as pynvml; byte strings like older nvidia-ml-py versions."""

    NVMLError = NVMLError

    def __init__(self, gpus=2, fail=None, unsupported=()):
        self.gpus = gpus
        self.fail = fail or {}
        self.unsupported = set(unsupported)
        self.shutdown = False

    def _maybe(self, fn):
        if fn in self.fail:
            raise self.fail[fn]
        if fn in self.unsupported:
            raise NVMLError_NotSupported("Not Supported")

    def nvmlInit(self):
        self._maybe("nvmlInit")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self):
        self._maybe("nvmlSystemGetDriverVersion")
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        self._maybe("nvmlSystemGetCudaDriverVersion")
        return 12040

    def nvmlDeviceGetCount(self):
        self._maybe("nvmlDeviceGetCount")
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i):
        self._maybe("nvmlDeviceGetHandleByIndex")
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA GeForce RTX 4090" if h == 0 else b"NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, h):
        self._maybe("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=24 << 30, used=1 << 30, free=23 << 30)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._maybe("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._maybe("nvmlDeviceGetTemperature")
        return 54

    def nvmlDeviceGetPowerUsage(self, h):
        self._maybe("nvmlDeviceGetPowerUsage")
        return 123456

    def nvmlDeviceGetEnforcedPowerManagementLimit(self, h):
        self._maybe("nvmlDeviceGetEnforcedPowerManagementLimit")
        return 450000


def test_full_inventory():
    nvml = FakeNvml()
    inv = read_inventory(nvml)
    assert inv.count == 2 and not inv.cpu_only and inv.message == ""
    assert inv.driver_version == "550.54.15" and inv.cuda_version == "12.4"
    g0, g1 = inv.gpus
    assert g0.name == "NVIDIA GeForce RTX 4090" and g1.name == "NVIDIA A100-SXM4-80GB"
    assert g0.uuid.startswith("GPU-00000000")
    assert g0.memory_total_mb == 24 * 1024 and g0.memory_used_mb == 1024
    assert g0.utilization_pct == 37 and g0.temperature_c == 54
    assert g0.power_w == pytest.approx(123.456) and g0.power_limit_w == 450.0
    assert nvml.shutdown
    assert inv.as_dict()["count"] == 2


def test_unsupported_fields_are_none():
    inv = read_inventory(
        FakeNvml(
            gpus=1,
            unsupported={
                "nvmlDeviceGetPowerUsage",
                "nvmlDeviceGetTemperature",
                "nvmlSystemGetCudaDriverVersion",
            },
        )
    )
    assert inv.count == 1 and inv.gpus[0].power_w is None and inv.gpus[0].temperature_c is None
    assert inv.cuda_version is None and inv.gpus[0].memory_total_mb == 24 * 1024


def test_no_library_is_cpu_only():
    inv = read_inventory(
        FakeNvml(fail={"nvmlInit": NVMLError_LibraryNotFound("NVML Shared Library Not Found")})
    )
    assert inv.cpu_only and "NVML unavailable" in inv.message and "Library Not Found" in inv.message
    assert inv.cpu_count >= 1


def test_no_gpu_is_cpu_only():
    inv = read_inventory(FakeNvml(gpus=0))
    assert inv.cpu_only and "no GPU" in inv.message


def test_error_while_listing_is_cpu_only_and_shuts_down():
    nvml = FakeNvml(fail={"nvmlDeviceGetHandleByIndex": NVMLError("GPU is lost")})
    inv = read_inventory(nvml)
    assert inv.cpu_only and "GPU is lost" in inv.message and nvml.shutdown


def test_os_error_loading_library_is_cpu_only():
    inv = read_inventory(FakeNvml(fail={"nvmlInit": OSError("libnvidia-ml.so.1: cannot open")}))
    assert inv.cpu_only and "not loadable" in inv.message


def test_real_pynvml_on_this_machine_never_crashes():
    inv = read_inventory()  # no GPU on development machines: a CPU-only inventory
    assert inv.cpu_only == (inv.count == 0)


def test_device_identity_for_commits():
    from node.popw.inventory import device_identity

    gpu = device_identity("torch", "cuda", read_inventory(FakeNvml()))
    assert gpu["name"] == "NVIDIA GeForce RTX 4090" and gpu["uuid"].startswith("GPU-")
    assert gpu["memory_mb"] == 24 * 1024 and gpu["driver"] == "550.54.15" and gpu["cuda"] == "12.4"
    cpu = device_identity("numpy", "AMD EPYC", read_inventory(FakeNvml(gpus=0)))
    assert cpu["backend"] == "numpy" and cpu["cpus"] >= 1 and "uuid" not in cpu
    assert len(gpu) <= 16 and len(cpu) <= 16  # fits the commit decoder's device limits


def test_old_or_broken_pynvml_never_crashes():
    class Old(FakeNvml):
        nvmlSystemGetCudaDriverVersion = None  # not a function in this "version"

        def __getattribute__(self, name):
            if name in (
                "nvmlSystemGetCudaDriverVersion",
                "nvmlDeviceGetEnforcedPowerManagementLimit",
            ):
                raise AttributeError(name)
            return super().__getattribute__(name)

    inv = read_inventory(Old())
    assert inv.count == 2 and inv.cuda_version is None and inv.gpus[0].power_limit_w is None

    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self):
            return "two"  # odd return type

    assert read_inventory(Broken()).cpu_only
    assert read_inventory(object()).cpu_only  # no NVML functions at all
