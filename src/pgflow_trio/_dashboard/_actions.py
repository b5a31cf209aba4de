"""Actions behind confirmation: cancel, retry, rerun, pause/resume, prune (POST, CSRF-checked by the middleware).

A POST without `confirmed=1` renders a confirmation page saying what will happen (with a Confirm button POSTing
the same fields plus confirmed=1); with it, the engine call is made and the browser is sent (303) to the page it
concerns with a short notice (signed, so that only the dashboard's own notices show). Engine refusals, malformed
fields (control characters, durations out of range) and data errors of the database (SQLSTATE class 22) become
readable message pages (404/409/400), never a 500.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, cast

import attrs
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from pgflow_trio._dashboard._state import Dashboard
from pgflow_trio._exceptions import (
    ConfigurationError,
    DatabaseError,
    FlowChanged,
    FlowNotFound,
    PgflowError,
    RunNotActive,
    RunNotFound,
    RunNotRetryable,
    ScheduleNotFound,
)
from pgflow_trio._runtime._pruner import describe, seconds_of
from pgflow_trio._store._schedules import schedule_names

PRUNE_STATUSES = ("all", "completed", "failed")
ACTOR = "dashboard"
"""Recorded as who cancelled a run from the dashboard."""
MAX_OLDER_THAN = 100 * 365 * 86400.0
"""The longest `older_than` of a prune (about 100 years): beyond it the cutoff leaves the database's date range."""
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class BadForm(PgflowError):
    """A field of an action's form is missing or malformed."""


@attrs.frozen
class Plan:
    """What a confirmation page says about an action."""

    heading: str
    lines: tuple[str, ...]
    confirm_label: str
    back: str
    danger: bool = False


@attrs.frozen
class Done:
    """Where the browser goes after an action, and the notice it shows there."""

    page: str
    notice: str


@attrs.frozen
class Verb:
    fields: tuple[str, ...]
    plan: Callable[[Dashboard, Mapping[str, str]], Awaitable[Plan]]
    perform: Callable[[Dashboard, Mapping[str, str]], Awaitable[Done]]


# ---- fields -----------------------------------------------------------------------------------------------
def _run_id(form: Mapping[str, str]) -> uuid.UUID:
    try:
        return uuid.UUID(form.get("run_id", ""))
    except ValueError:
        raise BadForm("run_id must be a run's id (a UUID)") from None


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise BadForm(f"the form needs a {name}")
    return value


def _older_than(form: Mapping[str, str]) -> float:
    """The prune's age in seconds: a duration such as 7d, at most MAX_OLDER_THAN."""
    text = _required(form, "older_than")
    try:
        seconds = seconds_of(text, what="older_than")
    except ConfigurationError as exc:
        raise BadForm(str(exc)) from None
    if seconds > MAX_OLDER_THAN:
        raise BadForm(f"older_than is at most {describe(MAX_OLDER_THAN)} (about 100 years), got {text!r}")
    return seconds


def _prune_args(form: Mapping[str, str]) -> tuple[float, Literal["all", "completed", "failed"], str | None]:
    older_than = _older_than(form)
    status = form.get("status", "").strip() or "all"
    if status not in PRUNE_STATUSES:
        raise BadForm(f"status must be one of {', '.join(PRUNE_STATUSES)}, got {status!r}")
    flow = form.get("flow", "").strip() or None
    return older_than, cast(Literal["all", "completed", "failed"], status), flow


