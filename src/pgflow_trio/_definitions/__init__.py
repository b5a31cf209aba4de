"""Definitions: typed flows and jobs, plain-data specs, schedules, the one `FlowDef` model and its compiler.

Owns what a flow IS, independent of any database or runtime. May import only `_codec`, `_models`, `_exceptions` and
`_util`.
"""
