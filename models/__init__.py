"""Reconstructors for linear inverse problems, their regularisers and fixed-point machinery.

Registry :data:`MODELS` maps a name to a :class:`ModelEntry` (its frozen config dataclass and its
``nn.Module`` class):

- ``lu``: K learned proximal-gradient steps with a DnCNN per step (``models/lu.py``);
- ``lu_ckpt``: the same with per-step gradient checkpointing;
- ``luser``: K outer steps whose regulariser is a shallow equilibrium cell solved by ``deq_solve``
  (``models/luser.py``);
- ``deq``: the whole proximal-gradient iteration as one fixed point (``models/deq_model.py``);
- ``classical``: learning-free references (Landweber, FBP, zero-filled, Tikhonov, adjoint).

``build_model(name, op, **cfg)`` builds one; every model is called as ``model(y, op) -> Recon`` and reads
the operator only for shapes (and ``||A||^2`` at construction), never storing it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from models.base import Recon
from models.classical import Classical, ClassicalConfig
from models.deq_model import DEQModel, DEQModelConfig
from models.lu import LU, LUCheckpointed, LUConfig
from models.luser import LUSER, LUSERConfig

if TYPE_CHECKING:
    from operators.base import LinearOperator

__all__ = ["MODELS", "ModelEntry", "Recon", "build_config", "build_model", "count_params"]


@dataclass(frozen=True)
class ModelEntry:
    """A model's config dataclass and its module class, built as ``model_cls(config, op)``."""

    config_cls: type
    model_cls: type[nn.Module]


MODELS: dict[str, ModelEntry] = {
    "lu": ModelEntry(LUConfig, LU),
    "lu_ckpt": ModelEntry(LUConfig, LUCheckpointed),
    "luser": ModelEntry(LUSERConfig, LUSER),
    "deq": ModelEntry(DEQModelConfig, DEQModel),
    "classical": ModelEntry(ClassicalConfig, Classical),
}


def _coerce(name: str, value: Any, expected: Any) -> Any:
    """Check ``value`` against a config field type (int, float, bool, str); ints are accepted as floats."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool):
        raise TypeError(f"config key {name!r} expects {expected.__name__}, got bool")
    if isinstance(expected, type) and not isinstance(value, expected):
        got = f"{type(value).__name__} ({value!r})"
        raise TypeError(f"config key {name!r} expects {expected.__name__}, got {got}")
    return value


def build_config(name: str, **cfg: Any) -> Any:
    """The config dataclass of model ``name`` with ``cfg`` overriding its defaults.

    Raises ``KeyError`` (unknown model, listing the known ones), ``ValueError`` (unknown config key,
    listing the known ones, or an out-of-range value) and ``TypeError`` (a value of the wrong type).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    config_cls = MODELS[name].config_cls
    hints = typing.get_type_hints(config_cls)
    known = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for model {name!r}; known keys: {known}")
    return config_cls(**{key: _coerce(key, value, hints[key]) for key, value in cfg.items()})


def build_model(name: str, op: LinearOperator, **cfg: Any) -> nn.Module:
    """Build model ``name`` for operator ``op`` (read for shapes and ``||A||^2`` only) with config ``cfg``.

    The model is put on the operator's device and real dtype (float32 or float64).
    """
    config = build_config(name, **cfg)  # checks the name first
    model = MODELS[name].model_cls(config, op)
    return model.to(device=op.device, dtype=op.real_dtype)


def count_params(model: nn.Module) -> int:
    """Number of trainable scalars (shared parameters counted once); 0 for ``classical``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
