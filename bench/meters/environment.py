"""The environment stamp written with every result row: code version, library versions, device, time."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.schema import ENV_COLUMNS

_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    """Output of a git command run in this package's directory, or None if git or the repo is absent."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_sha() -> str:
    """HEAD of the git checkout holding this package, "-dirty" appended when tracked files changed.

    Untracked files (e.g. results) do not make the tree dirty. "unknown" outside a git checkout.
    """
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if status else sha


def device_name(device: torch.device | str | None = None) -> str:
    """The CUDA device's name for a CUDA device (default: CUDA if available), else the CPU's."""
    device = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if use_cuda:
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment_stamp(device: torch.device | str | None = None) -> dict[str, str]:
    """git_sha, torch_version, cuda_version ("none" without CUDA build), device, python_version,
    hostname and timestamp (UTC, ISO 8601) of the current process."""
    return {
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        "device": device_name(device),
        "python_version": platform.python_version() or sys.version.split()[0],
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def environment_columns(device: torch.device | str | None = None) -> dict[str, str]:
    """The stamp's run-row columns (`bench.schema.ENV_COLUMNS`), the one place a row takes them from."""
    stamp = environment_stamp(device)
    return {k: stamp[k] for k in ENV_COLUMNS}
