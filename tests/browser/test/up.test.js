'use strict';
// The README's run command (scripts/up), tried as a newcomer would: a fresh state
// directory, prebuilt binaries (CALLRELAY_BIN_DIR, so the test does not build release
// binaries), its fixed default ports — free here because npm test runs in its own network
// namespace (run-in-netns.sh). The eight Mattermost settings it prints are parsed and used
// exactly as Mattermost would use them: add_token POSTed to the printed Admin URL with the
// printed secret, janus.js 0.2.3 (Mattermost's) on the printed WebSocket URL, TURN
// credentials minted from the printed TURN Username + TURN Shared Key, iceServers from the
// printed STUN/TURN URIs; a relay-only call with media both ways. Then Ctrl-C (SIGINT to
// the process group, as a terminal sends it) must stop both services, and a second start
// must print the same settings (secrets kept in the state directory).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { BIN_DIR, REPO } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { adminPost, newGatewayToken } = require('../lib/mattermost');
const { tcpConnects, waitUntil, withTimeout } = require('../lib/util');

const UP = path.join(REPO, 'scripts', 'up');
// What scripts/up binds (turn 3478, ws 8188, http 8088, admin 7088, metrics 9641).
const FIXED_PORTS = [3478, 8188, 8088, 7088, 9641];
const LABELS = {
  'Enable': 'enable',
  'Gateway WebSocket URL': 'gatewayWebsocketUrl',
  'Gateway Admin URL': 'gatewayAdminUrl',
  'Gateway Admin Secret': 'gatewayAdminSecret',
  'STUN URI': 'stunUri',
  'TURN URI': 'turnUri',
  'TURN Username': 'turnUsername',
  'TURN Shared Key': 'turnSharedKey',
};

