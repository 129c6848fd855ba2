'use strict';
// A second real browser: Chromium ↔ Firefox ESR calls through callrelay's gateway and
// turn-server, both directions, relay-only, with the stock janus.js 1.1.2 (Debian) and
// the 0.2.3 Mattermost shipped. Firefox is Debian's firefox-esr driven by puppeteer-core
// over WebDriver BiDi (lib/firefox.js); Chromium is playwright-core as everywhere else.
// The Mattermost flow is lib/call.js unchanged: add_token, new Janus, register, call 750 ms
// after `registered`, accept, media both ways, hangup, detach, destroy, remove_token.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { startTurnServer, startGateway } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium } = require('../lib/web');
const { launchFirefox } = require('../lib/firefox');
const { runMattermostCall } = require('../lib/call');
const { assertRelayedMedia } = require('../lib/media');

/** Sum of a Prometheus metric's samples whose line contains every string of `match`. */
function metricSum(text, name, ...match) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || !match.every((m) => line.includes(m))) continue;
    if (line[name.length] !== '{' && line[name.length] !== ' ') continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('Chromium ↔ Firefox ESR videocall (janus.js, relay-only through turn-server)', { timeout: 400000 }, () => {
  const stack = {
    adminSecret: crypto.randomBytes(12).toString('hex'),
    turnSecret: crypto.randomBytes(18).toString('base64'),
  };
  let web;
  let chrome;
  let firefox;
  const metrics = async () => (await fetch(`http://127.0.0.1:${stack.turn.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const logs = () => [stack.turn && stack.turn.proc.dump(), stack.gw && stack.gw.proc.dump()].filter(Boolean).join('\n');

  before(async () => {
    assertOnlyLoopback(); // see run-in-netns.sh
    stack.turn = await startTurnServer({ secret: stack.turnSecret });
    stack.gw = await startGateway({
      adminSecret: stack.adminSecret,
      turnSecret: stack.turnSecret,
      turnUris: [stack.turn.uri, `${stack.turn.uri}?transport=tcp`],
    });
    web = await startStaticServer();
    [chrome, firefox] = await Promise.all([launchChromium(), launchFirefox()]);
    console.log(`# Firefox: ${firefox.version} (puppeteer-core over WebDriver BiDi)`);
  });

  after(async () => {
    if (firefox) await firefox.close();
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (stack.gw) {
      await stack.gw.proc.stop();
      await stack.gw.cleanup();
    }
    if (stack.turn) await stack.turn.proc.stop();
  });

  /**
   * Relay↔relay media both ways. Chromium's side is checked as in every other test
   * (including the candidate `url` = our TURN URI). Firefox reports no `url` for a
   * candidate (testing-notes.md), so for its side the relay is proven by turn-server's
   * own counters: `callrelay_turn_relayed_bytes_total` must grow in both directions by
   * more than the media both browsers received.
   */
  function mixedMediaCheck(kinds) {
    return async ({ caller, callee, offerSeen, answerSeen, transport }) => {
      assert.ok(offerSeen.relayCandidates > 0, `the offer forwarded to the callee must contain the caller's relay candidates: ${JSON.stringify(offerSeen)}`);
      assert.ok(answerSeen.relayCandidates > 0, `the answer forwarded to the caller must contain the callee's relay candidates: ${JSON.stringify(answerSeen)}`);
      // Each page runs in the browser the case names (not both in one by mistake).
      for (const [p, kind] of [[caller, kinds.caller], [callee, kinds.callee]]) {
        const ua = await p.page.evaluate(() => navigator.userAgent);
        assert.match(ua, kind === 'firefox' ? / Firefox\/\d+/ : /Chrome\/\d+/, `${p.label} must run in ${kind}: ${ua}`);
      }
      const before = await metrics();
      const check = (p, kind) => assertRelayedMedia(`${p.label} (${kind})`, () => p.page.evaluate(() => window.party.stats()), {
        transport,
        turnPort: kind === 'chromium' ? stack.turn.port : undefined,
        timeoutMs: 40000,
      });
      const [mc, me] = await Promise.all([check(caller, kinds.caller), check(callee, kinds.callee)]);
      const after = await metrics();
      const grew = (dir) => metricSum(after, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`) - metricSum(before, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`);
      const relayed = { toPeer: grew('to_peer'), toClient: grew('to_client') };
      assert.ok(relayed.toPeer > 20000 && relayed.toClient > 20000, `turn-server must have relayed the call's media (> 20 kB each way while media was checked): ${JSON.stringify(relayed)}`);
      // The Firefox side's own view: its selected pair is relay↔relay on loopback (checked
      // by assertRelayedMedia) and its relay candidate was allocated over `transport`.
      for (const [m, kind] of [[mc, kinds.caller], [me, kinds.callee]]) {
        if (kind !== 'firefox') continue;
        assert.equal(m.second.pair.local.url, undefined, 'Firefox reports no candidate url (if it starts to, check it like Chromium\'s)');
      }
      return { caller: mc, callee: me, remoteMediaExpected: true, relayed };
    };
  }

  const cases = [
    { gen: '1.1.2', caller: 'chromium', callee: 'firefox', transport: 'udp' },
    { gen: '1.1.2', caller: 'firefox', callee: 'chromium', transport: 'udp' },
    { gen: '1.1.2', caller: 'firefox', callee: 'chromium', transport: 'tcp' },
    { gen: '0.2.3', caller: 'chromium', callee: 'firefox', transport: 'udp' },
    { gen: '0.2.3', caller: 'firefox', callee: 'chromium', transport: 'udp' },
  ];
  for (const c of cases) {
    it(`janus.js ${c.gen}: ${c.caller} calls ${c.callee}, TURN/${c.transport.toUpperCase()}, relay-only media both ways, hangup, remove_token`, { timeout: 120000 }, async () => {
      const t = Date.now();
      const of = { chromium: chrome.browser, firefox: firefox.browser };
      try {
        const r = await runMattermostCall({
          browsers: { caller: of[c.caller], callee: of[c.callee] },
          web,
          gen: c.gen,
          stack,
          creds: 'gateway',
          transport: c.transport,
          mediaCheck: mixedMediaCheck({ caller: c.caller, callee: c.callee }),
        });
        console.log(`# janus.js ${c.gen} ${c.caller}→${c.callee} ${c.transport}: ${Date.now() - t} ms; timings ${JSON.stringify(r.timings)}; ` +
          `caller got video ${r.caller.inbound.video} B, callee got video ${r.callee.inbound.video} B; turn-server relayed ${JSON.stringify(r.media.relayed)}`);
      } catch (e) {
        e.message += `\n${logs()}`;
        throw e;
      }
    });
  }
});
