"""Sandbox systems of record for Keel's demos and tests: real HTTP APIs over a real database, with faults."""

__version__ = "0.1.0"
