"""operators: the forward models ``A`` of the benchmark's inverse problems.

``OPERATORS`` maps a task's operator name to its class; every class is constructible with keyword
arguments alone, each with a documented default (``build_operator("ct")`` is a 128 x 128, 60-angle
parallel-beam CT). See ``operators/base.py`` for the ``LinearOperator`` contract.
"""

from __future__ import annotations

from typing import Any

from operators.base import LinearOperator, inner
from operators.blur import Blur, gaussian_kernel
from operators.ct import ParallelBeamCT, limited_angles, uniform_angles
from operators.masks import MASKS, equispaced_mask, gaussian_mask, random_mask
from operators.mri import SingleCoilMRI, fft2c, ifft2c
from operators.noise import gaussian_noise
from operators.settings import Setting, check_settings

OPERATORS: dict[str, type[LinearOperator]] = {"blur": Blur, "ct": ParallelBeamCT, "mri": SingleCoilMRI}


def build_operator(name: str, **kwargs: Any) -> LinearOperator:
    """Construct ``OPERATORS[name](**kwargs)``; an unknown name raises ``KeyError`` listing the known ones."""
    if name not in OPERATORS:
        raise KeyError(f"unknown operator {name!r}; known operators: {sorted(OPERATORS)}")
    return OPERATORS[name](**kwargs)


def check_operator_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of operator ``name`` checked against its class's ``SETTINGS``
    (``operators/settings.py``), in canonical form; errors name the operator, key and what is accepted."""
    if name not in OPERATORS:
        raise KeyError(f"unknown operator {name!r}; known operators: {sorted(OPERATORS)}")
    return check_settings(f"operator {name!r}", OPERATORS[name].SETTINGS, kwargs)


__all__ = [
    "MASKS",
    "OPERATORS",
    "Blur",
    "LinearOperator",
    "ParallelBeamCT",
    "Setting",
    "SingleCoilMRI",
    "build_operator",
    "check_operator_kwargs",
    "equispaced_mask",
    "fft2c",
    "gaussian_kernel",
    "gaussian_mask",
    "gaussian_noise",
    "ifft2c",
    "inner",
    "limited_angles",
    "random_mask",
    "uniform_angles",
]
