'use strict';
// turn-server for the Mattermost Calls plugin (issue 13 §1, docs/mattermost-calls.md).
// In the NAT lab (lab/nat-lab.sh): a participant's browser behind NAT A (namespace `a`,
// relay-only, as a browser that cannot reach the Calls server directly) calls a stand-in
// for the Calls server (the SFU): a second Chromium in namespace `calls` at the private
// address 10.20.0.2 on a LAN of the turn-server's host, with iceTransportPolicy "all",
// no ICE servers, so host candidates only. The only path between them is turn-server's
// relay on 203.0.113.1, so the TURN peer is the Calls server's private address — which the
// default peer policy denies and `allow_peer = ["10.20.0.2/32"]` opens.
//
// The browser's ICE servers are built as the plugin builds them (lib/mattermost.js
// callsPluginIceServers, independent of our Rust code): the "ICE Servers Configurations"
// JSON without username/credential, minted per entry from the TURN Static Auth Secret,
// TURN Credentials Expiration and the Mattermost username.
//
// Two turn-servers run in `pub`, each from a TOML file shaped like docs/mattermost-calls.md
// §2: port 3478 with allow_peer (the documented single /32), port 3479 without.
// Cases: TURN/UDP and TURN/TCP (`?transport=tcp` only) through 3478 — media both ways,
// selected pair relay (browser) ↔ host 10.20.0.2 (Calls server); and the same call through
// 3479 does not connect while callrelay_turn_denied_peers_total{class="private"} grows;
// then, as §5 says, allow_peer is added to 3479's file and SIGHUP sent (systemctl reload):
// the same call through 3479 connects.
// Needs root (CI runs as root).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { binary } = require('../lib/servers');
const { assertOnlyLoopback, launchChromium, newPartyPage } = require('../lib/web');
const { callsPluginIceServers } = require('../lib/mattermost');
const { ADDR, createLab, nsProc, startAgent } = require('../lib/lab');
const { fatal, sleep, waitUntil, withTimeout } = require('../lib/util');

const PAGE_PORT = 8080;
const MM_USER = 'alice.calls';
const EXPIRATION_MINUTES = 1440;

/** Sum of a Prometheus counter's samples whose lines include every string of `match`. */
function metricSum(text, name, ...match) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if ((line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && match.every((m) => line.includes(m))) sum += Number(line.trim().split(/\s+/).pop());
  }
  return sum;
}

/** Waits for audio+video flowing into `party` (plain RTCPeerConnection), then for growth. */
async function mediaFlows(party, timeoutMs = 30000) {
  const t = Date.now();
  let first;
  try {
    await waitUntil(`${party.label}: audio and video inbound-rtp bytes > 0`, async () => {
      first = await party.page.evaluate(() => window.party.plainStats());
      return first.pc && first.inbound.audio > 0 && first.inbound.video > 0 && first.pair && first.pair.state === 'succeeded';
    }, { timeoutMs, every: 200 });
  } catch (e) {
    e.message += `\nlast stats of ${party.label}: ${JSON.stringify(first)}`;
    throw e;
  }
  const connectMs = Date.now() - t;
  // Growth: wait (bounded) for more bytes rather than a fixed pause.
  let second;
  await waitUntil(`${party.label}: audio and video bytesReceived growing`, async () => {
    second = await party.page.evaluate(() => window.party.plainStats());
    return second.inbound.audio > first.inbound.audio + 1000 && second.inbound.video > first.inbound.video + 5000;
  }, { timeoutMs: 15000, every: 250 });
  return { first, second, connectMs, ctx: `${party.label}: ${JSON.stringify({ first, second })}` };
}

