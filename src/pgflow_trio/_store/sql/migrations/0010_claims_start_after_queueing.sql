-- pgflow_trio schema 10: a one-statement claim never starts a task queued after its own transaction began.

-- Workers in notify mode read and start in one statement: pgflow.start_tasks(queue, <read>, worker). The read
-- runs in a function, whose statements take fresh snapshots, so it can see a message committed after the claim's
-- transaction began; start_tasks then stamps started_at = now() (that transaction's start), which is earlier than
-- the task's queued_at, and the check constraint started_at_is_after_queued_at fails the whole claim. This read
-- hands such messages back (visible at once; the wake-up trigger of schema 4 notifies the queue) and returns the
-- others. With p_unless_paused it reads nothing while the queue is paused, as read_unless_paused does.
CREATE OR REPLACE FUNCTION pgflow_trio.read_to_start(
    p_queue text, p_vt integer, p_qty integer, p_unless_paused boolean DEFAULT true
)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = ''
AS $body$
DECLARE
  v_ids bigint[];
  v_late bigint[];
BEGIN
  IF p_unless_paused AND EXISTS (SELECT 1 FROM pgflow_trio.queue_pauses WHERE queue = p_queue) THEN
    RETURN '{}';
  END IF;
  v_ids := ARRAY(SELECT r.msg_id FROM pgmq.read(p_queue, p_vt, p_qty) AS r);
  IF cardinality(v_ids) = 0 THEN
    RETURN v_ids;
  END IF;
  v_late := ARRAY(
    SELECT t.message_id FROM pgflow.step_tasks AS t
    WHERE t.message_id = ANY (v_ids) AND t.status = 'queued' AND t.queued_at > now()
  );
  IF cardinality(v_late) = 0 THEN
    RETURN v_ids;
  END IF;
  PERFORM pgmq.set_vt(p_queue, l.id, 0) FROM unnest(v_late) AS l(id);
  RETURN ARRAY(SELECT i.id FROM unnest(v_ids) AS i(id) WHERE i.id <> ALL (v_late) ORDER BY i.id);
END
$body$;
