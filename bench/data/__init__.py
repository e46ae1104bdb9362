"""Data: task definitions, embedded datasets and real-data loaders."""