describe('turn-server for the Mattermost Calls plugin: relay-only browser ↔ Calls server at an allowed private address (NAT lab)', { timeout: 180000 }, () => {
  const secret = crypto.randomBytes(24).toString('base64'); // "TURN Static Auth Secret"
  const servers = {}; // allowed (3478, allow_peer) and denied (3479, default policy)
  let lab;
  let agent;
  let dir;
  const browsers = {};

  const logs = () => Object.values(servers).map((s) => s.proc.dump()).join('\n');
  const metrics = async (s) => (await agent.fetch({ url: `http://127.0.0.1:${s.metricsPort}/metrics` })).text;

  function startTurn(name, port, metricsPort, relayPorts, allowPeer) {
    // The keys of docs/mattermost-calls.md §2, plus what a lab needs (addresses, ports).
    const toml = [
      `listen = ["${ADDR.pub}:${port}"]`,
      `realm = "calls-lab"`,
      `auth_secret = ["${secret}"]`,
      `relay_ip = ["${ADDR.pub}"]`,
      `relay_ports = "${relayPorts}"`,
      `metrics_listen = "127.0.0.1:${metricsPort}"`,
      'drain_timeout = 2',
      ...(allowPeer ? [`allow_peer = ["${allowPeer}"]`] : []),
    ].join('\n');
    const file = path.join(dir, `${name}.toml`);
    fs.writeFileSync(file, `${toml}\n`);
    servers[name] = { proc: nsProc(lab.ns.pub, `turn-server (${name})`, binary('turn-server'), ['--config', file]), port, metricsPort, file };
    return servers[name];
  }

  before(async () => {
    assertOnlyLoopback(); // the test process itself stays in run-in-netns.sh's namespace
    lab = createLab();
    lab.addCallsServer();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-calls-'));
    agent = await startAgent(lab.ns.pub, ADDR.pub, PAGE_PORT);
    startTurn('allowed', 3478, 9641, '50000-50499', `${ADDR.calls}/32`);
    startTurn('denied', 3479, 9642, '50500-50999', null);
    try {
      await waitUntil('both turn-servers serve /metrics inside the lab', async () => {
        for (const s of Object.values(servers)) {
          if (!s.proc.alive()) throw fatal(`${s.proc.name} exited early`);
          await metrics(s);
        }
        return true;
      }, { timeoutMs: 15000 });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
    const [a, calls] = await Promise.all([
      launchChromium({ netns: lab.ns.a, secureOrigin: agent.base }),
      launchChromium({ netns: lab.ns.calls, secureOrigin: agent.base }),
    ]);
    browsers.a = a;
    browsers.calls = calls;
  });

  after(async () => {
    for (const b of Object.values(browsers)) await b.close();
    if (agent) await agent.close();
    for (const s of Object.values(servers)) await s.proc.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    if (lab) {
      lab.destroy();
      assert.deepEqual(lab.remaining(), [], 'every lab namespace must be gone');
    }
  });

  it('ICE servers minted as the Calls plugin does (no browser)', () => {
    const nowMs = Date.UTC(2026, 0, 2, 3, 4, 5);
    const cfg = JSON.stringify([
      { urls: ['stun:rtc.example.com:3478'] },
      { urls: ['turn:rtc.example.com:3478', 'turn:rtc.example.com:3478?transport=tcp', 'turns:rtc.example.com:443?transport=tcp'] },
      { urls: ['stun:rtc.example.com:3478', 'turn:rtc.example.com:3478'] }, // mixed: no credentials
      { urls: ['turn:other.example.com:3478'], username: 'fixed', credential: 'pw' }, // kept as is
    ]);
    const out = callsPluginIceServers(cfg, { staticAuthSecret: 'c2VjcmV0', expirationMinutes: 240, mmUsername: 'bob', nowMs });
    const expiry = Math.floor(nowMs / 1000) + 240 * 60;
    assert.deepEqual(out[0], { urls: ['stun:rtc.example.com:3478'] });
    assert.equal(expiry, 1767337445);
    assert.equal(out[1].username, '1767337445:bob');
    // Computed outside Node: printf '%s' 1767337445:bob | openssl dgst -sha1 -hmac c2VjcmV0 -binary | base64
    assert.equal(out[1].credential, 'Fis3F6yn4q2ndAFhqweiePi20ZI=');
    assert.equal(out[1].urls.length, 3);
    assert.deepEqual(out[2], { urls: ['stun:rtc.example.com:3478', 'turn:rtc.example.com:3478'] });
    assert.deepEqual(out[3], { urls: ['turn:other.example.com:3478'], username: 'fixed', credential: 'pw' });
  });

  /**
   * One call: browser (ns a, relay-only, plugin-minted ICE servers from `configJson`)
   * offers; the Calls-server stand-in (ns calls, policy "all", no ICE servers) answers.
   */
  async function call(configJson, body) {
    const iceServers = callsPluginIceServers(configJson, { staticAuthSecret: secret, expirationMinutes: EXPIRATION_MINUTES, mmUsername: MM_USER });
    const minted = iceServers.filter((s) => s.username);
    assert.equal(minted.length, 1, `exactly the TURN entry gets credentials: ${JSON.stringify(iceServers)}`);
    const [exp, user] = minted[0].username.split(':');
    assert.equal(user, MM_USER);
    assert.ok(Math.abs(Number(exp) - (Date.now() / 1000 + EXPIRATION_MINUTES * 60)) < 60, `expiry = now + ${EXPIRATION_MINUTES} min: ${exp}`);
    const browser = await newPartyPage(browsers.a.browser, agent.base, '1.1.2', 'browser');
    const sfu = await newPartyPage(browsers.calls.browser, agent.base, '1.1.2', 'calls-server', { policy: 'all' });
    try {
      const offer = await withTimeout(browser.page.evaluate((s) => window.party.plainOffer(s), iceServers), 20000, 'browser offer');
      assert.match(offer.sdp, new RegExp(`typ relay raddr`), `the browser gathers a relay candidate from turn-server: ${offer.sdp}`);
      assert.doesNotMatch(offer.sdp, /typ (host|srflx)/, 'relay-only browser: no host/srflx candidates');
      const answer = await withTimeout(sfu.page.evaluate((o) => window.party.plainAnswer([], o), offer), 20000, 'calls-server answer');
      const cands = answer.sdp.split('\n').filter((l) => l.startsWith('a=candidate'));
      assert.ok(cands.length > 0 && cands.every((l) => / typ host/.test(l)), `Calls server stand-in: host candidates only: ${cands.join('\n')}`);
      assert.ok(cands.some((l) => l.includes(` ${ADDR.calls} `)), `its host candidate is the private ${ADDR.calls}: ${cands.join('\n')}`);
      const policy = await sfu.page.evaluate(() => window.party.rec.pcs.at(-1).forcedPolicy);
      assert.equal(policy, 'all', 'the Calls-server stand-in gathers with iceTransportPolicy "all"');
      await browser.page.evaluate((ans) => window.party.plainAccept(ans), answer);
      return await body({ browser, sfu, iceServers });
    } catch (e) {
      e.message += `\n${browser.dumpConsole()}\n${sfu.dumpConsole()}`;
      throw e;
    } finally {
      await browser.page.evaluate(() => window.party.plainClose()).catch(() => {});
      await sfu.page.evaluate(() => window.party.plainClose()).catch(() => {});
      await browser.close();
      await sfu.close();
    }
  }

  /** A call through turn-server `s` over `transport` that must connect (relay ↔ host). */
  async function connectingCall(s, transport, label) {
    const url = `turn:${ADDR.pub}:${s.port}${transport === 'tcp' ? '?transport=tcp' : ''}`;
    // What an admin pastes into "ICE Servers Configurations" (UDP case with the STUN
    // entry of the docs; TCP case the TCP URL alone).
    const cfg = JSON.stringify(transport === 'udp' ? [{ urls: [`stun:${ADDR.pub}:${s.port}`] }, { urls: [url] }] : [{ urls: [url] }]);
    const before = await metrics(s);
    try {
      await call(cfg, async ({ browser, sfu }) => {
        const settled = await Promise.allSettled([mediaFlows(browser), mediaFlows(sfu)]);
        const failed = settled.filter((x) => x.status === 'rejected');
        if (failed.length) throw new Error(failed.map((x) => x.reason.message).join('\n'));
        const [mb, ms] = settled.map((x) => x.value);
        const bl = mb.second.pair.local;
        const br = mb.second.pair.remote;
        assert.equal(bl.candidateType, 'relay', `browser: selected local candidate relay. ${mb.ctx}`);
        assert.equal(bl.relayProtocol, transport, `browser: relay allocated over ${transport}. ${mb.ctx}`);
        assert.equal(bl.address, ADDR.pub, `browser: relay on turn-server's relay_ip. ${mb.ctx}`);
        assert.match(String(bl.url), new RegExp(`^turn:203\\.0\\.113\\.1:${s.port}(\\?transport=${transport})?$`), `browser: relay from the configured URL. ${mb.ctx}`);
        assert.equal(br.candidateType, 'host', `browser: remote = the Calls server's host candidate. ${mb.ctx}`);
        assert.equal(br.address, ADDR.calls, `browser: remote at the allowed private address. ${mb.ctx}`);
        for (const c of mb.second.localCandidates) assert.ok(c.candidateType === 'relay' && c.relayProtocol === transport, `relay-only browser, ${transport} TURN only. ${mb.ctx}`);
        const sl = ms.second.pair.local;
        const sr = ms.second.pair.remote;
        assert.equal(sl.candidateType, 'host', `Calls server: selected local host. ${ms.ctx}`);
        assert.equal(sl.address, ADDR.calls, `Calls server: on ${ADDR.calls}. ${ms.ctx}`);
        assert.equal(sr.address, ADDR.pub, `Calls server: remote = the browser's relay on turn-server. ${ms.ctx}`);
        assert.ok(['relay', 'prflx'].includes(sr.candidateType), `Calls server: remote relay candidate. ${ms.ctx}`);
        // turn-server's own count of the relayed media (its workers publish counters
        // periodically: wait for them, bounded).
        let afterText;
        let relayed;
        const tm = Date.now();
        try {
          await waitUntil(`turn-server to count > 20 kB relayed over ${transport} each way`, async () => {
            afterText = await metrics(s);
            const grew = (dir) => metricSum(afterText, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`, `transport="${transport}"`) - metricSum(before, 'callrelay_turn_relayed_bytes_total', `direction="${dir}"`, `transport="${transport}"`);
            relayed = { toPeer: grew('to_peer'), toClient: grew('to_client') };
            return relayed.toPeer > 20000 && relayed.toClient > 20000;
          }, { timeoutMs: 20000, every: 250 });
        } catch (e) {
          e.message += `\nlast ${JSON.stringify(relayed)}\n${afterText.split('\n').filter((l) => l.startsWith('callrelay_turn_relayed') || l.startsWith('callrelay_turn_alloc')).join('\n')}`;
          throw e;
        }
        relayed.countedAfterMs = Date.now() - tm;
        const denied = metricSum(afterText, 'callrelay_turn_denied_peers_total') - metricSum(before, 'callrelay_turn_denied_peers_total');
        assert.equal(denied, 0, 'allow_peer: the Calls server is not denied');
        console.log(`# Calls ${label} TURN/${transport}: media after ${mb.connectMs}/${ms.connectMs} ms (browser/Calls server); ` +
          `browser ${bl.candidateType}/${bl.relayProtocol} ${bl.address}:${bl.port} ↔ ${br.candidateType} ${br.address}:${br.port}; relayed ${JSON.stringify(relayed)} B`);
      });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  }

  for (const transport of ['udp', 'tcp']) {
    it(`TURN/${transport.toUpperCase()}: relay-only browser ↔ Calls server at allowed ${ADDR.calls} (allow_peer /32), media both ways`, { timeout: 90000 }, async () => {
      await connectingCall(servers.allowed, transport, 'allow_peer');
    });
  }

  it(`without allow_peer the same call does not connect; turn-server counts the denied private peer`, { timeout: 90000 }, async () => {
    const s = servers.denied;
    const cfg = JSON.stringify([{ urls: [`stun:${ADDR.pub}:${s.port}`] }, { urls: [`turn:${ADDR.pub}:${s.port}`] }]);
    const deniedOf = (text) => metricSum(text, 'callrelay_turn_denied_peers_total', 'class="private"');
    const before = deniedOf(await metrics(s));
    const WINDOW_MS = 10000;
    try {
      await call(cfg, async ({ browser, sfu }) => {
        let deniedNow = before;
        await waitUntil('callrelay_turn_denied_peers_total{class="private"} to grow', async () => {
          deniedNow = deniedOf(await metrics(s));
          return deniedNow > before;
        }, { timeoutMs: 20000, every: 250 });
        // Then the call must stay dead for a while: no media, no pair ever succeeds.
        const deadline = Date.now() + WINDOW_MS;
        let last;
        while (Date.now() < deadline) {
          last = await Promise.all([browser, sfu].map((p) => p.page.evaluate(() => window.party.plainStats())));
          for (const st of last) {
            const ctx = JSON.stringify(st);
            assert.ok(!st.inbound.audio && !st.inbound.video, `no media without allow_peer: ${ctx}`);
            assert.ok(!['connected', 'completed'].includes(st.iceConnectionState), `ICE must not connect: ${ctx}`);
            assert.ok(st.pairs.every((p) => p.state !== 'succeeded'), `no pair may succeed: ${ctx}`);
          }
          await sleep(500);
        }
        deniedNow = deniedOf(await metrics(s));
        // The browser did have its relay (the credentials work); only the peer was refused.
        assert.ok(last[0].localCandidates.some((c) => c.candidateType === 'relay' && c.address === ADDR.pub), `browser had a relay: ${JSON.stringify(last[0])}`);
        console.log(`# Calls without allow_peer: no media in ${WINDOW_MS} ms; denied_peers{class="private"} ${before} → ${deniedNow}; browser ICE ${last[0].iceConnectionState}, Calls server ICE ${last[1].iceConnectionState}`);
      });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
  });

  // docs/mattermost-calls.md §5: add allow_peer, `systemctl reload callrelay-turn` (SIGHUP).
  // Runs after the test above on the same turn-server (node:test runs these in order).
  it('then allow_peer added to that turn-server\'s file + SIGHUP (systemctl reload): the same call connects', { timeout: 90000 }, async () => {
    const s = servers.denied;
    const reloads = () => (s.proc.log.match(/configuration reloaded/g) || []).length;
    const n = reloads();
    fs.appendFileSync(s.file, `allow_peer = ["${ADDR.calls}/32"]\n`);
    s.proc.child.kill('SIGHUP');
    try {
      await waitUntil('turn-server to log "configuration reloaded"', async () => {
        if (!s.proc.alive()) throw fatal('turn-server exited on SIGHUP');
        return reloads() > n;
      }, { timeoutMs: 15000, every: 100 });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    }
    await connectingCall(s, 'udp', 'after reload');
  });
});
