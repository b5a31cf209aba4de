-- pgflow_trio schema 11: indexes the dashboard's run lists need on a big database. pgflow indexes runs by
-- flow_slug and by status alone, so "the newest runs" (of a flow, or in a state) sorted every matching run. These
-- three serve the keyset pages on (started_at, run_id), newest first, and the per-flow statistics over a time
-- window. started_at, run_id and flow_slug never change, and pgflow already indexes status, so an update that
-- could be HOT before (remaining_steps, output) still is.
CREATE INDEX IF NOT EXISTS pgflow_trio_runs_started
    ON pgflow.runs (started_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS pgflow_trio_runs_flow_started
    ON pgflow.runs (flow_slug, started_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS pgflow_trio_runs_status_started
    ON pgflow.runs (status, started_at DESC, run_id DESC);
