"""What the dashboard's flow, job and run pages read. Every query is bounded (a time window, a LIMIT, one run) and
keyed on an index (schema 11 adds those pgflow lacks), so the pages stay fast on a database with millions of tasks.
Each function is one unit of work on one connection (`Database.run`: one crossing)."""

from __future__ import annotations

import base64
import datetime
import uuid
from typing import Any

import attrs

from pgflow_trio._definitions._flow import JOB_STEP
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import ConfigurationError
from pgflow_trio._models import Cancellation
from pgflow_trio._store import RawConnection, Record
from pgflow_trio._store._flows import read_flow
from pgflow_trio._store._runs import _decode_cursor

RUN_STATES = ("started", "completed", "failed", "cancelled")

_STATE = "CASE WHEN r.status = 'failed' AND c.run_id IS NOT NULL THEN 'cancelled' ELSE r.status END"
"""A run's state as `pgflow_trio.run_state` (schema 5) gives it: cancelled only when failed with a cancellation."""
_STATE_CONDITIONS = {
    "started": "r.status = 'started'",
    "completed": "r.status = 'completed'",
    "failed": "r.status = 'failed' AND c.run_id IS NULL",
    "cancelled": "r.status = 'failed' AND c.run_id IS NOT NULL",
}
_ROW_COLUMNS = (
    f"r.run_id, r.flow_slug, {_STATE} AS state, r.started_at, coalesce(r.completed_at, r.failed_at) AS finished_at, "
    "r.remaining_steps"
)
_ROWS = "pgflow.runs AS r LEFT JOIN pgflow_trio.run_cancellations AS c ON c.run_id = r.run_id"


# ---- flows and jobs ---------------------------------------------------------------------------------------------
@attrs.frozen
class FlowStats:
    """A flow (or job) with its runs started since a given instant: how many, how they ended, how long the
    completed ones took on average (seconds); runs started now whatever their age; its last run; its pause."""

    slug: str
    steps: int
    is_job: bool
    paused: bool
    runs: int
    completed: int
    failed: int
    cancelled: int
    avg_duration: float | None
    running: int
    last_run_at: datetime.datetime | None

    @property
    def success_rate(self) -> float | None:
        """Completed runs among those that completed or failed, or None with none. Cancelled runs are left out,
        as on the overview: a cancellation is deliberate, not a failure of the flow."""
        finished = self.completed + self.failed
        return self.completed / finished if finished else None


async def flow_stats(con: RawConnection, *, since: datetime.datetime, jobs: bool) -> list[FlowStats]:
    """Every flow (or, with `jobs`, every job: a flow of the one single step `perform`) with its run statistics
    since `since`."""
    rows = await con.fetch(
        """WITH shape AS (
               SELECT f.flow_slug, count(s.step_slug) AS steps,
                      count(s.step_slug) = 1 AND bool_and(s.step_slug = $2 AND s.step_type = 'single') AS is_job,
                      bool_or(p.queue IS NOT NULL) AS paused
               FROM pgflow.flows f LEFT JOIN pgflow.steps s ON s.flow_slug = f.flow_slug
               LEFT JOIN pgflow_trio.queue_pauses p ON p.queue = f.flow_slug
               GROUP BY f.flow_slug
           ), ranged AS (
               SELECT r.flow_slug, count(*) AS runs,
                      count(*) FILTER (WHERE r.status = 'completed') AS completed,
                      count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NULL) AS failed,
                      count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NOT NULL) AS cancelled,
                      extract(epoch FROM avg(r.completed_at - r.started_at))::float8 AS avg_duration
               FROM pgflow.runs r LEFT JOIN pgflow_trio.run_cancellations c ON c.run_id = r.run_id
               WHERE r.started_at >= $1 AND r.flow_slug IN (SELECT flow_slug FROM shape WHERE is_job = $3)
               GROUP BY r.flow_slug
           ), running AS (
               SELECT flow_slug, count(*) AS running FROM pgflow.runs WHERE status = 'started' GROUP BY flow_slug
           )
           SELECT shape.flow_slug, shape.steps, shape.is_job, shape.paused,
                  coalesce(ranged.runs, 0) AS runs, coalesce(ranged.completed, 0) AS completed,
                  coalesce(ranged.failed, 0) AS failed, coalesce(ranged.cancelled, 0) AS cancelled,
                  ranged.avg_duration, coalesce(running.running, 0) AS running,
                  (SELECT max(r.started_at) FROM pgflow.runs r WHERE r.flow_slug = shape.flow_slug) AS last_run_at
           FROM shape LEFT JOIN ranged USING (flow_slug) LEFT JOIN running USING (flow_slug)
           WHERE shape.is_job = $3
           ORDER BY shape.flow_slug""",
        since,
        JOB_STEP,
        jobs,
    )
    return [
        FlowStats(
            slug=r["flow_slug"],
            steps=r["steps"],
            is_job=r["is_job"],
            paused=r["paused"],
            runs=r["runs"],
            completed=r["completed"],
            failed=r["failed"],
            cancelled=r["cancelled"],
            avg_duration=r["avg_duration"],
            running=r["running"],
            last_run_at=r["last_run_at"],
        )
        for r in rows
    ]


