"""GPUs through NVML (nvidia-ml-py's `pynvml`), as plain readings.

The NVML module is `pynvml` unless MODELBERTH_NVML_MODULE names another module with the same
functions and return shapes (the tests' fake, since this machine has no GPU). No NVML library
or no GPU gives an empty list, never an error.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from loguru import logger

NVML_MODULE_ENV = "MODELBERTH_NVML_MODULE"


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float | None
    process_memory: dict[int, int] = field(default_factory=dict)  # pid -> bytes


class Nvml:
    """Opened once; `read()` is blocking (call it from a thread)."""

    def __init__(self, module_name: str | None = None) -> None:
        self.module_name = module_name or os.environ.get(NVML_MODULE_ENV, "pynvml")
        self._nvml: ModuleType | None = None
        self.error: str | None = None
        self._open()

    def _open(self) -> None:
        try:
            nvml = importlib.import_module(self.module_name)
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses, ImportError: no GPU here
            self.error = f"{type(exc).__name__}: {exc}"
            logger.info("NVML unavailable ({}): no GPUs will be reported", self.error)
            return
        self._nvml = nvml

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def read(self) -> list[GpuReading]:
        nvml = self._nvml
        if nvml is None:
            return []
        readings = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            readings.append(
                GpuReading(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    utilization_percent=_utilization(nvml, handle),
                    process_memory=_processes(nvml, handle),
                )
            )
        return readings

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # shutting down: nothing left to do about it
                logger.debug("nvmlShutdown: {}", exc)
            self._nvml = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _utilization(nvml: Any, handle: Any) -> float | None:
    try:
        return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # not supported on every device
        return None


def _processes(nvml: Any, handle: Any) -> dict[int, int]:
    usage: dict[int, int] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            processes = getattr(nvml, getter)(handle)
        except Exception:  # not supported on every device
            continue
        for process in processes:
            used = process.usedGpuMemory
            if used is not None:  # None: NVML cannot tell (e.g. under WDDM)
                usage[int(process.pid)] = usage.get(int(process.pid), 0) + int(used)
    return usage
