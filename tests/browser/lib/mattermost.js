'use strict';
// The Mattermost server's side of a call, reproduced exactly (see shared docs
// mattermost.md): ids, the add_token/remove_token Admin API POSTs, and the TURN REST
// credentials it mints from "TURN Username" + "TURN Shared Key".
const crypto = require('node:crypto');

// Mattermost's model.NewId(): 16 random bytes, base32 with this alphabet, no padding,
// 26 characters.
const ID_ALPHABET = 'ybndrfg8ejkmcpqxot1uwisza345h769';
function newId() {
  const bytes = crypto.randomBytes(16);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ID_ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ID_ALPHABET[(value << (5 - bits)) & 31];
  return out; // 128 bits -> 26 chars
}

/** The gateway token Mattermost uses: standard base64 of a 26-char session id. */
function newGatewayToken() {
  return Buffer.from(newId(), 'utf8').toString('base64'); // 36 chars, one '='
}

/**
 * POSTs an Admin API request with exactly the body shape Mattermost sends
 * (key order admin_secret, janus, token, transaction; all strings).
 * Returns {status, json, text}.
 */
async function adminPost(adminUrl, adminSecret, verb, token, httpFetch) {
  const body = JSON.stringify({
    admin_secret: adminSecret,
    janus: verb,
    token,
    transaction: newId(),
  });
  const req = {
    url: adminUrl,
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body,
    timeoutMs: 30000, // Mattermost's client gives up after 30 s
  };
  let status;
  let text;
  if (httpFetch) {
    // From another namespace (test/nat.test.js: the lab's agent): {status, text}.
    ({ status, text } = await httpFetch(req));
  } else {
    const res = await fetch(adminUrl, { method: req.method, headers: req.headers, body, signal: AbortSignal.timeout(req.timeoutMs) });
    status = res.status;
    text = await res.text();
  }
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* left null: callers assert on it */
  }
  return { status, json, text };
}

/**
 * TURN credentials as Mattermost mints them: username "<expiry>:<TurnUsername>" with
 * expiry = Unix seconds of 23:59:59 tomorrow in local time, password
 * base64(HMAC-SHA1(key = shared key bytes, msg = username)).
 */
function mintTurnCredentials(turnUsername, sharedKey, now = new Date()) {
  const d = new Date(now.getTime());
  d.setDate(d.getDate() + 1);
  d.setHours(23, 59, 59, 0);
  const expiry = Math.floor(d.getTime() / 1000);
  const username = `${expiry}:${turnUsername}`;
  const password = crypto.createHmac('sha1', Buffer.from(sharedKey, 'utf8')).update(username).digest('base64');
  return { username, password, expiry };
}

/**
 * The ICE servers the Mattermost Calls plugin hands a client (docs/mattermost-calls.md
 * §3), rebuilt here independently of callrelay's Rust code: `configJson` is the plugin's
 * "ICE Servers Configurations" setting (a JSON array of {urls, username?, credential?},
 * stored as a string). An entry whose every URL starts with `turn:`/`turns:` and that has
 * neither username nor credential gets username = "<unix now + expirationMinutes*60>:
 * <mmUsername>" and credential = base64(HMAC-SHA1(key = staticAuthSecret, username));
 * every other entry is passed on unchanged.
 */
function callsPluginIceServers(configJson, { staticAuthSecret, expirationMinutes = 1440, mmUsername, nowMs = Date.now() }) {
  const entries = JSON.parse(configJson);
  if (!Array.isArray(entries)) throw new Error('ICE Servers Configurations must be a JSON array');
  const expiry = Math.floor(nowMs / 1000) + expirationMinutes * 60;
  return entries.map((e) => {
    const urls = [].concat(e.urls);
    const turnOnly = urls.length > 0 && urls.every((u) => u.startsWith('turn:') || u.startsWith('turns:'));
    if (!turnOnly || e.username || e.credential) return { ...e, urls };
    const username = `${expiry}:${mmUsername}`;
    const credential = crypto.createHmac('sha1', Buffer.from(staticAuthSecret, 'utf8')).update(username).digest('base64');
    return { urls, username, credential };
  });
}

module.exports = { newId, newGatewayToken, adminPost, mintTurnCredentials, callsPluginIceServers };
