"""Dashboard pages on a big database: server-side time of every page, p50/p95 over N requests.

    python -m bench.dashboard [--dsn DSN] [--runs 100000] [--requests 30]

Builds a fresh database with `--runs` runs spread over 30 days (half of a three-step flow, a fifth of a map flow
with 40 tasks per run, the rest of a job: about ten tasks per run, 1,020,000 for 100,000 runs), written straight
into pgflow's tables with INSERT ... SELECT generate_series (a few runs started, one in 50 failed, one in 200
cancelled), then times each page through httpx's ASGI transport in this process: what the server spends on the
request (queries and rendering), no network. A page that does not answer 200 stops the benchmark.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import re
import statistics
import time

import httpx
import trio

from pgflow_trio import open_engine
from pgflow_trio._definitions._spec import flow_from_spec
from pgflow_trio._store import RawConnection, open_database
from pgflow_trio._store._flows import create_flow
from pgflow_trio.dashboard import create_app

from ._common import bench_database, percentile

MAP_TASKS = 40
FLOWS = (
    # slug, share of the runs, steps (slug, deps, step_type)
    (
        "bench_etl",
        0.5,
        (("extract", (), "single"), ("transform", ("extract",), "single"), ("load", ("transform",), "single")),
    ),
    ("bench_fanout", 0.2, (("split", (), "single"), ("work", ("split",), "map"), ("merge", ("work",), "single"))),
    ("bench_mail", 0.3, (("perform", (), "single"),)),
)
STARTED = 20
"""The newest runs of each flow are still running."""


def spec(slug: str, steps: tuple[tuple[str, tuple[str, ...], str], ...]) -> dict[str, object]:
    return {"slug": slug, "steps": [{"slug": s, "deps": list(d), "step_type": t} for s, d, t in steps]}


_RUNS = """
INSERT INTO pgflow.runs (run_id, flow_slug, status, input, output, remaining_steps, started_at, completed_at, failed_at)
SELECT gen_random_uuid(), $1, status, jsonb_build_object('n', i, 'customer', 'c' || (i % 977)),
       CASE WHEN status = 'completed' THEN jsonb_build_object('done', i) END,
       CASE WHEN status = 'completed' THEN 0 ELSE 1 END, started,
       CASE WHEN status = 'completed' THEN started + took END, CASE WHEN status = 'failed' THEN started + took END
FROM (SELECT i, now() - make_interval(secs => i * 30 * 86400.0 / $2) AS started,
             make_interval(secs => 0.2 + (i % 37) * 0.7) AS took,
             CASE WHEN i <= $3 THEN 'started' WHEN i % 50 = 0 OR i % 200 = 7 THEN 'failed'
                  ELSE 'completed' END AS status
      FROM generate_series(1, $2) AS i) AS g
"""
_CANCELLATIONS = """
INSERT INTO pgflow_trio.run_cancellations (run_id, reason, cancelled_by, cancelled_at)
SELECT run_id, 'bench', 'operator', failed_at FROM pgflow.runs
WHERE flow_slug = $1 AND status = 'failed' AND (input ->> 'n')::int % 200 = 7
"""
_STATES = """
INSERT INTO pgflow.step_states (flow_slug, run_id, step_slug, status, remaining_tasks, initial_tasks, remaining_deps,
                                created_at, started_at, completed_at, failed_at, error_message)
SELECT r.flow_slug, r.run_id, s.step_slug, r.status,
       CASE WHEN r.status = 'completed' THEN 0 ELSE 1 END,
       CASE WHEN s.step_type = 'map' THEN $2::int ELSE 1 END, 0,
       r.started_at, r.started_at, r.completed_at, r.failed_at,
       CASE WHEN r.status = 'failed' THEN 'boom' END
FROM pgflow.runs r JOIN pgflow.steps s ON s.flow_slug = r.flow_slug WHERE r.flow_slug = $1
"""
_TASKS = """
INSERT INTO pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, status, attempts_count, error_message,
                               output, queued_at, started_at, completed_at, failed_at, last_worker_id)
SELECT ss.flow_slug, ss.run_id, ss.step_slug, t, CASE ss.status WHEN 'created' THEN 'queued' ELSE ss.status END,
       CASE WHEN ss.status = 'failed' THEN 3 ELSE 1 END, ss.error_message,
       CASE WHEN ss.status = 'completed' THEN to_jsonb(t * 2) END,
       ss.created_at, ss.started_at, ss.completed_at, ss.failed_at, $2
