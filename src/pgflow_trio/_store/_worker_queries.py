"""The worker's SQL, each unit of work one function run inside asyncio in a single crossing (`Database.run`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs

from pgflow_trio._store import RawConnection, Record


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


async def _details(con: RawConnection, rows: list[Record]) -> list[ClaimedTask]:
    """Attempt numbers and run inputs of tasks start_tasks just returned (a second statement, so it sees them)."""
    if not rows:
        return []
    extra = await con.fetch(
        """SELECT t.run_id, t.step_slug, t.task_index, t.attempts_count, r.input::text AS run_input
           FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(run_id, step_slug, task_index)
           JOIN pgflow.step_tasks t USING (run_id, step_slug, task_index)
           JOIN pgflow.runs r ON r.run_id = t.run_id""",
        [r["run_id"] for r in rows],
        [r["step_slug"] for r in rows],
        [r["task_index"] for r in rows],
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

    Notify mode reads with `pgmq.read` inside the `pgflow.start_tasks(...)` call: one statement. Poll mode must
    long-poll (`pgmq.read_with_poll`) in a statement of its own: start_tasks stamps `started_at = now()`, the start
    of its transaction, which must not precede the task's `queued_at` (a check constraint)."""
    claim = (
        "SELECT run_id, step_slug, task_index, msg_id, input::text AS input "
        "FROM pgflow.start_tasks($1, {ids}, $2::uuid)"
    )
    if poll_seconds is None:
        rows = await con.fetch(
            claim.format(ids="ARRAY(SELECT msg_id FROM pgmq.read($1, $3, $4))"), queue, worker_id, visibility, qty
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
    tasks = await _details(con, rows)
    next_visible = None
    if want_next_visible and not rows:
        next_visible = await con.fetchval(
            f"SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8 FROM {queue_table(queue)} "
            "WHERE vt > clock_timestamp()"
        )
    return ReadResult(tasks, len(rows), next_visible)


async def complete(con: RawConnection, *, task: ClaimedTask, payload: str) -> None:
    """pgflow.complete_task with the output as JSON text (null stays JSON null, falsy values keep their value)."""
    await con.execute(
        "SELECT pgflow.complete_task($1, $2, $3, $4::jsonb)", task.run_id, task.step_slug, task.task_index, payload
    )


async def complete_many(con: RawConnection, *, tasks: list[ClaimedTask], payloads: list[str]) -> None:
    """pgflow.complete_task for several tasks in one statement (one transaction); each call sees the previous."""
    await con.execute(
        """SELECT count(*) FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[]) WITH ORDINALITY
                AS t(run_id, step_slug, task_index, output, n),
           LATERAL pgflow.complete_task(t.run_id, t.step_slug, t.task_index, t.output::jsonb) AS c""",
        [t.run_id for t in tasks],
        [t.step_slug for t in tasks],
        [t.task_index for t in tasks],
        payloads,
    )


async def make_queued_visible(con: RawConnection, *, queue: str) -> None:
    """Make every queued task's message of `queue` visible now (delays, start delays and retry backoffs end at
    once), through pgmq.set_vt."""
    await con.execute(
        "SELECT count(*) FROM pgflow.step_tasks t, LATERAL pgmq.set_vt(t.flow_slug, t.message_id, 0) "
        "WHERE t.flow_slug = $1 AND t.status = 'queued' AND t.message_id IS NOT NULL",
        queue,
    )


async def fail(con: RawConnection, *, worker_id: uuid.UUID, task: ClaimedTask, payload: str) -> bool:
    """pgflow.fail_task with the error message (pgflow decides between retry with backoff and failure), only while
    the task is still started by `worker_id` under the message it claimed: an attempt from before a retry cannot
    fail the retried task. Locks run, step state, task in that order. Whether the task was failed."""
    return await _fail_claimed(con, worker_id, task, payload, permanent=False)


async def fail_permanently(con: RawConnection, *, worker_id: uuid.UUID, task: ClaimedTask, payload: str) -> bool:
    """Fail the task without retrying it (its remaining attempts could not succeed); pgflow fails step and run.
    Fenced like `fail`."""
    return await _fail_claimed(con, worker_id, task, payload, permanent=True)


async def _fail_claimed(
    con: RawConnection, worker_id: uuid.UUID, task: ClaimedTask, payload: str, *, permanent: bool
) -> bool:
    failed: bool = await con.fetchval(
        "SELECT pgflow_trio.fail_claimed_task($1, $2, $3, $4, $5, $6, $7)",
        task.run_id,
        task.step_slug,
        task.task_index,
        worker_id,
        task.msg_id,
        payload,
        permanent,
    )
    return failed


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