@attrs.frozen
class RunRow:
    """A run as a list shows it: no input or output. `state` says cancelled for a cancelled run."""

    run_id: uuid.UUID
    flow_slug: str
    state: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    remaining_steps: int

    @property
    def cursor(self) -> str:
        """Where a page starting or ending at this run continues (the same format as `list_runs` cursors)."""
        return base64.urlsafe_b64encode(f"{self.started_at.isoformat()}|{self.run_id}".encode()).decode()


def _row(r: Record) -> RunRow:
    return RunRow(r["run_id"], r["flow_slug"], r["state"], r["started_at"], r["finished_at"], r["remaining_steps"])


@attrs.frozen
class FlowOverview:
    """A flow as the database holds it, whether its queue is paused, and its latest runs."""

    flow: FlowDef
    paused: bool
    is_job: bool
    latest: tuple[RunRow, ...]


async def flow_overview(con: RawConnection, *, slug: str, limit: int) -> FlowOverview | None:
    """The flow `slug` with its latest `limit` runs, or None when there is no such flow."""
    flow = await read_flow(con, slug=slug)
    if flow is None:
        return None
    paused: bool = await con.fetchval("SELECT EXISTS (SELECT 1 FROM pgflow_trio.queue_pauses WHERE queue = $1)", slug)
    rows = await con.fetch(
        f"SELECT {_ROW_COLUMNS} FROM {_ROWS} WHERE r.flow_slug = $1 ORDER BY r.started_at DESC, r.run_id DESC LIMIT $2",
        slug,
        limit,
    )
    is_job = len(flow.steps) == 1 and flow.steps[0].slug == JOB_STEP and not flow.steps[0].is_map
    return FlowOverview(flow, paused, is_job, tuple(_row(r) for r in rows))


async def flow_slugs(con: RawConnection) -> list[str]:
    """Every flow's slug, in order (for filters)."""
    rows = await con.fetch("SELECT flow_slug FROM pgflow.flows ORDER BY flow_slug")
    return [r["flow_slug"] for r in rows]


