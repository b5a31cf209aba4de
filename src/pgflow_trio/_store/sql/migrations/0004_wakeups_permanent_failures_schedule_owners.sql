-- pgflow_trio schema 4: wake workers when a message becomes visible earlier, fail tasks that can never succeed,
-- and fire schedules only for flows some live worker serves.

-- A worker in notify mode wakes whenever a message it could read may have become visible: when messages are
-- inserted, and when a message becomes visible earlier than it was without an insert: when pgflow retries a task
-- (fail_task sets the message's visibility to the backoff), when a task is handed back (release_tasks) or
-- recovered, or when another process fails a task. This trigger function notifies channel
-- 'pgflow_trio.<queue table>' (at most 61 bytes: pgmq queue names have at most 47) with an empty payload;
-- PostgreSQL folds identical notifications of one transaction into one. pgmq names a queue's table 'q_' and the
-- queue name in lower case, so queue "MyFlow" notifies 'pgflow_trio.q_myflow'. (pgmq's own insert notifications
-- stay silent for a queue name with capitals: their trigger looks the queue up by its table name.)
CREATE OR REPLACE FUNCTION pgflow_trio.notify_visible()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $body$
BEGIN
  PERFORM pg_notify('pgflow_trio.' || TG_TABLE_NAME, '');
  RETURN NULL;
END
$body$;

-- Install the triggers on one queue's table (idempotent; returns whether it created any): once per inserting
-- statement, and for an update that brings a message's visibility forward without reading it (a read increments
-- read_ct), so reads and visibility extensions of running tasks cost nothing more than evaluating the WHEN clause.
CREATE OR REPLACE FUNCTION pgflow_trio.enable_notify_visible(p_queue text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_table regclass := to_regclass(format('pgmq.%I', 'q_' || lower(p_queue)));  -- pgmq's table name
  v_created boolean := false;
BEGIN
  IF v_table IS NULL THEN
    RAISE EXCEPTION 'queue % does not exist', p_queue USING ERRCODE = 'undefined_table';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                 WHERE tgrelid = v_table AND tgname = 'pgflow_trio_notify_insert') THEN
    EXECUTE format(
      'CREATE TRIGGER pgflow_trio_notify_insert AFTER INSERT ON %s FOR EACH STATEMENT '
      'EXECUTE FUNCTION pgflow_trio.notify_visible()',
      v_table
    );
    v_created := true;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                 WHERE tgrelid = v_table AND tgname = 'pgflow_trio_notify_visible') THEN
    EXECUTE format(
      'CREATE TRIGGER pgflow_trio_notify_visible AFTER UPDATE OF vt ON %s FOR EACH ROW '
      'WHEN (NEW.vt < OLD.vt AND NEW.read_ct = OLD.read_ct) EXECUTE FUNCTION pgflow_trio.notify_visible()',
      v_table
    );
    v_created := true;
  END IF;
  RETURN v_created;
END
$body$;

-- Fail a started task for good, whatever attempts it has left: for errors no retry can fix (a task input the
-- handler cannot accept). Only the worker that started the attempt may do so: returns false, doing nothing, unless
-- the task is 'started' by p_worker_id (a late call cannot fail another worker's attempt). Locks in pgflow's order
-- (run, step state, task). pgflow.fail_task does the bookkeeping (task, step and run failed, events, messages
-- archived) exactly as when the attempts are exhausted; the task's attempts_count is then restored to the number
-- of attempts really made.
CREATE OR REPLACE FUNCTION pgflow_trio.fail_task_permanently(
    p_run_id uuid, p_step_slug text, p_task_index integer, p_worker_id uuid, p_error_message text
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
    AND t.status = 'started' AND t.last_worker_id = p_worker_id
  FOR UPDATE OF t;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE pgflow.step_tasks SET attempts_count = greatest(v_attempts, v_max)
  WHERE run_id = p_run_id AND step_slug = p_step_slug AND task_index = p_task_index;
  PERFORM pgflow.fail_task(p_run_id, p_step_slug, p_task_index, p_error_message);
  UPDATE pgflow.step_tasks SET attempts_count = v_attempts
  WHERE run_id = p_run_id AND step_slug = p_step_slug AND task_index = p_task_index;
  RETURN true;
END
$body$;

-- How recently a worker must have heartbeaten to count as live for its flow's schedules: the setting
-- `pgflow_trio.live_worker_seconds` when it holds a positive number, else 60 (a value that is not a number must
-- not make every fire_schedule fail). Workers refuse to start with a heartbeat interval above half of it.
CREATE OR REPLACE FUNCTION pgflow_trio.live_worker_seconds()
RETURNS float8
LANGUAGE sql
STABLE
SET search_path = ''
AS $body$
  SELECT coalesce(
    CASE WHEN v ~ '^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*$' THEN nullif(v::float8, 0) END,
    60
  )
  FROM (SELECT current_setting('pgflow_trio.live_worker_seconds', true) AS v) AS setting
$body$;

-- Whether some live worker (any language) serves a flow: registered for its queue, not deprecated, and heartbeating
-- within the last pgflow_trio.live_worker_seconds() seconds.
CREATE OR REPLACE FUNCTION pgflow_trio.flow_is_served(p_flow_slug text)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = ''
AS $body$
  SELECT EXISTS (
    SELECT 1 FROM pgflow.workers AS w
    WHERE w.queue_name = p_flow_slug
      AND w.deprecated_at IS NULL
      AND w.last_heartbeat_at > clock_timestamp() - make_interval(secs => pgflow_trio.live_worker_seconds())
  )
$body$;

-- A schedule belongs to its flow and fires only while the flow exists and some live worker serves it: a schedule
-- left behind by code nobody runs any more starts nothing. An unserved tick is not recorded, so the built-in
-- scheduler treats it as missed (fired within its grace, else as catch_up says) once a worker is back.
CREATE OR REPLACE FUNCTION pgflow_trio.fire_schedule(
    p_name text, p_tick timestamptz DEFAULT date_trunc('minute', clock_timestamp())
)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  s pgflow_trio.schedules%ROWTYPE;
  v_run_id uuid;
BEGIN
  SELECT * INTO s FROM pgflow_trio.schedules WHERE name = p_name;
  IF NOT FOUND
     OR NOT EXISTS (SELECT 1 FROM pgflow.flows WHERE flow_slug = s.flow_slug)
     OR NOT pgflow_trio.flow_is_served(s.flow_slug) THEN
    RETURN NULL;
  END IF;
  INSERT INTO pgflow_trio.cron_ticks (schedule_name, tick) VALUES (p_name, p_tick) ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  SELECT run_id INTO v_run_id FROM pgflow.start_flow(s.flow_slug, s.input);
  UPDATE pgflow_trio.cron_ticks SET run_id = v_run_id WHERE schedule_name = p_name AND tick = p_tick;
  UPDATE pgflow_trio.schedules SET last_tick = greatest(last_tick, p_tick) WHERE name = p_name;
  RETURN v_run_id;
END
$body$;
