"""Flows, Flow detail, Jobs, Runs and Run detail pages, and the run's JSON downloads.

Every read is one store call (`dash.query`); bad query values give the page with a message and 400, unknown flows
and runs a 404 page, never a 500."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlencode

import attrs
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from pgflow_trio._dashboard._graph import StepMark, layout
from pgflow_trio._dashboard._state import Dashboard
from pgflow_trio._exceptions import ConfigurationError, DefinitionError
from pgflow_trio._store._dash_runs import (
    RUN_STATES,
    JsonHead,
    StepView,
    TaskAttempt,
    flow_overview,
    flow_slugs,
    flow_stats,
    id_prefix_range,
    run_detail,
    run_input_json,
    runs_page,
    step_output_json,
    task_output_json,
)

RANGES = {
    "1h": datetime.timedelta(hours=1),
    "24h": datetime.timedelta(hours=24),
    "7d": datetime.timedelta(days=7),
    "30d": datetime.timedelta(days=30),
}
DEFAULT_RANGE = "24h"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
FLOW_HISTORY = 20
TASK_LIMIT = 500
"""Tasks shown on a run's timeline; a map step may have thousands (their outputs stay downloadable)."""


class BadRequest(ConfigurationError):
    """A query value the page cannot use; the page shows the message with status 400."""


# ---- query values -----------------------------------------------------------------------------------------------
def chosen_range(request: Request) -> str:
    value = request.query_params.get("range") or DEFAULT_RANGE
    if value not in RANGES:
        raise BadRequest(f"range must be one of {', '.join(RANGES)}, got {value!r}")
    return value


def parse_instant(name: str, value: str | None, *, end_of_day: bool = False) -> datetime.datetime | None:
    """An ISO date or date-time (`2026-01-31`, `2026-01-31T08:00`, with or without an offset; UTC without). With
    `end_of_day`, a date alone means the end of that day (the next midnight): `until=2026-01-31` includes the 31st."""
    if not value:
        return None
    if end_of_day:
        try:
            day = datetime.date.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), datetime.UTC)
    try:
        instant = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(
            f"{name} must be a date or date-time like 2026-01-31 or 2026-01-31T08:00 (UTC unless an offset is "
            f"given), got {value!r}"
        ) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=datetime.UTC)


def parse_run_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"{value!r} is not a run id: a run id is a UUID like 3f2a9c1e-...") from None


_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
"""ASCII digits only (`str.isdigit` accepts `²` and other scripts' digits, which `int` refuses or reads), and few
enough to fit PostgreSQL's int4."""


def whole_number(value: str) -> int | None:
    """`value` as a whole number when it is 1 to 9 ASCII digits, else None."""
    return int(value) if _WHOLE_NUMBER.fullmatch(value) else None


def parse_limit(value: str | None) -> int:
    if not value:
        return PAGE_SIZE
    limit = whole_number(value)
    if limit is None or not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, got {value!r}")
    return limit


@attrs.frozen
class RunFilters:
    """The Runs page's filters as given (for the form and the links) and as parsed."""

    flow: str
    status: str
    start: str
    until: str
    q: str
    limit: str

    @classmethod
    def of(cls, request: Request) -> RunFilters:
        params = request.query_params
        return cls(*(params.get(name, "").strip() for name in ("flow", "status", "from", "until", "q", "limit")))

    def query(self, **extra: str) -> str:
        """This page's query string with `extra` (a cursor) added; empty filters are left out."""
        pairs = {"flow": self.flow, "status": self.status, "from": self.start, "until": self.until, "q": self.q}
        pairs["limit"] = self.limit
        return urlencode({k: v for k, v in {**pairs, **extra}.items() if v})


# ---- JSON shown inline ------------------------------------------------------------------------------------------
@attrs.frozen
class ShownJson:
    """A JSON value as the page shows it: pretty when whole, else the raw start of it; `truncated` says so."""

    text: str
    truncated: bool


def shown(head: JsonHead | None, cap: int) -> ShownJson | None:
    """The head as shown: its pretty text (printed by PostgreSQL, so numbers stay exactly as stored) cut at `cap`."""
    if head is None:
        return None
    return ShownJson(head.text[:cap], head.truncated or len(head.text) > cap)