# ---- runs -------------------------------------------------------------------------------------------------------
def id_prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The smallest and largest run ids starting with `prefix` (hex digits, hyphens ignored): a range scan of the
    primary key finds them, where a text match would read every run."""
    digits = prefix.replace("-", "").strip().lower()
    if not digits or len(digits) > 32 or any(ch not in "0123456789abcdef" for ch in digits):
        raise ConfigurationError(
            f"run id search takes the start of a run id (hex digits, e.g. 3f2a9c1e) or a whole run id, got {prefix!r}"
        )
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


@attrs.frozen
class RunsPage:
    """One page of runs, newest first. `older`/`newer` continue the list either way (None: nothing there)."""

    runs: tuple[RunRow, ...]
    older: str | None
    newer: str | None


async def runs_page(
    con: RawConnection,
    *,
    flow_slug: str | None,
    state: str | None,
    started_from: datetime.datetime | None,
    started_until: datetime.datetime | None,
    id_range: tuple[uuid.UUID, uuid.UUID] | None,
    older: str | None,
    newer: str | None,
    limit: int,
) -> RunsPage:
    """Runs newest first, filtered, keyset-paginated on (started_at, run_id): `older` (a cursor) lists the runs
    after it, `newer` the runs before it. Invalid cursors raise DefinitionError."""
    conditions = ["TRUE"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if flow_slug is not None:
        conditions.append(f"r.flow_slug = {arg(flow_slug)}")
    if state is not None:
        conditions.append(_STATE_CONDITIONS[state])
    if started_from is not None:
        conditions.append(f"r.started_at >= {arg(started_from)}")
    if started_until is not None:
        conditions.append(f"r.started_at < {arg(started_until)}")
    if id_range is not None:
        conditions.append(f"r.run_id BETWEEN {arg(id_range[0])} AND {arg(id_range[1])}")
    backwards = newer is not None and older is None
    if older is not None:
        stamp, last_id = _decode_cursor(older)
        conditions.append(f"(r.started_at, r.run_id) < ({arg(stamp)}, {arg(last_id)})")
    elif newer is not None:
        stamp, first_id = _decode_cursor(newer)
        conditions.append(f"(r.started_at, r.run_id) > ({arg(stamp)}, {arg(first_id)})")
    order = "ASC" if backwards else "DESC"
    rows = await con.fetch(
        f"SELECT {_ROW_COLUMNS} FROM {_ROWS} WHERE {' AND '.join(conditions)} "
        f"ORDER BY r.started_at {order}, r.run_id {order} LIMIT {arg(limit + 1)}",
        *args,
    )
    more = len(rows) > limit
    runs = [_row(r) for r in rows[:limit]]
    if backwards:
        runs.reverse()
        return RunsPage(tuple(runs), runs[-1].cursor if runs else newer, runs[0].cursor if more else None)
    paged = older is not None
    return RunsPage(
        tuple(runs),
        runs[-1].cursor if more else None,
        (runs[0].cursor if runs else older) if paged else None,
    )


# ---- one run ----------------------------------------------------------------------------------------------------
@attrs.frozen
class JsonHead:
    """A JSON value as the page shows it: pretty-printed by PostgreSQL when the value's text fits in `cap`
    characters (numbers exactly as stored: no float round trip), else the raw start of its text, at most `cap`
    characters, with `truncated` set."""

    text: str
    truncated: bool


def _json_columns(value: str, name: str) -> str:
    """SQL giving `<name>_raw` (the start of `value`'s text, `cap` + 1 characters: `cap` is $2) and `<name>_pretty`
    (the value pretty-printed, only when its text fits in the cap)."""
    return (
        f"left({value}::text, $2 + 1) AS {name}_raw, "
        f"CASE WHEN length({value}::text) <= $2 THEN jsonb_pretty({value}) END AS {name}_pretty"
    )


def _head_of(row: Record, name: str, cap: int) -> JsonHead | None:
    pretty: str | None = row[f"{name}_pretty"]
    if pretty is not None:
        return JsonHead(pretty, False)
    raw: str | None = row[f"{name}_raw"]
    if raw is None:
        return None
    return JsonHead(raw[:cap], len(raw) > cap)


MAP_HEAD_FIRST_BATCH = 16
MAP_HEAD_MAX_BATCH = 1024


async def map_output_head(con: RawConnection, *, run_id: uuid.UUID, step_slug: str, cap: int) -> JsonHead:
    """The head of a completed map step's output (the array of its tasks' outputs), built from its first tasks
    only: tasks are read in index order, in batches that double, and reading stops once the text passes `cap`
    (a map step may have tens of thousands of tasks). A whole array that fits is pretty-printed by PostgreSQL.
    None when the step has no completed task at all (then the array is empty: `[]`)."""
    pieces: list[str] = []
    length = 1  # the opening bracket
    after = -1
    batch = MAP_HEAD_FIRST_BATCH
    while True:
        rows = await con.fetch(
            """SELECT task_index, left(coalesce(output, 'null'::jsonb)::text, $4 + 1) AS text
               FROM pgflow.step_tasks WHERE run_id = $1 AND step_slug = $2 AND task_index > $3
               ORDER BY task_index LIMIT $5""",
            run_id,
            step_slug,
            after,
            cap - length + 1,
            batch,
        )
        for r in rows:
            piece = (", " if pieces else "") + r["text"]
            pieces.append(piece)
            length += len(piece)
            if length > cap:
                return JsonHead(("[" + "".join(pieces))[:cap], True)
        if len(rows) < batch:
            break
        after = rows[-1]["task_index"]
        batch = min(2 * batch, MAP_HEAD_MAX_BATCH)
    pretty: str = await con.fetchval(
        """SELECT jsonb_pretty(coalesce(jsonb_agg(coalesce(output, 'null'::jsonb) ORDER BY task_index), '[]'))
           FROM pgflow.step_tasks WHERE run_id = $1 AND step_slug = $2""",
        run_id,
        step_slug,
    )
    return JsonHead(pretty, False)


@attrs.frozen
class StepView:
    """A step of a run: its state, its options and kind, how many of its tasks are done, and its output's head
    (None until the step completes)."""

    step_slug: str
    step_type: str
    status: str
    initial_tasks: int | None
    remaining_tasks: int | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    error_message: str | None
    output: JsonHead | None


@attrs.frozen
class TaskAttempt:
    """A task as pgflow holds it: its current (last) attempt only, earlier failed attempts leave no row."""

    step_slug: str
    task_index: int
    status: str
    attempts: int
    worker_id: uuid.UUID | None
    function_name: str | None
    queued_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    error_message: str | None


@attrs.frozen
class RunDetail:
    """Everything the run page shows, read in one crossing."""

    run_id: uuid.UUID
    flow_slug: str
    state: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    remaining_steps: int
    input: JsonHead
    output: JsonHead | None
    cancellation: Cancellation | None
    rerun_of: uuid.UUID | None
    reruns: tuple[uuid.UUID, ...]
    flow: FlowDef | None
    steps: tuple[StepView, ...]
    tasks: tuple[TaskAttempt, ...]
    task_count: int


_SINGLE_OUTPUT = """(SELECT coalesce(t.output, 'null'::jsonb) FROM pgflow.step_tasks t
    WHERE s.step_type = 'single' AND t.run_id = ss.run_id AND t.step_slug = ss.step_slug AND t.task_index = 0
      AND t.status = 'completed')"""
"""A completed single step's output; a map step's is built apart (`map_output_head`)."""


async def run_detail(con: RawConnection, *, run_id: uuid.UUID, cap: int, task_limit: int) -> RunDetail | None:
    """The run `run_id` with its steps, its first `task_limit` tasks and the heads (`cap` characters) of its input
    and outputs, or None when there is no such run."""
    run = await con.fetchrow(
        f"""SELECT {_ROW_COLUMNS}, {_json_columns("r.input", "input")}, {_json_columns("r.output", "output")},
                   r.status = 'failed' AND c.run_id IS NOT NULL AS cancelled, c.reason, c.cancelled_by,
                   c.cancelled_at, l.rerun_of,
                   ARRAY(SELECT k.run_id FROM pgflow_trio.run_links k WHERE k.rerun_of = r.run_id
                         ORDER BY k.run_id LIMIT 20) AS reruns,
                   (SELECT count(*) FROM pgflow.step_tasks t WHERE t.run_id = r.run_id) AS task_count
            FROM {_ROWS} LEFT JOIN pgflow_trio.run_links l ON l.run_id = r.run_id WHERE r.run_id = $1""",
        run_id,
        cap,
    )
    if run is None:
        return None
    steps = await con.fetch(
        f"""SELECT ss.step_slug, s.step_type, ss.status, ss.initial_tasks, ss.remaining_tasks, ss.started_at,
                   coalesce(ss.completed_at, ss.failed_at) AS finished_at, ss.error_message,
                   {_json_columns("o.output", "output")}
            FROM pgflow.step_states ss JOIN pgflow.steps s USING (flow_slug, step_slug)
            LEFT JOIN LATERAL (SELECT {_SINGLE_OUTPUT} AS output) o ON TRUE
            WHERE ss.run_id = $1 ORDER BY s.step_index""",
        run_id,
        cap,
    )
    tasks = await con.fetch(
        """SELECT t.step_slug, t.task_index, t.status, t.attempts_count, t.last_worker_id, w.function_name,
                  t.queued_at, t.started_at, coalesce(t.completed_at, t.failed_at) AS finished_at, t.error_message
           FROM pgflow.step_tasks t JOIN pgflow.steps s USING (flow_slug, step_slug)
           LEFT JOIN pgflow.workers w ON w.worker_id = t.last_worker_id
           WHERE t.run_id = $1 ORDER BY s.step_index, t.task_index LIMIT $2""",
        run_id,
        task_limit,
    )
    input_head = _head_of(run, "input", cap)
    assert input_head is not None
    outputs = {s["step_slug"]: _head_of(s, "output", cap) for s in steps}
    for s in steps:
        if s["step_type"] == "map" and s["status"] == "completed":
            outputs[s["step_slug"]] = await map_output_head(con, run_id=run_id, step_slug=s["step_slug"], cap=cap)
    return RunDetail(
        run_id=run["run_id"],
        flow_slug=run["flow_slug"],
        state=run["state"],
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        remaining_steps=run["remaining_steps"],
        input=input_head,
        output=_head_of(run, "output", cap),
        cancellation=Cancellation(run["run_id"], run["reason"], run["cancelled_by"], run["cancelled_at"])
        if run["cancelled"]
        else None,
        rerun_of=run["rerun_of"],
        reruns=tuple(run["reruns"]),
        flow=await read_flow(con, slug=run["flow_slug"]),
        steps=tuple(
            StepView(
                s["step_slug"],
                s["step_type"],
                s["status"],
                s["initial_tasks"],
                s["remaining_tasks"],
                s["started_at"],
                s["finished_at"],
                s["error_message"],
                outputs[s["step_slug"]],
            )
            for s in steps
        ),
        tasks=tuple(
            TaskAttempt(
                t["step_slug"],
                t["task_index"],
                t["status"],
                t["attempts_count"],
                t["last_worker_id"],
                t["function_name"],
                t["queued_at"],
                t["started_at"],
                t["finished_at"],
                t["error_message"],
            )
            for t in tasks
        ),
        task_count=run["task_count"],
    )


# ---- downloads --------------------------------------------------------------------------------------------------
async def run_input_json(con: RawConnection, *, run_id: uuid.UUID) -> str | None:
    """The run's whole input as JSON text, or None when there is no such run."""
    text: str | None = await con.fetchval("SELECT input::text FROM pgflow.runs WHERE run_id = $1", run_id)
    return text


