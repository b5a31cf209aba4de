-- pgflow_trio schema 9: the trace context of each run, for OpenTelemetry tracing across processes.

-- The W3C trace context (`traceparent`, `tracestate`) of the span that started a run, written in the transaction
-- that starts the run when the starting engine has tracing on. Workers read it once per claimed batch to parent
-- their task spans into the run's trace, on any machine. Kept out of the run's input, which belongs to the user.
CREATE TABLE IF NOT EXISTS pgflow_trio.run_traces (
    run_id uuid PRIMARY KEY REFERENCES pgflow.runs (run_id) ON DELETE CASCADE,
    traceparent text NOT NULL,
    tracestate text
);
