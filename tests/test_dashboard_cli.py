"""`python -m pgflow_trio dashboard` and `demo --dashboard` in subprocesses against real PostgreSQL: the URL is
printed (the real port with --port 0), pages are served, SIGINT shuts down cleanly, an unprotected public binding
and a missing extra are refused with exit code 2 and the reason."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import trio

from .helpers import ROOT, cli


class Lines:
    """A subprocess's stdout, line by line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise AssertionError(f"stdout ended; saw {self.seen}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    async def until(self, prefix: str) -> str:
        while not (line := await self.next()).startswith(prefix):
            pass
        return line


async def _open(*args: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "pgflow_trio", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _stop(process: trio.Process) -> int:
    process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        return await process.wait()


def test_a_public_binding_without_a_token_exits_2_with_the_reason(dsn: str) -> None:
    result = cli("dashboard", "--dsn", dsn, "--host", "0.0.0.0", timeout=60)
    assert result.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without authentication" in result.stderr
    assert "--token" in result.stderr and "--no-auth" in result.stderr
    both = cli("dashboard", "--dsn", dsn, "--token", "t", "--no-auth", timeout=60)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def test_a_missing_extra_names_the_install_command() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; from pgflow_trio._cli._commands import main; "
        "sys.exit(main(['dashboard']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 2
    assert "pip install 'pgflow-trio[dashboard]'" in result.stderr


async def test_dashboard_on_port_0_prints_its_url_serves_and_stops_on_sigint(dsn: str) -> None:
    with trio.fail_after(90):
        process = await _open("dashboard", "--dsn", dsn, "--port", "0", "--token", "tok")
        try:
            line = await Lines(process).until("dashboard at ")
            url = line.removeprefix("dashboard at ")
            assert url.startswith("http://127.0.0.1:") and url.endswith("/") and not url.endswith(":0/")
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}runs")).status_code == 401
                page = await client.get(f"{url}runs", headers={"Authorization": "Bearer tok"})
                assert page.status_code == 200
                assert "content-security-policy" in page.headers
            assert await _stop(process) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_demo_with_dashboard_prints_the_url_before_the_runs_and_stays_open(dsn: str) -> None:
    with trio.fail_after(120):
        process = await _open("demo", "--dashboard", "--port", "0", "--runs", "2", "--dsn", dsn)
        try:
            lines = Lines(process)
            url = (await lines.until("dashboard at ")).removeprefix("dashboard at ")
            assert not any(line.startswith("starting") for line in lines.seen)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}runs")).status_code == 200
                await lines.until("2/2 runs completed")
                assert (await lines.next()).startswith("the dashboard stays open at ")
                assert (await client.get(f"{url}runs")).status_code == 200
            assert await _stop(process) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def test_a_port_in_use_is_one_line_and_exit_2(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args in (
            ("dashboard", "--dsn", dsn, "--port", port),
            ("demo", "--dashboard", "--port", port, "--dsn", dsn),
        ):
            result = cli(*args, timeout=90)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: " + mine(result)]
            assert "Traceback" not in result.stderr


def mine(result: subprocess.CompletedProcess[str]) -> str:
    """The reason the system gave, as printed (it varies by platform)."""
    return result.stderr.strip().rsplit(": ", 1)[-1]


async def test_no_auth_wins_over_the_token_variable_and_allowed_hosts_are_answered(dsn: str) -> None:
    with trio.fail_after(90):
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "pgflow_trio", "dashboard", "--dsn", dsn, "--port", "0", "--no-auth"),
                *("--allowed-host", "dash.example"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PGFLOW_DASHBOARD_TOKEN": "from-env"},
        )
        try:
            url = (await Lines(process).until("dashboard at ")).removeprefix("dashboard at ")
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}runs")).status_code == 200  # no token asked
                assert (await client.get(f"{url}runs", headers={"host": "dash.example"})).status_code == 200
                assert (await client.get(f"{url}runs", headers={"host": "evil.example"})).status_code == 421
            assert await _stop(process) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    bad = cli("dashboard", "--dsn", dsn, "--allowed-host", "http://x/", timeout=60)
    assert bad.returncode == 2 and "not a host name" in bad.stderr
