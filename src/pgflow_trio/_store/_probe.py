"""What answers at a server address: when connecting fails without a useful reason (a timeout, a closed socket),
a PostgreSQL SSLRequest tells a PostgreSQL server (it answers one byte, 'S' or 'N') from anything else."""

from __future__ import annotations

import struct

import trio

from pgflow_trio._store._dsn import Address

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_SHOWN = 60


def _shown(data: bytes) -> str:
    text = data[:_SHOWN].decode("ascii", "backslashreplace")
    printable = "".join(c if c.isprintable() else " " for c in text).split()
    return repr(" ".join(printable)) + ("..." if len(data) > _SHOWN else "")


def _os_reason(exc: BaseException) -> str:
    """The operating system's reason (e.g. 'Connection refused'), looking through trio's wrapping error."""
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return str(exc) or type(exc).__name__


async def _open(address: Address) -> trio.abc.Stream:
    if address.is_unix:
        return await trio.open_unix_socket(f"{address.host}/.s.PGSQL.{address.port}")
    return await trio.open_tcp_stream(address.host, address.port)


async def probe(address: Address, seconds: float) -> tuple[bool, str]:
    """(is it PostgreSQL?, what was found), within `seconds`."""
    connected = False
    with trio.move_on_after(seconds):
        try:
            stream = await _open(address)
        except OSError as exc:
            return False, f"nothing accepts connections at {address} ({_os_reason(exc)})"
        connected = True
        async with stream:
            try:
                await stream.send_all(_SSL_REQUEST)
                answer = await stream.receive_some(256)
            except (OSError, trio.BrokenResourceError) as exc:
                return False, f"{address} closed the connection ({exc}): not PostgreSQL?"
        if answer in (b"S", b"N"):
            return True, f"PostgreSQL answers at {address}"
        if not answer:
            return False, f"{address} closed the connection without answering: not PostgreSQL"
        return False, f"{address} is not PostgreSQL: it answered {_shown(bytes(answer))}"
    if not connected:
        return False, f"connecting to {address} did not succeed within {seconds:g}s"
    return False, f"{address} accepted the connection but did not answer within {seconds:g}s: not PostgreSQL?"
