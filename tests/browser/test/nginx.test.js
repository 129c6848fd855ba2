'use strict';
// The gateway behind Debian's nginx with real TLS, as docs/reverse-proxy.md tells an
// operator to run it: deploy/nginx/callrelay.conf as shipped (only host name, ports and
// certificate paths substituted; lib/nginx.js), the gateway plain on loopback behind it.
// The certificate is signed by a test CA (openssl) for the name `callrelay.test`, and
// that CA is added to Chromium's own trust store (an NSS db in a fresh $HOME/.pki/nssdb,
// certutil) — no --ignore-certificate-errors* flag. Chromium resolves callrelay.test to
// 127.0.0.1 (--host-resolver-rules); this process does the same in its lookup.
// Checked: the browser trusts the certificate only through that store; janus.js 0.2.3 and
// 1.1.2 calls over wss:// and 1.1.2 over https:// long poll, relay-only media both ways;
// Firefox ESR (the CA in its profile's NSS db) calling Chromium over wss://;
// the WebSocket upgrade passes `janus-protocol`; a long poll held 75 s (above nginx's
// default 60 s read timeout) comes back as a keepalive; the admin listener is not
// reachable through the proxy; the gateway's test call page (opened on the admin
// listener) makes its call through the proxy via test_page_ws_url.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startTurnServer, startGateway } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { runMattermostCall } = require('../lib/call');
const { assertRelayedMedia } = require('../lib/media');
const { launchFirefox } = require('../lib/firefox');
const { newGatewayToken, adminPost } = require('../lib/mattermost');
const { makeTestCa, homeTrustingCa, fetchTrusting } = require('../lib/tls');
const { startNginx } = require('../lib/nginx');
const { freePort, waitUntil } = require('../lib/util');

const NAME = 'callrelay.test';
const LONGPOLL_S = 75; // above nginx's default proxy_read_timeout (60 s), below ours (120 s)

