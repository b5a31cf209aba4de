-- pgflow_trio schema 13: retrying a run never runs a task while its previous attempt may still be running.

-- A task whose attempt was running when its run failed (pgflow leaves the siblings of the task that failed the run
-- `started`) or was cancelled (cancel_run fails it at once) may still have its handler running: the worker notices
-- within a notification or its run check, and a handler blocked in a thread runs on. A retry at that moment used to
-- queue the task's new attempt visible at once, so two attempts of one task could run side by side. Now such a
-- task's new message becomes visible when the previous attempt's timeout (plus 2 s) has passed, the latest the
-- worker lets it run, or as soon as our worker says the attempt ended (attempt_ended below); every other task is
-- queued visible at once, as before. Otherwise as in schema 5.

-- Attempts our workers saw end after their run ended under them (the handler was cancelled, or returned after the
-- cancellation): by the task's message at the time. A retry need not wait for these.
CREATE TABLE IF NOT EXISTS pgflow_trio.ended_attempts (
    run_id uuid NOT NULL REFERENCES pgflow.runs (run_id) ON DELETE CASCADE,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    message_id bigint NOT NULL,
    PRIMARY KEY (run_id, step_slug, task_index, message_id)
);

-- A worker's handler of message p_message_id ended after its run ended. Recorded for a later retry; and when a
-- retry already queued the task again with its message held back for this attempt, that message becomes visible now.
CREATE OR REPLACE FUNCTION pgflow_trio.attempt_ended(
    p_run_id uuid, p_step_slug text, p_task_index integer, p_message_id bigint
)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_task record;
BEGIN
  INSERT INTO pgflow_trio.ended_attempts (run_id, step_slug, task_index, message_id)
  SELECT p_run_id, p_step_slug, p_task_index, p_message_id
  WHERE EXISTS (SELECT 1 FROM pgflow.runs WHERE run_id = p_run_id)
  ON CONFLICT DO NOTHING;
  SELECT t.flow_slug, t.message_id INTO v_task
  FROM pgflow.step_tasks AS t
  WHERE t.run_id = p_run_id AND t.step_slug = p_step_slug AND t.task_index = p_task_index
    AND t.status = 'queued' AND t.message_id IS DISTINCT FROM p_message_id
    AND EXISTS (
      SELECT 1 FROM pgflow_trio.run_retries AS rr WHERE rr.run_id = t.run_id AND rr.retried_at = t.queued_at
    );
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pgmq.set_vt(v_task.flow_slug, v_task.message_id, 0);
  RETURN true;
END
$body$;

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
  v_cancelled_at timestamptz;
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

  SELECT c.cancelled_at INTO v_cancelled_at FROM pgflow_trio.run_cancellations AS c WHERE c.run_id = p_run_id;

  -- Messages of unfinished tasks were archived when the run failed; archive any left, then send fresh ones.
  PERFORM pgmq.archive(v_flow_slug, array_agg(t.message_id))
  FROM pgflow.step_tasks AS t JOIN pgflow.step_states AS ss USING (run_id, step_slug)
  WHERE t.run_id = p_run_id AND ss.status IN ('started', 'failed') AND t.status <> 'completed'
    AND t.message_id IS NOT NULL
  HAVING count(*) > 0;

  WITH retried AS (
    SELECT t.step_slug, t.task_index,
           CASE WHEN t.started_at IS NOT NULL
                     AND (t.status = 'started' OR (v_cancelled_at IS NOT NULL AND t.failed_at >= v_cancelled_at))
                     AND NOT EXISTS (
                       SELECT 1 FROM pgflow_trio.ended_attempts AS e
                       WHERE e.run_id = t.run_id AND e.step_slug = t.step_slug AND e.task_index = t.task_index
                         AND e.message_id = t.message_id
                     )
                THEN greatest(0, ceil(extract(epoch FROM
                       t.started_at + make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout, 60) + 2) - v_now
                     )))::integer
                ELSE 0
           END AS delay
    FROM pgflow.step_tasks AS t
    JOIN pgflow.step_states AS ss USING (run_id, step_slug)
    JOIN pgflow.steps AS s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
    JOIN pgflow.flows AS f ON f.flow_slug = t.flow_slug
    WHERE t.run_id = p_run_id AND ss.status IN ('started', 'failed') AND t.status <> 'completed'
    ORDER BY t.step_slug, t.task_index
    FOR UPDATE OF t
  ),
  sent AS (
    SELECT r.step_slug, r.task_index, m.msg_id
    FROM retried AS r
    CROSS JOIN LATERAL pgmq.send(
      v_flow_slug,
      jsonb_build_object('flow_slug', v_flow_slug, 'run_id', p_run_id, 'step_slug', r.step_slug, 'task_index', r.task_index),
      r.delay
    ) AS m(msg_id)
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

  DELETE FROM pgflow_trio.ended_attempts WHERE run_id = p_run_id;
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
