'use strict';
// Small helpers shared by the browser tests: free loopback ports, bounded waits.
const net = require('node:net');

/** Binds 127.0.0.1:0, reads the port the kernel chose, closes, returns it. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Distinct free ports (a port handed out twice in one call is retried). */
async function freePorts(n) {
  const out = new Set();
  for (let i = 0; out.size < n && i < n * 20; i++) out.add(await freePort());
  if (out.size < n) throw new Error(`could not find ${n} distinct free ports`);
  return [...out];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` (async, returns truthy when done) every `every` ms until `timeoutMs`.
 * An error with `fatal: true` stops the wait at once.
 */
async function waitUntil(what, fn, { timeoutMs = 10000, every = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e.fatal) throw e; // e.g. the server under test died: no point waiting
      lastErr = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${lastErr.message}` : ''}`);
}

/** Resolves when a TCP connect to 127.0.0.1:port succeeds. */
function tcpConnects(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.on('connect', () => done(true));
    s.on('error', () => done(false));
  });
}

/** Rejects with a clear message if `p` does not settle within `ms`. */
function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** An error that makes waitUntil give up immediately. */
function fatal(message) {
  return Object.assign(new Error(message), { fatal: true });
}

module.exports = { fatal, freePort, freePorts, sleep, waitUntil, tcpConnects, withTimeout };
