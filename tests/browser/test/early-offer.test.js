'use strict';
// `early_offer` (docs/gateway.md, "Early offer") in headless Chromium, relay-only, janus.js
// 1.1.2 and 0.2.3: the offer reaches the callee at once without candidates, the gateway
// has our turn-server install both browsers' permissions before the answer goes, and the
// call connects relay↔relay with no fallback counted. Then a caller that is NOT
// relay-only on our turn-server (its TURN server unreachable): the answer goes anyway and
// the fallback is counted.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { startTurnServer, startGateway } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { assertRelayedMedia } = require('../lib/media');
const { freePort } = require('../lib/util');

/** Sum of a counter family's samples (all labels) in Prometheus text, by name prefix. */
function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.trim().split(/\s+/).pop());
  }
  return sum;
}

function metricOf(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line, `${series} is exported:\n${text}`);
  return Number(line.trim().split(/\s+/).pop());
}

describe('early_offer: permissions installed by the gateway', { timeout: 240000 }, () => {
  const controlSecret = crypto.randomBytes(18).toString('hex');
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let web;
  let chrome;
  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump()].filter(Boolean).join('\n');
  const gwMetrics = async () => (await fetch(stack.gw.adminUrl.replace(/\/admin$/, '/metrics'))).text();
  const turnMetrics = async () => (await fetch(`http://127.0.0.1:${stack.turn.metricsPort}/metrics`)).text();

  before(async () => {
    assertOnlyLoopback();
    stack.turn = await startTurnServer({ secret: stack.turnSecret, extraArgs: ['--control-secret', controlSecret] });
    stack.gw = await startGateway({
      adminSecret: stack.adminSecret,
      turnSecret: stack.turnSecret,
      turnUris: [stack.turn.uri],
      extraArgs: [
        '--early-offer', 'true',
        '--turn-control-url', `http://127.0.0.1:${stack.turn.metricsPort}`,
        '--turn-control-secret', controlSecret,
      ],
    });
    web = await startStaticServer();
    chrome = await launchChromium();
  });

  after(async () => {
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (stack.gw) {
      await stack.gw.proc.stop();
      await stack.gw.cleanup();
    }
    if (stack.turn) await stack.turn.proc.stop();
  });

  // The offer went without candidates (the point of early_offer), the answer with the
  // callee's; media both ways relay↔relay through our turn-server. A 0.2.x callee never
  // gets the caller's candidates: its selected remote candidate is the caller's relayed
  // address learnt from the caller's checks (peer-reflexive).
  async function earlyMediaCheck({ caller, callee, offerSeen, answerSeen, transport }) {
    assert.equal(offerSeen.relayCandidates, 0, `early_offer: the offer reaches the callee without candidates: ${JSON.stringify(offerSeen)}`);
    assert.ok(answerSeen.relayCandidates > 0, `the answer carries the callee's relay candidate: ${JSON.stringify(answerSeen)}`);
    const [mc, me] = await Promise.all([
      assertRelayedMedia(caller.label, () => caller.page.evaluate(() => window.party.stats()), { transport, turnPort: stack.turn.port }),
      assertRelayedMedia(callee.label, () => callee.page.evaluate(() => window.party.stats()), { transport, turnPort: stack.turn.port, remoteTypes: ['relay', 'prflx'] }),
    ]);
    // the callee's peer is the caller's relayed address, whatever it learnt it from
    assert.equal(me.second.pair.remote.port, mc.second.pair.local.port, `the callee talks to the caller's relayed address: ${JSON.stringify({ caller: mc.second.pair, callee: me.second.pair })}`);
    return { caller: mc, callee: me, remoteMediaExpected: true };
  }

  for (const gen of ['1.1.2', '0.2.3']) {
    it(`janus.js ${gen}: offer at once, permissions installed, media both ways relay-only, no fallback`, { timeout: 60000 }, async () => {
      const before = { gw: await gwMetrics(), turn: await turnMetrics() };
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen, stack, creds: 'gateway', transport: 'udp', mediaCheck: earlyMediaCheck });
        const after = { gw: await gwMetrics(), turn: await turnMetrics() };
        assert.equal(metricOf(after.gw, 'callrelay_gateway_early_offers_total') - metricOf(before.gw, 'callrelay_gateway_early_offers_total'), 1, 'one early offer');
        assert.equal(metricSum(after.gw, 'callrelay_gateway_early_offer_fallbacks_total'), 0, `no fallback:\n${after.gw}`);
        const installed = (t) => metricOf(t, 'callrelay_turn_control_requests_total{result="installed"}');
        // one on each browser's allocation at least (Chromium may gather two relay
        // addresses; every pair is permitted)
        assert.ok(installed(after.turn) - installed(before.turn) >= 2, `permissions installed on both allocations:\n${after.turn}`);
        for (const refused of ['no_allocation', 'denied', 'full', 'unauthorized', 'rate_limited', 'bad_request', 'unavailable']) {
          assert.equal(metricOf(after.turn, `callrelay_turn_control_requests_total{result="${refused}"}`), 0, refused);
        }
        console.log(`# early_offer janus.js ${gen}: timings ${JSON.stringify(r.timings)}; callee's remote candidate ${r.callee.pair.remote.candidateType}`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }

  it('janus.js 0.2.3, caller whose TURN server is unreachable: the answer still goes, the fallback is counted', { timeout: 60000 }, async () => {
    const closed = await freePort();
    const before = await gwMetrics();
    const fellBack = (t) => metricSum(t, 'callrelay_gateway_early_offer_fallbacks_total');
    try {
      await runMattermostCall({
        browser: chrome.browser, web, gen: '0.2.3', stack, creds: 'gateway', transport: 'udp',
        // the caller's only TURN server is a closed port: no relay candidate on ours
        iceFilter: (servers, role) => servers
          .filter((s) => [].concat(s.urls).some((u) => u.startsWith('turn:')))
          .map((s) => (role === 'caller' ? { ...s, urls: [`turn:127.0.0.1:${closed}`] } : { ...s, urls: [].concat(s.urls).filter((u) => !u.includes('transport=tcp')) })),
        // relay-only without a reachable TURN server, the caller cannot connect at all
        media: false,
      });
      const after = await gwMetrics();
      assert.equal(fellBack(after) - fellBack(before), 1, `one fallback:\n${after}`);
      assert.equal(metricOf(after, 'callrelay_gateway_early_offer_fallbacks_total{reason="no_relay_candidate"}'), 1);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });
});
