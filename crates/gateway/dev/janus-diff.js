// Differential conformance check: sends the same ~75 Janus API requests over WebSocket to
// a real Janus (Debian `janus` 1.1.2) and to our gateway, normalises ids and SDP, and
// prints every step whose replies/events differ. Developer tool (CI has no Janus).
//
// Setup (loopback only):
//   mkdir /tmp/jref && cp /etc/janus/janus.jcfg /etc/janus/janus.plugin.videocall.jcfg \
//      /etc/janus/janus.transport.http.jcfg /etc/janus/janus.transport.websockets.jcfg /tmp/jref
//   in janus.jcfg: token_auth = true; plugins.disable = every plugin but videocall;
//                  transports.disable = "libjanus_rabbitmq.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so"
//   in janus.transport.websockets.jcfg: ws_port = 18188, ws_ip = "127.0.0.1"
//   in janus.transport.http.jcfg: port = 18088, ip = "127.0.0.1", admin_http = true,
//                  admin_port = 17088, admin_ip = "127.0.0.1"
//   janus -F /tmp/jref -C /tmp/jref/janus.jcfg &
//   gateway --listen 127.0.0.1:28188 --http-listen 127.0.0.1:28088 --admin-listen 127.0.0.1:27088 \
//      --admin-secret janusoverlord --token-auth --state-dir /tmp/gwstate &
//   for p in 17088 27088; do curl -s -X POST http://127.0.0.1:$p/admin \
//      -d '{"janus":"add_token","token":"tok1","transaction":"x","admin_secret":"janusoverlord"}'; done
//   node --experimental-websocket crates/gateway/dev/janus-diff.js ws://127.0.0.1:18188 ws://127.0.0.1:28188
//
// Expected remaining differences (docs/gateway.md, "Conformance against Janus"): the text
// of the JSON parser's message, ack/event order (racy in Janus itself), and Janus' own
// ICE error on a second call from a handle that already has a PeerConnection.
'use strict';
const [, , janusWs, ourWs] = process.argv;
const OFFER = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\na=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\na=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\na=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";
const TOKEN = 'tok1';
class C {
  constructor(url) { this.url = url; this.q = []; this.waiters = []; }
  open() { return new Promise((res, rej) => { this.ws = new WebSocket(this.url, 'janus-protocol'); this.ws.onopen = res; this.ws.onerror = rej;
    this.ws.onmessage = (e) => { this.q.push(JSON.parse(e.data)); this.waiters.splice(0).forEach((w) => w()); }; }); }
  raw(t) { this.ws.send(t); }
  async next(ms = 1500) { const end = Date.now() + ms; while (!this.q.length) { if (Date.now() > end) return null; await new Promise((r) => { this.waiters.push(r); setTimeout(r, 50); }); } return this.q.shift(); }
  async drain(ms = 400) { const out = []; let m; while ((m = await this.next(ms))) out.push(m); return out; }
}
function norm(v, ids) {
  if (Array.isArray(v)) return v.map((x) => norm(x, ids));
  if (v && typeof v === 'object') { const o = {}; for (const k of Object.keys(v).sort()) {
      if (k === 'sdp') { o[k] = '<sdp>'; continue; }
      o[k] = norm(v[k], ids); } return o; }
  if (typeof v === 'number' && v > 100000) { if (!ids.has(v)) ids.set(v, `<id${ids.size}>`); return ids.get(v); }
  if (typeof v === 'string') return v.replace(/\d{6,}/g, (d) => { const n = Number(d); if (!ids.has(n)) ids.set(n, `<id${ids.size}>`); return ids.get(n); });
  return v;
}
async function run(url) {
  const out = [];
  const ids = new Map();
  const a = new C(url); await a.open();
  const b = new C(url); await b.open();
  let n = 0;
  const log = (label, msgs) => out.push([label, norm(msgs, ids)]);
  const req = async (c, label, body, wait = 400) => { body.transaction = body.transaction ?? `t${++n}`; c.raw(JSON.stringify(body)); log(label, await c.drain(wait)); return c.lastSeen; };
  const first = async (c, body) => { body.transaction = `t${++n}`; c.raw(JSON.stringify(body)); const m = await c.next(); await c.drain(200); return m; };
  await req(a, 'ping', { janus: 'ping' });
  await req(a, 'create no token', { janus: 'create' });
  await req(a, 'keepalive root', { janus: 'keepalive', token: TOKEN });
  a.raw('{bad'); log('bad json', await a.drain());
  a.raw('[1,2]'); log('array', await a.drain());
  a.raw('{"transaction":"x"}'); log('no janus', await a.drain());
  a.raw('{"janus":"ping","transaction":5}'); log('tx int', await a.drain());
  a.raw('{"janus":"ping"}'); log('no tx', await a.drain());
  const S = (await first(a, { janus: 'create', token: TOKEN })).data.id;
  ids.set(S, '<S>');
  await req(a, 'attach no plugin', { janus: 'attach', session_id: S, token: TOKEN });
  await req(a, 'attach bogus', { janus: 'attach', session_id: S, token: TOKEN, plugin: 'janus.plugin.nope' });
  await req(a, 'attach plugin int', { janus: 'attach', session_id: S, token: TOKEN, plugin: 5 });
  const H = (await first(a, { janus: 'attach', session_id: S, token: TOKEN, plugin: 'janus.plugin.videocall' })).data.id;
  ids.set(H, '<H>');
  await req(a, 'unknown session no token', { janus: 'keepalive', session_id: 123456789 });
  await req(a, 'unknown session token', { janus: 'keepalive', session_id: 123456789, token: TOKEN });
  await req(a, 'handle no session', { janus: 'message', handle_id: H, body: {}, token: TOKEN });
  await req(a, 'unknown handle', { janus: 'detach', session_id: S, handle_id: 777777777, token: TOKEN });
  await req(a, 'handle 0', { janus: 'keepalive', session_id: S, handle_id: 0, token: TOKEN });
  await req(a, 'session id string', { janus: 'keepalive', session_id: String(S), token: TOKEN });
  await req(a, 'dance', { janus: 'dance', session_id: S, token: TOKEN });
  await req(a, 'info at session', { janus: 'info', session_id: S, token: TOKEN });
  await req(a, 'message at session', { janus: 'message', session_id: S, body: {}, token: TOKEN });
  await req(a, 'destroy at handle', { janus: 'destroy', session_id: S, handle_id: H, token: TOKEN });
  await req(a, 'attach at handle', { janus: 'attach', session_id: S, handle_id: H, plugin: 'janus.plugin.videocall', token: TOKEN });
  await req(a, 'trickle none', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN });
  await req(a, 'trickle both', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidate: {}, candidates: [] });
  await req(a, 'trickle cands int', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidates: 5 });
  await req(a, 'trickle candidate string', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidate: 'x' });
  await req(a, 'trickle single', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidate: { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 } });
  await req(a, 'trickle no mid', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidate: { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host' } });
  await req(a, 'trickle completed', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidate: { completed: true } });
  await req(a, 'trickle array', { janus: 'trickle', session_id: S, handle_id: H, token: TOKEN, candidates: [{ candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 }, { completed: true }] });
  const M = (extra) => Object.assign({ janus: 'message', session_id: S, handle_id: H, token: TOKEN, body: { request: 'list' } }, extra);
  await req(a, 'message no body', { janus: 'message', session_id: S, handle_id: H, token: TOKEN });
  await req(a, 'message body string', M({ body: 'x' }));
  await req(a, 'jsep string', M({ jsep: 'x' }));
  await req(a, 'jsep no sdp', M({ jsep: { type: 'offer' } }));
  await req(a, 'jsep no type', M({ jsep: { sdp: OFFER } }));
  await req(a, 'jsep pranswer', M({ jsep: { type: 'pranswer', sdp: OFFER } }));
  await req(a, 'jsep bad sdp', M({ jsep: { type: 'offer', sdp: 'hello' } }));
  await req(a, 'jsep answer no offer', M({ jsep: { type: 'answer', sdp: OFFER } }));
  await req(a, 'list', M({}));
  await req(a, 'vc empty body', M({ body: {} }));
  await req(a, 'vc request int', M({ body: { request: 5 } }));
  await req(a, 'vc dance', M({ body: { request: 'dance' } }));
  await req(a, 'vc call unregistered', M({ body: { request: 'call', username: 'x' } }));
  await req(a, 'vc accept unregistered', M({ body: { request: 'accept' } }));
  await req(a, 'vc set unregistered', M({ body: { request: 'set', audio: true } }));
  await req(a, 'vc hangup unregistered', M({ body: { request: 'hangup' } }));
  await req(a, 'vc register no name', M({ body: { request: 'register' } }));
  await req(a, 'vc register int', M({ body: { request: 'register', username: 5 } }));
  await req(a, 'vc register', M({ body: { request: 'register', username: 'alice' } }));
  await req(a, 'vc register again', M({ body: { request: 'register', username: 'bob' } }));
  await req(a, 'vc call self', M({ body: { request: 'call', username: 'alice' } }));
  await req(a, 'vc call unknown', M({ body: { request: 'call', username: 'carol' } }));
  await req(a, 'vc call no name', M({ body: { request: 'call' } }));
  await req(a, 'vc accept no call', M({ body: { request: 'accept' } }));
  await req(a, 'vc set bitrate', M({ body: { request: 'set', bitrate: 'fast' } }));
  await req(a, 'vc set audio str', M({ body: { request: 'set', audio: 'yes' } }));
  await req(a, 'vc set substream 5', M({ body: { request: 'set', substream: 5 } }));
  await req(a, 'vc set ok', M({ body: { request: 'set', audio: false, bitrate: 1000 } }));
  await req(a, 'vc hangup idle', M({ body: { request: 'hangup' } }));
  // second party
  const S2 = (await first(b, { janus: 'create', token: TOKEN })).data.id; ids.set(S2, '<S2>');
  const H2 = (await first(b, { janus: 'attach', session_id: S2, token: TOKEN, plugin: 'janus.plugin.videocall' })).data.id; ids.set(H2, '<H2>');
  const M2 = (extra) => Object.assign({ janus: 'message', session_id: S2, handle_id: H2, token: TOKEN, body: { request: 'list' } }, extra);
  await req(b, 'B register taken', M2({ body: { request: 'register', username: 'alice' } }));
  await req(b, 'B register', M2({ body: { request: 'register', username: 'bob' } }));
  await req(a, 'A call bob no sdp', M({ body: { request: 'call', username: 'bob' } }));
  log('B after no-sdp call', await b.drain());
  await req(a, 'A call bob', M({ body: { request: 'call', username: 'bob' }, jsep: { type: 'offer', sdp: OFFER } }), 1500);
  log('B incoming', await b.drain(1500));
  await req(a, 'A call again', M({ body: { request: 'call', username: 'bob' }, jsep: { type: 'offer', sdp: OFFER } }));
  await req(b, 'B hangup (reject)', M2({ body: { request: 'hangup', reason: 'Nope' } }), 1000);
  log('A after reject', await a.drain(1000));
  await req(a, 'claim', { janus: 'claim', session_id: S, token: TOKEN });
  await req(a, 'core hangup', { janus: 'hangup', session_id: S, handle_id: H, token: TOKEN });
  await req(a, 'detach', { janus: 'detach', session_id: S, handle_id: H, token: TOKEN });
  await req(a, 'message after detach', M({}));
  await req(a, 'destroy', { janus: 'destroy', session_id: S, token: TOKEN });
  await req(a, 'keepalive after destroy', { janus: 'keepalive', session_id: S, token: TOKEN });
  a.ws.close(); b.ws.close();
  return out;
}
(async () => {
  const j = await run(janusWs);
  const o = await run(ourWs);
  let diffs = 0;
  for (let i = 0; i < Math.max(j.length, o.length); i++) {
    const js = JSON.stringify(j[i]); const os = JSON.stringify(o[i]);
    if (js !== os) { diffs++; console.log(`--- ${j[i] && j[i][0]}\n  janus: ${JSON.stringify(j[i] && j[i][1])}\n  ours : ${JSON.stringify(o[i] && o[i][1])}`); }
  }
  console.log(`${diffs} differences in ${j.length} steps`);
  process.exit(0);
})();
