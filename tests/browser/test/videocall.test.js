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
const { runMattermostCall } = require('../lib/call');

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
  ];
  for (const c of cases) {
    const credsText = c.creds === 'gateway' ? 'TURN credentials from the gateway' : 'TURN credentials minted as Mattermost mints them';
    const apiText = c.api === 'http' ? ' (Janus HTTP long-poll transport)' : '';
    const endText = c.end === 'callee-closes' ? 'callee closes its page mid-call → caller gets hangup' : 'hangup';
    it(`janus.js ${c.gen}${apiText}: call, media both ways relay-only over TURN/${c.transport}, ${credsText}, ${endText}, remove_token`, { timeout: 60000 }, async () => {
      const t = Date.now();
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen: c.gen, stack, creds: c.creds, transport: c.transport, api: c.api || 'ws', end: c.end || 'hangup' });
        console.log(`# janus.js ${c.gen} ${c.api || 'ws'} ${c.creds}/${c.transport} ${c.end || 'hangup'}: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}; ` +
          `caller got audio ${r.caller.inbound.audio} B video ${r.caller.inbound.video} B, callee got audio ${r.callee.inbound.audio} B video ${r.callee.inbound.video} B; ` +
          `hangup reasons ${JSON.stringify(r.hangupReasons)}`);
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
