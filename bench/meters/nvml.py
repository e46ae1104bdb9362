"""The driver's view of a GPU through NVML (nvidia-ml-py): name, total memory, this process's usage.

NVML's per-process figure includes the CUDA context, so it is a ceiling on what a run holds, not the
allocator's view (`bench.meters.memory`). Never raises: without a driver or GPU it says why.
`nvml_columns` puts the reading in every CUDA run row (`bench.schema.NVML_COLUMNS`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from bench.schema import NVML_COLUMNS


def nvml_info(device_index: int = 0, *, uuid: str | None = None) -> dict[str, Any]:
    """The driver's view of a GPU through NVML (nvidia-ml-py), or a clean "unavailable" record.

    The GPU is NVML's `device_index`, or the one with `uuid` ("GPU-..." as NVML spells it) when given:
    under ``CUDA_VISIBLE_DEVICES`` a CUDA index is not an NVML index, a UUID names the same GPU in both.

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
        if uuid is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
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
        which = f"device {uuid}" if uuid is not None else f"device {device_index}"
        return {"status": "unavailable", "reason": f"NVML query for {which} failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def nvml_columns(device: torch.device | str) -> dict[str, Any]:
    """NVML's view of a CUDA run's GPU, now, as run-row columns (all None off CUDA).

    Read after the measured steps, before the allocator's cache is emptied: ``nvml_process_used_bytes``
    is then this process's CUDA context plus everything the caching allocator reserved for the run
    (None when the driver does not list the process, e.g. a PID namespace in a container);
    ``nvml_used_bytes`` is the whole device's use (every process). The GPU is looked up by its UUID,
    right under ``CUDA_VISIBLE_DEVICES``; if that fails, by the CUDA index (right on a one-GPU
    machine), and ``nvml_status`` says so. Never raises.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return dict.fromkeys(NVML_COLUMNS)
    index = device.index if device.index is not None else torch.cuda.current_device()
    raw_uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if raw_uuid is None:
        return nvml_row(nvml_info(index), note="by CUDA index: torch reports no UUID")
    info = nvml_info(index, uuid=f"GPU-{raw_uuid}")
    if info["status"] == "ok":
        return nvml_row(info)
    by_index = nvml_info(index)
    if by_index["status"] != "ok":
        return nvml_row(info)
    return nvml_row(by_index, note=f"by CUDA index: {info['reason']}")


def nvml_row(info: dict[str, Any], note: str = "") -> dict[str, Any]:
    """`nvml_info`'s record as the NVML_COLUMNS of a run row; `note` qualifies an "ok" status."""
    if info["status"] != "ok":
        return dict.fromkeys(NVML_COLUMNS) | {"nvml_status": f"unavailable: {info['reason']}"}
    return {
        "nvml_device_name": info["name"],
        "nvml_driver_version": info["driver_version"],
        "nvml_process_used_bytes": info["process_used_bytes"],
        "nvml_used_bytes": info["used_bytes"],
        "nvml_status": f"ok ({note})" if note else "ok",
    }
