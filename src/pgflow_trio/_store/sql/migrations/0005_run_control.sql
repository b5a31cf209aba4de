-- pgflow_trio schema 5: operating runs. Cancel a started run, retry a failed (or cancelled) run in place, and rerun a
-- run as a new one linked to it. Each operation is one function, so it is one transaction however it is called.
--
-- Errors the functions raise carry their own SQLSTATE, so callers can tell them apart:
--   PF001  there is no such run
--   PF002  the run is not in a state the operation accepts (DETAIL: its state: started|completed|failed|cancelled)
--   PF003  the flow's shape no longer matches the run (retry refuses to guess)

-- Who cancelled a run, when and why. A cancelled run is a failed run (pgflow knows only started|completed|failed,
-- and all of pgflow's guards key on failed) with a row here. Retrying the run deletes the row.
CREATE TABLE IF NOT EXISTS pgflow_trio.run_cancellations (
    run_id uuid PRIMARY KEY REFERENCES pgflow.runs (run_id) ON DELETE CASCADE,
    reason text,
    cancelled_by text,
    cancelled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per retry of a run in place: when, how many tasks got a fresh attempt, and the cancellation it undid.
CREATE TABLE IF NOT EXISTS pgflow_trio.run_retries (
    retry_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES pgflow.runs (run_id) ON DELETE CASCADE,
    retried_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tasks_requeued integer NOT NULL,
    was_cancelled boolean NOT NULL,
    cancel_reason text
);
CREATE INDEX IF NOT EXISTS run_retries_run_id ON pgflow_trio.run_retries (run_id);

-- A rerun: a new run of the same flow with the same input. `rerun_of` is not a foreign key: the original may be
-- deleted (pruned) while its rerun is kept.
CREATE TABLE IF NOT EXISTS pgflow_trio.run_links (
    run_id uuid PRIMARY KEY REFERENCES pgflow.runs (run_id) ON DELETE CASCADE,
    rerun_of uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS run_links_rerun_of ON pgflow_trio.run_links (rerun_of);

-- The run's state as people see it: pgflow's status, except that a failed run with a cancellation is 'cancelled'.
CREATE OR REPLACE FUNCTION pgflow_trio.run_state(p_run_id uuid)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = ''
AS $body$
  SELECT CASE WHEN r.status = 'failed' AND c.run_id IS NOT NULL THEN 'cancelled' ELSE r.status END
  FROM pgflow.runs AS r LEFT JOIN pgflow_trio.run_cancellations AS c ON c.run_id = r.run_id
  WHERE r.run_id = p_run_id
$body$;

-- Lock a run (FOR UPDATE, the first lock pgflow's own functions take too) and return its flow; raise PF001 when
-- there is no such run and PF002 unless its status is p_expected.
CREATE OR REPLACE FUNCTION pgflow_trio.lock_run_for(p_run_id uuid, p_expected text, p_operation text, p_hint text)
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_flow_slug text;
  v_status text;
  v_state text;
BEGIN
  SELECT flow_slug, status INTO v_flow_slug, v_status FROM pgflow.runs WHERE run_id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'there is no run %', p_run_id USING ERRCODE = 'PF001';
  END IF;
  IF v_status <> p_expected THEN
    v_state := pgflow_trio.run_state(p_run_id);
    RAISE EXCEPTION 'cannot % run % of %: it is %', p_operation, p_run_id, v_flow_slug,
      CASE v_state WHEN 'started' THEN 'still running' ELSE 'already ' || v_state END
      USING ERRCODE = 'PF002', DETAIL = v_state, HINT = p_hint;
  END IF;
  RETURN v_flow_slug;
END
$body$;

-- Cancel a started run. The run becomes failed (so pgflow starts, completes and retries nothing of it any more);
-- its queued and started tasks fail with the cancellation as their error and their queue messages are archived, so
-- no worker reads them again; its started steps fail likewise. The cancellation is recorded, the run:failed event
-- is sent (waiters wake at once), and the flow queue's wake channel gets 'cancel:<run_id>' so workers can cancel
-- handlers of the run that are still running. Raises PF002 unless the run is started.
CREATE OR REPLACE FUNCTION pgflow_trio.cancel_run(p_run_id uuid, p_reason text DEFAULT NULL, p_by text DEFAULT NULL)
RETURNS pgflow_trio.run_cancellations
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_flow_slug text;
  v_now timestamptz;
  v_error text;
  v_row pgflow_trio.run_cancellations;
  v_step record;
BEGIN
  v_flow_slug := pgflow_trio.lock_run_for(
    p_run_id, 'started', 'cancel',
    'only a started run can be cancelled; retry a failed or cancelled run instead, or rerun a finished one'
  );
  v_error := 'Cancelled' || coalesce(' by ' || p_by, '') || coalesce(': ' || p_reason, '');
  -- pgflow's lock order: run, then step states, then tasks.
  PERFORM 1 FROM pgflow.step_states WHERE run_id = p_run_id ORDER BY step_slug FOR UPDATE;
  PERFORM 1 FROM pgflow.step_tasks WHERE run_id = p_run_id AND status IN ('queued', 'started')
  ORDER BY step_slug, task_index FOR UPDATE;
  -- The cancellation's time, taken once every task is locked (not now(): this transaction may predate rows it
  -- waited for): a task started before it, by a start that committed first; none can start after.
  v_now := clock_timestamp();

  UPDATE pgflow.runs SET status = 'failed', failed_at = greatest(v_now, started_at) WHERE run_id = p_run_id;

  PERFORM pgmq.archive(v_flow_slug, array_agg(message_id))
  FROM pgflow.step_tasks
  WHERE run_id = p_run_id AND status IN ('queued', 'started') AND message_id IS NOT NULL
  HAVING count(*) > 0;

  UPDATE pgflow.step_tasks
  SET status = 'failed',
      failed_at = greatest(v_now, queued_at, started_at),
      error_message = v_error
  WHERE run_id = p_run_id AND status IN ('queued', 'started');

  FOR v_step IN
    UPDATE pgflow.step_states
    SET status = 'failed', failed_at = greatest(v_now, started_at), error_message = v_error
    WHERE run_id = p_run_id AND status = 'started'
    RETURNING step_slug
  LOOP
    PERFORM realtime.send(
      jsonb_build_object(
        'event_type', 'step:failed', 'run_id', p_run_id, 'step_slug', v_step.step_slug, 'status', 'failed',
        'error_message', v_error, 'failed_at', v_now
      ),
      concat('step:', v_step.step_slug, ':failed'),
      concat('pgflow:run:', p_run_id),
      false
    );
  END LOOP;

  INSERT INTO pgflow_trio.run_cancellations (run_id, reason, cancelled_by, cancelled_at)
  VALUES (p_run_id, p_reason, p_by, v_now)
  ON CONFLICT (run_id) DO UPDATE
    SET reason = EXCLUDED.reason, cancelled_by = EXCLUDED.cancelled_by, cancelled_at = EXCLUDED.cancelled_at
  RETURNING * INTO v_row;

  PERFORM realtime.send(
    jsonb_build_object(
      'event_type', 'run:failed', 'run_id', p_run_id, 'flow_slug', v_flow_slug, 'status', 'failed',
      'error_message', v_error, 'failed_at', v_now, 'cancelled', true
    ),
    'run:failed',
    concat('pgflow:run:', p_run_id),
    false
  );
  PERFORM pg_notify('pgflow_trio.q_' || lower(v_flow_slug), 'cancel:' || p_run_id);
  RETURN v_row;
END
$body$;

-- Why a failed run can no longer be retried in place because its flow changed since it started: steps added to the
-- flow after the run started (pgflow.add_step), or steps whose recorded state contradicts the flow's dependencies
-- or step types. NULL when the run still matches its flow.
CREATE OR REPLACE FUNCTION pgflow_trio.run_shape_mismatch(p_run_id uuid)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = ''
AS $body$
  WITH run AS (
    SELECT run_id, flow_slug FROM pgflow.runs WHERE run_id = p_run_id
  ),
  problems AS (
    SELECT 1 AS rank, 'step ' || s.step_slug || ' was added to the flow after the run started' AS problem
    FROM run JOIN pgflow.steps AS s ON s.flow_slug = run.flow_slug
    WHERE NOT EXISTS (
      SELECT 1 FROM pgflow.step_states AS ss WHERE ss.run_id = run.run_id AND ss.step_slug = s.step_slug
    )
    UNION ALL
    SELECT 2, 'step ' || ss.step_slug || ' waits for ' || ss.remaining_deps || ' dependencies but the flow has '
              || count(d.dep_slug) FILTER (WHERE dep.status IS DISTINCT FROM 'completed') || ' unfinished'
    FROM run
    JOIN pgflow.step_states AS ss ON ss.run_id = run.run_id
    LEFT JOIN pgflow.deps AS d ON d.flow_slug = ss.flow_slug AND d.step_slug = ss.step_slug
    LEFT JOIN pgflow.step_states AS dep ON dep.run_id = ss.run_id AND dep.step_slug = d.dep_slug
    GROUP BY ss.step_slug, ss.remaining_deps
    HAVING ss.remaining_deps <> count(d.dep_slug) FILTER (WHERE dep.status IS DISTINCT FROM 'completed')
    UNION ALL
    SELECT 3, 'step ' || ss.step_slug || ' is a single step but the run holds ' || coalesce(ss.initial_tasks, 0)
              || ' tasks for it'
    FROM run
    JOIN pgflow.step_states AS ss ON ss.run_id = run.run_id
    JOIN pgflow.steps AS s ON s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug
    WHERE s.step_type = 'single' AND ss.initial_tasks IS DISTINCT FROM 1
  )
  SELECT string_agg(problem, '; ' ORDER BY rank, problem) FROM problems
$body$;

-- Retry a failed (or cancelled) run in place. Completed steps and completed tasks (map elements) keep their outputs
-- and are not run again. Every other task of a started or failed step gets a fresh attempt: queued, attempts 0,
-- error and output cleared, and a new queue message in pgflow's format ({flow_slug, run_id, step_slug,
-- task_index}, visible now). Failed steps go back to started with remaining_tasks = tasks not completed; the run
-- goes back to started; steps whose dependencies are done start through pgflow.start_ready_steps. The flow's
-- current options (max_attempts, base_delay, timeout) apply, as pgflow reads them when tasks start and fail.
-- Raises PF002 unless the run is failed, PF003 when the flow's shape changed. Returns the tasks requeued.
CREATE OR REPLACE FUNCTION pgflow_trio.retry_run(p_run_id uuid)
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_flow_slug text;
  v_now timestamptz := clock_timestamp();
  v_mismatch text;
  v_cancel pgflow_trio.run_cancellations;
  v_requeued integer := 0;
BEGIN
  v_flow_slug := pgflow_trio.lock_run_for(
    p_run_id, 'failed', 'retry',
    'only a failed or cancelled run can be retried in place; cancel a started run first, or rerun a completed one'
  );
  PERFORM 1 FROM pgflow.step_states WHERE run_id = p_run_id ORDER BY step_slug FOR UPDATE;
  v_mismatch := pgflow_trio.run_shape_mismatch(p_run_id);
  IF v_mismatch IS NOT NULL THEN
    RAISE EXCEPTION 'cannot retry run % of %: its flow changed since the run started (%)',
      p_run_id, v_flow_slug, v_mismatch
      USING ERRCODE = 'PF003', DETAIL = v_mismatch,
            HINT = 'rerun it instead: a new run of the flow as it is now, with the same input';
  END IF;

  -- Messages of unfinished tasks were archived when the run failed; archive any left, then send fresh ones.
  PERFORM pgmq.archive(v_flow_slug, array_agg(t.message_id))
  FROM pgflow.step_tasks AS t JOIN pgflow.step_states AS ss USING (run_id, step_slug)
  WHERE t.run_id = p_run_id AND ss.status IN ('started', 'failed') AND t.status <> 'completed'
    AND t.message_id IS NOT NULL
  HAVING count(*) > 0;

  WITH retried AS (
    SELECT t.step_slug, t.task_index
    FROM pgflow.step_tasks AS t JOIN pgflow.step_states AS ss USING (run_id, step_slug)
    WHERE t.run_id = p_run_id AND ss.status IN ('started', 'failed') AND t.status <> 'completed'
    ORDER BY t.step_slug, t.task_index
    FOR UPDATE OF t
  ),
  batch AS (
    SELECT array_agg(jsonb_build_object(
             'flow_slug', v_flow_slug, 'run_id', p_run_id, 'step_slug', step_slug, 'task_index', task_index
           ) ORDER BY step_slug, task_index) AS messages,
           array_agg(step_slug ORDER BY step_slug, task_index) AS step_slugs,
           array_agg(task_index ORDER BY step_slug, task_index) AS task_indexes
    FROM retried
    HAVING count(*) > 0
  ),
  sent AS (
    SELECT b.step_slugs[m.n] AS step_slug, b.task_indexes[m.n] AS task_index, m.msg_id
    FROM batch AS b
    CROSS JOIN LATERAL pgmq.send_batch(v_flow_slug, b.messages, 0) WITH ORDINALITY AS m(msg_id, n)
  ),
  requeued AS (
    UPDATE pgflow.step_tasks AS t
    SET status = 'queued', attempts_count = 0, error_message = NULL, output = NULL, queued_at = v_now,
        started_at = NULL, completed_at = NULL, failed_at = NULL, last_worker_id = NULL, message_id = sent.msg_id
    FROM sent
    WHERE t.run_id = p_run_id AND t.step_slug = sent.step_slug AND t.task_index = sent.task_index
    RETURNING 1
  )
  SELECT count(*) INTO v_requeued FROM requeued;

  UPDATE pgflow.step_states AS ss
  SET status = 'started', failed_at = NULL, error_message = NULL,
      remaining_tasks = ss.initial_tasks - (
        SELECT count(*) FROM pgflow.step_tasks AS t
        WHERE t.run_id = ss.run_id AND t.step_slug = ss.step_slug AND t.status = 'completed'
      )::integer
  WHERE ss.run_id = p_run_id AND ss.status IN ('started', 'failed');

  UPDATE pgflow.runs SET status = 'started', failed_at = NULL WHERE run_id = p_run_id;

  DELETE FROM pgflow_trio.run_cancellations WHERE run_id = p_run_id RETURNING * INTO v_cancel;
  INSERT INTO pgflow_trio.run_retries (run_id, retried_at, tasks_requeued, was_cancelled, cancel_reason)
  VALUES (p_run_id, v_now, v_requeued, v_cancel.run_id IS NOT NULL, v_cancel.reason);

  PERFORM realtime.send(
    jsonb_build_object(
      'event_type', 'run:started', 'run_id', p_run_id, 'flow_slug', v_flow_slug, 'status', 'started',
      'started_at', v_now, 'retried', true
    ),
    'run:started',
    concat('pgflow:run:', p_run_id),
    false
  );
  PERFORM pgflow.start_ready_steps(p_run_id);
  PERFORM pgflow.maybe_complete_run(p_run_id);
  PERFORM pg_notify('pgflow_trio.q_' || lower(v_flow_slug), '');
  RETURN v_requeued;
END
$body$;

-- Start a new run of a run's flow with the run's input, linked to it in run_links. Returns the new run's id.
CREATE OR REPLACE FUNCTION pgflow_trio.rerun(p_run_id uuid)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_flow_slug text;
  v_input jsonb;
  v_new uuid;
BEGIN
  SELECT flow_slug, input INTO v_flow_slug, v_input FROM pgflow.runs WHERE run_id = p_run_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'there is no run %', p_run_id USING ERRCODE = 'PF001';
  END IF;
  SELECT run_id INTO v_new FROM pgflow.start_flow(v_flow_slug, v_input);
  INSERT INTO pgflow_trio.run_links (run_id, rerun_of) VALUES (v_new, p_run_id);
  RETURN v_new;
END
$body$;
