-- pgflow_trio schema 3: cron schedules for flows and jobs.

-- One row per schedule, written by `cron sync` / workers from the code's definitions. The input lives here, so a
-- pg_cron job's command only names the schedule: no user input is ever put into SQL text.
CREATE TABLE IF NOT EXISTS pgflow_trio.schedules (
    name text PRIMARY KEY,
    flow_slug text NOT NULL,
    expression text NOT NULL,
    timezone text NOT NULL DEFAULT 'UTC',
    input jsonb NOT NULL DEFAULT 'null',
    catch_up text NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'once')),
    backend text NOT NULL CHECK (backend IN ('builtin', 'pg_cron')),
    last_tick timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A tick fires at most once: the row is committed in the same transaction that starts the run.
CREATE TABLE IF NOT EXISTS pgflow_trio.cron_ticks (
    schedule_name text NOT NULL REFERENCES pgflow_trio.schedules (name) ON DELETE CASCADE,
    tick timestamptz NOT NULL,
    run_id uuid,
    fired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schedule_name, tick)
);

-- Fire one tick of a schedule: start its flow with its input unless this tick already fired. Returns the run id,
-- or NULL when the tick had fired (or the schedule is gone). pg_cron jobs call it with the tick defaulting to the
-- current minute; the built-in scheduler passes the exact tick.
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
  IF NOT FOUND THEN
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
