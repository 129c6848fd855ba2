'use strict';
// A browser call relayed by the turn-servers' kernel fast path (offload = "tc",
// docs/offload.md; issue 15 Proof).
//
// Topology (lab/offload-lab.sh, network namespaces joined by veth pairs):
//
//   a: Chromium A ── t1: turn-server 1, gateway, pages ── t2: turn-server 2 ── b: Chromium B
//   10.0.1.2         a1 10.0.1.1 (listen)  x1 10.0.2.1 (relay) ── x2 10.0.2.2 (relay)  b2 10.0.3.1 (listen)  10.0.3.2
//
// Why two turn-servers: when both legs of a call relay through one turn-server, each
// leg's peer is the other's relayed address on the same server, and that server hands
// the packets across in-process — a path the kernel program never sees (docs/offload.md:
// channels to one of our own relayed addresses are not offloaded). Here browser A
// allocates only on turn-server 1 and browser B only on turn-server 2 (each page gets only
// its own server's turn: URI from the gateway's list), both relay-only, so the selected
// pair is relay 10.0.2.1 ↔ relay 10.0.2.2 and every media packet crosses the x1–x2 veth:
// A → ChannelData → t1 (kernel: client → peer, out x1) → UDP → t2 (kernel: peer → client,
// out b2) → ChannelData → B, and back the same way. The gateway (in t1; B reaches it
// through t2, which forwards) only carries the signalling: janus.js 0.2.3, Mattermost's
// generation, the whole lib/call.js flow.
//
// Asserted: media both ways (audio and video inbound-rtp bytes growing), each side's
// selected pair relay ↔ relay on those addresses with its own turn-server's URI, and on
// BOTH turn-servers `callrelay_turn_offload_packets_total` grew in both directions by
// hundreds of packets and by most of what they relayed (`relayed_packets_total` counts
// both paths), so the call did not pass in userspace.
//
// Skips (with the reason) when not root or when turn-server was built without the BPF
// program (no clang); under CI (`CI` set) either fails instead. Needs iproute2 and
// ethtool.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { binary } = require('../lib/servers');
const { assertOnlyLoopback, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { OFFLOAD_ADDR: ADDR, createOffloadLab, nsProc, startAgent } = require('../lib/lab');
const { fatal, sleep, waitUntil } = require('../lib/util');

const TURN_PORT = 3478;
const PAGE_PORT = 8080;

/** Why this process cannot build namespaces and load BPF programs, if it cannot. */
function whyNotRoot() {
  if (process.getuid() !== 0) return 'not root (network namespaces and BPF need it)';
  // run-in-netns.sh maps an unprivileged user to root in a user namespace: root there
  // only.
  const [inside, outside] = fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
  if (inside === '0' && outside !== '0') return 'not root (root only in a user namespace)';
  return null;
}

/** The value of one sample (`name` or `name{labels}` exactly); 0 when absent. */
function sample(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1).trim());
  }
  return 0;
}

/** The packet counters of one turn-server's /metrics text. */
function packets(text) {
  const v = (s) => sample(text, s);
  return {
    toPeer: v('callrelay_turn_relayed_packets_total{direction="to_peer",transport="udp"}'),
    toClient: v('callrelay_turn_relayed_packets_total{direction="to_client",transport="udp"}'),
    offToPeer: v('callrelay_turn_offload_packets_total{direction="to_peer"}'),
    offToClient: v('callrelay_turn_offload_packets_total{direction="to_client"}'),
  };
}

const minus = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, a[k] - b[k]]));

/** Waits for audio+video flowing into `party`, then checks it keeps growing. */
async function mediaFlows(party, timeoutMs = 15000) {
  const t = Date.now();
  let first;
  try {
    await waitUntil(`${party.label}: audio and video inbound-rtp bytes > 0`, async () => {
      first = await party.page.evaluate(() => window.party.stats());
      return first.pc && first.inbound.audio > 0 && first.inbound.video > 0 && first.pair && first.pair.state === 'succeeded';
    }, { timeoutMs, every: 200 });
  } catch (e) {
    e.message += `\nlast stats of ${party.label}: ${JSON.stringify(first)}`;
    throw e;
  }
  const connectMs = Date.now() - t;
  await sleep(2000);
  const second = await party.page.evaluate(() => window.party.stats());
  const ctx = `${party.label}: ${JSON.stringify({ first, second })}`;
  assert.ok(second.inbound.audio > first.inbound.audio, `audio bytesReceived must grow. ${ctx}`);
  assert.ok(second.inbound.video > first.inbound.video, `video bytesReceived must grow. ${ctx}`);
  return { first, second, connectMs, ctx };
}

