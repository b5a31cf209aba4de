"""The client: `open_engine` and what it offers — starting runs and jobs, waiting for results, run events,
inspection, flow management and health.

May import `_runtime` (to serve workers in-process), `_store`, `_definitions` and everything below them; never `_cli`.
"""
