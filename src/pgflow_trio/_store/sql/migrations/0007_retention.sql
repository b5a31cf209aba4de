-- pgflow_trio schema 7: retention. Pruning deletes finished runs oldest first, a bounded batch at a time; this
-- index finds them without scanning every run of a status. It holds only finished runs (a started run is never
-- pruned), keyed by when the run finished. Its columns change once per run, when the run finishes, so it costs
-- nothing on the updates pgflow makes while a run progresses.
CREATE INDEX IF NOT EXISTS pgflow_trio_runs_finished_at
    ON pgflow.runs ((coalesce(completed_at, failed_at)))
    WHERE status <> 'started';
