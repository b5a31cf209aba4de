"""Flows, Flow detail, Jobs, Runs and Run detail pages, and the run's JSON downloads.

Every read is one store call (`dash.query`); bad query values give the page with a message and 400, unknown flows
and runs a 404 page, never a 500."""

from __future__ import annotations

import datetime
import json
import uuid
from functools import partial
from typing import Any
from urllib.parse import urlencode

import attrs
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from pgflow_trio._dashboard._format import pretty_json
from pgflow_trio._dashboard._graph import StepMark, layout
from pgflow_trio._dashboard._state import Dashboard
from pgflow_trio._exceptions import ConfigurationError, DefinitionError
from pgflow_trio._store._dash_runs import (
    RUN_STATES,
    JsonHead,
    RunDetail,
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


def parse_instant(name: str, value: str | None) -> datetime.datetime | None:
    """An ISO date or date-time (`2026-01-31`, `2026-01-31T08:00`, with or without an offset; UTC without)."""
    if not value:
        return None
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


def parse_limit(value: str | None) -> int:
    if not value:
        return PAGE_SIZE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, got {value!r}")
    return int(value)


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
    if head is None:
        return None
    if head.truncated:
        return ShownJson(head.text, True)
    text = pretty_json(json.loads(head.text))
    return ShownJson(text[:cap], len(text) > cap)


def step_marks(detail: RunDetail) -> dict[str, StepMark]:
    """Each step's live state, and for a map step how many of its tasks are done out of how many."""
    marks = {}
    for step in detail.steps:
        total = step.initial_tasks if step.step_type == "map" else None
        done = (step.initial_tasks or 0) - (step.remaining_tasks or 0) if total is not None else 0
        marks[step.step_slug] = StepMark(step.status, max(done, 0), total)
    return marks


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
                {"stats": [], "ranges": RANGES, "range": DEFAULT_RANGE, "error": str(exc)},
                topics="runs",
                status_code=400,
            )
        since = datetime.datetime.now(datetime.UTC) - RANGES[chosen]
        stats = await dash.query(partial(flow_stats, since=since, jobs=jobs))
        context = {"stats": stats, "ranges": RANGES, "range": chosen, "error": None}
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
                    started_until=parse_instant("until", filters.until),
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
        context = {
            "run": detail,
            "graph": layout(detail.flow) if detail.flow is not None else None,
            "marks": step_marks(detail),
            "input": shown(detail.input, cap),
            "output": shown(detail.output, cap),
            "outputs": {s.step_slug: shown(s.output, cap) for s in detail.steps},
            "now": datetime.datetime.now(datetime.UTC),
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
            if not index.isdigit():
                return problem(request, 400, "Not a task index", f"a task index is a whole number, got {index!r}")
            text = await dash.query(
                partial(task_output_json, run_id=run_id, step_slug=step_slug, task_index=int(index))
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