/** The pids whose parent is `ppid` (from /proc), with their executable's name. */
function childrenOf(ppid) {
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push({ pid: Number(d), exe: path.basename(fs.readlinkSync(`/proc/${d}/exe`)) });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Starts scripts/up in its own process group; resolves once it printed "Press Ctrl-C". */
async function startUp(stateDir) {
  const child = spawn(UP, [], {
    env: { ...process.env, CALLRELAY_STATE_DIR: stateDir, CALLRELAY_BIN_DIR: BIN_DIR, RUST_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group: Ctrl-C goes to the whole group
  });
  const up = { child, out: '', err: '', exit: null };
  child.stdout.on('data', (d) => {
    up.out += d;
  });
  child.stderr.on('data', (d) => {
    up.err += d;
  });
  up.exited = new Promise((r) => child.on('exit', (code, signal) => r((up.exit = { code, signal }))));
  process.on('exit', () => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  up.dump = () => `----- scripts/up stdout\n${up.out}\n----- stderr\n${up.err}\n----- logs\n${['turn-server', 'gateway'].map((n) => {
    try {
      return fs.readFileSync(path.join(stateDir, 'logs', `${n}.log`), 'utf8').slice(-4000);
    } catch {
      return `(no ${n}.log)`;
    }
  }).join('\n')}`;
  try {
    await waitUntil('scripts/up to print "Press Ctrl-C to stop."', async () => {
      if (up.exit) throw Object.assign(new Error(`scripts/up exited ${JSON.stringify(up.exit)}`), { fatal: true });
      return up.out.includes('Press Ctrl-C to stop.');
    }, { timeoutMs: 30000 });
  } catch (e) {
    e.message += `\n${up.dump()}`;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    throw e;
  }
  return up;
}

/** The eight settings block, parsed; asserts each passes Mattermost's own validation. */
function parseSettings(out) {
  const s = {};
  for (const line of out.split('\n')) {
    const m = line.match(/^\s+(Enable|Gateway WebSocket URL|Gateway Admin URL|Gateway Admin Secret|STUN URI|TURN URI|TURN Username|TURN Shared Key)\s{2,}(\S.*?)\s*$/);
    if (m && !(LABELS[m[1]] in s)) s[LABELS[m[1]]] = m[2];
  }
  const ctx = `parsed ${JSON.stringify(s)} from:\n${out}`;
  assert.deepEqual(Object.keys(s).sort(), Object.values(LABELS).sort(), `all eight Mattermost settings must be printed. ${ctx}`);
  assert.equal(s.enable, 'true', ctx);
  assert.match(s.gatewayWebsocketUrl, /^wss?:\/\//, `GatewayWebsocketUrl must start with ws:// or wss:// (Mattermost validation). ${ctx}`);
  assert.match(s.gatewayAdminUrl, /^https?:\/\//, `GatewayAdminUrl must start with http:// or https://. ${ctx}`);
  assert.ok(s.gatewayAdminSecret.length >= 16, `a generated admin secret, not a short default. ${ctx}`);
  assert.notEqual(s.gatewayAdminSecret, 'janusoverlord', ctx);
  assert.match(s.stunUri, /^(stun|turn):/, ctx);
  for (const u of s.turnUri.split(' ')) assert.match(u, /^(turn|stun):/, `TurnURI entries must start with turn: (turns: is rejected by Mattermost). ${ctx}`);
  assert.ok(s.turnUsername && s.turnSharedKey.length >= 16, `TURN Username and a generated Shared Key. ${ctx}`);
  return s;
}

/** Ctrl-C: SIGINT to the process group; both services must exit, then the script (0). */
async function ctrlC(up) {
  const services = childrenOf(up.child.pid).filter((c) => ['turn-server', 'gateway'].includes(c.exe));
  assert.deepEqual(services.map((c) => c.exe).sort(), ['gateway', 'turn-server'], `scripts/up must run both services: ${JSON.stringify(childrenOf(up.child.pid))}`);
  process.kill(-up.child.pid, 'SIGINT');
  const exit = await withTimeout(up.exited, 15000, 'scripts/up to exit after Ctrl-C').catch((e) => {
    e.message += `\n${up.dump()}`;
    throw e;
  });
  assert.deepEqual(exit, { code: 0, signal: null }, `scripts/up must exit 0 on Ctrl-C.\n${up.dump()}`);
  await waitUntil('both services gone after Ctrl-C', async () => services.every((c) => !alive(c.pid)), { timeoutMs: 5000 });
  for (const p of FIXED_PORTS) {
    assert.equal(await tcpConnects(p), false, `port ${p} must be free after Ctrl-C`);
  }
  return services;
}

describe('scripts/up (the README run command) as a newcomer runs it', { timeout: 150000 }, () => {
  let stateDir;
  let web;
  let chrome;
  let up;

  before(async () => {
    assertOnlyLoopback(); // fixed ports are only safe in run-in-netns.sh's namespace
    for (const p of FIXED_PORTS) assert.equal(await tcpConnects(p), false, `port ${p} is taken in this namespace: scripts/up needs it`);
    stateDir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-up-')), 'state'); // does not exist yet: fresh
    web = await startStaticServer();
    chrome = await launchChromium();
  });

  after(async () => {
    if (up && !up.exit) {
      try {
        process.kill(-up.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (stateDir) fs.rmSync(path.dirname(stateDir), { recursive: true, force: true });
  });

  let first;
  it('first start: fresh state dir, the printed settings carry a relay-only janus.js 0.2.3 call, Ctrl-C stops both services', { timeout: 90000 }, async () => {
    up = await startUp(stateDir);
    try {
      first = parseSettings(up.out);
      assert.equal(fs.statSync(stateDir).mode & 0o777, 0o700, 'state directory must be private (0700)');
      const turnPort = Number(new URL(first.turnUri.split(' ')[0].replace(/^turn:/, 'turn://')).port || 3478);
      const stack = {
        gw: { wsUrl: first.gatewayWebsocketUrl, adminUrl: first.gatewayAdminUrl },
        adminSecret: first.gatewayAdminSecret,
        turn: { port: turnPort, uri: first.turnUri.split(' ')[0] },
        mattermost: { stunUri: first.stunUri, turnUri: first.turnUri, turnUsername: first.turnUsername, turnSharedKey: first.turnSharedKey },
      };
      const r = await runMattermostCall({ browser: chrome.browser, web, gen: '0.2.3', stack, creds: 'mattermost', transport: 'udp' });
      console.log(`# scripts/up settings ${JSON.stringify({ ...first, gatewayAdminSecret: '…', turnSharedKey: '…' })}; call timings ${JSON.stringify(r.timings)}; ` +
        `caller got audio ${r.caller.inbound.audio} B video ${r.caller.inbound.video} B, callee got audio ${r.callee.inbound.audio} B video ${r.callee.inbound.video} B`);
    } catch (e) {
      e.message += `\n${up.dump()}`;
      throw e;
    }
    await ctrlC(up);
  });

  it('second start reuses the same secrets and prints the same settings; Ctrl-C again', { timeout: 60000 }, async () => {
    assert.ok(first, 'needs the first start');
    up = await startUp(stateDir);
    const second = parseSettings(up.out);
    assert.deepEqual(second, first, `a second start must print the same eight settings.\n${up.dump()}`);
    // The kept admin secret is the one the gateway really uses.
    const token = newGatewayToken();
    const r = await adminPost(second.gatewayAdminUrl, second.gatewayAdminSecret, 'add_token', token);
    assert.equal(r.json && r.json.janus, 'success', `add_token with the printed secret after restart: ${r.text}\n${up.dump()}`);
    const bad = await adminPost(second.gatewayAdminUrl, `${second.gatewayAdminSecret}x`, 'add_token', token);
    assert.notEqual(bad.json && bad.json.janus, 'success', `a wrong admin secret must be refused: ${bad.text}`);
    await ctrlC(up);
  });
});
