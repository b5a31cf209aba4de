"""Slug rules: what pgflow's DSL and its SQL (`pgflow.is_valid_slug`) both accept as a flow, step or schedule name."""

from __future__ import annotations

import re

MAX_SLUG_LENGTH = 128
_SQL_SLUG = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DSL_FORBIDDEN = re.compile(r"[/:#\-?]")
RESERVED_SLUGS = frozenset({"run"})


def slug_problem(slug: object) -> str | None:
    """Why `slug` is not valid for both pgflow's DSL and its SQL (`pgflow.is_valid_slug`), or None."""
    if not isinstance(slug, str):
        return f"must be a string, got {type(slug).__name__}"
    if not slug:
        return "must not be empty"
    if len(slug) > MAX_SLUG_LENGTH:
        return f"is {len(slug)} characters long; the limit is {MAX_SLUG_LENGTH}"
    if slug[0].isdigit():
        return "must not start with a digit"
    if slug.startswith("_"):
        return "must not start with an underscore"
    if any(ch.isspace() for ch in slug):
        return "must not contain whitespace"
    if _DSL_FORBIDDEN.search(slug):
        return "must not contain / : # - or ?"
    if not _SQL_SLUG.match(slug):
        return "may contain only ASCII letters, digits and underscores"
    if slug in RESERVED_SLUGS:
        return f"is reserved ({', '.join(sorted(RESERVED_SLUGS))}); choose another name"
    return None
