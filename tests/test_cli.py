"""The engine's command line against real PostgreSQL: start, runs, flows, health, demo."""

from __future__ import annotations

import functools
import json
import re
import uuid

import trio

from pgflow_trio import WorkerGroup, open_engine

from . import flows
from .helpers import FAST, cli


async def _cli(*args: str) -> tuple[int, str, str]:
    result = await trio.to_thread.run_sync(functools.partial(cli, *args))
    return result.returncode, result.stdout, result.stderr


async def test_start_wait_runs_and_flows_commands(dsn: str) -> None:
    with trio.fail_after(120):
        async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(
                functools.partial(engine.serve, flows.Echo, flows.Broken, options=FAST)
            )
            code, out, err = await _cli("start", "echo", "--input", '{"a": 1}', "--wait", "--dsn", dsn)
            assert code == 0, err
            run_id, rest = out.split("\n", 1)
            assert json.loads(rest) == {"perform": {"attempt": 1, "echo": {"a": 1}}}

            code, out, err = await _cli(
                "start", "tests/flows.py:Broken", "--input", '{"order_id": 5}', "--wait", "--dsn", dsn
            )
            assert code == 1
            assert "failed at step 'charge': ValueError: card declined for order 5" in err

            code, out, err = await _cli("start", "tests/flows.py:Broken", "--input", '{"order": 5}', "--dsn", dsn)
            assert code == 2 and "required field missing @ $.order_id" in err

            code, out, err = await _cli("start", "echo", "--input", "{nope", "--dsn", dsn)
            assert code == 2 and "--input is not valid JSON" in err

            code, out, err = await _cli("start", "missing_flow", "--input", "{}", "--dsn", dsn)
            assert code == 2 and "there is no flow 'missing_flow'" in err

            fixed = str(uuid.uuid4())
            code, first, _ = await _cli("start", "echo", "--input", "{}", "--run-id", fixed, "--dsn", dsn)
            code2, second, _ = await _cli("start", "echo", "--input", "{}", "--run-id", fixed, "--dsn", dsn)
            assert code == code2 == 0 and first == second == fixed + "\n"

            code, out, _ = await _cli("runs", "list", "--flow", "echo", "--dsn", dsn)
            assert code == 0 and run_id in out
            code, out, _ = await _cli("runs", "list", "--limit", "1", "--dsn", dsn)
            assert code == 0 and "more: --cursor " in out
            code, out, _ = await _cli("runs", "show", run_id, "--dsn", dsn)
            assert code == 0 and "status completed" in out and "step perform" in out and "tasks 1/1" in out
            code, _, err = await _cli("runs", "show", str(uuid.uuid4()), "--dsn", dsn)
            assert code == 2 and "there is no run" in err

            code, out, _ = await _cli("flows", "list", "--dsn", dsn)
            assert code == 0 and "echo" in out and "broken" in out
            code, out, _ = await _cli("flows", "show", "echo", "--dsn", dsn)
            assert code == 0 and out.splitlines()[1] == "SELECT pgflow.add_step('echo', 'perform');"
            code, _, err = await _cli("flows", "delete", "echo", "--dsn", dsn)
            assert code == 2 and "live worker" in err
            code, _, err = await _cli("health", "--dsn", dsn)
            assert code == 0
            group.stop()
        code, out, err = await _cli("flows", "delete", "echo", "--force", "--dsn", dsn)
        assert code == 0 and out.startswith("DELETED flow echo:"), err


