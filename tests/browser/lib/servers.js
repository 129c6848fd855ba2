'use strict';
// Starts callrelay's binaries (turn-server, gateway) on loopback with the flags fixed in
// the cross-crate contract, waits until they serve, captures their stderr, and stops
// them. Binaries come from <repo>/target/debug (what scripts/test builds) unless
// CALLRELAY_BIN_DIR points elsewhere.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { fatal, freePorts, waitUntil, tcpConnects, withTimeout } = require('./util');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN_DIR = process.env.CALLRELAY_BIN_DIR || path.join(REPO, 'target', 'debug');
const LOG_LIMIT = 256 * 1024;

// Every server started, so none outlives the test process even if it is torn down
// without its after() hooks (timeout, Ctrl-C).
const started = new Set();
process.on('exit', () => {
  for (const p of started) if (p.alive()) p.child.kill('SIGKILL');
});

class Proc {
  constructor(name, bin, args, env = {}) {
    this.name = name;
    this.cmd = [bin, ...args].join(' ');
    this.log = '';
    this.exit = null;
    this.child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'debug', ...env },
    });
    const append = (chunk) => {
      this.log += chunk.toString();
      if (this.log.length > LOG_LIMIT) this.log = this.log.slice(-LOG_LIMIT);
    };
    this.child.stdout.on('data', append);
    this.child.stderr.on('data', append);
    started.add(this);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.child.on('error', (err) => {
        this.log += `\n[spawn error] ${err.message}\n`;
        this.exit = { code: null, signal: null, error: err.message };
        resolve(this.exit);
      });
    });
  }

  alive() {
    return this.exit === null;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit status. */
  async stop(graceMs = 5000) {
    if (!this.alive()) return this.exit;
    this.child.kill('SIGTERM');
    try {
      return await withTimeout(this.exited, graceMs, `${this.name} to exit on SIGTERM`);
    } catch {
      this.child.kill('SIGKILL');
      await this.exited;
      this.exit.killed = true;
      return this.exit;
    }
  }

  dump() {
    const st = this.exit ? ` (exited: ${JSON.stringify(this.exit)})` : ' (running)';
    return `----- ${this.name}${st}\n$ ${this.cmd}\n${this.log.trimEnd()}\n----- end ${this.name}`;
  }
}

