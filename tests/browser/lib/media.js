'use strict';
// Assertions on what a page's PeerConnection really did, from getStats().
const assert = require('node:assert/strict');
const { sleep, waitUntil } = require('./util');

/**
 * Waits until `getStats` (async () => stats from pcStats in call.js) shows audio and
 * video bytes arriving, then checks both grow over a further interval and that the
 * selected pair is relay→relay on loopback via the expected TURN transport.
 * Returns {first, second, connectMs}.
 */
async function assertRelayedMedia(label, getStats, { transport = 'udp', turnPort, timeoutMs = 20000, growMs = 2000, remoteTypes = ['relay'] } = {}) {
  const started = Date.now();
  let last;
  try {
    await waitUntil(`${label}: audio and video inbound-rtp bytes > 0`, async () => {
      last = await getStats();
      return last.pc && last.inbound.audio > 0 && last.inbound.video > 0 && last.pair && last.pair.state === 'succeeded';
    }, { timeoutMs, every: 200 });
  } catch (e) {
    e.message += `\nlast stats of ${label}: ${JSON.stringify(last)}`;
    throw e;
  }
  const connectMs = Date.now() - started;
  const first = last;
  await sleep(growMs);
  const second = await getStats();
  const ctx = `${label}: ${JSON.stringify({ first, second })}`;
  assert.ok(second.inbound.audio > first.inbound.audio, `audio bytesReceived must grow. ${ctx}`);
  assert.ok(second.inbound.video > first.inbound.video, `video bytesReceived must grow. ${ctx}`);
  const { local, remote } = second.pair;
  assert.equal(local.candidateType, 'relay', `selected local candidate must be relay. ${ctx}`);
  // `remoteTypes`: ['relay'] unless the case says otherwise (test/early-offer.test.js: a
  // janus.js 0.2.x callee never gets the caller's candidates and learns its relayed
  // address from its checks, as a peer-reflexive candidate)
  assert.ok(remoteTypes.includes(remote.candidateType), `selected remote candidate must be ${remoteTypes.join(' or ')} (the peer is relay-only too). ${ctx}`);
  assert.equal(local.address, '127.0.0.1', `relayed address must be loopback. ${ctx}`);
  // Chromium does not report a peer-reflexive candidate's address (only its port); with
  // the default remoteTypes a prflx pair has failed above already
  if (remote.candidateType !== 'prflx') assert.equal(remote.address, '127.0.0.1', `peer's relayed address must be loopback. ${ctx}`);
  assert.equal(local.relayProtocol, transport, `client↔TURN transport must be ${transport}. ${ctx}`);
  if (turnPort !== undefined) {
    assert.match(String(local.url), new RegExp(`^turn:127\\.0\\.0\\.1:${turnPort}(\\?transport=${transport})?$`), `relay must come from our TURN server. ${ctx}`);
  }
  for (const c of second.localCandidates) {
    assert.equal(c.candidateType, 'relay', `relay-only: no other local candidate may exist. ${ctx}`);
  }
  return { first, second, connectMs };
}

module.exports = { assertRelayedMedia };