def step_marks(steps: Iterable[StepView]) -> dict[str, StepMark]:
    """Each step's live state, and for a map step how many of its tasks are done out of how many: a completed
    step has done them all; a step not started yet (remaining_tasks still NULL) none."""
    marks = {}
    for step in steps:
        total = step.initial_tasks if step.step_type == "map" else None
        if total is None:
            done = 0
        elif step.status == "completed":
            done = total
        elif step.remaining_tasks is None:
            done = 0
        else:
            done = max(total - step.remaining_tasks, 0)
        marks[step.step_slug] = StepMark(step.status, done, total)
    return marks


# ---- the task timeline ------------------------------------------------------------------------------------------
TIMELINE_WIDTH = 240.0
TIMELINE_HEIGHT = 14.0
TIMELINE_MIN_BAR = 1.5
"""A bar never narrower than this, so an instantaneous wait or attempt still shows."""


@attrs.frozen
class Bar:
    """A horizontal bar on the timeline: its left edge and width, in the SVG's units."""

    x: float
    width: float


@attrs.frozen
class TaskBars:
    """One task's row: `wait` from queued to started (or to the scale's end while still waiting), `work` from
    started to finished (or to the scale's end while running); `status` gives the work bar its class."""

    wait: Bar | None
    work: Bar | None
    status: str


@attrs.frozen
class Timeline:
    """The task table's timeline column: a row of bars per task, on one scale from `start` to `start + span`."""

    width: float
    height: float
    start: datetime.datetime
    span: datetime.timedelta
    rows: tuple[TaskBars, ...]


def timeline(
    tasks: Sequence[TaskAttempt],
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    width: float = TIMELINE_WIDTH,
) -> Timeline:
    """Bars for `tasks` on a shared scale from `start` (the run's start) to `end` (its end, or now): read down the
    column, the task table is a Gantt chart of the run. Times outside the scale are clamped into it."""
    seconds = max((end - start).total_seconds(), 0.0)

    def x(at: datetime.datetime) -> float:
        if seconds == 0:
            return 0.0
        return min(max((at - start).total_seconds() / seconds, 0.0), 1.0) * width

    def bar(left: datetime.datetime, right: datetime.datetime) -> Bar:
        x0, x1 = x(left), x(right)
        x0 = min(x0, width - TIMELINE_MIN_BAR)
        return Bar(round(x0, 1), round(max(x1 - x0, TIMELINE_MIN_BAR), 1))

    rows = []
    for task in tasks:
        waited_until = task.started_at or end
        wait = bar(task.queued_at, waited_until) if waited_until > task.queued_at or task.started_at is None else None
        work = bar(task.started_at, task.finished_at or end) if task.started_at is not None else None
        rows.append(TaskBars(wait, work, task.status))
    return Timeline(width, TIMELINE_HEIGHT, start, datetime.timedelta(seconds=seconds), tuple(rows))


