'use strict';
// "Gets through NAT", proven with real NATs. lab/nat-lab.sh builds network namespaces: a
// "public" 203.0.113.0/24 (documentation range) holding our gateway and turn-server, and
// two callers, each behind its own NAT namespace — NAT A a port-preserving MASQUERADE,
// NAT B a port-randomising (fully-random, symmetric) MASQUERADE; both drop unsolicited
// inbound packets. Each caller is a headless Chromium started inside its namespace. The
// Mattermost flow of videocall.test.js runs between them with iceTransportPolicy "all"
// (every address that exists in those namespaces is the lab's own):
//   - with the gateway's STUN + TURN servers the call connects through turn-server, media
//     both ways, a relay candidate on the selected pair;
//   - with TURN left out (STUN only) the same call gets no media: the NATs are real.
// The lab is deleted in after() and, should the process die without it, on exit and by
// the next run (names carry the creator's pid). Needs root (CI runs as root).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { binary } = require('../lib/servers');
const { assertOnlyLoopback, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { ADDR, createLab, nsProc, startAgent } = require('../lib/lab');
const { fatal, sleep, waitUntil } = require('../lib/util');

const TURN_PORT = 3478;
const PAGE_PORT = 8080;

/** Sum of a Prometheus counter's samples whose labels include `match`. */
function metricSum(text, name, match = '', match2 = '') {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(match) && line.includes(match2)) sum += Number(line.trim().split(/\s+/).pop());
  }
  return sum;
}

