"""`python -m bench SUBCOMMAND ...`: the command line.

Subcommands are dispatched through `SUBCOMMANDS`, a dict name -> "module" or "module:ATTR". The
module (or its attribute ATTR) must provide

    add_arguments(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int          # the exit code

Only the chosen subcommand's module is imported, so `sweep` never imports pandas or matplotlib and a
subcommand whose module does not exist yet fails with a clear message (exit 2). `plot`, `report` and
`gate` live in bench/analysis/plots.py, bench/analysis/report.py and bench/gate.py.

The `sweep` command lives in bench/harness/sweep.py, `_run-one` (the body of one run's fresh process,
started by the launchers) here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Subcommand name -> "module" or "module:ATTR" exposing add_arguments(parser) and main(args) -> int.
SUBCOMMANDS: dict[str, str] = {
    "sweep": "bench.harness.sweep",
    "plot": "bench.analysis.plots",
    "report": "bench.analysis.report",
    "gate": "bench.gate",
    "gpu-check": "bench.gpu_check",
    "_run-one": "bench.cli:RUN_ONE",  # internal: one run in this process (used by the launchers)
}


@dataclass(frozen=True)
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- _run-one (internal)


def _run_one_add_arguments(p: argparse.ArgumentParser) -> None:
    from bench.harness.sweep import size_arg

    p.add_argument("--spec-json", required=True, help="bench.harness.specs.spec_to_json(spec)")
    p.add_argument("--row-out", required=True, help="where to write the row as JSON")
    p.add_argument("--memory-budget", type=size_arg)


def _run_one_main(args: argparse.Namespace) -> int:
    from bench.harness.children import die_with_parent, log_progress_to_stdout, write_child_result
    from bench.harness.run import run_with_curve
    from bench.harness.specs import spec_from_json

    die_with_parent()
    log_progress_to_stdout()
    row, curve = run_with_curve(spec_from_json(args.spec_json), memory_budget_bytes=args.memory_budget)
    write_child_result(Path(args.row_out), row, curve)  # atomic: the parent sees a whole row or none
    return 0


RUN_ONE = Command(_run_one_add_arguments, _run_one_main)


# ----------------------------------------------------------------------------- dispatch


def _resolve(name: str) -> Any:
    target = SUBCOMMANDS[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise LookupError(
            f"subcommand {name!r} is not available: module {module_name} does not exist yet"
        ) from None
    obj = getattr(module, attr) if attr else module
    for needed in ("add_arguments", "main"):
        if not callable(getattr(obj, needed, None)):
            raise LookupError(f"subcommand {name!r}: {target} has no {needed}() (see bench/cli.py docstring)")
    return obj


def _usage() -> str:
    names = ", ".join(n for n in SUBCOMMANDS if not n.startswith("_"))
    return f"usage: python -m bench {{{names}}} ...\n       python -m bench SUBCOMMAND --help"


def _warning_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _warning_line  # one line per warning (e.g. a torn CSV line), no source
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        command = _resolve(name)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}")
    command.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits 2 on bad options, 0 on --help
        return int(exc.code or 0)
    try:
        return int(command.main(args))
    except KeyboardInterrupt:
        print(f"interrupted (SIGINT) during {name}; nothing more was started", file=sys.stderr)
        return 130