def json_download(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# ---- pages ------------------------------------------------------------------------------------------------------
def routes(dash: Dashboard) -> list[BaseRoute]:
    def problem(request: Request, status: int, heading: str, message: str) -> Response:
        return dash.render(request, "_runs_problem.html", {"heading": heading, "message": message}, status_code=status)

    async def flow_list(request: Request, *, jobs: bool) -> Response:
        template = "jobs.html" if jobs else "flows.html"
        try:
            chosen = chosen_range(request)
        except BadRequest as exc:
            return dash.render(
                request,
                template,
                {"stats": [], "ranges": RANGES, "range": DEFAULT_RANGE, "since": "", "error": str(exc)},
                topics="runs",
                status_code=400,
            )
        since = datetime.datetime.now(datetime.UTC) - RANGES[chosen]
        stats = await dash.query(partial(flow_stats, since=since, jobs=jobs))
        # The run-count links keep the range: `from` to the second (UTC, floored: never fewer runs than counted).
        context = {
            "stats": stats,
            "ranges": RANGES,
            "range": chosen,
            "since": since.strftime("%Y-%m-%dT%H:%M:%S"),
            "error": None,
        }
        return dash.render(request, template, context, topics="runs")

    async def flows(request: Request) -> Response:
        return await flow_list(request, jobs=False)

    async def jobs(request: Request) -> Response:
        return await flow_list(request, jobs=True)

    async def flow(request: Request) -> Response:
        slug = request.path_params["slug"]
        overview = await dash.query(partial(flow_overview, slug=slug, limit=FLOW_HISTORY))
        if overview is None:
            return problem(request, 404, "Flow not found", f"There is no flow {slug!r} in the database.")
        context = {"overview": overview, "flow": overview.flow, "graph": layout(overview.flow)}
        return dash.render(request, "flow.html", context, topics=f"flow:{slug}")

    async def runs(request: Request) -> Response:
        filters = RunFilters.of(request)
        slugs = await dash.query(flow_slugs)
        context: dict[str, Any] = {"filters": filters, "flows": slugs, "states": RUN_STATES, "page": None}
        try:
            found = full_run_id(filters.q)
            if found is not None:
                return RedirectResponse(f"{context_root(request)}/runs/{found}", status_code=303)
            if filters.status and filters.status not in RUN_STATES:
                raise BadRequest(f"status must be one of {', '.join(RUN_STATES)}, got {filters.status!r}")
            page = await dash.query(
                partial(
                    runs_page,
                    flow_slug=filters.flow or None,
                    state=filters.status or None,
                    started_from=parse_instant("from", filters.start),
                    started_until=parse_instant("until", filters.until, end_of_day=True),
                    id_range=id_prefix_range(filters.q) if filters.q else None,
                    older=request.query_params.get("older") or None,
                    newer=request.query_params.get("newer") or None,
                    limit=parse_limit(filters.limit),
                )
            )
        except (ConfigurationError, DefinitionError) as exc:
            return dash.render(request, "runs.html", {**context, "error": str(exc)}, topics="runs", status_code=400)
        return dash.render(request, "runs.html", {**context, "page": page, "error": None}, topics="runs")

    async def run(request: Request) -> Response:
        try:
            run_id = parse_run_id(request.path_params["run_id"])
        except BadRequest as exc:
            return problem(request, 400, "Not a run id", str(exc))
        cap = dash.config.json_cap
        detail = await dash.query(partial(run_detail, run_id=run_id, cap=cap, task_limit=TASK_LIMIT))
        if detail is None:
            return problem(request, 404, "Run not found", f"There is no run {run_id} (it may have been pruned).")
        now = datetime.datetime.now(datetime.UTC)
        context = {
            "run": detail,
            "graph": layout(detail.flow) if detail.flow is not None else None,
            "marks": step_marks(detail.steps),
            "timeline": timeline(detail.tasks, start=detail.started_at, end=detail.finished_at or now),
            "input": shown(detail.input, cap),
            "output": shown(detail.output, cap),
            "outputs": {s.step_slug: shown(s.output, cap) for s in detail.steps},
            "now": now,
        }
        return dash.render(request, "run.html", context, topics=f"run:{run_id}")

    async def download(request: Request) -> Response:
        try:
            run_id = parse_run_id(request.path_params["run_id"])
        except BadRequest as exc:
            return problem(request, 400, "Not a run id", str(exc))
        step_slug = request.path_params.get("step_slug")
        index = request.path_params.get("task_index")
        if step_slug is None:
            text = await dash.query(partial(run_input_json, run_id=run_id))
            name, missing = f"{run_id}-input.json", f"There is no run {run_id}."
        elif index is None:
            text = await dash.query(partial(step_output_json, run_id=run_id, step_slug=step_slug))
            name = f"{run_id}-{step_slug}.json"
            missing = f"Run {run_id} has no completed step {step_slug!r}: its output exists once the step completes."
        else:
            task_index = whole_number(index)
            if task_index is None:
                return problem(
                    request, 400, "Not a task index", f"a task index is a whole number (0-999999999), got {index!r}"
                )
            text = await dash.query(
                partial(task_output_json, run_id=run_id, step_slug=step_slug, task_index=task_index)
            )
            name = f"{run_id}-{step_slug}-{index}.json"
            missing = f"Run {run_id} has no completed task {index} of step {step_slug!r}."
        if text is None:
            return problem(request, 404, "No such output", missing)
        return json_download(text, name)

    return [
        Route("/flows", flows),
        Route("/flows/{slug}", flow),
        Route("/jobs", jobs),
        Route("/runs", runs),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/input.json", download),
        Route("/runs/{run_id}/output/{step_slug}.json", download),
        Route("/runs/{run_id}/output/{step_slug}/{task_index}.json", download),
    ]


def full_run_id(q: str) -> uuid.UUID | None:
    """The run id `q` names when it is a whole one (with or without hyphens), else None (then it is a prefix)."""
    if len(q.replace("-", "")) != 32:
        return None
    try:
        return uuid.UUID(q)
    except ValueError:
        return None


def context_root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
