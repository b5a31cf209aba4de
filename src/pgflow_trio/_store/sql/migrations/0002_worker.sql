-- pgflow_trio schema 2: what pgflow core 0.8.1 lacks for workers.

-- Hand tasks a worker started but will not finish (graceful shutdown) back to the queue without using up an
-- attempt: undo what pgflow.start_tasks did and make the message visible now. Only the worker that started a task
-- can release it, and only while it is still 'started'. Returns how many tasks were released.
CREATE OR REPLACE FUNCTION pgflow_trio.release_tasks(
    p_worker_id uuid, p_run_ids uuid[], p_step_slugs text[], p_task_indexes integer[]
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  released integer := 0;
  rec record;
BEGIN
  FOR rec IN
    UPDATE pgflow.step_tasks AS t
    SET status = 'queued',
        attempts_count = greatest(t.attempts_count - 1, 0),
        started_at = NULL,
        last_worker_id = NULL
    FROM unnest(p_run_ids, p_step_slugs, p_task_indexes) AS r(run_id, step_slug, task_index)
    WHERE t.run_id = r.run_id AND t.step_slug = r.step_slug AND t.task_index = r.task_index
      AND t.status = 'started' AND t.last_worker_id = p_worker_id
    RETURNING t.flow_slug, t.message_id
  LOOP
    IF rec.message_id IS NOT NULL THEN
      PERFORM pgmq.set_vt(rec.flow_slug, rec.message_id, 0);
    END IF;
    released := released + 1;
  END LOOP;
  RETURN released;
END
$body$;

-- Recover tasks left in 'started' by a worker that stopped heartbeating (or is unknown), or that outlived their
-- timeout by p_grace_seconds. Each is failed through pgflow.fail_task, so pgflow's own retry policy, backoff and
-- max_attempts apply: requeues are bounded. SKIP LOCKED makes concurrent callers safe: each task is handled once.
CREATE OR REPLACE FUNCTION pgflow_trio.recover_stalled_tasks(
    p_stale_seconds double precision, p_grace_seconds double precision, p_limit integer DEFAULT 100
)
RETURNS TABLE (run_id uuid, step_slug text, task_index integer, reason text)
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  rec record;
BEGIN
  FOR rec IN
    SELECT t.run_id, t.step_slug, t.task_index,
           CASE
             WHEN w.worker_id IS NULL THEN 'its worker is unknown'
             WHEN w.last_heartbeat_at < clock_timestamp() - make_interval(secs => p_stale_seconds)
               THEN 'its worker ' || w.worker_id || ' stopped heartbeating'
             ELSE 'it ran past its timeout of ' || coalesce(s.opt_timeout, f.opt_timeout) || 's'
           END AS why
    FROM pgflow.step_tasks AS t
    JOIN pgflow.steps AS s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
    JOIN pgflow.flows AS f ON f.flow_slug = t.flow_slug
    LEFT JOIN pgflow.workers AS w ON w.worker_id = t.last_worker_id
    WHERE t.status = 'started'
      AND (
        w.worker_id IS NULL
        OR w.last_heartbeat_at < clock_timestamp() - make_interval(secs => p_stale_seconds)
        OR t.started_at < clock_timestamp()
             - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + p_grace_seconds)
      )
    ORDER BY t.started_at
    LIMIT p_limit
    FOR UPDATE OF t SKIP LOCKED
  LOOP
    PERFORM pgflow.fail_task(rec.run_id, rec.step_slug, rec.task_index, 'abandoned task recovered: ' || rec.why);
    run_id := rec.run_id;
    step_slug := rec.step_slug;
    task_index := rec.task_index;
    reason := rec.why;
    RETURN NEXT;
  END LOOP;
END
$body$;
