"""The one seed scheme (bench/data/seeds.py): disjoint streams within a run and across run seeds."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from bench.data import seeds
from bench.harness.run import run_spec
from bench.harness.specs import RunSpec

PER_RUN = [name for name, s in seeds.STREAMS.items() if s.per_run]
FIXED = [name for name, s in seeds.STREAMS.items() if not s.per_run]
LIBRARY = Path(__file__).resolve().parents[1] / "bench"


def _draws(seed: int, name: str, n: int = 8) -> tuple[int, ...]:
    return tuple(torch.randint(0, 2**62, (n,), generator=seeds.generator(seed, name)).tolist())


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_no_two_streams_of_one_run_coincide(seed: int) -> None:
    derived = {name: seeds.stream_seed(seed, name) for name in seeds.STREAMS}
    assert len(set(derived.values())) == len(derived), derived
    draws = {name: _draws(seed, name) for name in seeds.STREAMS}
    for a, b in itertools.combinations(draws, 2):
        assert draws[a] != draws[b], f"streams {a} and {b} of seed {seed} draw the same numbers"


def test_two_seeds_share_only_the_fixed_test_streams() -> None:
    for s, t in itertools.combinations(range(6), 2):
        run_s = {seeds.stream_seed(s, name) for name in PER_RUN}
        run_t = {seeds.stream_seed(t, name) for name in PER_RUN}
        assert not run_s & run_t, (s, t)
        fixed = {seeds.stream_seed(s, name) for name in FIXED}
        assert fixed == {seeds.stream_seed(t, name) for name in FIXED}  # the same test set for all
        assert not fixed & (run_s | run_t)  # and never a run's own stream
        assert not {_draws(s, n) for n in PER_RUN} & {_draws(t, n) for n in PER_RUN}


def test_bad_stream_or_seed_raises_naming_what_was_expected() -> None:
    with pytest.raises(KeyError, match="unknown random stream 'noise'.*batch_order"):
        seeds.stream_seed(0, "noise")
    with pytest.raises(ValueError, match="non-negative int"):
        seeds.stream_seed(-1, "batch_order")


def test_a_training_run_asks_for_every_stream_and_only_through_the_scheme(monkeypatch) -> None:
    """A short MRI run (phases and validation included) derives every stream it uses from bench.data.seeds."""
    asked: dict[str, set[int]] = {}
    real = seeds.stream_seed

    def recording(seed: int, name: str) -> int:
        asked.setdefault(name, set()).add(seed)
        return real(seed, name)

    monkeypatch.setattr(seeds, "stream_seed", recording)
    spec = RunSpec(
        task="mri", model="lu", n_iters=1, reg_depth=2, reg_width=4, batch_size=2, image_size=16,
        n_train=4, n_test=2, n_val=2, steps=2, val_every=1, timed_steps=0, warmup_steps=1, seed=3,
        device="cpu",
    )  # fmt: skip
    row = run_spec(spec)
    assert row["status"] == "ok", row["error"]
    assert set(asked) == set(seeds.STREAMS)
    assert all(found == {3} for name, found in asked.items() if seeds.STREAMS[name].per_run), asked


def test_library_code_has_no_raw_seed_offsets() -> None:
    offset = re.compile(r"seed\s*[-+*]\s*\d")
    hits = [
        f"{path.relative_to(LIBRARY)}:{i}"
        for path in LIBRARY.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if offset.search(line)
    ]
    assert hits == []
