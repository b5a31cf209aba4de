// A pgflow TypeScript-protocol worker for tests: @pgflow/core's PgflowSqlClient on postgres.js, doing what the
// TypeScript edge worker does (register, read_with_poll, start_tasks, complete_task). Prints one JSON line.
// Usage: node pgflow_worker.mjs DIR CONNECTION work QUEUE IDLE_POLLS
//          works the queue until IDLE_POLLS polls in a row read nothing; prints {"read": n, "tasks": [...]}
//        node pgflow_worker.mjs DIR CONNECTION complete RUN_ID STEP_SLUG TASK_INDEX OUTPUT_JSON
//          one completeTask call, as a late worker would make it; prints {"ok": true}
// DIR holds node_modules/@pgflow/core (and its dependency postgres). CONNECTION is postgres.js's options as JSON
// ({host, port, database, username, password} or {path} for a Unix socket), since it reads no socket-directory DSN.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dir, connection, command, ...rest] = process.argv.slice(2);
const load = (path) => import(pathToFileURL(join(dir, 'node_modules', path)).href);
const { PgflowSqlClient } = await load('@pgflow/core/dist/index.js');
const postgres = (await load('postgres/src/index.js')).default;

// Handlers of the test flow ctl_ts_squares: a root map `square`, then `total` summing the squares.
const handlers = {
  square: (n) => n * n,
  total: (input) => input.square.reduce((a, b) => a + b, 0),
};

const sql = postgres({ ...JSON.parse(connection), max: 2, onnotice: () => {} });
const client = new PgflowSqlClient(sql);
try {
  if (command === 'work') {
    const [queue, idlePolls] = rest;
    const workerId = randomUUID();
    await sql`INSERT INTO pgflow.workers (queue_name, worker_id, function_name)
              VALUES (${queue}, ${workerId}::uuid, 'node-test-worker')`;
    const tasks = [];
    let read = 0;
    for (let idle = 0; idle < Number(idlePolls); ) {
      const messages = await client.readMessages(queue, 30, 10, 1, 50);
      read += messages.length;
      if (messages.length === 0) {
        idle += 1;
        continue;
      }
      idle = 0;
      const started = await client.startTasks(queue, messages.map((m) => m.msg_id), workerId);
      for (const task of started) {
        const output = handlers[task.step_slug](task.input);
        await client.completeTask(task, output);
        tasks.push({ step_slug: task.step_slug, task_index: task.task_index, input: task.input, output });
      }
    }
    console.log(JSON.stringify({ read, tasks }));
  } else if (command === 'complete') {
    const [runId, stepSlug, taskIndex, output] = rest;
    await client.completeTask(
      { run_id: runId, step_slug: stepSlug, task_index: Number(taskIndex) },
      JSON.parse(output),
    );
    console.log(JSON.stringify({ ok: true }));
  } else {
    throw new Error(`unknown command ${command}`);
  }
} finally {
  await sql.end();
}
