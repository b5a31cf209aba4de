-- pgflow_trio: stand-in for Supabase's realtime.send, which pgflow core calls for every run and step event.
-- It forwards a compact event (ids, slugs, status, a truncated error; never inputs or outputs) with NOTIFY on
-- channel 'pgflow_trio_events', keeping payloads far below NOTIFY's 8000-byte limit. Delivery is switched off
-- with the setting pgflow_trio.events = 'off' (per database, role or session).
CREATE SCHEMA IF NOT EXISTS realtime;

CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $body$
BEGIN
  IF coalesce(current_setting('pgflow_trio.events', true), '') IN ('off', 'false', '0') THEN
    RETURN;
  END IF;
  PERFORM pg_catalog.pg_notify(
    'pgflow_trio_events',
    pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
      'event', coalesce(payload ->> 'event_type', event),
      'run_id', payload ->> 'run_id',
      'flow_slug', payload ->> 'flow_slug',
      'step_slug', payload ->> 'step_slug',
      'status', payload ->> 'status',
      'task_index', payload -> 'task_index',
      'error', pg_catalog.left(payload ->> 'error_message', 1000)
    ))::text
  );
END
$body$;

COMMENT ON FUNCTION realtime.send(jsonb, text, text, boolean) IS 'pgflow_trio stand-in';
