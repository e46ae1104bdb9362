"""NVML's view in the run row: the GPU found by UUID, this process's entry, the columns off CUDA."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from bench.meters.nvml import nvml_columns, nvml_info, nvml_row
from bench.schema import COLUMNS, NVML_COLUMNS


class _FakeNVML:
    """Just enough of pynvml for nvml_info: one GPU known by UUID, this process and another using it."""

    class NVMLError(Exception):
        pass

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.asked: list[tuple[str, object]] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.asked.append(("uuid", uuid))
        if uuid != self.uuid:
            raise self.NVMLError("Not Found")
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.asked.append(("index", index))
        return "handle"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 2**30, used=7 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=2**30),
                SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * 2**29)]  # fmt: skip

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA H200"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86"


def test_nvml_info_finds_the_gpu_by_uuid_and_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNVML("GPU-1234")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    info = nvml_info(5, uuid="GPU-1234")
    assert fake.asked == [("uuid", "GPU-1234")]  # the UUID, not the (CUDA) index
    assert info["process_used_bytes"] == 3 * 2**29  # this process's entry, not the other's
    assert nvml_row(info) == {
        "nvml_device_name": "NVIDIA H200",
        "nvml_driver_version": "570.86",
        "nvml_process_used_bytes": 3 * 2**29,
        "nvml_used_bytes": 7 * 2**30,
        "nvml_status": "ok",
    }
    missing = nvml_info(0, uuid="GPU-9999")
    assert missing["status"] == "unavailable" and "GPU-9999" in missing["reason"]
    assert nvml_row(missing)["nvml_status"].startswith("unavailable: ")
    assert nvml_row(missing)["nvml_process_used_bytes"] is None


def test_nvml_columns_are_empty_off_cuda() -> None:
    assert nvml_columns("cpu") == dict.fromkeys(NVML_COLUMNS)
    assert set(NVML_COLUMNS) <= set(COLUMNS)  # they are run-row columns
