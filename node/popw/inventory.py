"""GPU inventory through NVML (nvidia-ml-py, ``import pynvml``).

``read_inventory()`` never raises: no NVML library, no driver, no GPU or an NVML error
gives a CPU-only inventory whose ``message`` says why. A per-device field NVML cannot
report (e.g. power on some boards: NVMLError_NotSupported) is ``None``, not an error.
The ``pynvml`` module is injectable so tests run the NVML path against a fake module.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

NVML_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_mb: int | None
    memory_used_mb: int | None
    utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class Inventory:
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    cpu: str = ""
    cpu_count: int = 0
    message: str = ""  # why the inventory is CPU-only (empty when NVML answered)

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["count"] = self.count
        return d


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_version(v: int) -> str:
    """NVML reports CUDA 12.4 as 12040."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _nvml_error_type(nvml: Any) -> type[BaseException]:
    err = getattr(nvml, "NVMLError", None)
    return err if isinstance(err, type) and issubclass(err, BaseException) else Exception


def _optional(nvml: Any, fn: str, *args: Any) -> Any:
    """One NVML query that may be unsupported on this board: None instead of an error."""
    try:
        return getattr(nvml, fn)(*args)
    except (_nvml_error_type(nvml), AttributeError) as exc:  # AttributeError: older pynvml
        log.debug("nvml_query_failed fn=%s error=%s", fn, exc)
        return None


def _gpu(nvml: Any, index: int) -> GpuInfo:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = _optional(nvml, "nvmlDeviceGetMemoryInfo", h)
    util = _optional(nvml, "nvmlDeviceGetUtilizationRates", h)
    power = _optional(nvml, "nvmlDeviceGetPowerUsage", h)  # milliwatts
    limit = _optional(nvml, "nvmlDeviceGetEnforcedPowerManagementLimit", h)
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(h)),
        uuid=_text(nvml.nvmlDeviceGetUUID(h)),
        memory_total_mb=None if mem is None else int(mem.total) // (1 << 20),
        memory_used_mb=None if mem is None else int(mem.used) // (1 << 20),
        utilization_pct=None if util is None else int(util.gpu),
        temperature_c=_optional(nvml, "nvmlDeviceGetTemperature", h, NVML_TEMPERATURE_GPU),
        power_w=None if power is None else power / 1000.0,
        power_limit_w=None if limit is None else limit / 1000.0,
    )


def _cpu_only(message: str) -> Inventory:
    return Inventory(cpu=_cpu_name(), cpu_count=os.cpu_count() or 1, message=message)


def read_inventory(nvml: Any | None = None) -> Inventory:
    """Every GPU NVML sees, or a CPU-only inventory with the reason. Never raises."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return _cpu_only("nvidia-ml-py (pynvml) is not installed: CPU only")
    err = _nvml_error_type(nvml)
    try:
        nvml.nvmlInit()
    except err as exc:
        return _cpu_only(f"NVML unavailable ({exc}): no NVIDIA driver or GPU, CPU only")
    except OSError as exc:  # some versions surface a missing libnvidia-ml.so this way
        return _cpu_only(f"NVML library not loadable ({exc}): CPU only")
    except Exception as exc:
        return _cpu_only(f"NVML unusable ({type(exc).__name__}: {exc}): CPU only")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = _optional(nvml, "nvmlSystemGetCudaDriverVersion")
        count = int(nvml.nvmlDeviceGetCount())
        gpus = [_gpu(nvml, i) for i in range(count)]
    except err as exc:
        return _cpu_only(f"NVML error while listing GPUs ({exc}): CPU only")
    except Exception as exc:  # a pynvml without a function, odd return types, ...
        log.warning("nvml_unexpected_failure error=%r", exc)
        return _cpu_only(f"unexpected NVML failure ({type(exc).__name__}: {exc}): CPU only")
    finally:
        try:
            nvml.nvmlShutdown()
        except err:
            pass
    if not gpus:
        return _cpu_only("NVML reports no GPU: CPU only")
    return Inventory(
        gpus=gpus,
        driver_version=driver,
        cuda_version=None if cuda is None else _cuda_version(int(cuda)),
        cpu=_cpu_name(),
        cpu_count=os.cpu_count() or 1,
    )


def device_identity(
    backend: str, device: str, inv: Inventory | None = None
) -> dict[str, str | int]:
    """What a commit says about the device that computed it (the commit's ``device`` map).

    On a GPU backend: the first GPU's NVML name, UUID, memory and the driver and CUDA
    versions; on CPU: the CPU model and core count. Informational: the verdict rests on
    the checker's own timing and the openings, never on these claims.
    """
    inv = inv if inv is not None else read_inventory()
    ident: dict[str, str | int] = {"backend": backend[:64], "name": device[:256]}
    if backend != "numpy" and inv.gpus:
        g = inv.gpus[0]
        ident.update(name=g.name[:256], uuid=g.uuid[:256], gpus=inv.count)
        if g.memory_total_mb is not None:
            ident["memory_mb"] = g.memory_total_mb
        if inv.driver_version:
            ident["driver"] = inv.driver_version[:64]
        if inv.cuda_version:
            ident["cuda"] = inv.cuda_version[:16]
    else:
        ident["cpus"] = inv.cpu_count
    return ident