async def test_start_wait_timeout_exits_124(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
        code, _, err = await _cli("start", "echo", "--input", "{}", "--wait", "--timeout", "0.3", "--dsn", dsn)
    assert code == 124 and "did not finish within 0.3s" in err


async def test_flows_upsert_warns_only_when_it_deletes_history(dsn: str, tmp_path: object) -> None:
    import pathlib

    spec = pathlib.Path(str(tmp_path)) / "flow.json"
    spec.write_text(json.dumps({"slug": "from_cli", "steps": [{"slug": "a"}]}))
    code, out, err = await _cli("flows", "upsert", str(spec), "--dsn", dsn)
    assert code == 0 and out.strip() == "flow from_cli: created" and err == ""
    code, out, err = await _cli("flows", "upsert", str(spec), "--dsn", dsn)
    assert code == 0 and out.strip() == "flow from_cli: unchanged" and err == ""
    async with open_engine(dsn) as engine:
        await engine.start("from_cli", {})
        await engine.start("from_cli", {})
    spec.write_text(json.dumps({"slug": "from_cli", "steps": [{"slug": "a"}, {"slug": "b", "deps": ["a"]}]}))
    code, out, err = await _cli("flows", "upsert", str(spec), "--dsn", dsn)
    assert code == 0 and out.strip() == "flow from_cli: replaced"
    assert err.strip() == "WARNING: replacing flow from_cli DELETED the old flow's 2 runs and 2 tasks"


async def test_start_wait_names_the_flow_of_a_failed_or_late_run(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(engine.serve, flows.Broken, options=FAST))
            code, _, err = await _cli("start", "broken", "--input", '{"order_id": 5}', "--wait", "--dsn", dsn)
            assert code == 1 and " of broken failed at step 'charge'" in err, err
            group.stop()
        code, _, err = await _cli(
            "start", "broken", "--input", '{"order_id": 5}', "--wait", "--timeout", "0.3", "--dsn", dsn
        )
        assert code == 124 and " of broken did not finish within 0.3s" in err, err


async def test_health_exits_1_for_work_that_no_worker_serves(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
            code, out, _ = await _cli("health", "--dsn", dsn)
            assert code == 0 and out.rstrip().endswith("ok")
            await engine.start("echo", {})
            await engine.db.execute("UPDATE pgmq.q_echo SET vt = now() - interval '117 seconds'")
        code, out, _ = await _cli("health", "--dsn", dsn)
        assert code == 1, out
        assert re.search(r"problem: queue echo: 1 message\(s\) waiting, the oldest for 11\ds, and no live worker", out)
        assert re.search(r"1 visible \(oldest waiting 11\ds\)", out)
        code, out, _ = await _cli("health", "--allow-no-workers", "--max-age", "60", "--dsn", dsn)
        assert code == 1 and re.search(r"waited 11\ds for a worker \(max age 60s\)", out)
        code, out, _ = await _cli("health", "--allow-no-workers", "--no-max-age", "--dsn", dsn)
        assert code == 0 and out.rstrip().endswith("ok")


async def test_health_fails_on_an_empty_database(empty_dsn: str) -> None:
    code, out, _ = await _cli("health", "--dsn", empty_dsn)
    assert code == 1
    assert "problem: pgmq is not installed" in out and out.rstrip().endswith("unhealthy")


async def test_demo(empty_dsn: str) -> None:
    with trio.fail_after(120):
        code, out, err = await _cli("demo", "--runs", "8", "--dsn", empty_dsn)
    assert code == 0, out + err
    assert " INFO " not in out + err and "pgflow_trio." not in err  # no log lines
    lines = out.strip().splitlines()
    assert lines[-1] == "8/8 runs completed"
    assert sum(1 for line in lines if ": completed," in line) == 8
    assert any("waiting to retry after a failure" in line for line in lines if "progress:" in line)
    (retried,) = [line for line in lines if "retried" in line and line.startswith("  order")]
    assert retried.startswith("  order   7: completed") and retried.endswith("(charge retried: 2 attempts)")
    progress = [line for line in lines if "progress:" in line]
    assert len(progress) == len(set(progress))  # a line only when something changed


async def test_connect_timeout_applies_to_the_cron_database_too(dsn: str, tmp_path: object) -> None:
    import pathlib

    spec = pathlib.Path(str(tmp_path)) / "f.json"
    spec.write_text(json.dumps({"slug": "timed", "steps": [{"slug": "a"}], "cron": "0 * * * *"}))

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            cron_dsn = f"postgresql://u@127.0.0.1:{port}/db"
            for args in (("cron", "sync", str(spec)), ("cron", "remove", "timed"), ("worker", "tests/flows.py:Echo")):
                code, _, err = await _cli(*args, "--dsn", dsn, "--cron-dsn", cron_dsn, "--connect-timeout", "0.5")
                assert (
                    code == 2 and f"127.0.0.1:{port} accepted the connection but did not answer within 0.5s" in err
                ), (
                    args,
                    err,
                )
            nursery.cancel_scope.cancel()


async def test_cron_list_says_what_makes_an_orphan_fire_before_how_to_delete_it(dsn: str, tmp_path: object) -> None:
    import pathlib

    spec = pathlib.Path(str(tmp_path)) / "f.json"
    spec.write_text(json.dumps({"slug": "daily", "steps": [{"slug": "a"}], "cron": "0 6 * * *"}))
    with trio.fail_after(60):
        code, _, err = await _cli("cron", "sync", str(spec), "--dsn", dsn)
        assert code == 0, err
        code, out, err = await _cli("cron", "list", "--dsn", dsn)
    assert code == 0, err
    assert (
        "    orphan: flow 'daily' is not in the database; it fires nothing until a worker serves flow 'daily' "
        "(or `cron remove daily` deletes it)"
    ) in out.splitlines(), out


async def test_cron_sync_backend_is_the_workers_setting(dsn: str, tmp_path: object) -> None:
    import pathlib
    import typing

    from pgflow_trio._cli._commands import build_parser
    from pgflow_trio._runtime import CronBackend

    parser = build_parser()
    for flag in ("--cron-backend", "--backend"):
        assert parser.parse_args(["cron", "sync", "f.json", flag, "builtin"]).cron_backend == "builtin"
    sync = parser._subparsers._group_actions[0].choices["cron"]._subparsers._group_actions[0].choices["sync"]  # type: ignore[union-attr]
    (action,) = [a for a in sync._actions if a.dest == "cron_backend"]
    assert tuple(action.choices) == typing.get_args(CronBackend)

    spec = pathlib.Path(str(tmp_path)) / "f.json"
    spec.write_text(json.dumps({"slug": "envcron", "steps": [{"slug": "a"}], "cron": "0 * * * *"}))
    with trio.fail_after(60):
        code, _, err = await _cli_env("cron", "sync", str(spec), "--dsn", dsn, PGFLOW_CRON_BACKEND="sometimes")
        assert code == 2 and "$PGFLOW_CRON_BACKEND='sometimes': expected one of auto, builtin, pg_cron" in err, err
        code, _, err = await _cli_env("cron", "sync", str(spec), "--dsn", dsn, PGFLOW_CRON_BACKEND="pg_cron")
        assert code == 0, err
        assert "pg_cron" in err  # asked for pg_cron, which this database lacks: a warning says so
        code, _, err = await _cli_env(
            "cron", "sync", str(spec), "--dsn", dsn, "--backend", "builtin", PGFLOW_CRON_BACKEND="pg_cron"
        )
        assert code == 0 and err == "", err  # the flag wins over the environment


async def _cli_env(*args: str, **env: str) -> tuple[int, str, str]:
    result = await trio.to_thread.run_sync(functools.partial(cli, *args, env=env))
    return result.returncode, result.stdout, result.stderr
