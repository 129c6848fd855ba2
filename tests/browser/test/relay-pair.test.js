'use strict';
// Two Chromium pages, a plain RTCPeerConnection each (no gateway, no janus.js), relay-only
// through our turn-server with TURN credentials minted exactly as the Mattermost server
// mints them. Proves Mattermost's credentials work against our turn-server and isolates
// relay faults from gateway faults.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { startTurnServer } = require('../lib/servers');
const { assertOnlyLoopback, startStaticServer, launchChromium, newPartyPage } = require('../lib/web');
const { mintTurnCredentials } = require('../lib/mattermost');
const { assertRelayedMedia } = require('../lib/media');
const { withTimeout } = require('../lib/util');

describe('turn-server relays a plain WebRTC call (Mattermost-minted credentials)', { timeout: 120000 }, () => {
  const secret = crypto.randomBytes(18).toString('base64');
  let turn;
  let web;
  let chrome;

  before(async () => {
    assertOnlyLoopback(); // before anything starts: see run-in-netns.sh
    turn = await startTurnServer({ secret });
    web = await startStaticServer();
    chrome = await launchChromium();
  });

  after(async () => {
    if (chrome) await chrome.close();
    if (web) await web.close();
    if (turn) await turn.proc.stop();
  });

  for (const transport of ['udp', 'tcp']) {
    it(`relay-only media both ways over TURN/${transport}`, { timeout: 60000 }, async () => {
      const a = await newPartyPage(chrome.browser, web.base, '1.1.2', 'A');
      const b = await newPartyPage(chrome.browser, web.base, '1.1.2', 'B');
      try {
        // Mattermost: TurnUsername "mattermost", TurnSharedKey = the turn-server secret.
        const cred = mintTurnCredentials('mattermost', secret);
        const url = transport === 'tcp' ? `${turn.uri}?transport=tcp` : turn.uri;
        const iceServers = [{ urls: [url], username: cred.username, credential: cred.password }];
        const offer = await withTimeout(a.page.evaluate((s) => window.party.plainOffer(s), iceServers), 15000, 'offer');
        assert.match(offer.sdp, /typ relay/, 'A must gather a relay candidate from our turn-server');
        assert.doesNotMatch(offer.sdp, /typ (host|srflx)/, 'relay-only: no host/srflx candidates');
        const answer = await withTimeout(b.page.evaluate(([s, o]) => window.party.plainAnswer(s, o), [iceServers, offer]), 15000, 'answer');
        assert.match(answer.sdp, /typ relay/, 'B must gather a relay candidate from our turn-server');
        await a.page.evaluate((ans) => window.party.plainAccept(ans), answer);
        const ra = await assertRelayedMedia('A', () => a.page.evaluate(() => window.party.plainStats()), { transport, turnPort: turn.port });
        const rb = await assertRelayedMedia('B', () => b.page.evaluate(() => window.party.plainStats()), { transport, turnPort: turn.port });
        console.log(`# relay-pair ${transport}: media after ${ra.connectMs} ms (A) / ${rb.connectMs} ms (B); A got audio ${ra.second.inbound.audio} B, video ${ra.second.inbound.video} B`);
      } catch (e) {
        e.message += `\n${turn.proc.dump()}\n${a.dumpConsole()}\n${b.dumpConsole()}`;
        throw e;
      } finally {
        await a.page.evaluate(() => window.party.plainClose()).catch(() => {});
        await a.close();
        await b.close();
      }
    });
  }
});