describe('Mattermost-style videocall through nginx (wss:// with a certificate the browser trusts)', { timeout: 400000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let dir;
  let ca;
  let home;
  let nginx;
  let proxied; // the stack as browsers see it: every URL through nginx, Admin URL direct
  let httpFetch;
  let web;
  let chrome;
  let idlePoll; // the long poll started in before(), checked at the end
  let base;

  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump(), nginx && nginx.proc.dump(),
    nginx && `----- nginx access log\n${nginx.accessLog().trimEnd()}\n----- end access log`].filter(Boolean).join('\n');

  before(async () => {
    assertOnlyLoopback(); // see run-in-netns.sh
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-nginx-'));
    ca = makeTestCa(dir, NAME);
    home = homeTrustingCa(path.join(dir, 'home'), ca.caPath);
    httpFetch = fetchTrusting(ca.caPem, { [NAME]: '127.0.0.1' });
    const port = await freePort();
    base = `https://${NAME}:${port}`;
    stack.turn = await startTurnServer({ secret: stack.turnSecret });
    stack.gw = await startGateway({
      adminSecret: stack.adminSecret,
      turnSecret: stack.turnSecret,
      turnUris: [stack.turn.uri],
      extraArgs: ['--test-page-ws-url', `wss://${NAME}:${port}/`, '--longpoll-timeout', String(LONGPOLL_S), '--session-timeout', '180'],
    });
    nginx = await startNginx({
      name: NAME,
      port,
      certPath: ca.certPath,
      keyPath: ca.keyPath,
      wsPort: Number(new URL(stack.gw.wsUrl).port),
      httpPort: Number(new URL(stack.gw.httpBase).port),
    });
    proxied = {
      ...stack,
      gw: { wsUrl: `wss://${NAME}:${port}/`, wsHttpBase: base, httpBase: base, adminUrl: stack.gw.adminUrl },
    };
    web = await startStaticServer();
    chrome = await launchChromium({ home, extraArgs: [`--host-resolver-rules=MAP ${NAME} 127.0.0.1`] });

    // An idle long poll through nginx, held by the gateway for LONGPOLL_S; runs while the
    // calls below run and is checked by the last test.
    const token = newGatewayToken();
    const add = await adminPost(stack.gw.adminUrl, stack.adminSecret, 'add_token', token);
    assert.equal(add.json && add.json.janus, 'success', add.text);
    const created = await httpFetch({ url: `${base}/janus`, method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ janus: 'create', transaction: 'idle-create', token }) });
    const sid = JSON.parse(created.text).data.id;
    const t0 = Date.now();
    idlePoll = httpFetch({ url: `${base}/janus/${sid}?token=${encodeURIComponent(token)}&maxev=1`, timeoutMs: (LONGPOLL_S + 30) * 1000 })
      .then((r) => ({ ...r, ms: Date.now() - t0 }), (e) => ({ error: e.message, ms: Date.now() - t0 }));
  });

  after(async () => {
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (nginx) {
      await nginx.proc.stop();
      nginx.cleanup();
    }
    if (stack.gw) {
      await stack.gw.proc.stop();
      await stack.gw.cleanup();
    }
    if (stack.turn) await stack.turn.proc.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the browser trusts the proxy\'s certificate through its NSS store only; the proxy serves the Janus API and nothing of the admin listener', { timeout: 60000 }, async () => {
    // This process, trusting the test CA: Janus HTTP info through nginx.
    const info = await httpFetch({ url: `${base}/janus/info` });
    assert.equal(info.status, 200, info.text);
    assert.equal(JSON.parse(info.text).janus, 'server_info', info.text);
    // …and without it the certificate is not accepted (it is not publicly trusted).
    const untrusted = await fetchTrusting(undefined, { [NAME]: '127.0.0.1' })({ url: `${base}/janus/info` }).then(
      (r) => `HTTP ${r.status}`,
      (e) => `error ${e.code || e.message}`,
    );
    assert.match(untrusted, /^error (SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)/, untrusted);

    // Chromium with the CA in $HOME/.pki/nssdb: a top-level https navigation succeeds.
    const ctx = await chrome.browser.newContext();
    try {
      const page = await ctx.newPage();
      const res = await page.goto(`${base}/janus/info`, { timeout: 15000 });
      assert.equal(res.status(), 200);
      assert.equal(JSON.parse(await page.textContent('body')).janus, 'server_info');
    } finally {
      await ctx.close();
    }
    // Control: the same Chromium without that store refuses the certificate.
    const bare = await launchChromium({ home: fs.mkdtempSync(path.join(dir, 'bare-home-')), extraArgs: [`--host-resolver-rules=MAP ${NAME} 127.0.0.1`] });
    try {
      const page = await (await bare.browser.newContext()).newPage();
      const r = await page.goto(`${base}/janus/info`, { timeout: 15000 }).then((x) => `HTTP ${x.status()}`, (e) => e.message);
      assert.match(r, /net::ERR_CERT_AUTHORITY_INVALID/, `without the test CA Chromium must refuse the certificate: ${r}`);
    } finally {
      await bare.close();
    }

    // The admin listener is not proxied: no Admin API, metrics or test page on the proxy.
    for (const [method, p] of [['POST', '/admin'], ['GET', '/metrics'], ['GET', '/test'], ['POST', '/test/session']]) {
      const r = await httpFetch({ url: `${base}${p}`, method, headers: { 'Content-Type': 'application/json', 'X-Callrelay-Test-Page': '1' }, body: method === 'POST' ? JSON.stringify({ janus: 'info', transaction: 'x', admin_secret: stack.adminSecret }) : undefined });
      assert.equal(r.status, 404, `${method} ${p} through the proxy must be 404 (admin listener not proxied): ${r.status} ${r.text.slice(0, 200)}`);
    }
  });

  const cases = [
    { gen: '0.2.3', api: 'ws' },
    { gen: '1.1.2', api: 'ws' },
    { gen: '1.1.2', api: 'http' },
  ];
  for (const c of cases) {
    it(`janus.js ${c.gen} through nginx over ${c.api === 'ws' ? 'wss://' : 'https:// long-poll'}: call, relay-only media both ways, hangup, remove_token`, { timeout: 90000 }, async () => {
      const t = Date.now();
      const logBefore = nginx.accessLog().length;
      try {
        const r = await runMattermostCall({ browser: chrome.browser, web, gen: c.gen, stack: proxied, creds: 'gateway', transport: 'udp', api: c.api, httpFetch });
        console.log(`# janus.js ${c.gen} via nginx ${c.api === 'ws' ? 'wss' : 'https'}: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}; caller got video ${r.caller.inbound.video} B, callee got video ${r.callee.inbound.video} B`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
      // It really went through nginx: the access log shows this call's requests (a
      // WebSocket is logged when it closes: wait for the pages' ones).
      let lines = [];
      await waitUntil('this call in nginx\'s access log', () => {
        lines = nginx.accessLog().slice(logBefore).split('\n');
        return c.api !== 'ws' || lines.filter((l) => / 101 .*proto=janus-protocol /.test(l)).length >= 2;
      }, { timeoutMs: 10000 }).catch(() => {});
      const upgrades = lines.filter((l) => /"GET \/ HTTP\/1\.1" 101 .*upgrade=websocket proto=janus-protocol /.test(l));
      const creds = lines.filter((l) => /"GET \/turn-credentials\?token=\S+ HTTP\/1\.1" 200 /.test(l));
      assert.ok(creds.length >= 2, `both pages fetched /turn-credentials through nginx:\n${lines.join('\n')}`);
      if (c.api === 'ws') {
        // Two janus.js sessions (+ the raw create after remove_token), each an upgrade
        // with the janus-protocol subprotocol passed back through the proxy.
        assert.ok(upgrades.length >= 2, `WebSocket upgrades (101, janus-protocol) through nginx:\n${lines.join('\n')}`);
      } else {
        assert.ok(lines.some((l) => /"GET \/janus\/\d+\?\S* HTTP\/1\.1" 200 /.test(l)), `long polls through nginx:\n${lines.join('\n')}`);
      }
    });
  }

  it('Firefox ESR trusts the proxy through its own certificate store: janus.js 1.1.2 Firefox calls Chromium over wss://', { timeout: 120000 }, async () => {
    // The same test CA in Firefox's profile NSS db; callrelay.test → 127.0.0.1 by
    // network.dns.localDomains (no DNS in the namespace).
    const firefox = await launchFirefox({ nssDb: path.join(home, '.pki', 'nssdb'), prefs: { 'network.dns.localDomains': NAME } });
    const bare = await launchFirefox({ prefs: { 'network.dns.localDomains': NAME } });
    try {
      // Control first: a Firefox without the CA refuses the certificate.
      const bp = await (await bare.browser.newContext()).newPage();
      const refused = await bp.goto(`${base}/janus/info`, { timeout: 15000 }).then((r) => `HTTP ${r.status()}`, (e) => e.message);
      assert.match(refused, /SEC_ERROR_UNKNOWN_ISSUER/, `Firefox without the test CA must refuse the certificate: ${refused}`);
      console.log(`# Firefox without the test CA: ${refused.split('\n')[0]}`);
      const t = Date.now();
      const r = await runMattermostCall({
        browsers: { caller: firefox.browser, callee: chrome.browser },
        web,
        gen: '1.1.2',
        stack: proxied,
        creds: 'gateway',
        transport: 'udp',
        httpFetch,
        // Relay↔relay both ways; Firefox reports no candidate url (testing-notes.md), so
        // our TURN port is checked on Chromium's side (test/firefox.test.js also checks
        // turn-server's counters).
        mediaCheck: async ({ caller, callee, offerSeen, answerSeen }) => {
          assert.ok(offerSeen.relayCandidates > 0 && answerSeen.relayCandidates > 0, JSON.stringify({ offerSeen, answerSeen }));
          const get = (p) => () => p.page.evaluate(() => window.party.stats());
          const [mc, me] = await Promise.all([
            assertRelayedMedia(`${caller.label} (firefox)`, get(caller), { transport: 'udp', timeoutMs: 40000 }),
            assertRelayedMedia(`${callee.label} (chromium)`, get(callee), { transport: 'udp', turnPort: stack.turn.port, timeoutMs: 40000 }),
          ]);
          assert.match(await caller.page.evaluate(() => navigator.userAgent), / Firefox\/\d+/);
          return { caller: mc, callee: me, remoteMediaExpected: true };
        },
      });
      console.log(`# janus.js 1.1.2 Firefox→Chromium via nginx wss: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}`);
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    } finally {
      await bare.close();
      await firefox.close();
    }
  });

  it('the gateway\'s test call page (admin listener, via loopback) calls through the proxy: test_page_ws_url', { timeout: 90000 }, async () => {
    const adminBase = stack.gw.adminUrl.replace(/\/admin$/, '');
    const logBefore = nginx.accessLog().length;
    const tabs = [];
    try {
      for (const name of ['alice', 'bob']) {
        const context = await chrome.browser.newContext();
        const page = await context.newPage();
        const lines = [];
        page.on('console', (m) => lines.push(`[${name}] ${m.text()}`));
        const session = page.waitForResponse((r) => r.url().endsWith('/test/session'), { timeout: 15000 });
        await page.goto(`${adminBase}/test`, { timeout: 15000 });
        const s = await (await session).json();
        assert.equal(s.ws_url, proxied.gw.wsUrl, `the page is told to use the proxy: ${JSON.stringify(s)}`);
        tabs.push({ name, page, context, lines });
      }
      for (const t of tabs) {
        await t.page.waitForSelector('#status[data-state="ready"]', { timeout: 15000 });
        await t.page.check('#relay-only');
        await t.page.fill('#name', t.name);
        await t.page.click('#register');
        await t.page.waitForSelector('#status[data-state="registered"]', { timeout: 10000 });
      }
      const [a, b] = tabs;
      await a.page.click('#refresh');
      await a.page.click('button[data-call="bob"]');
      await b.page.waitForSelector('#incoming:not([hidden])', { timeout: 10000 });
      await b.page.click('#accept');
      for (const t of tabs) {
        await t.page.waitForSelector('#status[data-state="incall"]', { timeout: 10000 });
        await waitUntil(`${t.name}: relay pair connected with media both ways`, async () => {
          const st = await t.page.evaluate(() => ({
            ice: document.querySelector('#stats').dataset.iceState,
            local: document.querySelector('#stat-pair').dataset.localType,
            kin: Number(document.querySelector('#stat-bitrate-in').dataset.kbps),
            kout: Number(document.querySelector('#stat-bitrate-out').dataset.kbps),
          }));
          return ['connected', 'completed'].includes(st.ice) && st.local === 'relay' && st.kin > 0 && st.kout > 0;
        }, { timeoutMs: 30000, every: 250 });
      }
      await a.page.click('#hangup');
      for (const t of tabs) await t.page.waitForSelector('#status[data-state="registered"]', { timeout: 10000 });
    } catch (e) {
      e.message += `\n${tabs.map((t) => t.lines.slice(-50).join('\n')).join('\n')}\n${logs()}`;
      throw e;
    } finally {
      for (const t of tabs) await t.context.close().catch(() => {});
    }
    // nginx logs a WebSocket when it closes (the tabs just did).
    const upgrades = () => nginx.accessLog().slice(logBefore).split('\n').filter((l) => /"GET \/ HTTP\/1\.1" 101 .*proto=janus-protocol /.test(l));
    await waitUntil('both test pages\' WebSockets in nginx\'s access log', () => upgrades().length >= 2, { timeoutMs: 10000 })
      .catch((e) => assert.fail(`${e.message}: both test pages' WebSockets went through nginx:\n${nginx.accessLog().slice(logBefore)}`));
  });

  it(`a long poll held ${LONGPOLL_S} s (longer than nginx's default 60 s read timeout) comes back through the proxy as a keepalive`, { timeout: (LONGPOLL_S + 60) * 1000 }, async () => {
    const r = await idlePoll;
    const ctx = `${JSON.stringify(r)}\n${logs()}`;
    assert.ok(!r.error, `long poll through nginx failed: ${ctx}`);
    assert.equal(r.status, 200, `nginx must not cut the long poll (504 = proxy_read_timeout too low): ${ctx}`);
    const body = JSON.parse(r.text);
    assert.equal((Array.isArray(body) ? body[0] : body).janus, 'keepalive', ctx);
    assert.ok(r.ms >= (LONGPOLL_S - 1) * 1000, `the gateway held it for longpoll_timeout (${r.ms} ms): ${ctx}`);
    console.log(`# idle long poll through nginx answered keepalive after ${r.ms} ms`);
  });
});
