"""Meters: memory, time, quality and the environment stamp."""
