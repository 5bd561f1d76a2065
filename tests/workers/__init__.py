"""Helpers that run in child processes: example queue classes, test transports, spawners."""
