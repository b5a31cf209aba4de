"""A Hypothesis state machine against a real database and real worker processes.

It generates flows (DAGs with map steps and options), runs with a plan of handler behaviours (succeed, fail until
attempt k, overrun the timeout), starts, stops (SIGTERM) and kills (SIGKILL) worker subprocesses, and operates runs
the way an operator would: cancel a run, retry a failed or cancelled one in place, pause and resume a flow's queue.
After every step: no task used more attempts than allowed; a failed run started no task after it failed; a
cancelled run is failed and started no task after its cancellation committed; no run is stuck (started, with
nothing queued or running). At the end, once workers have run long enough: every run reached a final state; its
status and output are what the model says (a run a killed worker disturbed may instead fail through recovery; a
cancelled run stays failed); every handler received exactly the outputs pgflow stored for its dependencies; no
task ran twice at the same time; a retried run kept the outputs its completed tasks had before the retry, and none
of those tasks ran again. Duplicate executions (at-least-once) are counted and reported.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import hypothesis.strategies as st
import trio
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tests.helpers import ROOT, dsn_for, run_sql

from pgflow_trio import Engine, PgflowError, compile_flow, flow_from_spec, open_engine
from property_tests.model import effective, expected_input, predict

REPORT: list[str] = []


@st.composite
def flow_specs(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 4))
    steps: list[dict[str, Any]] = []
    for index in range(count):
        earlier = [s["slug"] for s in steps]
        step: dict[str, Any] = {"slug": f"s{index}"}
        if draw(st.integers(0, 3)) == 0:
            step["step_type"] = "map"
            if earlier and draw(st.booleans()):
                step["deps"] = [draw(st.sampled_from(earlier))]
        elif earlier:
            deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2))
            if deps:
                step["deps"] = deps
        if draw(st.booleans()):
            step["max_attempts"] = draw(st.integers(1, 3))
        steps.append(step)
    spec: dict[str, Any] = {
        "slug": "placeholder",
        "steps": steps,
        "base_delay": 1,
        "max_attempts": draw(st.integers(1, 3)),
    }
    if draw(st.booleans()):
        spec["timeout"] = 3
    return spec


class WorkflowMachine(RuleBasedStateMachine):
    server_dsn: ClassVar[str]
    template: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.database = f"prop_{uuid.uuid4().hex[:12]}"
        run_sql(self.server_dsn, f'CREATE DATABASE "{self.database}" TEMPLATE "{self.template}"')
        self.dsn = dsn_for(self.server_dsn, self.database)
        self.tmp = Path(tempfile.mkdtemp(prefix="pgflow-prop-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.specs: list[dict[str, Any]] = []
        self.runs: dict[str, tuple[int, list[Any]]] = {}
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.killed: dict[int, float] = {}
        self.started_workers = 0
        self.next_id = 0
        self.cancelled: set[str] = set()  # runs whose last operation was a cancellation that took effect
        self.retried: dict[str, tuple[float, dict[tuple[str, int], tuple[str, str]]]] = {}
        self.paused: set[str] = set()
        self.seen_failed: dict[str, Any] = {}  # failed runs -> the database clock when a check first saw them failed

    # ---- rules -----------------------------------------------------------------------------------------------
    @initialize(specs=st.lists(flow_specs(), min_size=1, max_size=2))
    def create_flows(self, specs: list[dict[str, Any]]) -> None:
        for index, spec in enumerate(specs):
            spec["slug"] = f"pf_{index}"
            for statement in compile_flow(flow_from_spec(spec)):
                run_sql(self.dsn, statement)
        self.specs = specs
        (self.tmp / "specs.json").write_text(json.dumps(specs))

    @rule(data=st.data())
    def start_run(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.specs) - 1), label="flow")
        spec = self.specs[index]
        plan: dict[str, Any] = {}
        for step in spec["steps"]:
            attempts = effective(spec, step, "max_attempts", 3)
            choices: list[dict[str, Any]] = [{}, {}, {"fail_until": data.draw(st.integers(1, attempts))}]
            if effective(spec, step, "timeout", 60) == 3:
                choices.append({"hang": 1})
            behaviour = data.draw(st.sampled_from(choices), label=f"plan {step['slug']}")
            if behaviour:
                plan[step["slug"]] = behaviour
        items = data.draw(st.lists(st.integers(0, 9), max_size=3), label="items")
        run_input = [{"id": self.next_id, "plan": plan}, *items]
        self.next_id += 1
        run_id = run_sql(
            self.dsn, "SELECT run_id FROM pgflow.start_flow($1, $2::jsonb)", spec["slug"], json.dumps(run_input)
        )[0][0]
        self.runs[str(run_id)] = (index, run_input)

    @precondition(lambda self: len(self.workers) < 3)
    @rule(concurrency=st.integers(1, 4), signal_mode=st.sampled_from(["poll", "notify"]))
    def start_worker(self, concurrency: int, signal_mode: str) -> None:
        targets = [f"property_tests/generic.py:flow_{i}" for i in range(len(self.specs))]
        with (self.tmp / f"worker-{self.started_workers}.log").open("wb") as log:
            proc = self._spawn(targets, concurrency, signal_mode, log)
        self.started_workers += 1
        self.workers[proc.pid] = proc

    def _spawn(self, targets: list[str], concurrency: int, signal_mode: str, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgflow_trio",
                "worker",
                *targets,
                "--dsn",
                self.dsn,
                "--concurrency",
                str(concurrency),
                "--signal",
                signal_mode,
                "--heartbeat-interval",
                "0.3",
                "--stale-after",
                "1.5",
                "--recovery-interval",
                "0.5",
                "--shutdown-grace",
                "1",
                "--no-scheduler",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "PGFLOW_PROPERTY_SPECS": str(self.tmp / "specs.json"),
                "PGFLOW_PROPERTY_LOG": str(self.logs),
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data())
    def stop_worker(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.workers)), label="worker")
        proc = self.workers.pop(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data())
    def kill_worker(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.workers)), label="worker")
        proc = self.workers.pop(pid)
        proc.kill()
        proc.wait(timeout=30)
        self.killed[pid] = time.time()

    # ---- operating runs ------------------------------------------------------------------------------------
    def _operate(self, call: Any) -> Any:
        """`call(engine)` through the public engine API, on its own event loop (the machine is synchronous)."""

        async def go() -> Any:
            async with open_engine(self.dsn, pool_size=2) as engine:
                return await call(engine)

        return trio.run(go)

    def _pick(self, data: st.DataObject, status: str, label: str) -> str:
        """A run, mostly one in `status` (an operation on it takes effect), sometimes any (it must be refused)."""
        any_run = data.draw(st.integers(0, 3), label=f"{label}: any run") == 0
        pick = data.draw(st.integers(0, 1_000_000), label=label)  # the same draws whatever the database holds
        rows = run_sql(self.dsn, "SELECT run_id::text FROM pgflow.runs WHERE status = $1 ORDER BY 1", status)
        candidates = [r[0] for r in rows if r[0] in self.runs]
        pool = sorted(self.runs) if any_run or not candidates else candidates
        return pool[pick % len(pool)]

    def _status(self, run_id: str) -> str:
        return str(run_sql(self.dsn, "SELECT status FROM pgflow.runs WHERE run_id = $1::uuid", run_id)[0][0])

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def cancel_run(self, data: st.DataObject) -> None:
        run_id = self._pick(data, "started", "run to cancel")

        async def cancel(engine: Engine) -> bool:
            try:
                await engine.cancel_run(run_id, reason="property test")
            except PgflowError:
                return False
            return True

        if self._operate(cancel):
            self.cancelled.add(run_id)
            assert self._status(run_id) == "failed"
        else:
            assert self._status(run_id) != "started", f"cancelling started run {run_id} was refused"

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def retry_run(self, data: st.DataObject) -> None:
        run_id = self._pick(data, "failed", "run to retry")
        before = time.time()
        completed = self._completed_tasks(run_id)

        async def retry(engine: Engine) -> bool:
            try:
                await engine.retry_run(run_id)
            except PgflowError:
                return False
            return True

        if self._operate(retry):
            self.cancelled.discard(run_id)
            self.seen_failed.pop(run_id, None)
            earlier = self.retried.get(run_id, (before, {}))[1]
            self.retried[run_id] = (before, {**earlier, **completed})
        else:
            assert self._status(run_id) != "failed", f"retrying failed run {run_id} was refused"

    def _completed_tasks(self, run_id: str) -> dict[tuple[str, int], tuple[str, str]]:
        """(step, task index) -> (output, completed_at) of the run's completed tasks."""
        rows = run_sql(
            self.dsn,
            "SELECT step_slug, task_index, output::text, completed_at::text FROM pgflow.step_tasks "
            "WHERE run_id = $1::uuid AND status = 'completed'",
            run_id,
        )
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    @rule(data=st.data())
    def pause_or_resume(self, data: st.DataObject) -> None:
        slug = data.draw(st.sampled_from([s["slug"] for s in self.specs]), label="flow")

        async def toggle(engine: Engine) -> None:
            if slug in self.paused:
                await engine.resume(slug)
            else:
                await engine.pause(slug)

        self._operate(toggle)
        self.paused ^= {slug}

    @rule(seconds=st.sampled_from([0.2, 0.5, 1.0]))
    def let_time_pass(self, seconds: float) -> None:
        time.sleep(seconds)

    # ---- invariants ------------------------------------------------------------------------------------------
    @invariant()
    def attempts_never_exceed_max_attempts(self) -> None:
        if not self.specs:
            return
        over = run_sql(
            self.dsn,
            """SELECT t.run_id, t.step_slug, t.task_index, t.attempts_count
               FROM pgflow.step_tasks t JOIN pgflow.steps s USING (flow_slug, step_slug)
               JOIN pgflow.flows f USING (flow_slug)
               WHERE t.attempts_count > coalesce(s.opt_max_attempts, f.opt_max_attempts)""",
        )
        assert over == [], over

    @invariant()
    def failed_runs_start_no_further_tasks(self) -> None:
        """Once a check has seen a run failed (or cancelled), no task of it starts in a transaction that began
        later. (Timestamps are transaction start times, so a start that began before the failure committed -- and
        so still saw the run started -- may carry a later time than the run's failed_at; that is not a late start.)"""
        if not self.specs:
            return
        for run_id, seen_at in run_sql(
            self.dsn, "SELECT run_id::text, clock_timestamp() FROM pgflow.runs WHERE status = 'failed'"
        ):
            self.seen_failed.setdefault(run_id, seen_at)
        if not self.seen_failed:
            return
        ids = sorted(self.seen_failed)
        rows = run_sql(
            self.dsn,
            "SELECT run_id::text, step_slug, task_index, started_at FROM pgflow.step_tasks "
            "WHERE run_id = ANY($1::uuid[]) AND started_at IS NOT NULL",
            ids,
        )
        late = [r for r in rows if r[3] > self.seen_failed[r[0]]]
        assert late == [], late

    @invariant()
    def cancelled_runs_stay_failed_and_start_nothing_after_the_cancellation(self) -> None:
        if not self.cancelled:
            return
        rows = run_sql(
            self.dsn,
            """SELECT r.run_id::text, r.status,
                      EXISTS (SELECT 1 FROM pgflow.step_tasks t WHERE t.run_id = r.run_id
                              AND t.started_at > c.cancelled_at) AS started_after
               FROM pgflow.runs r JOIN pgflow_trio.run_cancellations c USING (run_id)
               WHERE r.run_id = ANY($1::uuid[])""",
            sorted(self.cancelled),
        )
        assert len(rows) == len(self.cancelled), f"cancellations lost: {self.cancelled} vs {rows}"
        for run_id, status, started_after in rows:
            assert status == "failed", f"cancelled run {run_id} is {status}"
            assert not started_after, f"cancelled run {run_id} started a task after its cancellation"

    @invariant()
    def no_run_is_stuck(self) -> None:
        """A started run always has a task queued (its message in the queue) or started."""
        if not self.specs:
            return
        stuck = run_sql(
            self.dsn,
            """SELECT r.run_id FROM pgflow.runs r WHERE r.status = 'started' AND NOT EXISTS (
                   SELECT 1 FROM pgflow.step_tasks t
                   WHERE t.run_id = r.run_id AND t.status IN ('queued', 'started'))""",
        )
        assert stuck == [], f"runs started with nothing queued or running: {stuck}"

    # ---- the end ---------------------------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.specs and self.runs:
                for slug in sorted(self.paused):
                    self._operate(lambda engine, slug=slug: engine.resume(slug))
                self.paused.clear()
                if not self.workers:
                    self.start_worker(4, "notify")
                self._wait_for_final_states()
                self._check_outcomes()
        finally:
            for proc in self.workers.values():
                proc.kill()
                proc.wait(timeout=30)
            run_sql(self.server_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _wait_for_final_states(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = run_sql(self.dsn, "SELECT count(*) FROM pgflow.runs WHERE status = 'started'")[0][0]
            if pending == 0:
                return
            time.sleep(0.25)
        raise AssertionError(f"{pending} run(s) did not reach a final state within 60 s of workers running")

    def _executions(self) -> list[dict[str, Any]]:
        records = []
        for path in self.logs.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
        return records

    def _check_outcomes(self) -> None:
        records = self._executions()
        starts = [r for r in records if r["event"] == "start"]
        ends = {r["execution"]: r["at"] for r in records if r["event"] == "end"}
        disturbed = {r["run"] for r in starts if r["pid"] in self.killed and r["execution"] not in ends}
        rows = run_sql(self.dsn, "SELECT run_id::text, status, output::text FROM pgflow.runs")
        actual = {row[0]: (row[1], None if row[2] is None else json.loads(row[2])) for row in rows}
        step_outputs: dict[str, dict[str, Any]] = {}
        for run_id, (index, run_input) in self.runs.items():
            spec = self.specs[index]
            status, output, outputs = predict(spec, run_input)
            step_outputs[run_id] = outputs
            got_status, got_output = actual[run_id]
            if run_id in self.cancelled:
                assert (got_status, got_output) == ("failed", None), f"cancelled run {run_id} is {got_status}"
                continue
            if status == "completed" and got_status == "failed":
                assert run_id in disturbed, f"run {run_id} failed, the model says it completes: {run_input}"
                recovered = run_sql(
                    self.dsn,
                    "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = $1::uuid "
                    "AND error_message LIKE 'abandoned task recovered%'",
                    run_id,
                )[0][0]
                assert recovered, f"run {run_id} was disturbed but did not fail through recovery"
                continue
            assert got_status == status, f"run {run_id}: {got_status}, the model says {status}: {run_input}"
            if status == "completed":
                assert got_output == output, f"run {run_id} output {got_output}, the model says {output}"
        # handlers received exactly what pgflow stored for their dependencies
        for start in starts:
            index, run_input = self.runs[start["run"]]
            expected = expected_input(
                self.specs[index], start["step"], run_input, step_outputs[start["run"]], start["index"]
            )
            assert start["input"] == expected, f"{start['run']}/{start['step']}[{start['index']}] got {start['input']}"
        # no task ran twice at the same time
        intervals: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for start in starts:
            end = ends.get(start["execution"], self.killed.get(start["pid"], float("inf")))
            intervals.setdefault((start["run"], start["step"], start["index"]), []).append((start["at"], end))
        for task, spans in intervals.items():
            spans.sort()
            for (_, end), (begin, _) in itertools.pairwise(spans):
                assert begin >= end, f"task {task} ran twice at the same time: {spans}"
        # a retried run kept its completed tasks' outputs, and none of them ran again
        for run_id, (retried_at, completed) in self.retried.items():
            now = self._completed_tasks(run_id)
            for task, stored in completed.items():
                assert now.get(task) == stored, f"run {run_id} task {task}: {stored} before the retry, {now.get(task)}"
            again = [
                s
                for s in starts
                if s["run"] == run_id and (s["step"], s["index"]) in completed and s["at"] > retried_at
            ]
            assert again == [], f"run {run_id}: completed tasks ran again after the retry: {again}"
        # (a retry starts attempts from 1 again: its runs' executions are not repeats)
        executions = Counter(
            (s["run"], s["step"], s["index"], s["attempt"]) for s in starts if s["run"] not in self.retried
        )
        duplicates = sum(n - 1 for n in executions.values() if n > 1)
        REPORT.append(
            f"{len(self.runs)} runs, {len(starts)} executions, {duplicates} repeated (run, step, task, "
            f"attempt) executions, {len(self.killed)} workers killed, {len(disturbed)} runs disturbed, "
            f"{len(self.cancelled)} cancelled, {len(self.retried)} retried"
        )


def test_workflows_behave_like_the_model(server_dsn: str, template_db: str) -> None:
    WorkflowMachine.server_dsn = server_dsn
    WorkflowMachine.template = template_db
    run_state_machine_as_test(WorkflowMachine, settings=settings())
    for line in REPORT:
        print(line)
