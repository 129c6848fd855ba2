'use strict';
// The Mattermost flow over TLS: the gateway with --cert/--key (every listener TLS: wss://,
// https:// REST, https:// Admin API), using a self-signed certificate for 127.0.0.1 made
// by the test. The "Mattermost server" POSTs add_token/remove_token to the https Admin URL
// verifying the certificate (trusting exactly this one, as Mattermost verifies unless
// "insecure outgoing connections" is on); Chromium trusts exactly this key
// (--ignore-certificate-errors-spki-list). janus.js 0.2.3 and 1.1.2 on wss://, 1.1.2 on
// https:// long-poll; media relay-only through turn-server as in videocall.test.js.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startTurnServer, startGateway } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { makeSelfSignedCert, fetchTrusting } = require('../lib/tls');

describe('Mattermost-style videocall over wss:// / https:// (self-signed certificate)', { timeout: 150000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let dir;
  let cert;
  let httpFetch;
  let web;
  let chrome;

  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump()].filter(Boolean).join('\n');

  before(async () => {
    assertOnlyLoopback(); // see run-in-netns.sh
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-tls-'));
    cert = makeSelfSignedCert(dir);
    httpFetch = fetchTrusting(cert.certPem);
    stack.turn = await startTurnServer({ secret: stack.turnSecret });
    stack.gw = await startGateway({
      adminSecret: stack.adminSecret,
      turnSecret: stack.turnSecret,
      turnUris: [stack.turn.uri],
      tls: { certPath: cert.certPath, keyPath: cert.keyPath, fetch: httpFetch },
    });
    web = await startStaticServer();
    chrome = await launchChromium({ trustSpki: cert.spkiHash });
  });

  after(async () => {
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (stack.gw) {
      await stack.gw.proc.stop();
      await stack.gw.cleanup();
    }
    if (stack.turn) await stack.turn.proc.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('every public gateway listener speaks TLS only; the admin listener answers plain HTTP to loopback (ssh tunnel)', { timeout: 15000 }, async () => {
    assert.match(stack.gw.wsUrl, /^wss:\/\//);
    assert.match(stack.gw.adminUrl, /^https:\/\//);
    const plainStatus = (url, init) => fetch(url, { signal: AbortSignal.timeout(3000), ...init }).then(
      (res) => `HTTP ${res.status}`,
      (e) => `error ${e.cause ? e.cause.code || e.cause.message : e.message}`,
    );
    const info = { method: 'POST', body: '{"janus":"info","transaction":"x"}' };
    // The WebSocket and Janus HTTP listeners face browsers: no plain text, even from loopback.
    for (const base of [stack.gw.wsHttpBase, stack.gw.httpBase]) {
      const plain = `${base.replace(/^https:/, 'http:')}/janus`;
      const r = await plainStatus(plain, info);
      assert.match(r, /^error/, `plain http:// to the TLS listener ${plain} must not be served: ${r}`);
    }
    // The admin listener answers plain HTTP to a loopback peer (an ssh tunnel to the test
    // page, docs/gateway.md), still behind the admin secret; every other peer needs TLS
    // (crates/gateway/tests/tls.rs covers a non-loopback peer).
    const plainAdmin = stack.gw.adminUrl.replace(/^https:/, 'http:');
    const r = await plainStatus(plainAdmin, info);
    assert.equal(r, 'HTTP 200', `plain http:// to the admin listener from loopback: ${r}`);
    const tls = await httpFetch({ url: stack.gw.adminUrl, method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ janus: 'info', transaction: 'tls-info' }) });
    assert.equal(JSON.parse(tls.text).janus, 'server_info', `https Admin API with a verified certificate: ${tls.text}`);
  });

  const cases = [
    { gen: '0.2.3', api: 'ws' },
    { gen: '1.1.2', api: 'ws' },
    { gen: '1.1.2', api: 'http' },
  ];
  for (const c of cases) {
    it(`janus.js ${c.gen} over ${c.api === 'ws' ? 'wss://' : 'https:// long-poll'}: call, relay-only media both ways, hangup, remove_token`, { timeout: 60000 }, async () => {
      const t = Date.now();
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen: c.gen, stack, creds: 'gateway', transport: 'udp', api: c.api, httpFetch });
        const sent = c.api === 'ws' ? 'wss' : 'https';
        console.log(`# janus.js ${c.gen} ${sent}: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}; caller got video ${r.caller.inbound.video} B, callee got video ${r.callee.inbound.video} B`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }
});
