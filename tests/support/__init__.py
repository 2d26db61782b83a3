"""Helpers several test modules share (importable as ``support.*``: pytest puts ``tests/`` on the path)."""
