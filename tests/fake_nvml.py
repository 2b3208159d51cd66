"""A stand-in for `pynvml` (same functions, same return shapes) for a machine with no GPU.

Selected with MODELBERTH_NVML_MODULE=fake_nvml (tests/ on PYTHONPATH). The GPUs come from the
JSON file named by FAKE_NVML_STATE: {"gpus": [{"name", "total_mb", "base_used_mb",
"utilization"}]}. Like the real driver it reports per-process memory: any live process whose
environment has FAKE_VRAM_MB uses that much on each GPU listed in its CUDA_VISIBLE_DEVICES;
one with FAKE_VRAM_FILE uses what that file says now (see _vram_mb).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

MB = 1024 * 1024


class NVMLError(Exception):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


_session = {"initialised": False}


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None


def _state() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["FAKE_NVML_STATE"]).read_text())
    return data


def _check() -> None:
    if not _session["initialised"]:
        raise NVMLError_Uninitialized("Uninitialized")


def nvmlInit() -> None:
    _state()
    _session["initialised"] = True


def nvmlShutdown() -> None:
    _session["initialised"] = False


def nvmlDeviceGetCount() -> int:
    _check()
    return len(_state()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _check()
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return str(_state()["gpus"][handle].get("name", "Fake GPU"))


def _users(handle: int) -> list[_Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            used = _vram_mb(env)
            if used is None or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            devices = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")
            if str(handle) in devices:
                found.append(_Process(proc.pid, int(used * MB)))
        except (psutil.Error, OSError, ValueError):
            continue
    return found


def _vram_mb(env: dict[str, str]) -> float | None:
    """The MB a process uses on each of its GPUs; None: it uses none. A process whose usage
    changes as it runs (fake_vllm.py, asleep and awake) names a file holding its MB in
    FAKE_VRAM_FILE, read at each call (not there yet: 0); else FAKE_VRAM_MB is fixed."""
    if "FAKE_VRAM_FILE" in env:
        try:
            return float(Path(env["FAKE_VRAM_FILE"]).read_text() or 0)
        except FileNotFoundError:
            return 0.0
    return float(env["FAKE_VRAM_MB"]) if "FAKE_VRAM_MB" in env else None


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    _check()
    gpu = _state()["gpus"][handle]
    total = int(gpu["total_mb"] * MB)
    used = int(gpu.get("base_used_mb", 0) * MB) + sum(p.usedGpuMemory or 0 for p in _users(handle))
    return _Memory(total=total, free=max(total - used, 0), used=used)


def nvmlDeviceGetUtilizationRates(handle: int) -> _Utilization:
    _check()
    return _Utilization(gpu=int(_state()["gpus"][handle].get("utilization", 0)), memory=0)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[_Process]:
    _check()
    return _users(handle)


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[_Process]:
    _check()
    return []
