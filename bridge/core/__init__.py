"""The plumbing every other package stands on: errors, the retry policy, settings, database
engines and DB-API statements, bounded JSON, and ``wait_until``.  It imports nothing else of
ours (import-linter checks it: ``pyproject.toml``)."""
