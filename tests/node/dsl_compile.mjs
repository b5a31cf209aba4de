// Differential-test driver: reads one flow spec (our JSON shape) per line on stdin, builds it with @pgflow/dsl's
// public API and prints one JSON line: {"ok": true, "sql": [...]} or {"ok": false, "error": "..."}.
// Usage: node dsl_compile.mjs DIR   (DIR holds node_modules/@pgflow/dsl)
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dsl = await import(pathToFileURL(join(process.argv[2], 'node_modules/@pgflow/dsl/dist/index.js')).href);
const options = (o) => {
  const out = {};
  if (o.max_attempts !== undefined) out.maxAttempts = o.max_attempts;
  if (o.base_delay !== undefined) out.baseDelay = o.base_delay;
  if (o.timeout !== undefined) out.timeout = o.timeout;
  if (o.start_delay !== undefined) out.startDelay = o.start_delay;
  return out;
};
const handler = async () => null;

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  try {
    const spec = JSON.parse(line);
    let flow = new dsl.Flow({ slug: spec.slug, ...options(spec) });
    for (const step of spec.steps) {
      const deps = step.deps ?? [];
      if (step.step_type === 'map') {
        flow = flow.map({ slug: step.slug, ...(deps.length ? { array: deps[0] } : {}), ...options(step) }, handler);
      } else {
        flow = flow.step({ slug: step.slug, ...(deps.length ? { dependsOn: deps } : {}), ...options(step) }, handler);
      }
    }
    console.log(JSON.stringify({ ok: true, sql: dsl.compileFlow(flow) }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: String(err && err.message ? err.message : err) }));
  }
}
