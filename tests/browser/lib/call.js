'use strict';
// One Mattermost-style videocall, start to finish, as the Mattermost server and webapp
// do it: add_token → both browsers new Janus({token, iceServers}) → attach videocall →
// register with 26-char user ids → caller calls 750 ms after `registered` → callee
// accepts → media both ways → hangup → detach → destroy → remove_token → token dead.
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { newId, newGatewayToken, adminPost, mintTurnCredentials } = require('./mattermost');
const { newPartyPage } = require('./web');
const { assertRelayedMedia } = require('./media');
const { waitUntil, withTimeout } = require('./util');

/** Waits for an event in the page's record matching `pred`; returns it. */
async function waitEvent(party, what, pred, timeoutMs = 15000) {
  return waitUntil(`${party.label}: ${what}`, async () => {
    const events = await party.page.evaluate(() => window.party.rec.events);
    return events.find(pred);
  }, { timeoutMs, every: 100 });
}

async function pageRecord(party) {
  return party.page.evaluate(() => window.party.rec);
}

/** The gateway's /turn-credentials, fetched by the page (cross-origin, as a browser would). */
async function gatewayCredentials(party, base, token, turnSecret, httpFetch = nodeFetch) {
  const r = await party.page.evaluate(([b, t]) => window.party.turnCredentials(b, t), [base, token]);
  const ctx = JSON.stringify(r);
  assert.equal(r.status, 200, `GET /turn-credentials must answer 200 for a valid token: ${ctx}`);
  // The page's origin is another port: the cross-origin fetch succeeding proves CORS lets
  // browsers read it. The header itself is not readable from the page (not safelisted),
  // so check it from Node as well.
  const direct = await httpFetch({ url: `${base}/turn-credentials?token=${encodeURIComponent(token)}`, headers: { Origin: 'http://127.0.0.1:1' } });
  assert.equal(direct.headers['access-control-allow-origin'], '*', `/turn-credentials must send Access-Control-Allow-Origin: * ${ctx}`);
  const j = r.json;
  assert.ok(j && typeof j.username === 'string' && typeof j.password === 'string', `username/password: ${ctx}`);
  const [expiry, user] = j.username.split(/:(.*)/s);
  assert.match(expiry, /^\d+$/, `username must be "<expiry>:<user>": ${ctx}`);
  const left = Number(expiry) - Date.now() / 1000;
  assert.ok(left > 60 && left <= j.ttl + 60, `expiry must lie ~ttl in the future (left ${left}s, ttl ${j.ttl}): ${ctx}`);
  assert.ok(user && !j.username.includes(token), `user part must exist and never be the raw token: ${ctx}`);
  if (turnSecret !== undefined) {
    const want = crypto.createHmac('sha1', Buffer.from(turnSecret)).update(j.username).digest('base64');
    assert.equal(j.password, want, `password must be base64(HMAC-SHA1(turn_secret, username)): ${ctx}`);
  }
  assert.ok(Array.isArray(j.iceServers) && Array.isArray(j.uris), `iceServers and uris arrays: ${ctx}`);
  const turnEntry = j.iceServers.find((s) => [].concat(s.urls).some((u) => /^turns?:/.test(u)));
  assert.ok(turnEntry, `iceServers must carry a turn: entry: ${ctx}`);
  assert.equal(turnEntry.username, j.username, ctx);
  assert.equal(turnEntry.credential, j.password, ctx);
  return j;
}

/** fetch() from this process, in the shape lib/ns-agent.js answers: {status, headers, text}. */
async function nodeFetch({ url, method = 'GET', headers = {}, body, timeoutMs = 5000 }) {
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, headers: Object.fromEntries(res.headers), text: await res.text() };
}

/** Keeps only the TURN URLs of the wanted transport (so the test decides UDP vs TCP). */
function pickTransport(iceServers, transport) {
  const out = [];
  for (const s of iceServers) {
    const urls = [].concat(s.urls).filter((u) => /^turn:/.test(u) && (transport === 'tcp' ? /\?transport=tcp$/.test(u) : !/\?transport=tcp$/.test(u)));
    if (urls.length) out.push(Object.assign({}, s, { urls }));
  }
  assert.ok(out.length, `no turn: URL for transport ${transport} in ${JSON.stringify(iceServers)}`);
  return out;
}

