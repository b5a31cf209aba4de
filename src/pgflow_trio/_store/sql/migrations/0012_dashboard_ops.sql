-- pgflow_trio schema 12: what the dashboard's workers page reads cheaply. It counts the tasks each worker completed
-- in the last hour; without this index that means scanning every completed task. The index holds only completed
-- tasks, keyed by when they completed: a task enters it once, when it completes (that update changes the task's
-- status, so it is never a heap-only update anyway), and leaves it only when the task is deleted.
CREATE INDEX IF NOT EXISTS pgflow_trio_step_tasks_completed_at
    ON pgflow.step_tasks (completed_at)
    WHERE status = 'completed';
