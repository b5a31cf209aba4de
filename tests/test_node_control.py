"""A pgflow TypeScript-protocol worker (@pgflow/core 0.8.1's PgflowSqlClient under Node) against operated runs: it
works a run retried in place to completion, and does nothing for a cancelled run."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import trio

from pgflow_trio import CORE_VERSION, Engine, Flow, RunCancelled, RunFailed, map_step, open_engine, step
from pgflow_trio._store._dsn import user_cache_dir
from pgflow_trio.testing import drain

ROOT = Path(__file__).resolve().parent.parent
broken: set[int] = set()


class TsSquares(Flow[list[int], int], slug="ctl_ts_squares", max_attempts=1):
    """The flow tests/node/pgflow_worker.mjs has handlers for (squares, then their sum)."""

    @map_step
    async def square(self, n: int) -> int:
        if n in broken:
            raise ValueError(f"no square for {n}")
        return n * n

    @step
    async def total(self, square: list[int]) -> int:
        return sum(square)


@pytest.fixture(scope="session")
def core_package() -> Path:
    """@pgflow/core (with postgres.js) installed from npm into the user cache."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the TypeScript worker test (bash .ci/run installs them)")
    prefix = user_cache_dir() / f"core-{CORE_VERSION}"
    if not (prefix / "node_modules" / "@pgflow" / "core" / "package.json").is_file():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-save", "--prefix", str(prefix), f"@pgflow/core@{CORE_VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return prefix


def connection_options(dsn: str) -> str:
    """postgres.js options for `dsn` as JSON (a host that is a directory is a Unix socket there)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = int(query.get("port", [str(parts.port or 5432)])[0])
    options: dict[str, Any] = {
        "database": parts.path.lstrip("/"),
        "username": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
    }
    if host.startswith("/"):
        options["path"] = f"{host}/.s.PGSQL.{port}"
    else:
        options.update(host=host, port=port)
    return json.dumps(options)


async def node_worker(package: Path, dsn: str, *args: str) -> dict[str, Any]:
    """Run tests/node/pgflow_worker.mjs with `args`; its one JSON line."""
    script = str(ROOT / "tests" / "node" / "pgflow_worker.mjs")
    command = ["node", script, str(package), connection_options(dsn), *args]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


@asynccontextmanager
async def engine_for(dsn: str) -> AsyncIterator[Engine]:
    broken.clear()
    async with open_engine(dsn) as engine:
        await engine.upsert_flow(TsSquares)
        yield engine


async def test_a_typescript_worker_completes_a_run_retried_in_place(dsn: str, core_package: Path) -> None:
    with trio.fail_after(120):
        async with engine_for(dsn) as engine:
            broken.add(3)
            handle = await engine.start(TsSquares, [1, 2, 3, 4])
            await drain(engine, TsSquares)
            with pytest.raises(RunFailed):
                await handle.result(timeout=5)
            assert await engine.retry_run(handle.run_id) == 2
            worked = await node_worker(core_package, dsn, "work", "ctl_ts_squares", "2")
            # only the elements that had not completed, then the sum over all four
            assert sorted(
                (t["step_slug"], t["task_index"], t["input"]) for t in worked["tasks"] if t["task_index"]
            ) == [
                ("square", 2, 3),
                ("square", 3, 4),
            ]
            [total] = [t for t in worked["tasks"] if t["step_slug"] == "total"]
            assert total["input"] == {"run": [1, 2, 3, 4], "square": [1, 4, 9, 16]}
            assert len(worked["tasks"]) == 3
            assert await handle.result(timeout=10) == 30
            run = await engine.get_run(handle.run_id)
            assert (run.state, run.output) == ("completed", {"total": 30})


async def test_a_typescript_worker_does_nothing_for_a_cancelled_run(dsn: str, core_package: Path) -> None:
    with trio.fail_after(120):
        async with engine_for(dsn) as engine:
            queued = await engine.start(TsSquares, [1, 2])
            await engine.cancel_run(queued.run_id, reason="stop")
            worked = await node_worker(core_package, dsn, "work", "ctl_ts_squares", "1")
            assert worked == {"read": 0, "tasks": []}
            with pytest.raises(RunCancelled):
                await queued.result(timeout=5)

            # a task a worker had started before the cancel: its late completion changes nothing
            running = await engine.start(TsSquares, [5])
            worker = uuid.uuid4()
            await engine.db.execute(
                "INSERT INTO pgflow.workers (queue_name, worker_id, function_name) VALUES ($1, $2, 'by hand')",
                "ctl_ts_squares",
                worker,
            )
            started = await engine.db.fetch(
                "SELECT task_index FROM pgflow.start_tasks('ctl_ts_squares', ARRAY(SELECT message_id "
                "FROM pgflow.step_tasks WHERE run_id = $1), $2)",
                running.run_id,
                worker,
            )
            assert len(started) == 1
            await engine.cancel_run(running.run_id)
            assert await node_worker(core_package, dsn, "complete", str(running.run_id), "square", "0", "25") == {
                "ok": True
            }
            row = await engine.db.fetchrow(
                "SELECT status, output FROM pgflow.step_tasks WHERE run_id = $1 AND step_slug = 'square'",
                running.run_id,
            )
            assert row is not None and (row["status"], row["output"]) == ("failed", None)
            run = await engine.get_run_with_states(running.run_id)
            assert (run.state, run.output, run.remaining_steps) == ("cancelled", None, 2)
            assert [s.status for s in run.steps] == ["failed", "created"]
