'use strict';
// Issue 14's browser proof: a Mattermost-style videocall between two Chromium pages whose
// users are on DIFFERENT gateway nodes (cluster mode over a real `nats-server -js`,
// docs/scale-out.md), each page relaying through a DIFFERENT turn-server. Page A (caller)
// talks only to node 1, page B (callee) only to node 2; node 1 relays through
// turn-server 1, node 2 through turn-server 2 (one shared TURN secret). The Mattermost
// server's add_token/remove_token go to node 1 only. Also: the same call with both pages
// on node 1, in the same run, for comparison of the set-up time; and node 2 killed mid-call.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startTurnServer, startGateway, startNats } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall, relayOnlyMediaCheck } = require('../lib/call');
const { makeTestCa, homeTrustingCa, fetchTrusting } = require('../lib/tls');
const { startNginx } = require('../lib/nginx');
const { freePort, waitUntil } = require('../lib/util');

/** One series of a node's /metrics (0 when absent). */
async function metric(gw, series) {
  const text = await (await fetch(gw.adminUrl.replace(/\/admin$/, '/metrics'), { signal: AbortSignal.timeout(2000) })).text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return 0;
}

/**
 * `duringCall` hook: set-up time from the caller's page records, the way benches/browser
 * counts it — the caller's `call` sent → both RTCPeerConnections `connected`.
 */
async function setupTime({ caller, callee }) {
  const [ce, ee] = await Promise.all([caller, callee].map((p) => p.page.evaluate(() => window.party.rec.events)));
  const wall = (list, pred) => (list.find(pred) || {}).wall;
  const sent = wall(ce, (e) => e.kind === 'call-sent');
  const conn = (l) => wall(l, (e) => e.kind === 'pc-conn' && e.state === 'connected');
  // `accepted` with the answer at the caller: from there on it is ICE + DTLS through the
  // turn-server(s), no gateway.
  const accepted = wall(ce, (e) => e.kind === 'plugin-event' && e.event === 'accepted');
  assert.ok(sent && accepted && conn(ce) && conn(ee), `call-sent, accepted and both pc-conn connected recorded: ${JSON.stringify({ sent, accepted, caller: conn(ce), callee: conn(ee) })}`);
  return { setupMs: Math.max(conn(ce), conn(ee)) - sent, acceptedToConnectedMs: Math.max(conn(ce), conn(ee)) - accepted };
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? `median ${s[Math.floor((s.length - 1) / 2)]} ms (${s[0]}–${s[s.length - 1]}, n=${s.length})` : 'none';
};

// Calls per placement and generation, interleaved so machine load affects both placements
// alike; CALLRELAY_CLUSTER_RUNS raises it for a measurement (docs/scale-out.md's numbers).
const RUNS = Math.max(1, Math.min(50, Number(process.env.CALLRELAY_CLUSTER_RUNS) || 3));