# ---- runs -------------------------------------------------------------------------------------------------
async def _plan_cancel(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    run = await dash.engine.get_run(_run_id(form))
    return Plan(
        f"Cancel run {run.run_id}",
        (
            f"This run of {run.flow_slug} ({run.state}) fails at once: nothing of it starts or completes any more, "
            "its queued tasks never start and workers are told to stop its running handlers.",
            "A cancelled run can be retried in place afterwards.",
        ),
        "Cancel the run",
        f"/runs/{run.run_id}",
        danger=True,
    )


async def _cancel(dash: Dashboard, form: Mapping[str, str]) -> Done:
    run_id = _run_id(form)
    await dash.engine.cancel_run(run_id, reason=form.get("reason", "").strip() or None, by=ACTOR)
    return Done(f"/runs/{run_id}", f"Run {run_id} cancelled.")


async def _plan_retry(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    run = await dash.engine.get_run(_run_id(form))
    return Plan(
        f"Retry run {run.run_id}",
        (
            f"This run of {run.flow_slug} ({run.state}) is retried in place: completed steps and map elements keep "
            "their outputs, every other task gets a fresh attempt.",
        ),
        "Retry the run",
        f"/runs/{run.run_id}",
    )


async def _retry(dash: Dashboard, form: Mapping[str, str]) -> Done:
    run_id = _run_id(form)
    requeued = await dash.engine.retry_run(run_id)
    return Done(f"/runs/{run_id}", f"Run {run_id} retried: {requeued} task(s) requeued.")


async def _plan_rerun(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    run = await dash.engine.get_run(_run_id(form))
    return Plan(
        f"Rerun run {run.run_id}",
        (f"A new run of {run.flow_slug} starts with the same input, linked to this one.",),
        "Start the new run",
        f"/runs/{run.run_id}",
    )


async def _rerun(dash: Dashboard, form: Mapping[str, str]) -> Done:
    run_id = _run_id(form)
    handle = await dash.engine.rerun(run_id)
    return Done(f"/runs/{handle.run_id}", f"Run {handle.run_id} started, a rerun of {run_id}.")


# ---- queues -----------------------------------------------------------------------------------------------
async def _existing_flow(dash: Dashboard, form: Mapping[str, str]) -> str:
    """The form's flow, FlowNotFound (404) when the database has no such flow."""
    flow = _required(form, "flow")
    if not await dash.engine.flow_exists(flow):
        raise FlowNotFound(f"there is no flow {flow!r}: see the Flows page for the flows this database holds")
    return flow


async def _existing_schedule(dash: Dashboard, form: Mapping[str, str]) -> str:
    """The form's schedule, ScheduleNotFound (404) when there is no such schedule."""
    name = _required(form, "name")
    if name not in await dash.query(schedule_names):
        raise ScheduleNotFound(f"there is no schedule {name!r}: see the Schedules page for the schedules there are")
    return name


async def _plan_pause(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    flow = await _existing_flow(dash, form)
    return Plan(
        f"Pause the queue of {flow}",
        (
            "pgflow_trio's workers stop reading this flow's queue within a second; running tasks finish. Runs can "
            "still be started: their tasks wait until the queue is resumed.",
        ),
        "Pause the queue",
        "/queues",
        danger=True,
    )


async def _pause(dash: Dashboard, form: Mapping[str, str]) -> Done:
    flow = _required(form, "flow")
    await dash.engine.pause(flow, reason=form.get("reason", "").strip() or None)
    return Done("/queues", f"Queue {flow} paused.")


async def _plan_resume(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    flow = await _existing_flow(dash, form)
    return Plan(
        f"Resume the queue of {flow}",
        ("Workers read this flow's queue again within a second.",),
        "Resume the queue",
        "/queues",
    )


async def _resume(dash: Dashboard, form: Mapping[str, str]) -> Done:
    flow = await _existing_flow(dash, form)
    was_paused = await dash.engine.resume(flow)
    return Done("/queues", f"Queue {flow} resumed." if was_paused else f"Queue {flow} was not paused.")


# ---- schedules --------------------------------------------------------------------------------------------
async def _plan_pause_schedule(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    name = await _existing_schedule(dash, form)
    return Plan(
        f"Pause the schedule {name}",
        ("It fires no ticks until resumed; when resumed, the ticks it missed follow its catch-up policy.",),
        "Pause the schedule",
        "/schedules",
        danger=True,
    )


async def _pause_schedule(dash: Dashboard, form: Mapping[str, str]) -> Done:
    name = _required(form, "name")
    await dash.engine.pause_schedule(name)
    return Done("/schedules", f"Schedule {name} paused.")


async def _plan_resume_schedule(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    name = await _existing_schedule(dash, form)
    return Plan(
        f"Resume the schedule {name}",
        ("It fires again; the ticks it missed follow its catch-up policy ('skip': none, 'once': the latest).",),
        "Resume the schedule",
        "/schedules",
    )


async def _resume_schedule(dash: Dashboard, form: Mapping[str, str]) -> Done:
    name = await _existing_schedule(dash, form)
    was_paused = await dash.engine.resume_schedule(name)
    return Done("/schedules", f"Schedule {name} resumed." if was_paused else f"Schedule {name} was not paused.")


# ---- retention --------------------------------------------------------------------------------------------
async def _plan_prune(dash: Dashboard, form: Mapping[str, str]) -> Plan:
    older_than, status, flow = _prune_args(form)
    report = await dash.engine.prune_runs(older_than=older_than, status=status, flow=flow, dry_run=True)
    which = "finished" if status == "all" else status
    scope = f" of {flow}" if flow else ""
    return Plan(
        f"Prune {which} runs{scope} older than {describe(older_than)}",
        (
            f"{report.runs} run(s) that finished before {report.cutoff:%Y-%m-%d %H:%M:%SZ} will be deleted, with "
            f"{report.step_states} step state(s), {report.step_tasks} task(s) and their queue messages.",
            "Started runs are never touched. This cannot be undone.",
        ),
        f"Delete {report.runs} run(s)",
        "/runs",
        danger=True,
    )


async def _prune(dash: Dashboard, form: Mapping[str, str]) -> Done:
    older_than, status, flow = _prune_args(form)
    report = await dash.engine.prune_runs(older_than=older_than, status=status, flow=flow)
    return Done("/runs", f"Pruned {report.runs} run(s) with {report.step_tasks} task(s).")


VERBS: dict[str, Verb] = {
    "runs/cancel": Verb(("run_id", "reason"), _plan_cancel, _cancel),
    "runs/retry": Verb(("run_id",), _plan_retry, _retry),
    "runs/rerun": Verb(("run_id",), _plan_rerun, _rerun),
    "queues/pause": Verb(("flow", "reason"), _plan_pause, _pause),
    "queues/resume": Verb(("flow",), _plan_resume, _resume),
    "schedules/pause": Verb(("name",), _plan_pause_schedule, _pause_schedule),
    "schedules/resume": Verb(("name",), _plan_resume_schedule, _resume_schedule),
    "runs/prune": Verb(("older_than", "status", "flow"), _plan_prune, _prune),
}

NOT_FOUND = (RunNotFound, FlowNotFound, ScheduleNotFound)
CONFLICT = (RunNotActive, RunNotRetryable, FlowChanged)
BAD_REQUEST = (BadForm, ConfigurationError)


def _status_of(exc: PgflowError) -> int | None:
    if isinstance(exc, DatabaseError) and (exc.sqlstate or "").startswith("22"):
        return 400  # data exception: a value out of range or malformed for the database
    if isinstance(exc, NOT_FOUND):
        return 404
    if isinstance(exc, CONFLICT):
        return 409
    if isinstance(exc, BAD_REQUEST):
        return 400
    return None


async def _form(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields of a urlencoded form (what an HTML form posts); missing ones are empty."""
    body = (await request.body()).decode("utf-8", errors="replace")
    parsed = urllib.parse.parse_qs(body, keep_blank_values=True)
    form = {name: parsed.get(name, [""])[0] for name in names}
    for name, value in form.items():
        if CONTROL.search(value):
            raise BadForm(f"the field {name} contains control characters: send it as plain text")
    return form


def routes(dash: Dashboard) -> list[BaseRoute]:
    def refuse(request: Request, status: int, heading: str, text: str, back: str = "/") -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        context = {"heading": heading, "message": text, "back": root + back}
        return dash.render(request, "message.html", context, status_code=status)

    def handler(verb_name: str, verb: Verb) -> Callable[[Request], Awaitable[Response]]:
        async def act(request: Request) -> Response:
            if dash.config.read_only:
                return refuse(request, 403, "Read-only", "This dashboard is read-only: actions are switched off.")
            try:
                form = await _form(request, (*verb.fields, "confirmed"))
                if form["confirmed"] != "1":
                    return await confirm(request, verb_name, verb, form)
                done = await verb.perform(dash, form)
            except PgflowError as exc:
                status = _status_of(exc)
                if status is None:
                    raise
                return refuse(request, status, "Not done", str(exc))
            root = request.scope.get("root_path", "").rstrip("/")
            query = dash.security.notice_query(done.notice)
            return RedirectResponse(f"{root}{done.page}?{query}", status_code=303)

        return act

    async def confirm(request: Request, verb_name: str, verb: Verb, form: Mapping[str, str]) -> Response:
        plan = await verb.plan(dash, form)
        root = request.scope.get("root_path", "").rstrip("/")
        context = {
            "heading": plan.heading,
            "lines": plan.lines,
            "verb": verb_name,
            "fields": {name: form[name] for name in verb.fields if form.get(name)},
            "confirm_label": plan.confirm_label,
            "danger": plan.danger,
            "back": root + plan.back,
        }
        return dash.render(request, "confirm.html", context)

    return [Route(f"/actions/{name}", handler(name, verb), methods=["POST"]) for name, verb in VERBS.items()]
