'use strict';
// The NAT lab of test/nat.test.js: network namespaces built by lab/nat-lab.sh, an agent
// process inside the "public" namespace (pages + HTTP requests on the test's behalf), and
// callrelay's binaries started inside it with `ip netns exec`.
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');
const readline = require('node:readline');
const { Proc } = require('./servers');
const { withTimeout } = require('./util');

const LAB_SH = path.join(__dirname, '..', 'lab', 'nat-lab.sh');

/** The lab's fixed addresses (see lab/nat-lab.sh). */
const ADDR = { pub: '203.0.113.1', nata: '203.0.113.10', natb: '203.0.113.20', a: '10.10.1.2', b: '192.168.20.2', pubLan: '10.20.0.1', calls: '10.20.0.2' };

const labs = new Set();
process.on('exit', () => {
  for (const id of labs) {
    try {
      execFileSync(LAB_SH, ['down', id], { stdio: 'ignore' });
    } catch {
      /* best effort on the way out */
    }
  }
});

/**
 * Builds a fresh lab (names unique to this process) after reaping labs left by killed
 * runs. Returns {id, ns: {pub, nata, natb, a, b}, destroy()}.
 */
function createLab() {
  execFileSync(LAB_SH, ['reap'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const id = `${process.pid}x${crypto.randomBytes(3).toString('hex')}`;
  labs.add(id);
  try {
    execFileSync(LAB_SH, ['up', id], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000 });
  } catch (e) {
    labs.delete(id);
    throw new Error(`building the NAT lab failed (needs root, iproute2, nftables): ${e.message}\n${e.stderr || ''}`);
  }
  const ns = {};
  for (const n of ['pub', 'nata', 'natb', 'a', 'b']) ns[n] = `crl${id}-${n}`;
  return {
    id,
    ns,
    destroy() {
      execFileSync(LAB_SH, ['down', id], { stdio: 'ignore' });
      labs.delete(id);
    },
    /** Replaces NAT `nat`'s masquerade flags ('' port-preserving, 'fully-random'). */
    setMasquerade(nat, flags) {
      execFileSync(LAB_SH, ['masq', id, nat, flags], { stdio: ['ignore', 'pipe', 'pipe'] });
    },
    /**
     * Adds the `calls` namespace (a Calls server at ADDR.calls on a private LAN of pub,
     * lab/nat-lab.sh `calls`); sets ns.calls.
     */
    addCallsServer() {
      execFileSync(LAB_SH, ['calls', id], { stdio: ['ignore', 'pipe', 'pipe'] });
      ns.calls = `crl${id}-calls`;
      return ns.calls;
    },
    /** Namespaces of this lab that still exist (for the clean-up assertion). */
    remaining() {
      const list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      return list.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`crl${id}-`));
    },
  };
}

const OFFLOAD_LAB_SH = path.join(__dirname, '..', 'lab', 'offload-lab.sh');

/** The offload lab's fixed addresses (see lab/offload-lab.sh). */
const OFFLOAD_ADDR = { a: '10.0.1.2', t1: '10.0.1.1', relay1: '10.0.2.1', relay2: '10.0.2.2', t2: '10.0.3.1', b: '10.0.3.2' };

const offloadLabs = new Set();
process.on('exit', () => {
  for (const id of offloadLabs) {
    try {
      execFileSync(OFFLOAD_LAB_SH, ['down', id], { stdio: 'ignore' });
    } catch {
      /* best effort on the way out */
    }
  }
});

/**
 * Builds the namespaces of test/offload.test.js (lab/offload-lab.sh) after reaping labs
 * left by killed runs. Returns {id, ns: {a, t1, t2, b}, destroy(), remaining()}.
 */
function createOffloadLab() {
  execFileSync(OFFLOAD_LAB_SH, ['reap'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const id = `${process.pid}x${crypto.randomBytes(3).toString('hex')}`;
  offloadLabs.add(id);
  try {
    execFileSync(OFFLOAD_LAB_SH, ['up', id], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000 });
  } catch (e) {
    offloadLabs.delete(id);
    throw new Error(`building the offload lab failed (needs root, iproute2, ethtool): ${e.message}\n${e.stderr || ''}`);
  }
  const ns = {};
  for (const n of ['a', 't1', 't2', 'b']) ns[n] = `crb${id}-${n}`;
  return {
    id,
    ns,
    destroy() {
      execFileSync(OFFLOAD_LAB_SH, ['down', id], { stdio: 'ignore' });
      offloadLabs.delete(id);
    },
    remaining() {
      const list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      return list.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`crb${id}-`));
    },
  };
}

/** A process started inside namespace `ns` (ip netns exec execs it: same pid). */
function nsProc(ns, name, bin, args) {
  const p = new Proc(name, 'ip', ['netns', 'exec', ns, bin, ...args]);
  return p;
}

/**
 * Starts lib/ns-agent.js inside `ns`, serving the pages on host:port. Returns
 * {base, fetch({url, method, headers, body, timeoutMs}) → {status, headers, text}, close()}.
 */
async function startAgent(ns, host, port) {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'ns-agent.js'), host, String(port)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const pending = new Map();
  let nextId = 1;
  let readyResolve;
  const ready = new Promise((r) => {
    readyResolve = r;
  });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const m = JSON.parse(line);
    if (m.ready) return readyResolve(m);
    const p = pending.get(m.id);
    if (p) {
      pending.delete(m.id);
      if (m.error) p.reject(new Error(`agent fetch: ${m.error}`));
      else p.resolve(m);
    }
  });
  const exited = new Promise((r) => child.on('exit', r));
  const r = await withTimeout(Promise.race([ready, exited.then(() => {
    throw new Error(`ns-agent exited: ${stderr}`);
  })]), 10000, 'ns-agent ready');
  process.on('exit', () => child.kill('SIGKILL'));
  return {
    base: r.base,
    fetch(req) {
      const id = nextId++;
      child.stdin.write(`${JSON.stringify({ ...req, id })}\n`);
      return withTimeout(new Promise((resolve, reject) => pending.set(id, { resolve, reject })), (req.timeoutMs || 5000) + 2000, `agent fetch ${req.url}`);
    },
    async close() {
      child.stdin.end();
      await withTimeout(exited, 5000, 'ns-agent exit').catch(() => child.kill('SIGKILL'));
    },
  };
}

module.exports = { ADDR, OFFLOAD_ADDR, createLab, createOffloadLab, nsProc, startAgent };
