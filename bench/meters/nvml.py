"""The driver's view of a GPU through NVML (nvidia-ml-py): name, total memory, this process's usage.

NVML's per-process figure includes the CUDA context, so it is a ceiling on what a run holds, not the
allocator's view (`bench.meters.memory`). Never raises: without a driver or GPU it says why.
"""

from __future__ import annotations

import os
from typing import Any


def nvml_info(device_index: int = 0) -> dict[str, Any]:
    """The driver's view of a GPU through NVML (nvidia-ml-py), or a clean "unavailable" record.

    Returns ``{"status": "ok", "name", "driver_version", "total_bytes", "used_bytes",
    "process_used_bytes"}`` (``process_used_bytes`` is this process's usage, CUDA context included,
    or None when the driver does not report it), else ``{"status": "unavailable", "reason": str}``
    when nvidia-ml-py is missing, no driver/GPU is present (nvmlInit raises NVMLError_LibraryNotFound)
    or any NVML call fails. Never raises.
    """
    try:
        import pynvml
    except ImportError as exc:
        return {"status": "unavailable", "reason": f"nvidia-ml-py not importable: {exc}"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"status": "unavailable", "reason": f"nvmlInit failed: {exc}"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        process_bytes = None
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    process_bytes = int(proc.usedGpuMemory)
        except pynvml.NVMLError:
            process_bytes = None
        return {
            "status": "ok",
            "name": _as_str(pynvml.nvmlDeviceGetName(handle)),
            "driver_version": _as_str(pynvml.nvmlSystemGetDriverVersion()),
            "total_bytes": int(memory.total),
            "used_bytes": int(memory.used),
            "process_used_bytes": process_bytes,
        }
    except pynvml.NVMLError as exc:
        return {"status": "unavailable", "reason": f"NVML query for device {device_index} failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
