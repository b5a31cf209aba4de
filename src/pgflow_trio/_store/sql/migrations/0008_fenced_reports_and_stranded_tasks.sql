-- pgflow_trio schema 8: reports fenced on the claimed message, one lock order, and repair of tasks a retry lost.
--
-- A retry gives every task it requeues a new queue message, so the message id tells one attempt of a task from the
-- next. Our workers report failures and hand tasks back only for the message they claimed: a handler of an attempt
-- from before a retry can no longer fail or release the retried task. Everything here locks in the order pgflow's
-- complete_task and our cancel_run/retry_run use -- run, then step state, then task -- so none of it can deadlock
-- with them.

-- Fail a task our worker claimed: only while it is still started by p_worker_id under message p_message_id. With
-- p_permanent the task fails without a retry (its remaining attempts could not succeed); pgflow fails the step and
-- the run as when attempts run out. Returns whether the task was failed.
CREATE OR REPLACE FUNCTION pgflow_trio.fail_claimed_task(
    p_run_id uuid, p_step_slug text, p_task_index integer, p_worker_id uuid, p_message_id bigint,
    p_error_message text, p_permanent boolean
)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_attempts integer;
  v_max integer;
BEGIN
  PERFORM 1 FROM pgflow.runs WHERE run_id = p_run_id FOR UPDATE;
  PERFORM 1 FROM pgflow.step_states WHERE run_id = p_run_id AND step_slug = p_step_slug FOR UPDATE;
  SELECT t.attempts_count, coalesce(s.opt_max_attempts, f.opt_max_attempts)
  INTO v_attempts, v_max
  FROM pgflow.step_tasks AS t
  JOIN pgflow.steps AS s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
  JOIN pgflow.flows AS f ON f.flow_slug = t.flow_slug
  WHERE t.run_id = p_run_id AND t.step_slug = p_step_slug AND t.task_index = p_task_index
    AND t.status = 'started' AND t.last_worker_id = p_worker_id AND t.message_id = p_message_id
  FOR UPDATE OF t;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  IF p_permanent THEN
    UPDATE pgflow.step_tasks SET attempts_count = greatest(v_attempts, v_max)
    WHERE run_id = p_run_id AND step_slug = p_step_slug AND task_index = p_task_index;
  END IF;
  PERFORM pgflow.fail_task(p_run_id, p_step_slug, p_task_index, p_error_message);
  IF p_permanent THEN
    UPDATE pgflow.step_tasks SET attempts_count = v_attempts
    WHERE run_id = p_run_id AND step_slug = p_step_slug AND task_index = p_task_index;
  END IF;
  RETURN true;
END
$body$;

-- Hand tasks back (graceful shutdown) as release_tasks does, but only those still started by p_worker_id under the
-- message it claimed. Returns how many tasks were released.
CREATE OR REPLACE FUNCTION pgflow_trio.release_claimed_tasks(
    p_worker_id uuid, p_run_ids uuid[], p_step_slugs text[], p_task_indexes integer[], p_message_ids bigint[]
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
    FROM unnest(p_run_ids, p_step_slugs, p_task_indexes, p_message_ids) AS r(run_id, step_slug, task_index, msg_id)
    WHERE t.run_id = r.run_id AND t.step_slug = r.step_slug AND t.task_index = r.task_index
      AND t.message_id = r.msg_id AND t.status = 'started' AND t.last_worker_id = p_worker_id
    RETURNING t.flow_slug, t.message_id
  LOOP
    PERFORM pgmq.set_vt(rec.flow_slug, rec.message_id, 0);
    released := released + 1;
  END LOOP;
  RETURN released;
END
$body$;

-- Recovery as before (schema 2), now locking run, step state and task in that order, each with SKIP LOCKED: a task
-- whose run is busy (being completed, cancelled or retried) is left for the next sweep instead of risking a
-- deadlock, and concurrent recoverers still handle each task once.
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
    SELECT t.run_id, t.step_slug, t.task_index, t.message_id, t.last_worker_id,
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
  LOOP
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = rec.run_id FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    PERFORM 1 FROM pgflow.step_states AS ss
    WHERE ss.run_id = rec.run_id AND ss.step_slug = rec.step_slug FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    PERFORM 1 FROM pgflow.step_tasks AS t
    WHERE t.run_id = rec.run_id AND t.step_slug = rec.step_slug AND t.task_index = rec.task_index
      AND t.status = 'started' AND t.message_id IS NOT DISTINCT FROM rec.message_id
      AND t.last_worker_id IS NOT DISTINCT FROM rec.last_worker_id
    FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    PERFORM pgflow.fail_task(rec.run_id, rec.step_slug, rec.task_index, 'abandoned task recovered: ' || rec.why);
    run_id := rec.run_id;
    step_slug := rec.step_slug;
    task_index := rec.task_index;
    reason := rec.why;
    RETURN NEXT;
  END LOOP;
END
$body$;

CREATE INDEX IF NOT EXISTS run_retries_retried_at ON pgflow_trio.run_retries (retried_at);

-- A task of a run retried in the last p_within_seconds that is queued while its message is no longer in the queue
-- gets a new message. This happens when a late pgflow.fail_task from before the retry (any worker's) checked the
-- run while it was still failed and then archived the task's message -- the retry's new one. Only recently retried
-- runs can be affected, so the check stays small. Returns the tasks requeued.
CREATE OR REPLACE FUNCTION pgflow_trio.requeue_stranded_tasks(p_within_seconds double precision DEFAULT 600)
RETURNS TABLE (run_id uuid, step_slug text, task_index integer)
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  rec record;
  v_present boolean;
  v_msg_id bigint;
BEGIN
  FOR rec IN
    SELECT DISTINCT t.run_id, t.step_slug, t.task_index, t.flow_slug
    FROM pgflow_trio.run_retries AS rr
    JOIN pgflow.runs AS r ON r.run_id = rr.run_id
    JOIN pgflow.step_tasks AS t ON t.run_id = rr.run_id
    WHERE rr.retried_at > clock_timestamp() - make_interval(secs => p_within_seconds)
      AND r.status = 'started' AND t.status = 'queued' AND t.message_id IS NOT NULL
  LOOP
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = rec.run_id AND r.status = 'started' FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    SELECT t.message_id INTO v_msg_id FROM pgflow.step_tasks AS t
    WHERE t.run_id = rec.run_id AND t.step_slug = rec.step_slug AND t.task_index = rec.task_index
      AND t.status = 'queued'
    FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM pgmq.%I WHERE msg_id = $1)', 'q_' || lower(rec.flow_slug))
    INTO v_present USING v_msg_id;
    CONTINUE WHEN v_present;
    SELECT sent INTO v_msg_id FROM pgmq.send(
      rec.flow_slug,
      jsonb_build_object(
        'flow_slug', rec.flow_slug, 'run_id', rec.run_id, 'step_slug', rec.step_slug, 'task_index', rec.task_index
      ),
      0
    ) AS sent;
    UPDATE pgflow.step_tasks AS t SET message_id = v_msg_id
    WHERE t.run_id = rec.run_id AND t.step_slug = rec.step_slug AND t.task_index = rec.task_index;
    run_id := rec.run_id;
    step_slug := rec.step_slug;
    task_index := rec.task_index;
    RETURN NEXT;
  END LOOP;
END
$body$;
