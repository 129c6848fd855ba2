'use strict';
// Runs inside a network namespace the test created (`ip netns exec NS node ns-agent.js
// HOST PORT`): serves the test pages there (lib/web.js static server on HOST:PORT) and
// makes HTTP requests from there on the test's behalf, because the test process itself
// lives in another namespace (run-in-netns.sh) with no path into the lab.
// Protocol: one JSON object per line. Out: {"ready":true,"base":…} once, then one reply
// per request. In: {"id","url","method","headers","body","timeoutMs"} →
// {"id","status","headers","text"} or {"id","error"}.
const readline = require('node:readline');
const { startStaticServer } = require('./web');

async function main() {
  const [host, port] = process.argv.slice(2);
  const web = await startStaticServer({ host, port: Number(port) });
  process.stdout.write(`${JSON.stringify({ ready: true, base: web.base })}\n`);
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    let req;
    try {
      req = JSON.parse(line);
    } catch {
      return;
    }
    try {
      const res = await fetch(req.url, {
        method: req.method || 'GET',
        headers: req.headers || {},
        body: req.body,
        signal: AbortSignal.timeout(req.timeoutMs || 5000),
      });
      const text = await res.text();
      process.stdout.write(`${JSON.stringify({ id: req.id, status: res.status, headers: Object.fromEntries(res.headers), text })}\n`);
    } catch (e) {
      process.stdout.write(`${JSON.stringify({ id: req.id, error: `${e.name}: ${e.message}${e.cause ? ` (${e.cause.code || e.cause.message})` : ''}` })}\n`);
    }
  });
  rl.on('close', () => web.close().then(() => process.exit(0)));
}
main().catch((e) => {
  process.stderr.write(`ns-agent: ${e.stack}\n`);
  process.exit(1);
});
