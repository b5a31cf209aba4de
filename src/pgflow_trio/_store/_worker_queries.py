"""The worker's SQL, each unit of work one function run inside asyncio in a single crossing (`Database.run`)."""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Collection
from typing import Any

import asyncpg
import attrs

from pgflow_trio._store import RawConnection, Record
from pgflow_trio._store._lifecycle import EndedRun, runs_ended_at

log = logging.getLogger("pgflow_trio.worker")


@attrs.frozen
class ClaimedTask:
    """A task this worker started: what pgflow.start_tasks returned, plus the attempt number and the run input."""

    run_id: uuid.UUID
    step_slug: str
    task_index: int
    msg_id: int
    input: Any
    attempt: int
    flow_input: Any
    enqueued_at: datetime.datetime | None = None
    """When the task's message was sent (pgmq's `enqueued_at`; a retry keeps its first message's), fetched with
    the attempt number; None only if the message was archived in between (its run was cancelled)."""


@attrs.frozen
class ReadResult:
    tasks: list[ClaimedTask]
    read: int  # tasks started from the messages read
    next_visible_in: float | None  # seconds until the next invisible message becomes visible, if asked


def queue_table_name(queue: str) -> str:
    """The name of pgmq's table for `queue`: `q_` and the queue name in lower case, as pgmq.format_table_name
    makes it ("MyFlow" -> q_myflow). Our triggers name their channel after that table, so every name below derives
    from this one. `queue` is a validated flow slug (ASCII letters, digits, `_`)."""
    return "q_" + queue.lower()


def queue_table(queue: str) -> str:
    """The queue's table, qualified and quoted, for SQL text."""
    return f'pgmq."{queue_table_name(queue)}"'


def wake_channel(queue: str) -> str:
    """The channel our triggers notify when messages of `queue` are inserted or become visible earlier than they
    were (`pgflow_trio.enable_notify_visible`)."""
    return f"pgflow_trio.{queue_table_name(queue)}"


async def _details(con: RawConnection, rows: list[Record], queue: str) -> list[ClaimedTask]:
    """Attempt numbers, run inputs and message enqueue times of tasks start_tasks just returned (a second
    statement, so it sees them)."""
    if not rows:
        return []
    extra = await con.fetch(
        f"""SELECT t.run_id, t.step_slug, t.task_index, t.attempts_count, r.input::text AS run_input,
                  m.enqueued_at
           FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[]) AS k(run_id, step_slug, task_index, msg_id)
           JOIN pgflow.step_tasks t USING (run_id, step_slug, task_index)
           JOIN pgflow.runs r ON r.run_id = t.run_id
           LEFT JOIN {queue_table(queue)} m ON m.msg_id = k.msg_id""",
        [r["run_id"] for r in rows],
        [r["step_slug"] for r in rows],
        [r["task_index"] for r in rows],
        [r["msg_id"] for r in rows],
    )
    info = {(e["run_id"], e["step_slug"], e["task_index"]): e for e in extra}
    tasks = []
    for r in rows:
        e = info[(r["run_id"], r["step_slug"], r["task_index"])]
        tasks.append(
            ClaimedTask(
                run_id=r["run_id"],
                step_slug=r["step_slug"],
                task_index=r["task_index"],
                msg_id=r["msg_id"],
                input=json.loads(r["input"]),
                attempt=e["attempts_count"],
                flow_input=json.loads(e["run_input"]),
                enqueued_at=e["enqueued_at"],
            )
        )
    return tasks


async def read_and_claim(
    con: RawConnection,
    *,
    queue: str,
    worker_id: uuid.UUID,
    qty: int,
    visibility: int,
    poll_seconds: float | None,
    poll_interval_ms: int,
    want_next_visible: bool,
) -> ReadResult:
    """Read up to `qty` messages and start their tasks, then fetch their attempt numbers.

    Notify mode reads with `pgflow_trio.read_to_start` (schema 10) inside the `pgflow.start_tasks(...)` call: one
    statement. Poll mode must
    long-poll (`pgmq.read_with_poll`) in a statement of its own: start_tasks stamps `started_at = now()`, the start
    of its transaction, which must not precede the task's `queued_at` (a check constraint)."""
    claim = (
        "SELECT run_id, step_slug, task_index, msg_id, input::text AS input "
        "FROM pgflow.start_tasks($1, {ids}, $2::uuid)"
    )
    if poll_seconds is None:
        rows = await con.fetch(
            claim.format(ids="pgflow_trio.read_to_start($1, $3, $4, false)"), queue, worker_id, visibility, qty
        )
    else:
        ids = await con.fetch(
            "SELECT msg_id FROM pgmq.read_with_poll($1, $2, $3, $4, $5)",
            queue,
            visibility,
            qty,
            max(1, int(poll_seconds)),
            poll_interval_ms,
        )
        rows = await con.fetch(claim.format(ids="$3::bigint[]"), queue, worker_id, [r[0] for r in ids]) if ids else []
    tasks = await _details(con, rows, queue)
    next_visible = None
    if want_next_visible and not rows:
        next_visible = await con.fetchval(
            f"SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8 FROM {queue_table(queue)} "
            "WHERE vt > clock_timestamp()"
        )
    return ReadResult(tasks, len(rows), next_visible)


