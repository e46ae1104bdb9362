"""The luser-bench harness: tasks and datasets, meters, the training loop, sweeps, launchers, results,
plots, report and the memory gate. Entry point: ``python -m bench`` (see ``bench/cli.py``)."""