// The suite's bound: set-up, nginx, the kill case, and ≤ 15 s per call (each takes ~5 s).
describe('videocall with the two users on different gateway nodes (NATS), each relaying through its own turn-server', { timeout: 300000 + 4 * RUNS * 15000 }, () => {
  const adminSecret = crypto.randomBytes(12).toString('hex');
  const turnSecret = crypto.randomBytes(18).toString('base64');
  const s = {}; // nats, turn1, turn2, gw1, gw2
  let web;
  let chrome;
  const setup = {}; // "<gen> <api> <cross|same>" → [ms]

  const logs = () => [s.nats, s.turn1, s.turn2, s.gw1, s.gw2].filter(Boolean).map((x) => x.proc.dump()).join('\n');

  before(async () => {
    assertOnlyLoopback(); // before anything starts: see run-in-netns.sh
    s.nats = await startNats();
    s.turn1 = await startTurnServer({ secret: turnSecret });
    s.turn2 = await startTurnServer({ secret: turnSecret });
    const node = (id, turn) => startGateway({
      adminSecret,
      turnSecret,
      turnUris: [turn.uri, `${turn.uri}?transport=tcp`],
      extraArgs: ['--nats-url', s.nats.url, '--node-id', id],
    });
    s.gw1 = await node('n1', s.turn1);
    s.gw2 = await node('n2', s.turn2);
    // In the cluster: each node read the shared tokens and the presence bucket and hears
    // the other's heartbeat.
    try {
      for (const gw of [s.gw1, s.gw2]) {
        await waitUntil(`${gw.adminUrl}: connected to NATS, presence read, the other node seen`, async () =>
          (await metric(gw, 'callrelay_gateway_nats_connected')) === 1 &&
          (await metric(gw, 'callrelay_gateway_cluster_peers')) === 1 &&
          gw.proc.log.includes('shared tokens read from NATS') &&
          gw.proc.log.includes('presence read from NATS'), { timeoutMs: 20000, every: 100 });
      }
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
    web = await startStaticServer();
    chrome = await launchChromium();
  });

  after(async () => {
    if (chrome) await chrome.close();
    if (web) await web.close();
    for (const gw of [s.gw1, s.gw2]) {
      if (!gw) continue;
      await gw.proc.stop();
      await gw.cleanup();
    }
    for (const t of [s.turn1, s.turn2]) if (t) await t.proc.stop();
    if (s.nats) {
      await s.nats.proc.stop();
      await s.nats.cleanup();
    }
  });

  // A (caller) on node 1, B (callee) on node 2: each page's iceServers come from its own
  // node's /turn-credentials, so A relays through turn-server 1 and B through turn-server 2.
  const crossStack = () => ({
    adminSecret, turnSecret, gw: s.gw1,
    gws: { caller: s.gw1, callee: s.gw2 },
    turns: { caller: s.turn1, callee: s.turn2 },
    killCalleeNode: async () => {
      s.gw2.proc.child.kill('SIGKILL');
      await s.gw2.proc.exited;
    },
  });
  // The comparison: both pages on node 1 (turn-server 1), same run, same browser.
  const sameStack = () => ({ adminSecret, turnSecret, gw: s.gw1, turn: s.turn1 });

  const cases = [];
  for (const [gen, api] of [['1.1.2', 'ws'], ['0.2.3', 'http']]) {
    for (let i = 1; i <= RUNS; i++) {
      cases.push({ gen, api, where: 'cross', i });
      cases.push({ gen, api, where: 'same', i });
    }
  }

  for (const c of cases) {
    const apiText = c.api === 'http' ? 'HTTP long poll, each page to its own node' : 'WebSocket';
    const whereText = c.where === 'cross'
      ? 'A on node 1 ↔ B on node 2, relay-only through turn-server 1 / turn-server 2'
      : 'both on node 1 (comparison), relay-only through turn-server 1';
    it(`janus.js ${c.gen} over ${apiText}: ${whereText}; media both ways, A hangs up → B gets hangup, remove_token on node 1 (#${c.i})`, { timeout: 60000 }, async () => {
      const t = Date.now();
      const stack = c.where === 'cross' ? crossStack() : sameStack();
      const series = 'callrelay_gateway_cluster_call_setup_seconds_count';
      const crossBefore = await metric(s.gw1, series);
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen: c.gen, stack, creds: 'gateway', transport: 'udp', api: c.api, duringCall: setupTime });
        // The call really went between the nodes over NATS (or, for the comparison, did not).
        assert.equal(await metric(s.gw1, series) - crossBefore, c.where === 'cross' ? 1 : 0, `node 1's ${series} must count ${c.where === 'cross' ? 'this' : 'no'} call to another node`);
        // Relay ↔ relay: each page's selected remote candidate is the other's relayed
        // address (A's allocation on turn-server 1, B's on turn-server 2 when cross).
        assert.equal(r.caller.pair.remote.port, r.callee.pair.local.port, `A sends to B's relayed address: ${JSON.stringify([r.caller.pair, r.callee.pair])}`);
        assert.equal(r.callee.pair.remote.port, r.caller.pair.local.port, `B sends to A's relayed address: ${JSON.stringify([r.caller.pair, r.callee.pair])}`);
        const key = `${c.gen} ${c.api} ${c.where}`;
        (setup[key] = setup[key] || []).push({ setup: r.during.setupMs, offer: r.timings.offerToIncomingcallMs, answer: r.timings.answerToAcceptedMs, tail: r.during.acceptedToConnectedMs });
        console.log(`# ${key} #${c.i}: call → both connected ${r.during.setupMs} ms; ${Date.now() - t} ms in all; timings ${JSON.stringify(r.timings)}; ` +
          `A relayed via ${r.caller.pair.local.url}, B via ${r.callee.pair.local.url}; A got audio ${r.caller.inbound.audio} B video ${r.caller.inbound.video} B, ` +
          `B got audio ${r.callee.inbound.audio} B video ${r.callee.inbound.video} B; hangup reasons ${JSON.stringify(r.hangupReasons)}`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }

  it('set-up times: cross-node against same-node, same run', () => {
    for (const [gen, api] of [['1.1.2', 'ws'], ['0.2.3', 'http']]) {
      const cross = setup[`${gen} ${api} cross`] || [];
      const same = setup[`${gen} ${api} same`] || [];
      const of = (xs, k) => stats(xs.map((x) => x[k]));
      console.log(`# set-up (call → both connected), janus.js ${gen} over ${api}: cross-node ${of(cross, 'setup')}; same-node ${of(same, 'setup')}`);
      console.log(`#   offer created → incomingcall: cross-node ${of(cross, 'offer')}; same-node ${of(same, 'offer')}; ` +
        `answer created → accepted: cross-node ${of(cross, 'answer')}; same-node ${of(same, 'answer')}; ` +
        `accepted at the caller → both connected (ICE + DTLS via TURN only): cross-node ${of(cross, 'tail')}; same-node ${of(same, 'tail')}`);
      assert.equal(cross.length + same.length, 2 * RUNS, `every ${gen} ${api} call measured (a failed call above has no number)`);
    }
  });

  // Both pages behind one nginx (deploy/nginx/callrelay.conf as shipped, both nodes in each
  // upstream: docs/scale-out.md, Load balancer), no stickiness: a WebSocket stays on the
  // node nginx picked, HTTP requests go round robin, so a long-poll client's requests
  // reach the node that does not hold its session and are forwarded over NATS.
  it('through nginx round robin over both nodes: janus.js 0.2.3 over https long poll (requests forwarded to the session\'s node), 1.1.2 over wss; media both ways, hangup, remove_token', { timeout: 120000 }, async () => {
    const NAME = 'callrelay.test';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-cluster-nginx-'));
    let nginx;
    let lbChrome;
    try {
      const ca = makeTestCa(dir, NAME);
      const home = homeTrustingCa(path.join(dir, 'home'), ca.caPath);
      const port = await freePort();
      const nodes = [s.gw1, s.gw2];
      nginx = await startNginx({
        name: NAME, port, certPath: ca.certPath, keyPath: ca.keyPath,
        wsPort: nodes.map((g) => Number(new URL(g.wsUrl).port)),
        httpPort: nodes.map((g) => Number(new URL(g.httpBase).port)),
      });
      lbChrome = await launchChromium({ home, extraArgs: [`--host-resolver-rules=MAP ${NAME} 127.0.0.1`] });
      const base = `https://${NAME}:${port}`;
      const viaLb = { wsUrl: `wss://${NAME}:${port}/`, wsHttpBase: base, httpBase: base, proc: nginx.proc };
      // The Mattermost server talks to node 1's Admin API; the pages only to nginx. The
      // token removed on node 1 must be refused through nginx too (whichever node answers).
      const stack = { adminSecret, turnSecret, gw: s.gw1, gws: { caller: viaLb, callee: viaLb } };
      // Each page relays through the turn-server its credentials name (whichever node
      // nginx sent its /turn-credentials to).
      const turnOfPage = async (p) => {
        const pcs = await p.page.evaluate(() => window.party.rec.pcs);
        const url = pcs.flatMap((x) => x.iceServers).flatMap((x) => [].concat(x.urls)).find((u) => /^turn:/.test(u));
        const tport = Number((url || '').replace(/^turn:127\.0\.0\.1:(\d+).*$/, '$1'));
        assert.ok([s.turn1.port, s.turn2.port].includes(tport), `${p.label} was given one of the two turn-servers: ${url}`);
        return { port: tport };
      };
      const mediaCheck = async (a) => relayOnlyMediaCheck({ ...a, stack: { ...a.stack, turns: { caller: await turnOfPage(a.caller), callee: await turnOfPage(a.callee) } } });
      const fwd = async () => (await metric(s.gw1, 'callrelay_gateway_cluster_http_forwarded_total{result="ok"}')) + (await metric(s.gw2, 'callrelay_gateway_cluster_http_forwarded_total{result="ok"}'));
      for (const [gen, api] of [['0.2.3', 'http'], ['1.1.2', 'ws']]) {
        const before = await fwd();
        const r = await runMattermostCall({ browser: lbChrome.browser, web, gen, stack, creds: 'gateway', transport: 'udp', api, mediaCheck, duringCall: setupTime, httpFetch: fetchTrusting(ca.caPem, { [NAME]: '127.0.0.1' }) });
        const forwarded = (await fwd()) - before;
        if (api === 'http') assert.ok(forwarded > 0, `round robin must have sent some of the long-poll client's requests to the other node (forwarded ${forwarded})`);
        console.log(`# via nginx, janus.js ${gen} over ${api}: call → both connected ${r.during.setupMs} ms; HTTP requests forwarded between nodes ${forwarded}; ` +
          `A relayed via ${r.caller.pair.local.url}, B via ${r.callee.pair.local.url}; hangup reasons ${JSON.stringify(r.hangupReasons)}`);
      }
    } catch (e) {
      e.message += `\n${logs()}${nginx ? `\n${nginx.proc.dump()}\n----- nginx access log\n${nginx.accessLog().trimEnd()}` : ''}`;
      throw e;
    } finally {
      if (lbChrome) await lbChrome.close();
      if (nginx) {
        await nginx.proc.stop();
        nginx.cleanup();
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  // Last: it leaves node 2 dead. Janus.js 0.2.3 over WebSocket, as Mattermost runs it.
  it('janus.js 0.2.3 over WebSocket: node 2 killed (SIGKILL) mid-call → A on node 1 gets hangup within 15 s', { timeout: 60000 }, async () => {
    try {
      const r = await runMattermostCall({ browser: chrome.browser, web, gen: '0.2.3', stack: crossStack(), creds: 'gateway', transport: 'udp', api: 'ws', end: 'callee-node-killed', duringCall: setupTime });
      assert.ok(r.hangupAfterKillMs <= 15000, `hangup after ${r.hangupAfterKillMs} ms`);
      console.log(`# node 2 killed mid-call: A's hangup ${r.hangupAfterKillMs} ms after the SIGKILL (reason ${JSON.stringify(r.hangupReasons.caller)}); call → both connected ${r.during.setupMs} ms`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });

  // (nats-server 2.9 itself exits 1 on SIGTERM after a clean shutdown: not ours to check.)
  it('node 1 and both turn-servers exit 0 on SIGTERM', { timeout: 20000 }, async () => {
    const codes = [];
    for (const p of [s.gw1.proc, s.turn1.proc, s.turn2.proc]) codes.push((await p.stop()).code);
    assert.deepEqual(codes, [0, 0, 0], `exit statuses (gateway node 1, turn-server 1, turn-server 2)\n${logs()}`);
  });
});
