"""What health checks read: per flow queue, live and stale workers, its messages' counts and ages, and its pause."""

from __future__ import annotations

from pgflow_trio._definitions._slugs import slug_problem
from pgflow_trio._models import QueueHealth, QueuePause
from pgflow_trio._store import RawConnection
from pgflow_trio._store._worker_queries import queue_table

_QUEUE_STATS = (
    "SELECT count(*) AS depth, count(*) FILTER (WHERE vt <= clock_timestamp()) AS visible, "
    "extract(epoch FROM clock_timestamp() - min(enqueued_at))::float8 AS oldest, "
    "extract(epoch FROM clock_timestamp() - min(vt) FILTER (WHERE vt <= clock_timestamp()))::float8 AS oldest_visible "
    "FROM {table}"
)


async def queue_health(con: RawConnection, *, stale_after: float) -> list[QueueHealth]:
    """Per flow: live/stale workers, its queue's pause, and message counts and ages, read from the queue tables
    (pgmq's metrics count invisible messages into the age, and an age from enqueue time makes every delayed job
    look stuck)."""
    rows = await con.fetch(
        """SELECT f.flow_slug,
                  (SELECT count(*) FROM pgflow.workers w WHERE w.queue_name = f.flow_slug
                    AND w.deprecated_at IS NULL
                    AND w.last_heartbeat_at > clock_timestamp() - make_interval(secs => $1)) AS alive,
                  (SELECT count(*) FROM pgflow.workers w WHERE w.queue_name = f.flow_slug
                    AND w.deprecated_at IS NULL
                    AND w.last_heartbeat_at <= clock_timestamp() - make_interval(secs => $1)) AS stale,
                  EXISTS (SELECT 1 FROM pgmq.meta m WHERE m.queue_name = f.flow_slug) AS has_queue,
                  p.paused_at, p.reason AS pause_reason
           FROM pgflow.flows f LEFT JOIN pgflow_trio.queue_pauses p ON p.queue = f.flow_slug
           ORDER BY f.flow_slug""",
        stale_after,
    )
    queues = []
    for r in rows:
        slug = r["flow_slug"]
        stats = None
        if r["has_queue"] and slug_problem(slug) is None:
            stats = await con.fetchrow(_QUEUE_STATS.format(table=queue_table(slug)))
        queues.append(
            QueueHealth(
                slug,
                r["alive"],
                r["stale"],
                stats["depth"] if stats else 0,
                stats["oldest"] if stats else None,
                visible=stats["visible"] if stats else 0,
                oldest_visible_age=stats["oldest_visible"] if stats else None,
                paused=None if r["paused_at"] is None else QueuePause(r["paused_at"], r["pause_reason"]),
            )
        )
    return queues
