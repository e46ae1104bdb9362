"""ARCHITECTURE.md's layout section names exactly the Python files of operators/, models/ and bench/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("operators", "models", "bench")


def layout_paths(text: str) -> set[str]:
    """The .py paths named in the code block of the '## Layout' section."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return set(re.findall(r"(?<![\w/])((?:operators|models|bench)/[\w/]*\.py)", block))


def test_layout_finder_reads_only_the_layout_block() -> None:
    text = "## A\nbench/x.py\n## Layout\nsee bench/y.py\n"
    text += "```\n  bench/z.py  z\n bench/a/b.py, bench/c.py\n```\n"
    text += "## B\nbench/w.py\n"
    assert layout_paths(text) == {"bench/z.py", "bench/a/b.py", "bench/c.py"}


def test_architecture_layout_matches_the_files() -> None:
    named = layout_paths((ROOT / "ARCHITECTURE.md").read_text())
    present = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert sorted(present - named) == [], "files missing from ARCHITECTURE.md's layout"
    assert sorted(named - present) == [], "layout names files that do not exist"