function binary(name) {
  const p = path.join(BIN_DIR, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} not found: build it (cargo build --workspace --bins) or set CALLRELAY_BIN_DIR`);
  }
  return p;
}

/**
 * Starts our turn-server relaying on 127.0.0.1 with REST auth secret `secret`.
 * With CALLRELAY_TURN=coturn (developer check of the harness only) starts Debian's
 * coturn with the equivalent configuration instead.
 */
async function startTurnServer({ secret, realm = 'callrelay-test', extraArgs = [] }) {
  const [port, metrics] = await freePorts(2);
  let proc;
  if (process.env.CALLRELAY_TURN === 'coturn') {
    proc = new Proc('coturn', 'turnserver', [
      '-n', '--no-cli', '--no-tls', '--no-dtls', '--log-file=stdout', '--simple-log',
      '--listening-ip=127.0.0.1', `--listening-port=${port}`, '--relay-ip=127.0.0.1',
      '--use-auth-secret', `--static-auth-secret=${secret}`, `--realm=${realm}`,
      '--allow-loopback-peers', '--min-port=40000', '--max-port=48999',
    ]);
  } else {
    proc = new Proc('turn-server', binary('turn-server'), [
      '--listen', `127.0.0.1:${port}`, '--relay-ip', '127.0.0.1', '--allow-peer', '127.0.0.1/32',
      '--auth-secret', secret, '--realm', realm, '--metrics-listen', `127.0.0.1:${metrics}`,
      // SIGTERM waits for active allocations (default 30 s); allocations of browsers that
      // just closed may still be listed, and the tests should not wait that long.
      '--drain-timeout', '2',
      // e.g. --control-secret (test/early-offer.test.js)
      ...extraArgs,
    ]);
  }
  try {
    await waitUntil(`${proc.name} to accept TCP on 127.0.0.1:${port}`, async () => {
      if (!proc.alive()) throw fatal(`${proc.name} exited early`);
      return tcpConnects(port);
    }, { timeoutMs: 15000 });
  } catch (e) {
    await proc.stop();
    e.message += `\n${proc.dump()}`;
    throw e;
  }
  return { proc, port, metricsPort: metrics, uri: `turn:127.0.0.1:${port}` };
}

/**
 * Starts our gateway with token auth, an admin secret and TURN REST credentials for
 * `turnUris` signed with `turnSecret`. Ready when Admin API `info` answers.
 */
async function startGateway({ adminSecret, turnSecret, turnUris, tls, extraArgs = [], bin }) {
  const [ws, http, admin] = await freePorts(3);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-gw-'));
  const args = [
    '--listen', `127.0.0.1:${ws}`, '--http-listen', `127.0.0.1:${http}`,
    '--admin-listen', `127.0.0.1:${admin}`, '--admin-secret', adminSecret, '--token-auth',
    '--turn-secret', turnSecret, '--state-dir', stateDir,
  ];
  for (const u of turnUris) args.push('--turn-uri', u);
  // tls = {certPath, keyPath, fetch}: every listener speaks TLS (wss, https); `fetch`
  // (lib/tls.js fetchTrusting) is how this process reaches them.
  if (tls) args.push('--cert', tls.certPath, '--key', tls.keyPath);
  // e.g. --test-page-ws-url, --longpoll-timeout (test/nginx.test.js)
  args.push(...extraArgs);
  const s = tls ? 's' : '';
  // `bin`: another build of the gateway (benches/browser compares two)
  const proc = new Proc('gateway', bin || binary('gateway'), args);
  const adminUrl = `http${s}://127.0.0.1:${admin}/admin`;
  try {
    await waitUntil(`gateway admin info on ${adminUrl}`, async () => {
      if (!proc.alive()) throw fatal('gateway exited early');
      const probe = { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ janus: 'info', transaction: 'ready-probe' }) };
      const j = tls
        ? JSON.parse((await tls.fetch({ url: adminUrl, ...probe, timeoutMs: 1000 })).text)
        : await (await fetch(adminUrl, { ...probe, signal: AbortSignal.timeout(1000) })).json();
      return j.janus === 'server_info' && (await tcpConnects(ws));
    }, { timeoutMs: 15000 });
  } catch (e) {
    await proc.stop();
    e.message += `\n${proc.dump()}`;
    throw e;
  }
  return {
    proc,
    stateDir,
    wsUrl: `ws${s}://127.0.0.1:${ws}`,
    wsHttpBase: `http${s}://127.0.0.1:${ws}`,
    httpBase: `http${s}://127.0.0.1:${http}`,
    adminUrl,
    async cleanup() {
      fs.rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts Debian's `nats-server` with JetStream on 127.0.0.1 (free port, store in a temporary
 * directory) for gateway nodes in cluster mode (test/cluster.test.js, docs/scale-out.md).
 * Ready when it accepts TCP.
 */
async function startNats() {
  const [port] = await freePorts(1);
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-nats-'));
  // Debian installs it in /usr/sbin, which a user's PATH may not hold.
  const bin = fs.existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server';
  const proc = new Proc('nats-server', bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir]);
  try {
    await waitUntil(`nats-server to accept TCP on 127.0.0.1:${port}`, async () => {
      if (!proc.alive()) throw fatal('nats-server exited early (apt-get install nats-server)');
      return tcpConnects(port);
    }, { timeoutMs: 15000 });
  } catch (e) {
    await proc.stop();
    e.message += `\n${proc.dump()}`;
    throw e;
  }
  return {
    proc,
    url: `nats://127.0.0.1:${port}`,
    async cleanup() {
      fs.rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

module.exports = { Proc, binary, startTurnServer, startGateway, startNats, BIN_DIR, REPO };
