"""The harness: run specs, one run, the training loop, results files and launchers."""
