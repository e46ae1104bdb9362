"""The memory estimate of a run: will it fit under `--memory-budget`?

`MemoryEstimate` bounds a whole run's peak of device memory (host memory on CPU) from allocator-level
meters taken by `bench.harness.run` (the set-up, the warm-up, a warm step, one evaluation batch);
`step_factor` is the margin for steps whose memory changes as training goes on; `BudgetExceeded`
stops a run whose estimate is over the budget (status ``over_budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness.specs import RunSpec
from bench.schema import SOLVER_MODELS


class BudgetExceeded(RuntimeError):
    """The estimated memory of the run is over the --memory-budget (status ``over_budget``)."""


#: Device memory a CUDA process holds outside the caching allocator's allocated bytes, which are all
#: that the allocator-level peaks count: the CUDA context (driver state and the kernel images it
#: loads), the cuBLAS and cuDNN handles with their workspaces, and the caching allocator's own slack
#: (blocks rounded up, segments reserved but not handed out). The context alone is several hundred MiB
#: on current GPUs and grows as libraries load their kernels, so one GiB is added to every CUDA
#: estimate. Off CUDA the estimate is host memory, and the process's own overhead is not counted.
CUDA_OVERHEAD_BYTES = 2**30

#: Extra fraction of the measured step peak for models that solve fixed points (`SOLVER_MODELS`). Such
#: a step allocates per solver iteration (Anderson's mixing terms from the second iteration on, another
#: path once some samples of a batch have converged and others not), and how many iterations its
#: solves take changes as the weights train, so a later step can peak above the measured warm one.
SOLVER_STEP_MARGIN = 0.25


def step_factor(spec: RunSpec, stats: Sequence[Any]) -> float:
    """What the estimate multiplies the measured step peak by: 1 for models without fixed-point solves,
    ``1 + SOLVER_STEP_MARGIN`` for those with; with ``backward = "unrolled"`` (whose graph grows with
    every forward iteration) also ``max_iter`` over the fewest forward iterations of a measured solve
    (`stats`: the warm step's DEQ stats; none measured counts as one iteration)."""
    if spec.model not in SOLVER_MODELS:
        return 1.0
    factor = 1.0 + SOLVER_STEP_MARGIN
    if spec.backward == "unrolled" and spec.max_iter is not None:
        fewest = min((int(st.forward.iters) for st in stats), default=1)
        factor *= spec.max_iter / max(1, fewest)
    return factor


@dataclass(frozen=True)
class MemoryEstimate:
    """A conservative estimate of a run's whole peak of device memory, from allocator-level meters.

    setup_peak_bytes: the peak of building the task, the model and the held-out measurements, and of
    the warm-up steps after it (``max(build peak, build end + warm-up peak)``): task building can
    dwarf a step (the CT operator's matrix is assembled through temporaries many times its size).
    resident_bytes: what is allocated between steps: what the build left (the task's images and
    cached measurements, the operator, the model, the measurement batch, the data sources a task
    caches, on CPU the copy of the initial state), the optimiser state, and what the measured steps
    left alive. step_bytes: the allocator-level peak of a warm step (``alloc_peak_bytes``) or of one
    evaluation batch, whichever is larger, times `step_factor`. batch_bytes: what the training loop
    holds beside a step (its own batch of images and measurements, its batch order, on CPU with
    patience the copy of the best weights; 0 for a run that does not train). overhead_bytes:
    `CUDA_OVERHEAD_BYTES` on CUDA, else 0.
    """

    setup_peak_bytes: int
    resident_bytes: int
    step_bytes: int
    batch_bytes: int
    overhead_bytes: int

    @property
    def estimated_bytes(self) -> int:
        steps = self.resident_bytes + self.step_bytes + self.batch_bytes
        return max(self.setup_peak_bytes, steps) + self.overhead_bytes

    def describe(self) -> str:
        """The estimate's terms in words, for the message of an over-budget row."""
        cuda = f" + CUDA overhead {self.overhead_bytes}" if self.overhead_bytes else ""
        return (
            f"the larger of the set-up peak {self.setup_peak_bytes} and resident {self.resident_bytes}"
            f" + step {self.step_bytes} + training batch {self.batch_bytes}{cuda}"
        )
