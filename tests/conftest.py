"""Shared test fixtures: the devices to run on (CPU always, CUDA where present, marked ``gpu``).

Tests use tiny tensors, for which one intra-op thread is fastest and least sensitive to a busy machine.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()

#: "cpu" always; "cuda" only where present (not a skipped case on machines without it).
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if HAS_CUDA else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test that takes ``device`` runs on "cpu" and, where CUDA is present, on "cuda"."""
    return torch.device(request.param)
