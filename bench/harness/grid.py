"""One grid of a sweep file (its checked axes, key -> values): its runs in product order, each
normalised and checked.

The reference for one run is `make_spec` (build the RunSpec, normalise it, check the model config,
the data and `check_spec`). Running it for every run of a big grid costs a normalisation and several
checks per run, although a grid has few distinct values per axis. So an axis of a field in
`bench.harness.specs.PER_VALUE_FIELDS` (a seed, a learning rate, ...: normalised unchanged, checked on
its own) is *free*, and every other key is *bound*. `grid_runs` calls `make_spec` for a run whose
bound values were not seen yet, or with a free value not seen in a valid run yet; every other run is
its bound values' normalised spec with the free values in place, its run id joined from cached
pieces of canonical JSON (`bench.harness.specs.id_pieces`). Because a free value's validity does not
depend on the rest, the first invalid run still meets `make_spec`, which raises its error: the runs,
their ids, order and errors are those of `make_spec` on every run.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import problem
from bench.harness.checks import check_spec
from bench.harness.specs import (
    PER_VALUE_FIELDS,
    SPEC_FIELDS,
    RunSpec,
    SweepError,
    config_fields,
    id_piece,
    id_pieces,
    normalise,
    prechecked,
    run_id_of_pieces,
)

#: A sweep key naming an operator setting: ``operator.KEY``.
OPERATOR_PREFIX = "operator."


# ----------------------------------------------------------------------------- one run


@functools.lru_cache(maxsize=64)
def _check_data(data: str, root: str, split: str, n_train: int, n_val: int, n_test: int) -> None:
    """Check a dataset root once per sweep load (the sizes may need more of it than one spec)."""
    problem.check_data(data, root, split, n_train, n_val, n_test)


def forget_data_checks() -> None:
    """Forget the dataset roots checked so far (a new sweep load sees them as they are now)."""
    _check_data.cache_clear()


def make_spec(where: str, values: Mapping[str, Any], default_part: str) -> RunSpec:
    """The normalised, checked spec of one run of a grid (key -> value); SweepError naming `where`."""
    from models import MODELS

    for required in ("task", "model"):
        if required not in values:
            raise SweepError(f"{where}: missing required key {required!r}")
    cfg_fields = config_fields(values["model"])
    spec_kw = {k: v for k, v in values.items() if k in SPEC_FIELDS}
    extra = {k: v for k, v in values.items() if k not in SPEC_FIELDS and k in cfg_fields}
    settings = {  # the keys this task's operator takes (the grid check made sure some task takes each)
        k[len(OPERATOR_PREFIX) :]: v
        for k, v in values.items()
        if k.startswith(OPERATOR_PREFIX) and problem.operator_takes(values["task"], k[len(OPERATOR_PREFIX) :])
    }
    spec_kw.setdefault("part", default_part)
    try:
        spec = normalise(
            RunSpec(
                **spec_kw, model_extra=tuple(sorted(extra.items())), operator=tuple(sorted(settings.items()))
            )
        )
        if spec.data:
            sizes = (spec.n_train or 0, spec.n_val or 0, spec.n_test or 0)
            _check_data(spec.data, spec.data_root, spec.data_split, *sizes)
    except ValueError as err:
        raise SweepError(f"{where}: {err}") from None
    config_cls = MODELS[spec.model].config_cls
    try:
        config_cls(**spec.model_kwargs())
    except (TypeError, ValueError, KeyError) as err:
        raise SweepError(f"{where}: model {spec.model!r} rejects its config: {err}") from None
    try:
        check_spec(spec)
    except ValueError as err:
        raise SweepError(f"{where}: {err}") from None
    return spec


# ----------------------------------------------------------------------------- one grid, by parts


def _picker(positions: Sequence[int]) -> Callable[[tuple[int, ...]], tuple[int, ...]]:
    """A function picking these positions of a tuple, always as a tuple."""
    if not positions:
        return lambda combo: ()
    if len(positions) == 1:
        (only,) = positions
        return lambda combo: (combo[only],)
    return operator.itemgetter(*positions)


@dataclass(frozen=True)
class _Bound:
    """What the runs sharing one grid's bound values share: the normalised spec's fields and its run
    id's canonical JSON cut around the free fields (len(free) + 1 segments, in key order)."""

    fields: dict[str, Any]
    segments: tuple[str, ...]

    @classmethod
    def of(cls, spec: RunSpec, free: frozenset[str]) -> _Bound:
        segments: list[str] = []
        current: list[str] = []
        for name, piece in id_pieces(spec).items():
            if name in free:
                segments.append("".join(current))
                current = []
            else:
                current.append(piece)
        segments.append("".join(current))
        return cls({name: getattr(spec, name) for name in SPEC_FIELDS}, tuple(segments))


def grid_runs(
    where: str, axes: Mapping[str, list[Any]], default_part: str, seen: set[str]
) -> Iterator[RunSpec]:
    """The runs of one grid in product order whose run id is not in `seen` (which they join)."""
    keys = list(axes)
    values = [axes[k] for k in keys]
    # Free axes in the canonical JSON's key order (sorted by name), as the id segments expect.
    free = sorted((k, i) for i, k in enumerate(keys) if k in PER_VALUE_FIELDS and len(values[i]) > 1)
    free_names = [k for k, _ in free]
    free_pos = [i for _, i in free]
    bound_of = _picker([i for i in range(len(keys)) if i not in free_pos])
    free_of = _picker(free_pos)
    free_pieces = [[id_piece(k, v) for v in values[i]] for k, i in free]
    unseen = [set(range(len(values[i]))) for i in free_pos]  # free values no valid run had yet
    n_unseen = sum(len(s) for s in unseen)
    bound: dict[tuple[int, ...], _Bound] = {}
    for combo in itertools.product(*(range(len(v)) for v in values)):
        key = bound_of(combo)
        shared = bound.get(key)
        picked = free_of(combo)
        if shared is None or (n_unseen and any(i in s for i, s in zip(picked, unseen, strict=True))):
            spec = make_spec(where, {k: values[p][combo[p]] for p, k in enumerate(keys)}, default_part)
            for i, s in zip(picked, unseen, strict=True):
                if i in s:
                    s.discard(i)
                    n_unseen -= 1
            if shared is None:
                bound[key] = _Bound.of(spec, frozenset(free_names))
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                yield spec
            continue
        pieces = [shared.segments[0]]
        for j, i in enumerate(picked):
            pieces.append(free_pieces[j][i])
            pieces.append(shared.segments[j + 1])
        run_id = run_id_of_pieces(pieces)
        if run_id in seen:
            continue
        seen.add(run_id)
        fields = shared.fields.copy()
        for j, i in enumerate(picked):
            fields[free_names[j]] = values[free_pos[j]][i]
        yield prechecked(fields, run_id)
