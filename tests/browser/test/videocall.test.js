'use strict';
// Two-party janus.js videocalls in headless Chromium against OUR gateway, media relayed by
// OUR turn-server, for both janus.js generations: Debian libjs-janus-gateway 1.1.2 and
// npm janus-gateway@0.2.3 (the 0.2.x janus.js Mattermost vendored). The test plays the
// Mattermost server (add_token/remove_token, TURN credentials) and the pages do what the
// Mattermost webapp does. Always relay-only: tests must stay on loopback.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { startTurnServer, startGateway } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall, waitEvent } = require('../lib/call');
const { assertRelayedMedia } = require('../lib/media');
const { waitUntil } = require('../lib/util');

/**
 * Renegotiation during the call (janus.js 1.x; not in Mattermost's 0.2.x): the caller sends
 * `set` + an ICE-restart offer; the gateway answers `set` and hands the callee `update` +
 * that offer; the callee answers with `set` + answer, which reaches the caller as `update`.
 * Both PeerConnections must end up on the new ICE credentials with media still flowing,
 * relay-only.
 */
async function iceRestart({ caller, callee, stack, transport }) {
  const offer = await caller.page.evaluate(() => window.party.renegotiate());
  assert.notEqual(offer.ufrag, offer.previousUfrag, `an ICE-restart offer carries a new ufrag: ${JSON.stringify(offer)}`);
  await waitEvent(caller, 'caller: `set` acknowledged with event "set"', (e) => e.kind === 'plugin-event' && e.event === 'set', 5000);
  const upd = await waitEvent(callee, 'callee: `update` with the renegotiation offer', (e) => e.kind === 'update-jsep', 5000);
  assert.equal(upd.jsepType, 'offer', `update at the callee carries an offer: ${JSON.stringify(upd)}`);
  assert.equal(upd.ufrag, offer.ufrag, 'the gateway forwards the renegotiation offer as sent (new ufrag)');
  const answered = await waitEvent(callee, 'callee: renegotiation answer created', (e) => e.kind === 'update-answer-created', 5000);
  await waitEvent(callee, 'callee: `set` acknowledged with event "set"', (e) => e.kind === 'plugin-event' && e.event === 'set', 5000);
  const back = await waitEvent(caller, 'caller: `update` with the answer', (e) => e.kind === 'update-jsep', 5000);
  assert.equal(back.jsepType, 'answer', `update at the caller carries the answer: ${JSON.stringify(back)}`);
  assert.equal(back.ufrag, answered.ufrag, 'the gateway forwards the renegotiation answer as sent');
  await waitUntil('both PeerConnections on the restarted ICE credentials', async () => {
    const [c, e] = await Promise.all([caller.page.evaluate(() => window.party.ufrags()), callee.page.evaluate(() => window.party.ufrags())]);
    return c.local === offer.ufrag && c.remote === answered.ufrag && e.remote === offer.ufrag && e.local === answered.ufrag;
  }, { timeoutMs: 5000 });
  // Media keeps flowing both ways, still relay-only through our turn-server.
  const [mc, me] = await Promise.all([
    assertRelayedMedia(`${caller.label} after ICE restart`, () => caller.page.evaluate(() => window.party.stats()), { transport, turnPort: stack.turn.port }),
    assertRelayedMedia(`${callee.label} after ICE restart`, () => callee.page.evaluate(() => window.party.stats()), { transport, turnPort: stack.turn.port }),
  ]);
  for (const m of [mc, me]) assert.equal(m.second.iceConnectionState === 'connected' || m.second.iceConnectionState === 'completed', true, `ICE connected after the restart: ${JSON.stringify(m.second)}`);
  return { ufrags: { before: offer.previousUfrag, after: offer.ufrag }, callerVideoAfter: mc.second.inbound.video, calleeVideoAfter: me.second.inbound.video };
}

describe('Mattermost-style videocall through gateway + turn-server', { timeout: 420000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let web;
  let chrome;

  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump()].filter(Boolean).join('\n');

  before(async () => {
    assertOnlyLoopback(); // before anything starts: see run-in-netns.sh
    stack.turn = await startTurnServer({ secret: stack.turnSecret });
    stack.gw = await startGateway({
      adminSecret: stack.adminSecret,
      turnSecret: stack.turnSecret,
      turnUris: [stack.turn.uri, `${stack.turn.uri}?transport=tcp`],
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

  const cases = [
    { gen: '1.1.2', creds: 'gateway', transport: 'udp' },
    { gen: '0.2.3', creds: 'gateway', transport: 'udp' },
    { gen: '1.1.2', creds: 'gateway', transport: 'tcp' },
    { gen: '0.2.3', creds: 'gateway', transport: 'tcp' },
    { gen: '0.2.3', creds: 'mattermost', transport: 'udp' },
    { gen: '1.1.2', creds: 'mattermost', transport: 'udp' },
    // Not what Mattermost does (it only hands out the WebSocket URL), but any Janus client
    // must work: the same call over the Janus HTTP REST + long-poll transport.
    { gen: '1.1.2', creds: 'gateway', transport: 'udp', api: 'http' },
    { gen: '0.2.3', creds: 'gateway', transport: 'udp', api: 'http' },
    // A user closes the tab mid-call: the other side's UI must end the call.
    { gen: '0.2.3', creds: 'gateway', transport: 'udp', end: 'callee-closes' },
    { gen: '1.1.2', creds: 'gateway', transport: 'udp', end: 'callee-closes' },
    // Renegotiation (janus.js 1.x clients use it; Mattermost's 0.2.x does not).
    { gen: '1.1.2', creds: 'gateway', transport: 'udp', during: 'ice-restart' },
  ];
  for (const c of cases) {
    const credsText = c.creds === 'gateway' ? 'TURN credentials from the gateway' : 'TURN credentials minted as Mattermost mints them';
    const apiText = c.api === 'http' ? ' (Janus HTTP long-poll transport)' : '';
    const endText = (c.during === 'ice-restart' ? 'renegotiation (set + ICE-restart offer → update), ' : '') +
      (c.end === 'callee-closes' ? 'callee closes its page mid-call → caller gets hangup' : 'hangup');
    it(`janus.js ${c.gen}${apiText}: call, media both ways relay-only over TURN/${c.transport}, ${credsText}, ${endText}, remove_token`, { timeout: 60000 }, async () => {
      const t = Date.now();
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen: c.gen, stack, creds: c.creds, transport: c.transport, api: c.api || 'ws', end: c.end || 'hangup', duringCall: c.during === 'ice-restart' ? iceRestart : undefined });
        console.log(`# janus.js ${c.gen} ${c.api || 'ws'} ${c.creds}/${c.transport} ${c.end || 'hangup'}: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}; ` +
          `caller got audio ${r.caller.inbound.audio} B video ${r.caller.inbound.video} B, callee got audio ${r.callee.inbound.audio} B video ${r.callee.inbound.video} B; ` +
          `hangup reasons ${JSON.stringify(r.hangupReasons)}${r.during ? `; during call ${JSON.stringify(r.during)}` : ''}`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }

  it('gateway and turn-server exit 0 on SIGTERM', { timeout: 15000 }, async () => {
    const g = await stack.gw.proc.stop();
    const tu = await stack.turn.proc.stop();
    assert.deepEqual([g.code, tu.code], [0, 0], `exit statuses gateway ${JSON.stringify(g)}, turn-server ${JSON.stringify(tu)}\n${logs()}`);
  });
});