FROM pgflow.step_states ss, generate_series(0, ss.initial_tasks - 1) AS t WHERE ss.flow_slug = $1
"""


async def populate(con: RawConnection, *, runs: int) -> dict[str, int]:
    """Flows, runs, step states and tasks, in one transaction; returns how many rows each table got."""
    async with con.transaction():
        worker = await con.fetchval(
            "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) "
            "VALUES (gen_random_uuid(), 'bench_etl', 'bench.dashboard') RETURNING worker_id"
        )
        for slug, share, steps in FLOWS:
            await create_flow(con, flow=flow_from_spec(spec(slug, steps)))
            count = int(runs * share)
            await con.execute(_RUNS, slug, count, STARTED)
            await con.execute(_CANCELLATIONS, slug)
            await con.execute(_STATES, slug, MAP_TASKS)
            await con.execute(_TASKS, slug, worker)
    counts = {}
    for table in ("runs", "step_states", "step_tasks"):
        counts[table] = await con.fetchval(f"SELECT count(*) FROM pgflow.{table}")
    await con.execute("ANALYZE")
    return counts


async def sample_paths(client: httpx.AsyncClient, con_ids: dict[str, str]) -> list[str]:
    """Every page, with filters and cursors taken from the data."""
    first = await client.get("/runs")
    older = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    deep = await client.get("/runs?flow=bench_etl&from=2000-01-01&until=" + con_ids["deep"])
    deep_older = re.search(r'<a rel="next" href="([^"]+)"', deep.text)
    fanout = con_ids["fanout"]
    paths = [
        "/",
        "/workers",
        "/queues",
        "/schedules",
        "/flows",
        "/flows?range=30d",
        "/jobs?range=30d",
        "/flows/bench_fanout",
        "/runs",
        "/runs?flow=bench_etl",
        "/runs?status=failed",
        "/runs?status=cancelled",
        "/runs?status=started",
        "/runs?flow=bench_mail&status=failed",
        "/runs?flow=bench_fanout&status=cancelled",
        "/runs?from=" + con_ids["from"] + "&until=" + con_ids["until"],
        "/runs?q=" + fanout[:4],
        f"/runs/{fanout}",
        f"/runs/{con_ids['etl']}",
        f"/runs/{fanout}/input.json",
        f"/runs/{fanout}/output/work.json",
        f"/runs/{fanout}/output/work/3.json",
    ]
    if older:
        paths.append(older.group(1).replace("&amp;", "&"))
    if deep_older:
        paths.append(deep_older.group(1).replace("&amp;", "&"))
    return paths


async def main(dsn: str | None, runs: int, requests: int) -> None:
    async with bench_database(dsn) as url:
        began = time.perf_counter()
        async with open_database(url, max_size=1) as db:
            counts = await db.run(functools.partial(populate, runs=runs))
            fanout = await db.fetchval(
                "SELECT run_id::text FROM pgflow.runs WHERE flow_slug = 'bench_fanout' AND status = 'completed' "
                "ORDER BY started_at DESC LIMIT 1 OFFSET 50"
            )
            etl = await db.fetchval(
                "SELECT run_id::text FROM pgflow.runs WHERE flow_slug = 'bench_etl' AND status = 'failed' LIMIT 1"
            )
        built = time.perf_counter() - began
        print(
            f"database: {counts['runs']:,} runs, {counts['step_states']:,} step states, "
            f"{counts['step_tasks']:,} step tasks, built in {built:.1f}s"
        )
        now = datetime.datetime.now(datetime.UTC)
        ids = {
            "fanout": fanout,
            "etl": etl,
            "from": (now - datetime.timedelta(days=15)).strftime("%Y-%m-%dT%H:%M"),
            "until": (now - datetime.timedelta(days=14)).strftime("%Y-%m-%dT%H:%M"),
            "deep": (now - datetime.timedelta(days=20)).strftime("%Y-%m-%dT%H:%M"),
        }
        async with open_engine(url) as engine:
            transport = httpx.ASGITransport(app=create_app(engine))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                paths = await sample_paths(client, ids)
                print(f"server-side time per page, {requests} requests each (ms)")
                print(f"  {'page':70} {'status':>6} {'p50':>7} {'p95':>7} {'max':>7}")
                for path in paths:
                    statuses = set()
                    for _ in range(2):  # warm: the pool's connections, the templates
                        await client.get(path)
                    samples = []
                    for _ in range(requests):
                        start = time.perf_counter()
                        response = await client.get(path)
                        samples.append((time.perf_counter() - start) * 1000)
                        statuses.add(response.status_code)
                    if statuses != {200}:
                        raise SystemExit(f"{path} answered {sorted(statuses)}, not 200")
                    shown = path if len(path) <= 70 else path[:67] + "..."
                    print(
                        f"  {shown:70} {','.join(map(str, sorted(statuses))):>6} {statistics.median(samples):7.1f} "
                        f"{percentile(samples, 95):7.1f} {max(samples):7.1f}"
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    trio.run(main, args.dsn, args.runs, args.requests)
