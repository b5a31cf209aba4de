"""pgflow_trio.testing: the pytest plugin's fixtures and `drain`, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio

import pgflow_trio.testing
from pgflow_trio import (
    ConfigurationError,
    Context,
    DefinitionError,
    Engine,
    Flow,
    FlowMismatch,
    Job,
    RunFailed,
    flow_from_spec,
    map_step,
    needs_input,
    step,
)
from pgflow_trio.testing import DrainLimitExceeded, Executed, drain

from .helpers import ROOT, run_sql

# ---- flows ---------------------------------------------------------------------------------------------------------


class Totals(Flow[int, int], slug="totals"):
    """split -> square (a map over split's list) -> total."""

    @step
    async def split(self, n: int = needs_input()) -> list[int]:
        return list(range(1, n + 1))

    @map_step
    async def square(self, split: int) -> int:
        return split * split

    @step
    async def total(self, square: list[int]) -> int:
        return sum(square)


@attrs.frozen
class Charge:
    order_id: int


class Declined(Flow[Charge, str], slug="declined", max_attempts=3, base_delay=5):
    """`charge` always fails; `receipt` depends on it and must never run."""

    @step
    async def charge(self, order: Charge, ctx: Context) -> int:
        raise ValueError(f"card declined for order {order.order_id} (attempt {ctx.attempt})")

    @step
    async def receipt(self, charge: int) -> str:
        return f"charged {charge}"


class Reminder(Job[str, str], queue="reminder"):
    async def perform(self, text: str) -> str:
        return text.upper()


class Hangs(Flow[int, str], slug="hangs", max_attempts=1, timeout=3):
    @step
    async def wait(self, n: int) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@attrs.frozen
class Parcel:
    label: str
    weights: list[float]


class Ship(Flow[int, Parcel], slug="ship", max_attempts=1):
    @step
    async def pack(self, n: int = needs_input()) -> Parcel:
        return Parcel("packed by the handler", [0.5] * n)


class Unmeasurable(Flow[int, dict[str, float]], slug="unmeasurable", max_attempts=1):
    @step
    async def weigh(self, n: int = needs_input()) -> dict[str, float]:
        return {"weight": float("nan")}


# ---- the fixtures ---------------------------------------------------------------------------------------------------

_SEEN_DATABASES: list[str] = []


@pytest.mark.parametrize("which", ["first", "second"])
async def test_each_test_gets_its_own_database_with_the_schema(
    which: str, pgflow_dsn: str, pgflow_engine: Engine
) -> None:
    name = await pgflow_engine.db.fetchval("SELECT current_database()")
    assert urlsplit(pgflow_dsn).path == "/" + name
    assert name not in _SEEN_DATABASES
    _SEEN_DATABASES.append(name)
    # Nothing another test did is here: this table would already exist otherwise.
    await pgflow_engine.db.execute("CREATE TABLE public.marker (id int)")
    assert await pgflow_engine.db.fetchval("SELECT count(*) FROM pgflow.flows") == 0
    assert (await pgflow_engine.health_check()).ok


def test_the_database_is_dropped_after_its_test(pgflow_server_dsn: str) -> None:
    assert len(_SEEN_DATABASES) == 2, "runs after test_each_test_gets_its_own_database_with_the_schema"
    rows = run_sql(
        pgflow_server_dsn, "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", _SEEN_DATABASES
    )
    assert rows == []


def test_the_template_is_a_template_named_after_the_schema(pgflow_server_dsn: str, pgflow_template_db: str) -> None:
    assert pgflow_template_db.startswith("pgflow_trio_tmpl_")
    rows = run_sql(pgflow_server_dsn, "SELECT datistemplate FROM pg_database WHERE datname = $1", pgflow_template_db)
    assert rows == [(True,)]


def _template_state(server: str, prefix: str) -> list[tuple[Any, ...]]:
    return run_sql(
        server, "SELECT datname, datistemplate FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", prefix
    )


def test_a_template_another_session_finished_first_is_used(
    pgflow_server_dsn: str, pgflow_template_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fingerprint = "race" + uuid.uuid4().hex[:8]
    name = f"pgflow_trio_tmpl_{fingerprint}"
    monkeypatch.setattr(pgflow_trio.testing, "_schema_fingerprint", lambda: fingerprint)

    async def the_other_session_wins(dsn: str) -> None:
        # While this session installs, another one completes the same template.
        run_sql(pgflow_server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pgflow_template_db}" IS_TEMPLATE true')

    monkeypatch.setattr(pgflow_trio.testing, "_install_into", the_other_session_wins)
    try:
        assert pgflow_trio.testing._template(pgflow_server_dsn) == name
        assert _template_state(pgflow_server_dsn, name) == [(name, True)]  # ours was dropped
    finally:
        pgflow_trio.testing._drop_database(pgflow_server_dsn, name)


def test_a_half_built_template_is_replaced(pgflow_server_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = "half" + uuid.uuid4().hex[:8]
    name = f"pgflow_trio_tmpl_{fingerprint}"
    monkeypatch.setattr(pgflow_trio.testing, "_schema_fingerprint", lambda: fingerprint)
    installed: list[str] = []

    async def install(dsn: str) -> None:
        installed.append(dsn)

    monkeypatch.setattr(pgflow_trio.testing, "_install_into", install)
    run_sql(pgflow_server_dsn, f'CREATE DATABASE "{name}"')  # not a template: an install that never finished
    try:
        assert pgflow_trio.testing._template(pgflow_server_dsn) == name
        assert len(installed) == 1
        assert _template_state(pgflow_server_dsn, name) == [(name, True)]
        assert pgflow_trio.testing._template(pgflow_server_dsn) == name
        assert len(installed) == 1  # a complete template is reused
    finally:
        pgflow_trio.testing._drop_database(pgflow_server_dsn, name)


def test_the_plugin_is_registered_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.get_plugin("pgflow_trio.testing") is pgflow_trio.testing


def test_the_module_exports_drain_and_its_records_only() -> None:
    assert sorted(pgflow_trio.testing.__all__) == ["DrainLimitExceeded", "Executed", "drain"]
    own = {
        name
        for name, obj in vars(pgflow_trio.testing).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "pgflow_trio.testing"
    }
    assert own == set(pgflow_trio.testing.__all__)
    for name in pgflow_trio.testing.__all__:
        assert getattr(pgflow_trio.testing, name).__doc__


# ---- drain ---------------------------------------------------------------------------------------------------------


async def test_drain_runs_a_flow_with_a_map_step_to_completion(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Totals)
    first = await pgflow_engine.start(Totals, 3)
    second = await pgflow_engine.start(Totals, 2)
    with trio.fail_after(30):
        executed = await drain(pgflow_engine, Totals)
    assert all(e.outcome == "completed" and e.attempt == 1 and e.flow == "totals" for e in executed)
    for handle, n in ((first, 3), (second, 2)):
        mine = [e for e in executed if e.run_id == handle.run_id]
        # Dependency order, as pgflow hands the tasks out.
        assert [e.step for e in mine] == ["split"] + ["square"] * n + ["total"]
        assert sorted(e.task_index for e in mine if e.step == "square") == list(range(n))
        assert mine[0].output == list(range(1, n + 1))
        assert mine[-1].output == sum(i * i for i in range(1, n + 1))
    assert await first.result(timeout=5) == 14
    assert await second.result(timeout=5) == 5
    assert await drain(pgflow_engine, Totals) == []


async def test_drain_encodes_each_output_once_and_reports_it_decoded(
    pgflow_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts: list[str] = []
    original = json.JSONEncoder.encode

    def counting(self: json.JSONEncoder, o: Any) -> str:
        text = original(self, o)
        texts.append(text)
        return text

    await pgflow_engine.upsert_flow(Ship)
    handle = await pgflow_engine.start(Ship, 2)
    monkeypatch.setattr(json.JSONEncoder, "encode", counting)  # json.dumps and encoder instances alike
    with trio.fail_after(30):
        [done] = await drain(pgflow_engine, Ship)
    assert done.output == {"label": "packed by the handler", "weights": [0.5, 0.5]}
    assert [text for text in texts if "packed by the handler" in text] == [
        '{"label":"packed by the handler","weights":[0.5,0.5]}'
    ]
    assert await handle.result(timeout=5) == Parcel("packed by the handler", [0.5, 0.5])


async def test_an_output_that_is_not_json_fails_its_task_naming_the_path(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Unmeasurable)
    handle = await pgflow_engine.start(Unmeasurable, 1)
    with trio.fail_after(30):
        [only] = await drain(pgflow_engine, Unmeasurable)
    assert (only.step, only.outcome, only.output) == ("weigh", "failed", None)
    assert only.error is not None and "output of step unmeasurable.weigh" in only.error
    assert only.error.endswith("@ $.weight")
    with pytest.raises(RunFailed):
        await handle.result(timeout=5)


async def test_a_failing_step_retries_with_include_delayed_and_fails_after_max_attempts(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Declined)
    handle = await pgflow_engine.start(Declined, Charge(7))
    with trio.fail_after(30):
        first = await drain(pgflow_engine, Declined)
        # The retry waits for its backoff (5 s): without include_delayed nothing more runs.
        assert await drain(pgflow_engine, Declined) == []
        rest = await drain(pgflow_engine, Declined, include_delayed=True)
    assert [(e.step, e.attempt, e.outcome) for e in first + rest] == [
        ("charge", 1, "failed"),
        ("charge", 2, "failed"),
        ("charge", 3, "failed"),
    ]
    assert rest[-1].error == "ValueError: card declined for order 7 (attempt 3)"
    assert rest[-1].output is None
    with pytest.raises(RunFailed) as failure:
        await handle.result(timeout=5)
    assert failure.value.step_slug == "charge"
    assert await drain(pgflow_engine, Declined, include_delayed=True) == []


async def test_a_delayed_job_runs_only_with_include_delayed(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Reminder)
    handle = await pgflow_engine.enqueue(Reminder, "call mum", delay=3600)
    with trio.fail_after(30):
        assert await drain(pgflow_engine, Reminder) == []
        [done] = await drain(pgflow_engine, Reminder, include_delayed=True)
    assert done == Executed("reminder", "perform", 0, handle.run_id, 1, "completed", output="CALL MUM")
    assert await handle.result(timeout=5) == "CALL MUM"


async def test_drain_with_nothing_to_do_returns_nothing_and_creates_the_flows(pgflow_engine: Engine) -> None:
    with trio.fail_after(30):
        assert await drain(pgflow_engine, Totals, Reminder, include_delayed=True) == []
    assert await pgflow_engine.flow_exists(Totals)
    assert await pgflow_engine.flow_exists(Reminder)
    live = await pgflow_engine.db.fetchval("SELECT count(*) FROM pgflow.workers WHERE deprecated_at IS NULL")
    assert live == 0  # drain's worker rows are marked stopped when it returns


async def test_drain_serves_several_flows_and_runtime_flows(pgflow_engine: Engine) -> None:
    spec = flow_from_spec({"slug": "shout", "steps": [{"slug": "up"}, {"slug": "bang", "deps": ["up"]}]})

    async def up(task_input: Any, ctx: Context) -> str:
        return str(task_input["run"]).upper()

    async def bang(task_input: Any, ctx: Context) -> str:
        return str(task_input["up"]) + "!"

    await pgflow_engine.upsert_flow(spec)
    await pgflow_engine.upsert_flow(Reminder)
    shout = await pgflow_engine.start("shout", "hey")
    reminder = await pgflow_engine.enqueue(Reminder, "x")
    with trio.fail_after(30):
        executed = await drain(pgflow_engine, (spec, {"up": up, "bang": bang}), Reminder())
    assert sorted((e.flow, e.step) for e in executed) == [("reminder", "perform"), ("shout", "bang"), ("shout", "up")]
    assert await shout.result(timeout=5) == {"bang": "HEY!"}
    assert await reminder.result(timeout=5) == "X"


async def test_an_input_that_does_not_fit_fails_without_retry(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Declined)
    handle = await pgflow_engine.start("declined", {"order_id": "seven"})
    with trio.fail_after(30):
        [only] = await drain(pgflow_engine, Declined, include_delayed=True)
    assert (only.step, only.attempt, only.outcome) == ("charge", 1, "failed")
    assert only.error is not None and "order_id" in only.error
    with pytest.raises(RunFailed):
        await handle.result(timeout=5)


async def test_a_step_past_its_timeout_is_cancelled_and_failed(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Hangs)
    handle = await pgflow_engine.start(Hangs, 1)
    with trio.fail_after(30):
        executed = await drain(pgflow_engine, Hangs, include_delayed=True)
    assert [(e.attempt, e.outcome, e.error) for e in executed] == [
        (1, "failed", "TimeoutError: step 'wait' exceeded its timeout of 3s")
    ]
    with pytest.raises(RunFailed):
        await handle.result(timeout=5)


async def test_max_tasks_overrun_raises_and_hands_the_next_task_back(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Totals)
    handle = await pgflow_engine.start(Totals, 4)
    with trio.fail_after(30):
        with pytest.raises(DrainLimitExceeded, match=r"max_tasks=3 .* totals\.square\[2\]") as overrun:
            await drain(pgflow_engine, Totals, max_tasks=3)
        assert [e.step for e in overrun.value.executed] == ["split", "square", "square"]
        rest = await drain(pgflow_engine, Totals)
    # The task found over the limit was handed back without using an attempt.
    assert [(e.step, e.task_index, e.attempt) for e in rest] == [("square", 2, 1), ("square", 3, 1), ("total", 0, 1)]
    assert await handle.result(timeout=5) == 30


async def test_a_cancelled_drain_hands_its_task_back_and_leaves_nothing_running(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(Hangs)
    await pgflow_engine.start(Hangs, 1)
    with trio.move_on_after(0.5):
        await drain(pgflow_engine, Hangs)
    row = await pgflow_engine.db.fetchrow("SELECT status, attempts_count FROM pgflow.step_tasks")
    assert row is not None and (row["status"], row["attempts_count"]) == ("queued", 0)
    live = await pgflow_engine.db.fetchval("SELECT count(*) FROM pgflow.workers WHERE deprecated_at IS NULL")
    assert live == 0


async def test_bad_arguments_are_refused(pgflow_engine: Engine) -> None:
    with pytest.raises(DefinitionError, match=r"drain\(\) needs at least one flow or job"):
        await drain(pgflow_engine)
    with pytest.raises(ConfigurationError, match=r"max_tasks must be an integer >= 0, got -1"):
        await drain(pgflow_engine, Totals, max_tasks=-1)

    class Other(Flow[int, int], slug="totals"):
        @step
        async def only(self, n: int) -> int:
            return n

    await pgflow_engine.upsert_flow(Totals)
    with pytest.raises(FlowMismatch, match=r"flow 'totals' in the database differs"):
        await drain(pgflow_engine, Other)


# ---- as users run it -------------------------------------------------------------------------------------------------


def _user_project(tmp_path: Path, *files: Path) -> Path:
    """A project of its own (no conftest of ours) whose pytest config says only what users must add."""
    project = tmp_path / "project"
    project.mkdir()
    for file in files:
        shutil.copy(file, project / file.name)
    (project / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    return project


def _pytest(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )


def test_the_example_user_test_passes_in_a_project_of_its_own(tmp_path: Path, pgflow_server_dsn: str) -> None:
    examples = ROOT / "examples"
    project = _user_project(tmp_path, examples / "process_order.py", examples / "test_process_order.py")
    done = _pytest(project, {"PGFLOW_TEST_DSN": pgflow_server_dsn})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_the_plugin_starts_nothing_unless_its_fixtures_are_used(tmp_path: Path) -> None:
    test = tmp_path / "test_plain.py"
    test.write_text(
        textwrap.dedent(
            """
            def test_plain(pytestconfig):
                assert pytestconfig.pluginmanager.has_plugin("pgflow_trio.testing")
            """
        )
    )
    project = _user_project(tmp_path, test)
    temp = tmp_path / "temp"
    temp.mkdir()
    done = _pytest(project, {"TMPDIR": str(temp), "PGFLOW_TEST_DSN": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(temp.iterdir()) == []  # no embedded server's directory