async def complete(con: RawConnection, *, task: ClaimedTask, payload: str, check_ended: bool = False) -> list[EndedRun]:
    """pgflow.complete_task with the output as JSON text (null stays JSON null, falsy values keep their value).
    With `check_ended`, also which run this completion ended (a follow-up statement in the same crossing)."""
    return await complete_many(con, tasks=[task], payloads=[payload], check_ended=check_ended)


async def complete_many(
    con: RawConnection, *, tasks: list[ClaimedTask], payloads: list[str], check_ended: bool = False
) -> list[EndedRun]:
    """pgflow.complete_task for several tasks in one statement (one transaction); each call sees the previous.
    With `check_ended`, the statement also returns its transaction's `now()`, and a follow-up statement says which
    runs it completed or failed (`runs_ended_at`)."""
    if len(tasks) == 1 and not check_ended:
        task = tasks[0]
        await con.execute(
            "SELECT pgflow.complete_task($1, $2, $3, $4::jsonb)",
            task.run_id,
            task.step_slug,
            task.task_index,
            payloads[0],
        )
        return []
    at = await con.fetchval(
        """SELECT now() FROM (
               SELECT count(*) FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[]) WITH ORDINALITY
                   AS t(run_id, step_slug, task_index, output, n),
               LATERAL pgflow.complete_task(t.run_id, t.step_slug, t.task_index, t.output::jsonb) AS c
           ) AS done""",
        [t.run_id for t in tasks],
        [t.step_slug for t in tasks],
        [t.task_index for t in tasks],
        payloads,
    )
    if not check_ended:
        return []
    return await _ended_after_commit(con, {t.run_id for t in tasks}, at)


async def make_queued_visible(con: RawConnection, *, queue: str) -> None:
    """Make every queued task's message of `queue` visible now (delays, start delays and retry backoffs end at
    once), through pgmq.set_vt."""
    await con.execute(
        "SELECT count(*) FROM pgflow.step_tasks t, LATERAL pgmq.set_vt(t.flow_slug, t.message_id, 0) "
        "WHERE t.flow_slug = $1 AND t.status = 'queued' AND t.message_id IS NOT NULL",
        queue,
    )


@attrs.frozen
class FailReport:
    """What a fail_task report did: whether the task was failed, and (when asked) which run it ended."""

    failed: bool
    ended: list[EndedRun] = attrs.Factory(list)

    def __bool__(self) -> bool:
        return self.failed


async def fail(
    con: RawConnection, *, worker_id: uuid.UUID, task: ClaimedTask, payload: str, check_ended: bool = False
) -> FailReport:
    """pgflow.fail_task with the error message (pgflow decides between retry with backoff and failure), only while
    the task is still started by `worker_id` under the message it claimed: an attempt from before a retry cannot
    fail the retried task. Locks run, step state, task in that order. Whether the task was failed (and with
    `check_ended`, whether this failed its run)."""
    return await _fail_claimed(con, worker_id, task, payload, permanent=False, check_ended=check_ended)


async def fail_permanently(
    con: RawConnection, *, worker_id: uuid.UUID, task: ClaimedTask, payload: str, check_ended: bool = False
) -> FailReport:
    """Fail the task without retrying it (its remaining attempts could not succeed); pgflow fails step and run.
    Fenced like `fail`."""
    return await _fail_claimed(con, worker_id, task, payload, permanent=True, check_ended=check_ended)


async def _fail_claimed(
    con: RawConnection, worker_id: uuid.UUID, task: ClaimedTask, payload: str, *, permanent: bool, check_ended: bool
) -> FailReport:
    row = await con.fetchrow(
        "SELECT pgflow_trio.fail_claimed_task($1, $2, $3, $4, $5, $6, $7) AS failed, now() AS at",
        task.run_id,
        task.step_slug,
        task.task_index,
        worker_id,
        task.msg_id,
        payload,
        permanent,
    )
    assert row is not None
    failed = bool(row["failed"])
    if not (failed and check_ended):
        return FailReport(failed)
    return FailReport(failed, await _ended_after_commit(con, [task.run_id], row["at"]))


async def attempt_ended(con: RawConnection, *, task: ClaimedTask) -> bool:
    """Say that this attempt of `task` ended after its run ended under it (schema 13): a retry need not wait for
    its timeout. True when a retry's held-back message of the task became visible."""
    expedited: bool = await con.fetchval(
        "SELECT pgflow_trio.attempt_ended($1, $2, $3, $4)", task.run_id, task.step_slug, task.task_index, task.msg_id
    )
    return expedited


async def release(con: RawConnection, *, worker_id: uuid.UUID, tasks: list[ClaimedTask]) -> int:
    """Hand tasks back without using an attempt, only those still started by `worker_id` under the claimed message."""
    released: int = await con.fetchval(
        "SELECT pgflow_trio.release_claimed_tasks($1, $2::uuid[], $3::text[], $4::int[], $5::bigint[])",
        worker_id,
        [t.run_id for t in tasks],
        [t.step_slug for t in tasks],
        [t.task_index for t in tasks],
        [t.msg_id for t in tasks],
    )
    return released


async def _ended_after_commit(
    con: RawConnection, run_ids: Collection[uuid.UUID], at: datetime.datetime
) -> list[EndedRun]:
    """The runs the committed report ended, for run.completed/run.failed. The report is stored whatever happens
    here: a failure of this follow-up only loses those events, so it is logged and not raised."""
    try:
        return await runs_ended_at(con, run_ids=run_ids, at=at)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("reading which runs a report ended failed (%s); their run events are lost", exc)
        return []
