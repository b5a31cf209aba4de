"""User mistakes on the command line end in one `error:` line (or argparse's usage message), never a traceback."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from pgflow_trio import EngineOptions, WorkerOptions, open_engine

from . import flows
from .helpers import ROOT, cli


async def _cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is None:
        result = await trio.to_thread.run_sync(functools.partial(cli, *args, env=env))
    else:
        result = await trio.to_thread.run_sync(
            functools.partial(
                subprocess.run,
                [sys.executable, "-m", "pgflow_trio", *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, **(env or {})},
                check=False,
                cwd=ROOT,
            )
        )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://me:s3cret@localhost:99999/db", "port 99999 is out of range (1-65535)"),
        ("postgresql://me:s3cret@localhost:abc/db", "port 'abc' is not a number"),
        ("postgresql://me:s3cret@[::1/db", "Invalid IPv6 URL"),
        ("postgresql://me:s3cret@localhost/db?port=0", "port 0 is out of range"),
        ("host=localhost port=abc password=s3cret", "port 'abc' is not a number"),
        ("mysql://me:s3cret@localhost/db", "expected postgresql://"),
        ("postgresql://me:s3cret@localhost/db?connect_timeout=soon", "connect_timeout 'soon' is not a number"),
        (
            "postgresql://me:s3cret@localhost/db?target_session_attrs=bogus",
            "target_session_attrs must be one of any, primary, standby, prefer-standby, read-write, read-only, "
            "got 'bogus'",
        ),
        ("host=localhost password=s3cret gsslib=krb", "gsslib must be one of gssapi, sspi, got 'krb'"),
        ("postgresql://me:s3cret@localhost/db?sslnegotiation=maybe", "sslnegotiation must be one of postgres, direct"),
        (
            "postgresql://me:s3cret@localhost/db?ssl_max_protocol_version=TLSv9",
            "ssl_max_protocol_version must be one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3, got 'TLSv9'",
        ),
    ],
)
async def test_an_invalid_dsn_is_named_without_its_password(dsn: str, message: str) -> None:
    for args, env in ((("--dsn", dsn), {}), ((), {"PGFLOW_DSN": dsn})):
        code, _, err = await _cli("runs", "list", *args, env=env)
        assert code == 2 and message in err, err
        assert "s3cret" not in err
        if env:
            assert "PGFLOW_DSN" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PGPORT": "abc"}, "error: $PGPORT='abc': port 'abc' is not a number"),
        ({"PGPORT": "5432,5433"}, "error: $PGPORT='5432,5433': the embedded PostgreSQL listens on one port"),
        ({"PGPORT": "0"}, "error: $PGPORT='0': port 0 is out of range (1-65535)"),
        ({"PGSSLMODE": "sure"}, "error: $PGSSLMODE='sure': sslmode must be one of disable, allow, prefer, require"),
        ({"PGTARGETSESSIONATTRS": "bogus"}, "error: $PGTARGETSESSIONATTRS='bogus': target_session_attrs must be"),
    ],
)
async def test_a_wrong_pg_variable_is_named_before_the_embedded_server_starts(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    code, _, err = await _cli("runs", "list", "--data-dir", str(tmp_path / "pg"), env={"PGFLOW_DSN": "", **env})
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "pg").exists()  # nothing was started


@pytest.mark.parametrize(
    ("dsn", "env", "message"),
    [
        ("postgresql:///db", {"PGHOST": "dbhost:abc"}, "$PGHOST='dbhost:abc': port 'abc' is not a number"),
        ("postgresql://u@localhost/db", {"PGPORT": "99999"}, "$PGPORT='99999': port 99999 is out of range"),
        ("postgresql://u@localhost/db", {"PGGSSLIB": "krb"}, "$PGGSSLIB='krb': gsslib must be one of gssapi, sspi"),
    ],
)
async def test_a_wrong_pg_variable_that_the_dsn_leaves_to_asyncpg_is_named(
    dsn: str, env: dict[str, str], message: str
) -> None:
    code, _, err = await _cli("runs", "list", "--dsn", dsn, env=env)
    assert code == 2 and message in err and err.count("\n") == 1, err


async def _serve_tcp(handler: object, nursery: trio.Nursery) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_a_server_that_is_not_postgresql_is_named_as_such() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            http_port = await _serve_tcp(http, nursery)
            silent_port = await _serve_tcp(silent, nursery)
            code, _, err = await _cli("runs", "list", "--dsn", f"postgresql://u@127.0.0.1:{http_port}/db")
            assert code == 2
            assert f"127.0.0.1:{http_port} is not PostgreSQL: it answered 'HTTP/1.1 400 Bad Request" in err, err
            code, _, err = await _cli(
                "runs", "list", "--dsn", f"postgresql://u@127.0.0.1:{silent_port}/db", "--connect-timeout", "0.5"
            )
            assert code == 2
            assert f"127.0.0.1:{silent_port} accepted the connection but did not answer within 0.5s" in err, err
            code, _, err = await _cli(
                "health", "--dsn", f"postgresql://u@127.0.0.1:{silent_port}/db", env={"PGFLOW_CONNECT_TIMEOUT": "0.5"}
            )
            assert code == 2 and "did not answer within 0.5s" in err, err
            nursery.cancel_scope.cancel()


async def test_arguments_are_checked_before_anything_is_written(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
        for bad in (["--timeout", "-1"], ["--timeout", "nan"], ["--run-id", "not-a-uuid"]):
            code, _, err = await _cli("start", "echo", "--input", "{}", "--wait", *bad, "--dsn", dsn)
            assert code == 2 and "usage:" in err and bad[0] in err, err
        code, _, err = await _cli("runs", "list", "--limit", "0", "--dsn", dsn)
        assert code == 2 and "must be from 1 to 1000" in err
        code, _, err = await _cli("start", "bad slug!", "--input", "{}", "--dsn", dsn)
        assert code == 2 and "there is no flow 'bad slug!'" in err
        async with open_engine(dsn) as engine:
            assert (await engine.list_runs()).runs == ()


async def test_unreadable_files_and_targets_are_named(tmp_path: Path) -> None:
    directory = tmp_path / "spec.json"
    directory.mkdir()
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"slug": "caf\xe9", "steps": []}')
    latin1_py = tmp_path / "latin1.py"
    latin1_py.write_bytes(b"X = '\xe9'\n")
    broken_py = tmp_path / "broken.py"
    broken_py.write_text("def f(:\n")
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    cases = [
        (("flows", "upsert", "/nonexistent.json"), "/nonexistent.json does not exist"),
        (("flows", "upsert", str(directory)), "is a directory, not a file"),
        (("flows", "upsert", str(latin1)), "is not UTF-8 text"),
        (("compile", str(directory)), "is a directory, not a file"),
        (("compile", "/nonexistent.py:Flow"), "/nonexistent.py does not exist"),
        (("compile", f"{latin1_py}:X"), "is not UTF-8 text"),
        (("compile", f"{broken_py}:f"), "broken.py, line 1"),
        (("worker", "/nonexistent.py:Flow"), "/nonexistent.py does not exist"),
        (("cron", "list", str(directory)), "is a directory, not a file"),
        (("start", "x", "--input", "@/nonexistent.json"), "/nonexistent.json does not exist"),
        (("start", "x", "--input", f"@{directory}"), "is a directory, not a file"),
        (("db", "sql", "--core-tarball", str(directory)), "is a directory, not a file"),
        (("db", "install", "--core-tarball", "/nonexistent.tgz"), "/nonexistent.tgz does not exist"),
    ]
    if os.geteuid() != 0:  # root reads any file
        cases.append((("flows", "upsert", str(locked)), "permission denied"))
    for args, message in cases:
        code, _, err = (
            await _cli(*args, "--dsn", "postgresql://u@127.0.0.1:1/x") if args[0] != "compile" else (await _cli(*args))
        )
        assert code == 2 and message in err, (args, err)


async def test_environment_values_are_read_when_used_and_named_when_wrong() -> None:
    env = {"PGFLOW_CONCURRENCY": "abc", "PGFLOW_SHUTDOWN_GRACE": "-1", "PGFLOW_SIGNAL": "shout"}
    code, out, _ = await _cli("compile", "--help", env=env)
    assert code == 0 and "usage:" in out
    code, out, _ = await _cli("worker", "--help", env=env)
    text = " ".join(out.split())
    assert code == 0 and "($PGFLOW_CONCURRENCY, default 10)" in text and "($PGFLOW_SHUTDOWN_GRACE, default 10)" in text
    code, _, err = await _cli("worker", "tests/flows.py:Echo", env={"PGFLOW_CONCURRENCY": "abc"})
    assert code == 2 and "$PGFLOW_CONCURRENCY='abc': expected an integer" in err, err
    code, _, err = await _cli("worker", "tests/flows.py:Echo", env={"PGFLOW_SHUTDOWN_GRACE": "-1"})
    assert code == 2 and "$PGFLOW_SHUTDOWN_GRACE='-1': worker option shutdown_grace must be a positive" in err, err
    code, _, err = await _cli("worker", "tests/flows.py:Echo", env={"PGFLOW_SIGNAL": "shout"})
    assert code == 2 and "$PGFLOW_SIGNAL='shout': expected one of poll, notify" in err, err
    code, _, err = await _cli("worker", "tests/flows.py:Echo", "--concurrency", "0")
    assert code == 2 and "--concurrency: worker option concurrency must be an integer >= 1" in err, err
    code, _, err = await _cli("runs", "list", env={"PGFLOW_CONNECT_TIMEOUT": "abc", "PGFLOW_DSN": "postgresql://x"})
    assert code == 2 and "$PGFLOW_CONNECT_TIMEOUT='abc': expected a number" in err, err


# Options fields with no command-line setting, on purpose: library-level tuning, or set by a dedicated flag.
NOT_SETTINGS = {
    "WorkerOptions": {
        "poll_min": "tuning of the poll back-off (library)",
        "poll_max": "tuning of the poll back-off (library)",
        "poll_seconds": "tuning of read_with_poll (library)",
        "fallback_poll": "safety-net poll interval (library)",
        "read_visibility": "visibility of a read, extended while a task runs (library)",
        "extend_margin": "when to extend a running task's visibility (library)",
        "timeout_grace": "recovery margin past a task's timeout (library)",
        "run_check_interval": "fallback check that running tasks' runs still run (library)",
        "scheduler_grace": "how old a missed tick may be and still fire (library)",
        "register_flow": "the worker command always registers its flows",
        "sync_schedules": "the worker command always syncs its schedules (cron sync does it by hand)",
        "scheduler": "--no-scheduler",
        "log_tracebacks": "--log-tracebacks",
        "otel": "--otel, or $PGFLOW_OTEL",
    },
    "EngineOptions": {
        "pool_size": "each command opens a small pool of its own",
        "events": "each command decides whether it listens",
        "recheck_interval": "start --wait uses the default (library)",
        "poll_interval": "start --wait uses the default (library)",
        "check_schema": "each command decides (health checks the schema itself)",
        "data_dir": "--data-dir, or $PGFLOW_DATA_DIR",
        "driver": "$PGFLOW_DRIVER, read where the database is opened",
        "otel": "tracing run starts is for applications; the worker command has --otel",
    },
}


def _settings_in_help() -> list[tuple[str, str, str]]:
    """(command, env variable, default shown) for every flag whose help names an environment variable."""
    import argparse
    import re

    from pgflow_trio._cli._commands import build_parser

    found = []

    def walk(parser: argparse.ArgumentParser, command: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{command} {name}".strip())
            elif action.help and (match := re.search(r"\(\$(\w+), default ([^)]+)\)", action.help)):
                found.append((command, match.group(1), match.group(2)))

    walk(build_parser(), "")
    return found


def test_cli_defaults_come_from_the_options_classes() -> None:
    import attrs

    from pgflow_trio import EngineOptions, WorkerOptions
    from pgflow_trio._cli._commands import (
        CONNECT_TIMEOUT,
        CRON_BACKEND,
        STALE_AFTER,
        WORKER_SETTINGS,
        _convert,
        _value_type,
    )

    worker_settings = {s.env: (WorkerOptions, s) for s in (*WORKER_SETTINGS, CRON_BACKEND)}
    engine_settings = {s.env: (EngineOptions, s) for s in (CONNECT_TIMEOUT, STALE_AFTER)}

    def owner(command: str, env: str) -> tuple[type, Any]:
        # Worker and health both have --stale-after ($PGFLOW_STALE_AFTER): the workers' and the engine's.
        return engine_settings[env] if env == CONNECT_TIMEOUT.env or command == "health" else worker_settings[env]

    shown = _settings_in_help()
    used = {(options, setting) for options, setting in (owner(command, env) for command, env, _ in shown)}
    assert used == set(worker_settings.values()) | set(engine_settings.values())  # every setting is a flag
    for command, env, text in shown:
        options, setting = owner(command, env)
        default = attrs.fields_dict(options)[setting.field].default
        value = None if text == "none" else _convert(text, _value_type(options, setting.field))
        assert value == default, (command, setting.flag, text, default)
    assert ("cron sync", "PGFLOW_CRON_BACKEND", "auto") in shown and ("worker", "PGFLOW_CRON_BACKEND", "auto") in shown

    for options in (WorkerOptions, EngineOptions):
        with_setting = {setting.field for o, setting in used if o is options}
        without = {f.name for f in attrs.fields(options)} - with_setting
        assert without == set(NOT_SETTINGS[options.__name__]), options


def test_health_max_age_default_is_health_checks() -> None:
    import inspect

    from pgflow_trio import Engine
    from pgflow_trio._cli._commands import build_parser

    default = inspect.signature(Engine.health_check).parameters["max_age"].default
    parser = build_parser()
    assert parser.parse_args(["health"]).max_age == default
    health = parser._subparsers._group_actions[0].choices["health"]  # type: ignore[union-attr]
    (max_age,) = [action for action in health._actions if "--max-age" in action.option_strings]
    assert f"(default {default:g})" in (max_age.help or "")


async def test_a_large_input_from_a_file_or_stdin(dsn: str, tmp_path: Path) -> None:
    big = {"blob": "x" * 250_000, "n": 1}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(big))
    with trio.fail_after(60):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
        code, from_file, err = await _cli("start", "echo", "--input", f"@{path}", "--dsn", dsn)
        assert code == 0, err
        code, from_stdin, err = await _cli("start", "echo", "--input", "-", "--dsn", dsn, stdin=json.dumps(big))
        assert code == 0, err
        async with open_engine(dsn) as engine:
            for out in (from_file, from_stdin):
                run = await engine.get_run(out.strip())
                assert run.input == big
        code, _, err = await _cli("start", "echo", "--input", "-", "--dsn", dsn, stdin="{nope")
        assert code == 2 and "--input - (stdin) is not valid JSON" in err


NOWHERE = "postgresql://u@127.0.0.1:1/x"  # nothing listens there: the errors below come before any connection


async def test_input_without_stdin_without_a_file_name_or_with_nan_is_one_error_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pgflow_trio", "start", "echo", "--input", "-", "--dsn", NOWHERE]
    closed = await trio.to_thread.run_sync(
        functools.partial(
            subprocess.run,
            ["sh", "-c", 'exec "$@" <&-', "sh", *command],  # stdin closed: Python's sys.stdin is None
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
    )
    assert closed.returncode == 2 and "Traceback" not in closed.stderr, closed.stderr
    assert closed.stderr.startswith("error: --input -: this process has no stdin"), closed.stderr
    nan_file = tmp_path / "nan.json"
    nan_file.write_text('{"a": [Infinity]}')
    cases = [
        (("--input", "@"), {}, "error: --input @: name the file after the @ (--input @input.json)"),
        (("--input", "NaN"), {}, "error: --input is not valid JSON: NaN is not JSON"),
        (("--input", '{"a": -Infinity}'), {}, "error: --input is not valid JSON: -Infinity is not JSON"),
        (("--input", f"@{nan_file}"), {}, f"error: --input @{nan_file} is not valid JSON: Infinity is not JSON"),
        (("--input", "-"), {"stdin": "[NaN]"}, "error: --input - (stdin) is not valid JSON: NaN is not JSON"),
    ]
    for args, extra, message in cases:
        code, _, err = await _cli("start", "echo", *args, "--dsn", NOWHERE, **extra)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, (args, err)


async def test_a_spec_file_with_nan_is_refused_by_every_command_that_reads_one(tmp_path: Path) -> None:
    spec = tmp_path / "nan.json"
    spec.write_text(
        json.dumps({"slug": "nan_flow", "steps": [{"slug": "a"}], "cron": "* * * * *"})[:-1] + ', "x": NaN}'
    )
    for args in (
        ("flows", "upsert", str(spec), "--dsn", NOWHERE),
        ("cron", "sync", str(spec), "--dsn", NOWHERE),
        ("cron", "list", str(spec), "--dsn", NOWHERE),
        ("compile", str(spec)),
    ):
        code, _, err = await _cli(*args)
        assert code == 2 and f"{spec}: not valid JSON: NaN is not JSON" in err and err.count("\n") == 1, (args, err)


def test_a_dsns_own_connect_timeout_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow_trio import ConfigurationError
    from pgflow_trio._cli._commands import _connect_timeout, build_parser
    from pgflow_trio._store._dsn import connect_timeout_from, parse_dsn

    monkeypatch.setenv("PGFLOW_CONNECT_TIMEOUT", "7")
    args = build_parser().parse_args(["runs", "list"])
    assert _connect_timeout(args) is None  # left to each DSN, then the variable, where the connection opens
    assert connect_timeout_from(None, parse_dsn("postgresql://h/db?connect_timeout=2")) == 2
    assert connect_timeout_from(None, parse_dsn("postgresql://h/db")) == 7
    flagged = build_parser().parse_args(["runs", "list", "--connect-timeout", "3"])
    assert _connect_timeout(flagged) == 3
    monkeypatch.setenv("PGFLOW_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="PGFLOW_CONNECT_TIMEOUT"):
        _connect_timeout(args)


# ---- options: one source for validation, defaults and help ----------------------------------------------------


def _parser_action(command: str, dest: str) -> Any:
    from pgflow_trio._cli._commands import build_parser

    parser = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return next(action for action in parser._actions if action.dest == dest)


def test_each_settings_help_and_default_come_from_its_field() -> None:
    import attrs

    from pgflow_trio._cli._commands import CONNECT_TIMEOUT, STALE_AFTER, WORKER_SETTINGS

    cases = [("worker", WorkerOptions, s) for s in WORKER_SETTINGS]
    cases += [("worker", EngineOptions, CONNECT_TIMEOUT), ("health", EngineOptions, STALE_AFTER)]
    for command, options, setting in cases:
        field = attrs.fields_dict(options)[setting.field]
        action = _parser_action(command, setting.field)
        assert action.option_strings == [setting.flag] and setting.env == f"PGFLOW_{setting.field.upper()}"
        default = (
            "none"
            if field.default is None
            else f"{field.default:g}"
            if isinstance(field.default, float)
            else field.default
        )
        assert action.help == f"{field.metadata['help']} (${setting.env}, default {default})"
    assert _parser_action("health", "stale_after").help.startswith("workers silent this long count as stale")
    assert _parser_action("worker", "stale_after").help.startswith("a worker silent this long is presumed dead")
    every = [*attrs.fields(WorkerOptions), *attrs.fields(EngineOptions)]
    assert [f.name for f in every if not f.metadata.get("help")] == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WorkerOptions(concurrency=0), "worker option concurrency must be an integer >= 1, got 0"),
        (lambda: WorkerOptions(batch_size=True), "worker option batch_size must be an integer >= 1, got True"),
        (lambda: WorkerOptions(read_visibility=2.5), "worker option read_visibility must be an integer >= 1, got 2.5"),
        (lambda: WorkerOptions(shutdown_grace=-1), "worker option shutdown_grace must be a positive number, got -1"),
        (lambda: WorkerOptions(poll_min=float("nan")), "worker option poll_min must be a positive number, got nan"),
        (lambda: WorkerOptions(poll_max="1"), "worker option poll_max must be a positive number, got '1'"),
        (lambda: WorkerOptions(signal="shout"), "worker option signal must be 'poll' or 'notify', got 'shout'"),
        (
            lambda: WorkerOptions(cron_backend="cron"),
            "worker option cron_backend must be 'auto', 'builtin' or 'pg_cron', got 'cron'",
        ),
        (lambda: WorkerOptions(scheduler="no"), "worker option scheduler must be True or False, got 'no'"),
        (lambda: WorkerOptions(register_flow=0), "worker option register_flow must be True or False, got 0"),
        (lambda: EngineOptions(pool_size=201), "engine option pool_size must be an integer from 1 to 200, got 201"),
        (lambda: EngineOptions(events="yes"), "engine option events must be True or False, got 'yes'"),
        (lambda: EngineOptions(connect_timeout=0), "engine option connect_timeout must be a positive number, got 0"),
        (lambda: EngineOptions(stale_after=float("nan")), "engine option stale_after must be a positive number"),
    ],
)
def test_a_bad_option_is_a_configuration_error_naming_it_and_what_it_accepts(make: Any, message: str) -> None:
    from pgflow_trio import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        make()
    assert str(caught.value).startswith(message)


def test_good_options_are_kept() -> None:
    options = WorkerOptions(concurrency=3, poll_min=1, shutdown_grace=float("inf"), signal="poll", scheduler=False)
    assert (options.concurrency, options.poll_min, options.signal, options.scheduler) == (3, 1, "poll", False)
    assert EngineOptions(connect_timeout=None).connect_timeout is None
    assert EngineOptions(connect_timeout=2, pool_size=200).pool_size == 200


def test_user_directories_keep_their_linux_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pgflow_trio._store._dsn import default_embedded_data_dir, user_cache_dir, user_data_dir

    if sys.platform != "linux":
        pytest.skip("the platform's own directories apply")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "PGFLOW_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert user_data_dir() == tmp_path / ".local" / "share" / "pgflow_trio"
    assert user_cache_dir() == tmp_path / ".cache" / "pgflow_trio"
    assert default_embedded_data_dir() == tmp_path / ".local" / "share" / "pgflow_trio" / "embedded-pg"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert (user_data_dir(), user_cache_dir()) == (
        tmp_path / "data" / "pgflow_trio",
        tmp_path / "cache" / "pgflow_trio",
    )
    monkeypatch.setenv("PGFLOW_DATA_DIR", str(tmp_path / "pg"))
    assert default_embedded_data_dir() == tmp_path / "pg"
