"""pgmq: the server's extension when it offers one, else the SQL-only install shipped in the `pgmq` PyPI package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pgflow_trio._exceptions import SchemaError
from pgflow_trio._store._dsn import EMBEDDED_HINT
from pgflow_trio._store._schema._core import SqlFile

MIN_PGMQ = (1, 5)


def parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def new_enough(version: str) -> bool:
    return parse_version(version) >= MIN_PGMQ


def pgmq_sql_install() -> tuple[str, SqlFile]:
    """(version, script) of the SQL-only pgmq install inside the `pgmq` package, read without importing it."""
    spec = importlib.util.find_spec("pgmq")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        sql_dir = Path(location) / "sql"
        script = sql_dir / "pgmq.sql"
        version_file = sql_dir / "VERSION"
        if script.is_file() and version_file.is_file():
            version = next(
                (ln.strip() for ln in version_file.read_text().splitlines() if ln.strip() and ln[0] != "#"), ""
            )
            if not new_enough(version):
                raise SchemaError(f"the pgmq package ships pgmq {version}; pgflow needs >= 1.5: pip install -U pgmq")
            return version, SqlFile(f"pgmq {version} (sql)", script.read_text())
    raise SchemaError(
        "the server has no pgmq extension and the `pgmq` package (which ships pgmq as plain SQL) is not "
        f"installed: run `{EMBEDDED_HINT}` (or `pip install pgmq`), or install the pgmq extension on the server"
    )
