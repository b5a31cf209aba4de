-- pgflow_trio schema 6: pausing a flow's queue, and pausing schedules.

-- A paused queue: our workers read none of its messages until it is resumed (runs can still be started; their
-- tasks wait in the queue). Keyed by the queue name (the flow slug), so replacing a flow keeps its pause; deleting
-- the flow deletes it. pgflow's TypeScript workers do not look at this table.
CREATE TABLE IF NOT EXISTS pgflow_trio.queue_pauses (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason text
);

-- Pause a queue (idempotent: a second pause keeps the first instant, and replaces the reason when it gives one)
-- and tell its workers at once on the queue's wake channel with payload 'pause'. Returns the pause's row.
CREATE OR REPLACE FUNCTION pgflow_trio.pause_queue(p_queue text, p_reason text DEFAULT NULL)
RETURNS pgflow_trio.queue_pauses
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_pause pgflow_trio.queue_pauses%ROWTYPE;
BEGIN
  INSERT INTO pgflow_trio.queue_pauses AS p (queue, reason) VALUES (p_queue, p_reason)
  ON CONFLICT (queue) DO UPDATE SET reason = coalesce(EXCLUDED.reason, p.reason)
  RETURNING * INTO v_pause;
  PERFORM pg_notify('pgflow_trio.q_' || lower(p_queue), 'pause');
  RETURN v_pause;
END
$body$;

-- Resume a queue and wake its workers with payload 'resume'. Returns whether it was paused.
CREATE OR REPLACE FUNCTION pgflow_trio.resume_queue(p_queue text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_was_paused boolean;
BEGIN
  DELETE FROM pgflow_trio.queue_pauses WHERE queue = p_queue;
  v_was_paused := FOUND;
  PERFORM pg_notify('pgflow_trio.q_' || lower(p_queue), 'resume');
  RETURN v_was_paused;
END
$body$;

-- Read up to p_qty messages of a queue unless it is paused: the ids read (hidden for p_vt seconds), none while
-- paused. Workers in notify mode call it inside pgflow.start_tasks, so reading and claiming stay one statement.
CREATE OR REPLACE FUNCTION pgflow_trio.read_unless_paused(p_queue text, p_vt integer, p_qty integer)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = ''
AS $body$
BEGIN
  IF EXISTS (SELECT 1 FROM pgflow_trio.queue_pauses WHERE queue = p_queue) THEN
    RETURN '{}';
  END IF;
  RETURN ARRAY(SELECT r.msg_id FROM pgmq.read(p_queue, p_vt, p_qty) AS r);
END
$body$;

-- The long poll of workers in poll mode: read as read_unless_paused does every p_interval_ms until a message is
-- read or p_seconds have passed. Each round sees the pauses committed since the last (every statement of a
-- function takes a fresh snapshot), so a pause stops the reads within one interval, and a paused queue costs one
-- cheap look per interval until the poll ends.
CREATE OR REPLACE FUNCTION pgflow_trio.read_with_poll_unless_paused(
    p_queue text, p_vt integer, p_qty integer, p_seconds float8, p_interval_ms integer
)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_until timestamptz := clock_timestamp() + make_interval(secs => p_seconds);
  v_ids bigint[];
BEGIN
  LOOP
    v_ids := pgflow_trio.read_unless_paused(p_queue, p_vt, p_qty);
    IF cardinality(v_ids) > 0 OR clock_timestamp() >= v_until THEN
      RETURN v_ids;
    END IF;
    PERFORM pg_catalog.pg_sleep(greatest(p_interval_ms, 1) / 1000.0);
  END LOOP;
END
$body$;

-- A paused schedule fires no ticks on either backend. `resumed_at` is the instant its ticks were settled up to
-- when it was last resumed (as the catch-up policy says): the built-in leader lists a pg_cron-backed schedule's
-- ticks from there, not from its creation.
ALTER TABLE pgflow_trio.schedules ADD COLUMN IF NOT EXISTS paused_at timestamptz;
ALTER TABLE pgflow_trio.schedules ADD COLUMN IF NOT EXISTS resumed_at timestamptz;

-- As in schema 4, and a paused schedule fires nothing: its tick is not recorded, and what resuming settles (the
-- catch-up policy) decides whether ticks missed while paused fire.
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
     OR s.paused_at IS NOT NULL
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