/** Waits for audio+video flowing into `party`, then checks it keeps growing. */
async function mediaFlows(party, timeoutMs = 20000) {
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

describe('calls between two NATed callers (real NAT namespaces)', { timeout: 150000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let lab;
  let agent;
  let stateDir;
  const browsers = {};

  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump()].filter(Boolean).join('\n');
  const metrics = async () => (await agent.fetch({ url: `http://127.0.0.1:${stack.turn.metricsPort}/metrics` })).text;

  before(async () => {
    assertOnlyLoopback(); // the test process itself stays in run-in-netns.sh's namespace
    lab = createLab();
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-nat-gw-'));
    // Pages (and the test's own HTTP requests) come from the public namespace.
    agent = await startAgent(lab.ns.pub, ADDR.pub, PAGE_PORT);
    // 203.0.113.0/24 is public unicast to our turn-server's default peer policy (only
    // loopback/private/link-local/reserved ranges are denied), so no --allow-peer: the
    // callers' private host addresses stay denied, as in production.
    const turnProc = nsProc(lab.ns.pub, 'turn-server', binary('turn-server'), [
      '--listen', `${ADDR.pub}:${TURN_PORT}`, '--relay-ip', ADDR.pub, '--relay-ports', '50000-50999',
      '--auth-secret', stack.turnSecret, '--realm', 'nat-lab', '--metrics-listen', '127.0.0.1:9641',
      '--drain-timeout', '2',
    ]);
    stack.turn = { proc: turnProc, port: TURN_PORT, metricsPort: 9641, uri: `turn:${ADDR.pub}:${TURN_PORT}` };
    const gwProc = nsProc(lab.ns.pub, 'gateway', binary('gateway'), [
      '--listen', `${ADDR.pub}:8188`, '--http-listen', `${ADDR.pub}:8088`, '--admin-listen', '127.0.0.1:7088',
      '--admin-secret', stack.adminSecret, '--token-auth', '--turn-secret', stack.turnSecret,
      '--stun-uri', `stun:${ADDR.pub}:${TURN_PORT}`, '--turn-uri', stack.turn.uri,
      '--turn-uri', `${stack.turn.uri}?transport=tcp`, '--state-dir', stateDir,
    ]);
    stack.gw = {
      proc: gwProc,
      wsUrl: `ws://${ADDR.pub}:8188`,
      wsHttpBase: `http://${ADDR.pub}:8188`,
      httpBase: `http://${ADDR.pub}:8088`,
      adminUrl: 'http://127.0.0.1:7088/admin',
    };
    try {
      await waitUntil('turn-server /metrics and gateway admin info inside the lab', async () => {
        if (!turnProc.alive()) throw fatal('turn-server exited early');
        if (!gwProc.alive()) throw fatal('gateway exited early');
        await metrics();
        const r = await agent.fetch({
          url: stack.gw.adminUrl, method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ janus: 'info', transaction: 'ready-probe' }),
        });
        return JSON.parse(r.text).janus === 'server_info';
      }, { timeoutMs: 15000 });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
    // One Chromium per caller namespace: A behind NAT A, B behind NAT B.
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
    if (stack.turn) await stack.turn.proc.stop();
    if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
    if (lab) {
      lab.destroy();
      assert.deepEqual(lab.remaining(), [], 'every lab namespace must be gone');
    }
  });

  // iceServers filters (the gateway hands out stun:, turn: and turn:…?transport=tcp).
  const urlsOf = (s) => [].concat(s.urls);
  const stunOnly = (servers) => servers.filter((s) => urlsOf(s).every((u) => u.startsWith('stun:')));
  const withoutTcp = (servers) => servers.map((s) => ({ ...s, urls: urlsOf(s).filter((u) => !u.endsWith('?transport=tcp')) })).filter((s) => s.urls.length);
  const tcpTurnOnly = (servers) => servers.map((s) => ({ ...s, urls: urlsOf(s).filter((u) => /^turn:.*\?transport=tcp$/.test(u)) })).filter((s) => s.urls.length);

  const call = (gen, iceFilter, mediaCheck, policy = 'all') => runMattermostCall({
    browsers: { caller: browsers.a.browser, callee: browsers.b.browser },
    web: { base: agent.base },
    gen,
    stack,
    creds: 'gateway',
    policy,
    httpFetch: (req) => agent.fetch(req),
    iceFilter,
    mediaCheck,
  });

  // The offer/answer the gateway forwarded must carry each side's server-reflexive
  // candidate (its NAT's public address): STUN through the NAT worked, so the callers
  // had every chance of a direct path.
  function assertSdpCandidates(offerSeen, answerSeen, { relay }) {
    assert.ok(offerSeen.srflxCandidates > 0 && offerSeen.hostCandidates > 0, `offer (caller behind NAT A) must carry host + srflx candidates: ${JSON.stringify(offerSeen)}`);
    assert.ok(answerSeen.srflxCandidates > 0 && answerSeen.hostCandidates > 0, `answer (callee behind NAT B) must carry host + srflx candidates: ${JSON.stringify(answerSeen)}`);
    if (relay) {
      assert.ok(offerSeen.relayCandidates > 0 && answerSeen.relayCandidates > 0, `both SDPs must carry relay candidates: ${JSON.stringify({ offerSeen, answerSeen })}`);
    } else {
      assert.equal(offerSeen.relayCandidates + answerSeen.relayCandidates, 0, `no TURN, no relay candidates: ${JSON.stringify({ offerSeen, answerSeen })}`);
    }
  }

  for (const gen of ['0.2.3', '1.1.2']) {
    it(`janus.js ${gen}: caller behind NAT A ↔ callee behind symmetric NAT B connects through turn-server, media both ways`, { timeout: 60000 }, async () => {
      const before = await metrics();
      const t = Date.now();
      try {
        const r = await call(gen, withoutTcp, async ({ caller, callee, offerSeen, answerSeen }) => {
          assertSdpCandidates(offerSeen, answerSeen, { relay: true });
          // Both sides sampled concurrently; on failure report both.
          const settled = await Promise.allSettled([mediaFlows(caller), mediaFlows(callee)]);
          const failed = settled.filter((x) => x.status === 'rejected');
          if (failed.length) throw new Error(failed.map((x) => x.reason.message).join('\n'));
          const [mc, me] = settled.map((x) => x.value);
          for (const m of [mc, me]) {
            const { local, remote } = m.second.pair;
            assert.ok(local.candidateType === 'relay' || remote.candidateType === 'relay', `the selected pair must use a relay candidate on at least one side. ${m.ctx}`);
            for (const c of [local, remote]) {
              if (c.candidateType === 'relay') assert.equal(c.address, ADDR.pub, `relay candidates are on our turn-server's --relay-ip. ${m.ctx}`);
            }
            if (local.candidateType === 'relay') assert.match(String(local.url), /^turn:203\.0\.113\.1:3478(\?transport=udp)?$/, `the local relay candidate comes from our turn-server. ${m.ctx}`);
            // Each caller's own addresses exist only behind its NAT.
            for (const c of m.second.localCandidates) {
              assert.ok([ADDR.a, ADDR.b, ADDR.nata, ADDR.natb, ADDR.pub].includes(c.address), `unexpected local candidate ${JSON.stringify(c)}. ${m.ctx}`);
            }
          }
          // What the NATs made of the callers, as seen by STUN: A's srflx keeps NAT A's
          // address, B's NAT B's.
          const srflx = (m) => m.second.localCandidates.filter((c) => c.candidateType === 'srflx').map((c) => c.address);
          assert.ok(srflx(mc).every((x) => x === ADDR.nata) && srflx(mc).length > 0, `caller's srflx must be NAT A's ${ADDR.nata}: ${mc.ctx}`);
          assert.ok(srflx(me).every((x) => x === ADDR.natb) && srflx(me).length > 0, `callee's srflx must be NAT B's ${ADDR.natb}: ${me.ctx}`);
          return { caller: mc, callee: me, remoteMediaExpected: true };
        });
        const afterText = await metrics();
        const relayed = {
          toPeer: metricSum(afterText, 'callrelay_turn_relayed_bytes_total', 'direction="to_peer"') - metricSum(before, 'callrelay_turn_relayed_bytes_total', 'direction="to_peer"'),
          toClient: metricSum(afterText, 'callrelay_turn_relayed_bytes_total', 'direction="to_client"') - metricSum(before, 'callrelay_turn_relayed_bytes_total', 'direction="to_client"'),
        };
        // Media (tens of kB per second both ways) really went through our relay.
        assert.ok(relayed.toPeer > 20000 && relayed.toClient > 20000, `turn-server must have relayed the media: ${JSON.stringify(relayed)}`);
        const pair = (s) => `${s.pair.local.candidateType} ${s.pair.local.address}:${s.pair.local.port} ↔ ${s.pair.remote.candidateType} ${s.pair.remote.address}:${s.pair.remote.port}`;
        console.log(`# NAT ${gen} with TURN: ${Date.now() - t} ms; media after accepted ${r.timings.mediaCallerAfterAccepted}/${r.timings.mediaCalleeAfterAccepted} ms; ` +
          `caller pair ${pair(r.caller)}, callee pair ${pair(r.callee)}; turn-server relayed ${JSON.stringify(relayed)} B`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }

  // TURN over TCP (networks that block UDP): the caller behind NAT A is relay-only with
  // only the gateway's `turn:…?transport=tcp` URI; the callee behind symmetric NAT B has
  // STUN only. The caller's TCP relay is then the only way through (the STUN-only tests
  // show the direct path fails), so the call must connect on it.
  it('janus.js 0.2.3: TURN over TCP through NAT A (caller relay-only, TCP TURN only) ↔ callee behind symmetric NAT B (STUN only), media both ways', { timeout: 60000 }, async () => {
    const before = await metrics();
    try {
      const r = await call('0.2.3', (servers, role) => (role === 'caller' ? tcpTurnOnly(servers) : stunOnly(servers)), async ({ caller, callee, offerSeen, answerSeen }) => {
        assert.ok(offerSeen.relayCandidates > 0 && offerSeen.hostCandidates + offerSeen.srflxCandidates === 0, `the relay-only caller's offer carries relay candidates only: ${JSON.stringify(offerSeen)}`);
        assert.ok(answerSeen.srflxCandidates > 0 && answerSeen.relayCandidates === 0, `the STUN-only callee's answer carries srflx, no relay: ${JSON.stringify(answerSeen)}`);
        const settled = await Promise.allSettled([mediaFlows(caller), mediaFlows(callee)]);
        const failed = settled.filter((x) => x.status === 'rejected');
        if (failed.length) throw new Error(failed.map((x) => x.reason.message).join('\n'));
        const [mc, me] = settled.map((x) => x.value);
        const cl = mc.second.pair.local;
        assert.equal(cl.candidateType, 'relay', `caller's selected local candidate is its relay. ${mc.ctx}`);
        assert.equal(cl.relayProtocol, 'tcp', `caller's relay is allocated over TCP (relayProtocol). ${mc.ctx}`);
        assert.equal(cl.address, ADDR.pub, `relay address on our turn-server's --relay-ip. ${mc.ctx}`);
        assert.equal(String(cl.url), `turn:${ADDR.pub}:${TURN_PORT}?transport=tcp`, `relay candidate from the TCP TURN URI. ${mc.ctx}`);
        for (const c of mc.second.localCandidates) assert.ok(c.candidateType === 'relay' && c.relayProtocol === 'tcp', `relay-only caller with TCP TURN only: every local candidate is a TCP relay. ${mc.ctx}`);
        // The callee sees the caller's relay address as its remote end.
        assert.equal(me.second.pair.remote.address, ADDR.pub, `callee's media goes to the caller's relay on ${ADDR.pub}. ${me.ctx}`);
        assert.notEqual(me.second.pair.local.candidateType, 'relay', `callee has no TURN. ${me.ctx}`);
        return { caller: mc, callee: me, remoteMediaExpected: true };
      }, { caller: 'relay', callee: 'all' });
      const afterText = await metrics();
      const grew = (dir) => metricSum(afterText, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`, 'transport="tcp"') - metricSum(before, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`, 'transport="tcp"');
      const relayed = { toPeer: grew('to_peer'), toClient: grew('to_client') };
      assert.ok(relayed.toPeer > 20000 && relayed.toClient > 20000, `turn-server relayed the media for a TCP client: ${JSON.stringify(relayed)}\n${afterText.split('\n').filter((l) => l.startsWith('callrelay_turn_relayed_bytes_total')).join('\n')}`);
      const pair = (s) => `${s.pair.local.candidateType}/${s.pair.local.relayProtocol || s.pair.local.protocol} ${s.pair.local.address}:${s.pair.local.port} ↔ ${s.pair.remote.candidateType} ${s.pair.remote.address}:${s.pair.remote.port}`;
      console.log(`# NAT 0.2.3 TURN/TCP: media after accepted ${r.timings.mediaCallerAfterAccepted}/${r.timings.mediaCalleeAfterAccepted} ms; caller pair ${pair(r.caller)}, callee pair ${pair(r.callee)}; turn-server relayed over tcp ${JSON.stringify(relayed)} B`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });

  for (const gen of ['0.2.3', '1.1.2']) it(`janus.js ${gen}: the same call with TURN left out (STUN only) gets no media — the NATs are real`, { timeout: 60000 }, async () => {
    const WINDOW_MS = 15000;
    try {
      const r = await call(gen, stunOnly, async ({ caller, callee, offerSeen, answerSeen }) => {
        assertSdpCandidates(offerSeen, answerSeen, { relay: false });
        const stats = async () => Promise.all([caller, callee].map((p) => p.page.evaluate(() => window.party.stats())));
        const deadline = Date.now() + WINDOW_MS;
        // Evidence that ICE tried is gathered over the whole window, per side and pair: once
        // ICE gives up (~15 s after checking started) Chromium drops the failed pairs from
        // getStats(), so the last sample alone may list none (seen: "pairs":[] with
        // connectionState "failed").
        const tried = [new Map(), new Map()];
        let last;
        while (Date.now() < deadline) {
          last = await stats();
          last.forEach((s, i) => {
            const ctx = JSON.stringify(s);
            assert.ok(!s.inbound.audio && !s.inbound.video, `no media may arrive without TURN: ${ctx}`);
            assert.ok(!['connected', 'completed'].includes(s.iceConnectionState), `ICE must not connect without TURN: ${ctx}`);
            assert.ok(!s.pair || s.pair.state !== 'succeeded', `no candidate pair may succeed without TURN: ${ctx}`);
            for (const p of s.pairs) {
              const key = `${p.local} -> ${p.remote}`;
              const o = tried[i].get(key) || { local: p.local, remote: p.remote, requestsSent: 0, responsesReceived: 0, states: [] };
              o.requestsSent = Math.max(o.requestsSent, p.requestsSent || 0);
              o.responsesReceived = Math.max(o.responsesReceived, p.responsesReceived || 0);
              if (!o.states.includes(p.state)) o.states.push(p.state);
              tried[i].set(key, o);
            }
          });
          await sleep(500);
        }
        // ICE did try: checks went out to the other side's NAT address and none came back.
        const [sc, se] = last;
        for (const [i, peerNat] of [[0, ADDR.natb], [1, ADDR.nata]]) {
          const pairs = [...tried[i].values()];
          const ctx = `${i ? 'callee' : 'caller'}: pairs seen during the window ${JSON.stringify(pairs)}; last stats ${JSON.stringify(last[i])}`;
          const towardNat = pairs.filter((p) => p.remote && p.remote.includes(` ${peerNat}:`));
          assert.ok(towardNat.some((p) => p.requestsSent > 0), `ICE must have sent checks to the peer's NAT address ${peerNat}: ${ctx}`);
          assert.ok(towardNat.every((p) => !p.responsesReceived), `no check toward ${peerNat} may be answered: ${ctx}`);
          assert.ok(pairs.every((p) => !p.states.includes('succeeded')), `no pair ever succeeded: ${ctx}`);
        }
        const summary = (s, i) => ({ ice: s.iceConnectionState, connection: s.connectionState, pairsTried: tried[i].size, checks: [...tried[i].values()].reduce((n, p) => n + p.requestsSent, 0) });
        return { caller: { connectMs: null, second: summary(sc, 0) }, callee: { connectMs: null, second: summary(se, 1) }, remoteMediaExpected: false };
      });
      console.log(`# NAT ${gen} without TURN: no media in ${WINDOW_MS} ms; caller ${JSON.stringify(r.caller)}, callee ${JSON.stringify(r.callee)}`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });

  // Control for the test above: the same STUN-only call, with NAT B switched to a
  // port-preserving masquerade like NAT A, does connect directly (hole punching between two
  // port-restricted cones). So the lab's plumbing carries calls, and the failure above is
  // NAT B's port randomisation, which only TURN gets through.
  it('control: with NAT B port-preserving instead, the STUN-only call connects directly (no relay)', { timeout: 60000 }, async () => {
    lab.setMasquerade('natb', '');
    try {
      const r = await call('0.2.3', stunOnly, async ({ caller, callee, offerSeen, answerSeen }) => {
        assertSdpCandidates(offerSeen, answerSeen, { relay: false });
        const settled = await Promise.allSettled([mediaFlows(caller), mediaFlows(callee)]);
        const failed = settled.filter((x) => x.status === 'rejected');
        if (failed.length) throw new Error(failed.map((x) => x.reason.message).join('\n'));
        const [mc, me] = settled.map((x) => x.value);
        for (const [m, peerNat] of [[mc, ADDR.natb], [me, ADDR.nata]]) {
          const { local, remote } = m.second.pair;
          assert.ok(local.candidateType !== 'relay' && remote.candidateType !== 'relay', `no TURN: the pair is direct. ${m.ctx}`);
          assert.equal(remote.address, peerNat, `media goes straight to the other NAT's public address. ${m.ctx}`);
        }
        return { caller: mc, callee: me, remoteMediaExpected: true };
      });
      const pair = (s) => `${s.pair.local.candidateType} ${s.pair.local.address}:${s.pair.local.port} ↔ ${s.pair.remote.candidateType} ${s.pair.remote.address}:${s.pair.remote.port}`;
      console.log(`# NAT control (both NATs port-preserving), STUN only: media after accepted ${r.timings.mediaCallerAfterAccepted}/${r.timings.mediaCalleeAfterAccepted} ms; caller pair ${pair(r.caller)}, callee pair ${pair(r.callee)}`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    } finally {
      lab.setMasquerade('natb', 'fully-random');
    }
  });
});