/** The default media check of a relay-only loopback call: relay↔relay both ways. */
async function relayOnlyMediaCheck({ caller, callee, offerSeen, answerSeen, stack, creds, transport }) {
  // Old janus.js ignores server trickle: the SDP each side receives must already
  // carry the other side's (relay) candidates.
  assert.ok(offerSeen.relayCandidates > 0, `the offer forwarded to the callee must contain the caller's relay candidates: ${JSON.stringify(offerSeen)}`);
  assert.ok(answerSeen.relayCandidates > 0, `the answer forwarded to the caller must contain the callee's relay candidates: ${JSON.stringify(answerSeen)}`);
  // Each page relays through its own node's turn-server (`stack.turns`, test/cluster.test.js)
  // or the one turn-server of the stack.
  const turnPort = (role) => (creds === 'none' ? undefined : ((stack.turns && stack.turns[role]) || stack.turn).port);
  // Both sides sampled concurrently; connectMs = from `accepted` to media flowing.
  const [mc, me] = await Promise.all([
    assertRelayedMedia(caller.label, () => caller.page.evaluate(() => window.party.stats()), { transport, turnPort: turnPort('caller') }),
    assertRelayedMedia(callee.label, () => callee.page.evaluate(() => window.party.stats()), { transport, turnPort: turnPort('callee') }),
  ]);
  return { caller: mc, callee: me, remoteMediaExpected: true };
}

/**
 * Runs the whole call. `stack` = {gw: {wsUrl, wsHttpBase, httpBase, adminUrl}, adminSecret,
 * turnSecret, turn: {port, uri}, mattermost?: {stunUri, turnUri, turnUsername,
 * turnSharedKey}}; with several gateway nodes (test/cluster.test.js) also `gws` =
 * {caller, callee}, the node each page talks to (`gw` then gets the Admin API requests),
 * `turns` = {caller, callee}, the turn-server each page must relay through, and for
 * `end: 'callee-node-killed'` `killCalleeNode()`; `creds` = 'gateway' | 'mattermost' | 'none';
 * `media` false only for the developer check against real Janus (signaling only).
 * `browsers` {caller, callee} (default: `browser` for both), `policy` the
 * iceTransportPolicy the pages pass to janus.js ('relay'; 'all' only inside the NAT lab;
 * or {caller, callee} for one each),
 * `httpFetch` how this process reaches the gateway (default fetch; the NAT lab's agent),
 * `iceFilter(iceServers, role)` picks the iceServers a page ('caller'/'callee') uses from
 * the gateway's (default: TURN URLs of `transport`), `mediaCheck` asserts the media (default relayOnlyMediaCheck), `duringCall`
 * runs once media flows, before the hang-up.
 * Returns timings and observations; throws with page consoles appended on failure.
 */