async def step_output_json(con: RawConnection, *, run_id: uuid.UUID, step_slug: str) -> str | None:
    """A completed step's whole output as JSON text (a map step's: the array of its tasks' outputs, in order), or
    None when the run has no such step or it has not completed."""
    text: str | None = await con.fetchval(
        """SELECT CASE WHEN s.step_type = 'map'
                       THEN coalesce((SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM pgflow.step_tasks t
                                      WHERE t.run_id = ss.run_id AND t.step_slug = ss.step_slug), '[]'::jsonb)::text
                       ELSE (SELECT coalesce(t.output, 'null'::jsonb)::text FROM pgflow.step_tasks t
                             WHERE t.run_id = ss.run_id AND t.step_slug = ss.step_slug AND t.task_index = 0)
                  END
           FROM pgflow.step_states ss JOIN pgflow.steps s USING (flow_slug, step_slug)
           WHERE ss.run_id = $1 AND ss.step_slug = $2 AND ss.status = 'completed'""",
        run_id,
        step_slug,
    )
    return text


async def task_output_json(con: RawConnection, *, run_id: uuid.UUID, step_slug: str, task_index: int) -> str | None:
    """One completed task's output as JSON text, or None when there is no such completed task."""
    text: str | None = await con.fetchval(
        """SELECT coalesce(output, 'null'::jsonb)::text FROM pgflow.step_tasks
           WHERE run_id = $1 AND step_slug = $2 AND task_index = $3 AND status = 'completed'""",
        run_id,
        step_slug,
        task_index,
    )
    return text