describe('a browser call through two turn-servers with the kernel fast path (offload = "tc")', { timeout: 90000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  const turns = {};
  let lab;
  let agent;
  let stateDir;
  let skip = null;
  const browsers = {};

  const logs = () => [turns.t1, turns.t2, stack.gw].filter(Boolean).map((s) => s.proc.dump()).join('\n');
  const metrics = async (t) => (await agent.fetch({ url: t.metricsUrl })).text;

  before(async () => {
    const why = whyNotRoot();
    if (why) {
      if (process.env.CI) throw new Error(`CI must run the offload browser test: ${why}`);
      skip = why;
      return;
    }
    assertOnlyLoopback(); // the test process itself stays in run-in-netns.sh's namespace
    lab = createOffloadLab();
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-offload-gw-'));
    agent = await startAgent(lab.ns.t1, ADDR.t1, PAGE_PORT);
    // turn-server N: listens toward its browser, relays on the x1–x2 veth, may relay
    // only to the other turn-server's relay address; offload attached to both its veths.
    const turn = (name, ns, listen, relay, peer, ifaces, metricsListen) => {
      const proc = nsProc(ns, name, binary('turn-server'), [
        '--listen', `${listen}:${TURN_PORT}`, '--relay-ip', relay, '--relay-ports', '50000-50999',
        '--allow-peer', `${peer}/32`, '--auth-secret', stack.turnSecret, '--realm', 'offload-lab',
        '--metrics-listen', metricsListen, '--drain-timeout', '2', '--offload', 'tc',
        ...ifaces.flatMap((i) => ['--offload-interface', i]),
      ]);
      return { proc, port: TURN_PORT, uri: `turn:${listen}:${TURN_PORT}`, metricsUrl: `http://${metricsListen}/metrics` };
    };
    turns.t1 = turn('turn-server 1', lab.ns.t1, ADDR.t1, ADDR.relay1, ADDR.relay2, ['a1', 'x1'], '127.0.0.1:9641');
    // Reached by the agent in t1 across the x1–x2 veth (TCP: the program passes it).
    turns.t2 = turn('turn-server 2', lab.ns.t2, ADDR.t2, ADDR.relay2, ADDR.relay1, ['x2', 'b2'], `${ADDR.relay2}:9642`);
    stack.turn = turns.t1;
    const gwProc = nsProc(lab.ns.t1, 'gateway', binary('gateway'), [
      '--listen', `${ADDR.t1}:8188`, '--http-listen', `${ADDR.t1}:8088`, '--admin-listen', '127.0.0.1:7088',
      '--admin-secret', stack.adminSecret, '--token-auth', '--turn-secret', stack.turnSecret,
      '--turn-uri', turns.t1.uri, '--turn-uri', turns.t2.uri, '--state-dir', stateDir,
    ]);
    stack.gw = {
      proc: gwProc,
      wsUrl: `ws://${ADDR.t1}:8188`,
      wsHttpBase: `http://${ADDR.t1}:8188`,
      httpBase: `http://${ADDR.t1}:8088`,
      adminUrl: 'http://127.0.0.1:7088/admin',
    };
    try {
      await waitUntil('both turn-servers\' /metrics and the gateway\'s admin info inside the lab', async () => {
        for (const t of [turns.t1, turns.t2]) if (!t.proc.alive()) throw fatal(`${t.proc.name} exited early`);
        if (!gwProc.alive()) throw fatal('gateway exited early');
        await metrics(turns.t1);
        await metrics(turns.t2);
        const r = await agent.fetch({
          url: stack.gw.adminUrl, method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ janus: 'info', transaction: 'ready-probe' }),
        });
        return JSON.parse(r.text).janus === 'server_info';
      }, { timeoutMs: 15000 });
      // The kernel path must be attached on both; a binary without the BPF program
      // (built without clang) is a reason to skip, anything else a failure.
      for (const t of [turns.t1, turns.t2]) {
        const text = await metrics(t);
        if (sample(text, 'callrelay_turn_offload_active') === 1) continue;
        if (sample(text, 'callrelay_turn_offload_fallback_total{reason="not_built"}') === 1) {
          const why = 'turn-server was built without its BPF program (install clang, llvm, libbpf-dev and rebuild)';
          if (process.env.CI) throw new Error(`CI must run the offload browser test: ${why}`);
          skip = why;
          return;
        }
        throw new Error(`${t.proc.name}: the kernel offload did not attach:\n${text.split('\n').filter((l) => l.includes('offload')).join('\n')}`);
      }
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
    const [a, b] = await Promise.all([
      launchChromium({ netns: lab.ns.a, secureOrigin: agent.base }),
      launchChromium({ netns: lab.ns.b, secureOrigin: agent.base }),
    ]);
    browsers.a = a;
    browsers.b = b;
  });

  after(async () => {
    for (const b of Object.values(browsers)) await b.close();
    if (agent) await agent.close();
    if (stack.gw) await stack.gw.proc.stop();
    for (const t of Object.values(turns)) await t.proc.stop();
    if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
    if (lab) {
      lab.destroy();
      assert.deepEqual(lab.remaining(), [], 'every lab namespace must be gone');
    }
  });

  it('janus.js 0.2.3, relay-only: media both ways, relay ↔ relay across the turn-servers, carried by their kernel fast path', { timeout: 30000 }, async (t) => {
    if (skip) {
      console.log(`# SKIP offload browser test: ${skip}`);
      t.skip(skip);
      return;
    }
    const before1 = packets(await metrics(turns.t1));
    const before2 = packets(await metrics(turns.t2));
    // Each page gets only its own turn-server's UDP URI from the gateway's list.
    const own = { caller: turns.t1.uri, callee: turns.t2.uri };
    const iceFilter = (servers, role) => servers
      .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => u === own[role]) }))
      .filter((s) => s.urls.length);
    const started = Date.now();
    try {
      const r = await runMattermostCall({
        browsers: { caller: browsers.a.browser, callee: browsers.b.browser },
        web: { base: agent.base },
        gen: '0.2.3',
        stack,
        creds: 'gateway',
        httpFetch: (req) => agent.fetch(req),
        iceFilter,
        mediaCheck: async ({ caller, callee, offerSeen, answerSeen }) => {
          assert.ok(offerSeen.relayCandidates > 0 && answerSeen.relayCandidates > 0, `both SDPs carry relay candidates: ${JSON.stringify({ offerSeen, answerSeen })}`);
          const [mc, me] = await Promise.all([mediaFlows(caller), mediaFlows(callee)]);
          for (const [m, mine, theirs, uri] of [[mc, ADDR.relay1, ADDR.relay2, turns.t1.uri], [me, ADDR.relay2, ADDR.relay1, turns.t2.uri]]) {
            const { local, remote } = m.second.pair;
            assert.equal(local.candidateType, 'relay', `selected local candidate is relay. ${m.ctx}`);
            assert.equal(remote.candidateType, 'relay', `selected remote candidate is relay. ${m.ctx}`);
            assert.equal(local.address, mine, `local relay on this side's turn-server. ${m.ctx}`);
            assert.equal(remote.address, theirs, `remote relay on the other turn-server. ${m.ctx}`);
            assert.equal(local.relayProtocol, 'udp', m.ctx);
            assert.match(String(local.url), new RegExp(`^${uri.replace(/\./g, '\\.')}(\\?transport=udp)?$`), `relay from this side's own turn-server. ${m.ctx}`);
            for (const c of m.second.localCandidates) assert.equal(c.candidateType, 'relay', `relay-only: no other local candidate. ${m.ctx}`);
          }
          // The counters while the call runs (flushed twice a second): both turn-servers'
          // kernel paths must carry hundreds of packets each way (~130 a second each way
          // here), and most of what the server relayed at all.
          let d1;
          let d2;
          const ctx = () => JSON.stringify({ t1: d1, t2: d2 });
          const offloaded = async () => {
            d1 = minus(packets(await metrics(turns.t1)), before1);
            d2 = minus(packets(await metrics(turns.t2)), before2);
            return [d1, d2].every((d) => d.offToPeer >= 300 && d.offToClient >= 300);
          };
          try {
            await waitUntil('300 packets each way through both turn-servers\' kernel paths', offloaded, { timeoutMs: 10000, every: 250 });
          } catch (e) {
            e.message += ` ${ctx()}`;
            throw e;
          }
          for (const [name, d] of [['turn-server 1', d1], ['turn-server 2', d2]]) {
            for (const [off, all] of [['offToPeer', 'toPeer'], ['offToClient', 'toClient']]) {
              assert.ok(d[off] >= 0.8 * d[all], `${name}: the kernel must have relayed most of what was relayed (${off} of ${all}): ${ctx()}`);
            }
          }
          return { caller: mc, callee: me, remoteMediaExpected: true, packets: { t1: d1, t2: d2 } };
        },
      });
      const pair = (s) => `${s.pair.local.candidateType} ${s.pair.local.address}:${s.pair.local.port} ↔ ${s.pair.remote.candidateType} ${s.pair.remote.address}:${s.pair.remote.port}`;
      console.log(`# offload call: ${Date.now() - started} ms; media after accepted ${r.timings.mediaCallerAfterAccepted}/${r.timings.mediaCalleeAfterAccepted} ms; ` +
        `caller pair ${pair(r.caller)}, callee pair ${pair(r.callee)}; packets relayed while media was checked (all / by the kernel) ${JSON.stringify(r.media.packets)}`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });
});