async function runMattermostCall({ browser, browsers, web, gen, stack, creds = 'gateway', transport = 'udp', media = true, api = 'ws', end = 'hangup', policy = 'relay', httpFetch = nodeFetch, iceFilter, mediaCheck = relayOnlyMediaCheck, duringCall }) {
  const timings = {};
  const t0 = Date.now();
  const mark = (k) => {
    timings[k] = Date.now() - t0;
  };
  const { gw } = stack;
  const gwOf = (role) => (stack.gws && stack.gws[role]) || gw;
  const policyOf = (role) => (typeof policy === 'string' ? policy : policy[role]);
  // Mattermost only ever gives janus.js the WebSocket URL; `api: 'http'` runs the same
  // call over the Janus HTTP REST + long-poll transport (credentials then come from
  // the HTTP listener's /turn-credentials).
  const serverOf = (role) => (api === 'http' ? `${gwOf(role).httpBase}/janus` : gwOf(role).wsUrl);
  const credBaseOf = (role) => (api === 'http' ? gwOf(role).httpBase : gwOf(role).wsHttpBase);
  const token = newGatewayToken();
  assert.equal(token.length, 36);
  assert.equal((token.match(/=/g) || []).length, 1);
  const callerId = newId();
  const calleeId = newId();

  // The Mattermost server: add_token, as sent on every call (a repeat must succeed too).
  for (let i = 0; i < 2; i++) {
    const r = await adminPost(gw.adminUrl, stack.adminSecret, 'add_token', token, httpFetch);
    assert.ok(r.status < 300, `add_token HTTP status ${r.status}: ${r.text}`);
    assert.equal(r.json && r.json.janus, 'success', `add_token #${i + 1} must answer janus:"success": ${r.text}`);
  }
  mark('tokenAdded');

  const callee = await newPartyPage((browsers && browsers.callee) || browser, web.base, gen, `callee/${gen}`, { policy: policyOf('callee') });
  const caller = await newPartyPage((browsers && browsers.caller) || browser, web.base, gen, `caller/${gen}`, { policy: policyOf('caller') });
  const parties = [callee, caller];
  try {
    assert.equal(await caller.page.evaluate(() => window.party.generation()), gen, 'page must run the requested janus.js');

    // iceServers as each browser would get them.
    const ice = {};
    for (const p of parties) {
      if (creds === 'gateway') {
        const j = await gatewayCredentials(p, credBaseOf(p === caller ? 'caller' : 'callee'), token, stack.turnSecret, httpFetch);
        ice[p.label] = iceFilter ? iceFilter(j.iceServers, p === caller ? 'caller' : 'callee') : pickTransport(j.iceServers, transport);
      } else if (creds === 'mattermost' && stack.mattermost) {
        // The eight settings as an admin pasted them (test/up.test.js): the webapp builds
        // [{urls:[StunURI]}, {urls:[TurnURI], username, credential}], credentials minted
        // by the Mattermost server from TurnUsername + TurnSharedKey.
        const m = stack.mattermost;
        const c = mintTurnCredentials(m.turnUsername, m.turnSharedKey);
        ice[p.label] = [];
        if (m.stunUri) ice[p.label].push({ urls: [m.stunUri] });
        ice[p.label].push({ urls: m.turnUri.split(' ').filter(Boolean), username: c.username, credential: c.password });
      } else if (creds === 'mattermost') {
        // Mattermost's webapp: [{urls:[stun_uri]}, {urls:[turn_uri], username, credential}]
        // from the server, minted from TurnUsername + TurnSharedKey (= our turn-server's
        // secret); StunURI points at the turn-server too.
        const c = mintTurnCredentials('mattermost', stack.turnSecret);
        const uri = transport === 'tcp' ? `${stack.turn.uri}?transport=tcp` : stack.turn.uri;
        ice[p.label] = [{ urls: [stack.turn.uri.replace(/^turn:/, 'stun:')] }, { urls: [uri], username: c.username, credential: c.password }];
      } else {
        ice[p.label] = [];
      }
    }
    mark('credentials');

    // Callee registers first, then the caller; the caller calls 750 ms after `registered`.
    const start = (p, role, userId, peerId) =>
      withTimeout(p.page.evaluate((o) => window.party.start(o), { server: serverOf(role), token, iceServers: ice[p.label], userId, peerId, role, policy: policyOf(role) }), 15000, `${p.label} registered`);
    const regCallee = await start(callee, 'callee', calleeId, callerId);
    assert.equal(regCallee.username, calleeId, `registered must echo the user id: ${JSON.stringify(regCallee)}`);
    const regCaller = await start(caller, 'caller', callerId, calleeId);
    assert.equal(regCaller.username, callerId, `registered must echo the user id: ${JSON.stringify(regCaller)}`);
    mark('registered');

    const incoming = await waitEvent(callee, 'incomingcall with offer', (e) => e.kind === 'plugin-event' && e.event === 'incomingcall');
    assert.equal(incoming.username, callerId, 'incomingcall names the caller');
    assert.equal(incoming.jsepType, 'offer', 'incomingcall carries the offer');
    mark('incomingcall');
    const accepted = await waitEvent(caller, 'accepted with answer', (e) => e.kind === 'plugin-event' && e.event === 'accepted');
    assert.equal(accepted.jsepType, 'answer', 'accepted at the caller carries the answer');
    assert.equal(accepted.username, calleeId, 'accepted at the caller names the callee');
    mark('accepted');
    await waitEvent(callee, 'accepted (own accept confirmed)', (e) => e.kind === 'plugin-event' && e.event === 'accepted');
    // Signaling latency through the gateway (both pages share this machine's clock):
    // offer created at the caller → incomingcall at the callee, answer created at the
    // callee → accepted at the caller. Includes the gateway's candidate gathering.
    {
      const offerMade = await waitEvent(caller, 'offer-created', (e) => e.kind === 'offer-created');
      const answerMade = await waitEvent(callee, 'answer-created', (e) => e.kind === 'answer-created');
      timings.offerToIncomingcallMs = incoming.wall - offerMade.wall;
      timings.answerToAcceptedMs = accepted.wall - answerMade.wall;
    }

    const result = { timings, gen, creds, transport, api, end };
    if (media) {
      const offerSeen = await waitEvent(callee, 'incoming offer stats', (e) => e.kind === 'incoming-offer');
      const answerSeen = await waitEvent(caller, 'answer stats', (e) => e.kind === 'accepted-answer');
      const m = await mediaCheck({ caller, callee, offerSeen, answerSeen, stack, creds, transport, gen });
      timings.mediaCallerAfterAccepted = m.caller.connectMs;
      timings.mediaCalleeAfterAccepted = m.callee.connectMs;
      mark('mediaAsserted');
      result.caller = m.caller.second;
      result.callee = m.callee.second;
      result.media = m;
      for (const p of parties) {
        const rec = await pageRecord(p);
        const callPcs = rec.pcs.filter((x) => x.iceServers.length > 0);
        assert.ok(callPcs.length >= 1, `${p.label}: janus.js must have created the call's RTCPeerConnection`);
        const want = policyOf(p === caller ? 'caller' : 'callee');
        for (const pc of callPcs) assert.equal(pc.passedPolicy, want, `${p.label}: janus.js ${gen} must pass iceTransportPolicy "${want}" through to RTCPeerConnection`);
        if (m.remoteMediaExpected) {
          const remote = rec.events.filter((e) => e.kind === 'remote-track' || e.kind === 'remote-stream');
          assert.ok(remote.length > 0, `${p.label}: janus.js must report the remote media (onremotestream/onremotetrack)`);
        }
      }
    }

    // Anything the case does while the call runs (e.g. renegotiation), after media flows.
    if (duringCall) result.during = await duringCall({ caller, callee, stack, transport });

    let finishing = parties;
    if (end === 'hangup') {
      // Hang up the Mattermost way (caller): both sides must see the plugin's hangup.
      await caller.page.evaluate(() => window.party.hangup());
      const hc = await waitEvent(caller, 'hangup at caller', (e) => e.kind === 'plugin-event' && e.event === 'hangup');
      const he = await waitEvent(callee, 'hangup at callee', (e) => e.kind === 'plugin-event' && e.event === 'hangup');
      result.hangupReasons = { caller: hc.reason, callee: he.reason };
      mark('hangup');
      if (media) {
        await waitUntil(`${callee.label}: PeerConnection closed after remote hangup`, async () => {
          const s = await callee.page.evaluate(() => window.party.stats());
          return !s.pc || s.connectionState === 'closed';
        }, { timeoutMs: 5000 });
      }
    } else if (end === 'callee-closes') {
      // The callee closes the tab mid-call (WebSocket gone, no hangup/detach/destroy):
      // the gateway must tear the call down and tell the caller with a plugin hangup.
      await callee.close();
      const hc = await waitEvent(caller, 'hangup at caller after the callee vanished', (e) => e.kind === 'plugin-event' && e.event === 'hangup', 10000);
      result.hangupReasons = { caller: hc.reason };
      mark('hangup');
      if (media) {
        await waitUntil(`${caller.label}: PeerConnection closed after the peer vanished`, async () => {
          const s = await caller.page.evaluate(() => window.party.stats());
          return !s.pc || s.connectionState === 'closed';
        }, { timeoutMs: 5000 });
      }
      finishing = [caller];
    } else if (end === 'callee-node-killed') {
      // The callee's gateway node dies (SIGKILL) mid-call: the caller's node must notice
      // (docs/scale-out.md, liveness lease) and end the call with a plugin hangup.
      const killedAt = Date.now();
      await stack.killCalleeNode();
      const hc = await waitEvent(caller, "hangup at caller after the callee's node died", (e) => e.kind === 'plugin-event' && e.event === 'hangup', 15000);
      result.hangupReasons = { caller: hc.reason };
      result.hangupAfterKillMs = hc.wall - killedAt;
      mark('hangup');
      if (media) {
        await waitUntil(`${caller.label}: PeerConnection closed after the peer's node died`, async () => {
          const s = await caller.page.evaluate(() => window.party.stats());
          return !s.pc || s.connectionState === 'closed';
        }, { timeoutMs: 5000 });
      }
      finishing = [caller];
    } else {
      throw new Error(`unknown end ${end}`);
    }

    // detach, then destroy: the gateway must answer both with success.
    for (const p of finishing) {
      await withTimeout(p.page.evaluate(() => window.party.finish()), 10000, `${p.label} detach+destroy`);
    }
    for (const p of finishing) {
      const rec = await pageRecord(p);
      for (const verb of ['detach', 'destroy']) {
        const sent = rec[`${api}Out`].find((m) => m.janus === verb);
        assert.ok(sent, `${p.label}: janus.js sent ${verb} over ${api}`);
        await waitUntil(`${p.label}: success reply to ${verb}`, async () => {
          const r = await pageRecord(p);
          return r[`${api}In`].find((m) => m.transaction === sent.transaction && m.janus === 'success');
        }, { timeoutMs: 5000 });
      }
      const errs = rec.events.filter((e) => e.kind === 'error' || e.kind === 'plugin-error');
      assert.deepEqual(errs, [], `${p.label}: no janus.js or plugin errors during the call`);
    }
    mark('destroyed');

    // The Mattermost server: remove_token; the token must stop working everywhere.
    const rm = await adminPost(gw.adminUrl, stack.adminSecret, 'remove_token', token, httpFetch);
    const removedAt = Date.now();
    assert.ok(rm.status < 300, `remove_token HTTP status ${rm.status}: ${rm.text}`);
    assert.equal(rm.json && rm.json.janus, 'success', `remove_token: ${rm.text}`);
    // The node that removed it refuses it at once; every other node (alive) once the
    // removal reached it through NATS (docs/scale-out.md: milliseconds).
    const refuses = async (node) => {
      const ws403 = await caller.page.evaluate(([u, t]) => window.party.rawCreate(u, t), [node.wsUrl, token]);
      assert.equal(ws403.janus, 'error', `create over WebSocket with a removed token must fail: ${JSON.stringify(ws403)}`);
      assert.equal(ws403.error && ws403.error.code, 403, `…with 403: ${JSON.stringify(ws403)}`);
      if (node.httpBase) {
        const res = await httpFetch({
          url: `${node.httpBase}/janus`,
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ janus: 'create', transaction: newId(), token }),
        });
        const j = JSON.parse(res.text);
        assert.equal(j.error && j.error.code, 403, `create over HTTP with a removed token must fail with 403: ${JSON.stringify(j)}`);
      }
      if (creds === 'gateway') {
        const r = await caller.page.evaluate(([b, t]) => window.party.turnCredentials(b, t), [api === 'http' ? node.httpBase : node.wsHttpBase, token]);
        assert.equal(r.status, 403, `/turn-credentials with a removed token must answer 403: ${JSON.stringify(r)}`);
      }
      return true;
    };
    await refuses(gw);
    for (const node of new Set(Object.values(stack.gws || {}))) {
      if (node === gw || !node.proc.alive()) continue;
      await waitUntil(`removed token refused by ${node.wsUrl} too`, () => refuses(node), { timeoutMs: 5000, every: 20 });
      timings.tokenRemovedElsewhereMs = Date.now() - removedAt; // from remove_token's reply
    }
    mark('tokenRemoved');
    return result;
  } catch (e) {
    for (const p of parties) {
      try {
        const rec = await pageRecord(p);
        e.message += `\n----- ${p.label} events\n${rec.events.map((x) => JSON.stringify(x)).join('\n')}`;
        e.message += `\n----- ${p.label} ${api} in (last 40)\n${rec[`${api}In`].slice(-40).map((x) => JSON.stringify(x).slice(0, 600)).join('\n')}`;
      } catch {
        /* page gone */
      }
      e.message += `\n${p.dumpConsole()}`;
    }
    throw e;
  } finally {
    for (const p of parties) await p.close();
  }
}

module.exports = { runMattermostCall, relayOnlyMediaCheck, nodeFetch, waitEvent };
