'use strict';
// Time-to-connected of Mattermost's call flow, ours against Janus, side by side
// (docs/performance.md "Mattermost call set-up"). Run it through benches/browser/run,
// which puts it in a fresh network namespace (tests/browser/run-in-netns.sh).
//
// Per call: two pages (tests/browser/pages/call.js, stock janus.js 0.2.3 or 1.1.2), the
// callee registers, the caller sends `call` + offer 750 ms after `registered`, the callee
// answers; measured from `call` sent to both RTCPeerConnections `connected`, relay-only.
// The stacks, started once and called in turn (the order swapped every round, so both
// see the same machine load):
//   ours   — gateway + turn-server (relay on 203.0.113.1)
//   janus  — Janus 1.1.2 (videocall plugin, its ICE on 203.0.113.1) + coturn 4.6.1
//   before — (optional) ours with the gateway from $CALLRELAY_BEFORE_BIN_DIR, e.g. the
//            build before a change, so before and after are measured in the same run
//   ours-early — (optional) ours with `early_offer = true` (docs/gateway.md "Early
//            offer"): the offer goes at once, the turn-server's control endpoint installs
//            both browsers' permissions before the answer goes
// Janus' libnice skips loopback, so the namespace gets a veth with 203.0.113.1/24 (the
// other end unaddressed); every server and both TURN relays use that address, Chromium
// gathers only there (no --allow-loopback-in-peer-connection), and the only way out of
// the namespace is none.
//
//   node mm-connect.js [--calls 7] [--gens 0.2.3,1.1.2] [--stacks ours,janus[,before][,ours-early]]
//                      [--gateway-arg=--candidate-wait-ms=1000 ...] [--json FILE]
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const TB = path.join(__dirname, '..', '..', 'tests', 'browser', 'lib');
const { Proc, startGateway } = require(path.join(TB, 'servers'));
const { startStaticServer, newPartyPage, CHROMIUM_ARGS } = require(path.join(TB, 'web'));
const { newId, newGatewayToken, adminPost, mintTurnCredentials } = require(path.join(TB, 'mattermost'));
const { freePorts, waitUntil, tcpConnects, sleep, withTimeout } = require(path.join(TB, 'util'));

const ADDR = '203.0.113.1';
const IF = 'crbench0';
const CALL_TIMEOUT_MS = 20000;
const RUN_BUDGET_MS = 15 * 60 * 1000; // the whole run, whatever --calls says

function args() {
  const o = { calls: 7, gens: ['0.2.3', '1.1.2'], stacks: ['ours', 'janus'], gatewayArgs: [], json: null };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--calls') o.calls = Math.min(50, Math.max(1, Number(a[++i])));
    else if (a[i] === '--gens') o.gens = a[++i].split(',');
    else if (a[i] === '--stacks') o.stacks = a[++i].split(',');
    else if (a[i].startsWith('--gateway-arg=')) o.gatewayArgs.push(...a[i].slice('--gateway-arg='.length).split('='));
    else if (a[i] === '--json') o.json = a[++i];
    else throw new Error(`unknown argument ${a[i]}`);
  }
  return o;
}

/** The namespace's one non-loopback address (run-in-netns.sh gave us only `lo`). */
function setupVeth() {
  if (process.env.CALLRELAY_IN_NETNS !== '1') throw new Error('run me through benches/browser/run (a fresh network namespace)');
  const ip = (...a) => execFileSync('ip', a, { stdio: 'inherit' });
  ip('link', 'add', IF, 'type', 'veth', 'peer', 'name', `${IF}p`);
  ip('addr', 'add', `${ADDR}/24`, 'dev', IF);
  ip('link', 'set', IF, 'up');
  ip('link', 'set', `${IF}p`, 'up');
}

async function waitTcp(proc, port, host) {
  await waitUntil(`${proc.name} on ${host}:${port}`, async () => {
    if (!proc.alive()) throw Object.assign(new Error(`${proc.name} exited\n${proc.dump()}`), { fatal: true });
    return tcpConnects(port, host);
  }, { timeoutMs: 15000 });
}

async function startOurs(name, secret, gatewayArgs, gatewayBin, early = false) {
  const [port, metrics] = await freePorts(2);
  const control = 'bench-control-secret-0123456789';
  const turn = new Proc('turn-server', path.join(process.env.CALLRELAY_BIN_DIR || path.join(__dirname, '..', '..', 'target', 'debug'), 'turn-server'), [
    '--listen', `${ADDR}:${port}`, '--relay-ip', ADDR, '--auth-secret', secret, '--realm', 'bench',
    '--metrics-listen', `127.0.0.1:${metrics}`, '--drain-timeout', '1',
    ...(early ? ['--control-secret', control] : []),
  ], { RUST_LOG: 'warn' });
  await waitTcp(turn, port, ADDR);
  const gw = await startGateway({
    adminSecret: 'bench-admin',
    turnSecret: secret,
    turnUris: [`turn:${ADDR}:${port}`],
    extraArgs: [
      ...gatewayArgs,
      ...(early ? ['--early-offer', 'true', '--turn-control-url', `http://127.0.0.1:${metrics}`, '--turn-control-secret', control] : []),
    ],
    bin: gatewayBin,
  });
  return { name, turnUri: `turn:${ADDR}:${port}`, secret, gw, procs: [gw.proc, turn], gwProc: gw.proc };
}

function janusConfig(dir, ws) {
  const lib = '/usr/lib/x86_64-linux-gnu/janus';
  fs.writeFileSync(path.join(dir, 'janus.jcfg'), `general: {
	configs_folder = "${dir}"
	plugins_folder = "${lib}/plugins"
	transports_folder = "${lib}/transports"
	events_folder = "${lib}/events"
	loggers_folder = "${lib}/loggers"
	debug_level = 3
	session_timeout = 60
	server_name = "callrelay-bench"
}
media: {
	ipv6 = false
}
nat: {
	ice_enforce_list = "${IF}"
	ignore_mdns = true
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videoroom.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_http.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
events: {
	broadcast = false
}
`);
  fs.writeFileSync(path.join(dir, 'janus.transport.websockets.jcfg'), `general: {
	json = "compact"
	ws = true
	ws_port = ${ws}
	ws_ip = "127.0.0.1"
	wss = false
}
`);
  fs.writeFileSync(path.join(dir, 'janus.plugin.videocall.jcfg'), 'general: {\n}\n');
}

async function startJanus(secret) {
  const [ws, turnPort] = await freePorts(2);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-bench-janus-'));
  janusConfig(dir, ws);
  const janus = new Proc('janus', '/usr/bin/janus', ['-F', dir, '-C', path.join(dir, 'janus.jcfg'), '-o', '-d', '3']);
  const coturn = new Proc('coturn', 'turnserver', [
    '-n', '--no-cli', '--no-tls', '--no-dtls', '--log-file=stdout', '--simple-log',
    `--listening-ip=${ADDR}`, `--listening-port=${turnPort}`, `--relay-ip=${ADDR}`,
    '--use-auth-secret', `--static-auth-secret=${secret}`, '--realm=bench',
    '--min-port=49000', '--max-port=59999',
  ]);
  await waitTcp(janus, ws, '127.0.0.1');
  await waitTcp(coturn, turnPort, ADDR);
  return { name: 'janus', turnUri: `turn:${ADDR}:${turnPort}`, secret, gw: { wsUrl: `ws://127.0.0.1:${ws}` }, procs: [janus, coturn], dir };
}

async function launch() {
  // playwright-core is installed in tests/browser (npm ci there)
  const { chromium } = require(require.resolve('playwright-core', { paths: [TB] }));
  // Chromium gathers on the veth only (no loopback candidates): both stacks' TURN
  // servers are there.
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS.filter((a) => a !== '--allow-loopback-in-peer-connection'),
    timeout: 30000,
  });
  return browser;
}

const evs = (party) => party.page.evaluate(() => window.party.rec.events);
const first = (list, pred) => list.find(pred);

/** One Mattermost-style call; returns the page events of both sides (wall clock). */
async function oneCall(browser, web, stack, gen) {
  let token;
  if (stack.gwProc) {
    token = newGatewayToken();
    const r = await adminPost(stack.gw.adminUrl, 'bench-admin', 'add_token', token);
    if (!r.json || r.json.janus !== 'success') throw new Error(`add_token: ${r.text}`);
  }
  const c = mintTurnCredentials('mattermost', stack.secret);
  const iceServers = [{ urls: [stack.turnUri], username: c.username, credential: c.password }];
  const callee = await newPartyPage(browser, web.base, gen, `callee/${stack.name}`);
  const caller = await newPartyPage(browser, web.base, gen, `caller/${stack.name}`);
  const callerId = newId();
  const calleeId = newId();
  try {
    const start = (p, role, userId, peerId) => withTimeout(
      p.page.evaluate((o) => window.party.start(o), { server: stack.gw.wsUrl, token, iceServers, userId, peerId, role, policy: 'relay' }),
      15000, `${p.label} registered`);
    await start(callee, 'callee', calleeId, callerId);
    await start(caller, 'caller', callerId, calleeId);
    const connected = (e) => e.kind === 'pc-conn' && e.state === 'connected';
    const media = (l) => l.filter((e) => e.kind === 'remote-unmute').length >= 2;
    let ce;
    let ee;
    await waitUntil(`${stack.name} ${gen}: both PeerConnections connected and media in`, async () => {
      [ce, ee] = await Promise.all([evs(caller), evs(callee)]);
      const bad = [...ce, ...ee].find((e) => e.kind === 'error' || e.kind === 'plugin-error' || (e.kind === 'pc-conn' && e.state === 'failed'));
      if (bad) throw Object.assign(new Error(`call failed: ${JSON.stringify(bad)}`), { fatal: true });
      return first(ce, connected) && first(ee, connected) && media(ce) && media(ee);
    }, { timeoutMs: CALL_TIMEOUT_MS, every: 50 });
    const handles = { caller: (first(ce, (e) => e.kind === 'attached') || {}).handleId, callee: (first(ee, (e) => e.kind === 'attached') || {}).handleId };
    await caller.page.evaluate(() => window.party.hangup()).catch(() => {});
    await sleep(200);
    return { caller: ce, callee: ee, handles };
  } catch (e) {
    for (const p of [caller, callee]) e.message += `\n${p.dumpConsole()}`;
    throw e;
  } finally {
    await caller.close();
    await callee.close();
    if (token) await adminPost(stack.gw.adminUrl, 'bench-admin', 'remove_token', token).catch(() => {});
  }
}

/** Gateway log lines (tracing fmt: RFC 3339 UTC timestamp first) → {wall, level, msg, fields}. */
function gatewayLines(log, since) {
  const out = [];
  for (const line of log.split('\n')) {
    const m = line.match(/^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\s+(\w+)\s+(\S+): (.*)$/);
    if (!m) continue;
    const wall = Date.parse(`${m[1]}${(m[2] || '.000').slice(0, 4)}Z`) + Number(`0.${(m[2] || '.0').slice(4) || '0'}`);
    if (wall < since) continue;
    const fields = {};
    for (const f of m[5].matchAll(/(\w+)=("[^"]*"|\S+)/g)) fields[f[1]] = f[2].replace(/^"|"$/g, '');
    const msg = m[5].replace(/\s*\w+=("[^"]*"|\S+)/g, '').trim();
    out.push({ wall, level: m[3], msg, fields });
  }
  return out;
}

/** Times (ms after `call` sent) of one call from both pages and, for ours, the gateway log. */
function analyse(call, gwLines) {
  const { caller: ce, callee: ee, handles } = call;
  const w = (list, pred) => (first(list, pred) || {}).wall;
  const t0 = w(ce, (e) => e.kind === 'call-sent');
  const conn = (l) => w(l, (e) => e.kind === 'pc-conn' && e.state === 'connected');
  const t = {
    connected: Math.max(conn(ce), conn(ee)) - t0,
  };
  const rel = (x) => (x === undefined ? undefined : Math.round(x - t0));
  const tl = [];
  const add = (what, wall) => tl.push([what, rel(wall)]);
  add('caller: call + offer sent', t0);
  add('caller: first relay candidate', w(ce, (e) => e.kind === 'pc-candidate' && e.typ === 'relay'));
  add('caller: gathering complete', w(ce, (e) => e.kind === 'pc-gathering' && e.state === 'complete'));
  if (gwLines) {
    const g = (hid, pred) => (first(gwLines, (l) => l.fields.handle === String(hid) && pred(l)) || {}).wall;
    add('gateway: offer in', g(handles.caller, (l) => l.msg === 'SDP received'));
    add('gateway: caller relay candidate in', g(handles.caller, (l) => l.msg === 'candidate' && l.fields.typ === 'relay'));
    add('gateway: caller end-of-candidates', g(handles.caller, (l) => l.msg === 'end of candidates'));
    add('gateway: offer forwarded (incomingcall)', g(handles.caller, (l) => /^forwarding SDP/.test(l.msg)));
  }
  add('callee: incomingcall', w(ee, (e) => e.kind === 'plugin-event' && e.event === 'incomingcall'));
  add('callee: accept + answer sent', w(ee, (e) => e.kind === 'accept-sent'));
  add('callee: first relay candidate', w(ee, (e) => e.kind === 'pc-candidate' && e.typ === 'relay'));
  add('callee: ICE checking', w(ee, (e) => e.kind === 'pc-ice' && e.state === 'checking'));
  if (gwLines) {
    const g = (hid, pred) => (first(gwLines, (l) => l.fields.handle === String(hid) && pred(l)) || {}).wall;
    add('gateway: answer in', g(handles.callee, (l) => l.msg === 'SDP received'));
    add('gateway: callee relay candidate in', g(handles.callee, (l) => l.msg === 'candidate' && l.fields.typ === 'relay'));
    add('gateway: callee end-of-candidates', g(handles.callee, (l) => l.msg === 'end of candidates'));
    add('gateway: permissions asked (early_offer)', g(handles.callee, (l) => l.msg === 'early offer: asking for permissions'));
    add('gateway: permissions installed (early_offer)', g(handles.callee, (l) => l.msg === 'early offer: permissions installed'));
    add('gateway: answer forwarded (accepted)', g(handles.callee, (l) => /^forwarding SDP/.test(l.msg)));
  }
  add('caller: accepted', w(ce, (e) => e.kind === 'plugin-event' && e.event === 'accepted' && e.jsepType === 'answer'));
  add('caller: ICE checking', w(ce, (e) => e.kind === 'pc-ice' && e.state === 'checking'));
  add('callee: ICE connected', w(ee, (e) => e.kind === 'pc-ice' && e.state === 'connected'));
  add('caller: ICE connected', w(ce, (e) => e.kind === 'pc-ice' && e.state === 'connected'));
  add('callee: PC connected (DTLS done)', conn(ee));
  add('caller: PC connected (DTLS done)', conn(ce));
  add('callee: first remote media', w(ee, (e) => e.kind === 'remote-unmute'));
  add('caller: first remote media', w(ce, (e) => e.kind === 'remote-unmute'));
  t.offerHeld = rel(w(ee, (e) => e.kind === 'plugin-event' && e.event === 'incomingcall'));
  const acc = w(ce, (e) => e.kind === 'plugin-event' && e.event === 'accepted' && e.jsepType === 'answer');
  t.answerToAccepted = Math.round(acc - w(ee, (e) => e.kind === 'accept-sent'));
  t.acceptedToConnected = Math.round(Math.max(conn(ce), conn(ee)) - acc);
  // Every stack: connected = calleeStart + calleeAnswer + calleeGather + tail. Forwarding
  // SDP, the callee can only start once the caller's relay candidate exists; Janus
  // answers the caller itself, so there the callee starts at once.
  const calleeRelay = w(ee, (e) => e.kind === 'pc-candidate' && e.typ === 'relay');
  t.callerGather = w(ce, (e) => e.kind === 'pc-candidate' && e.typ === 'relay') - t0;
  t.calleeStart = w(ee, (e) => e.kind === 'plugin-event' && e.event === 'incomingcall') - t0;
  t.calleeAnswer = w(ee, (e) => e.kind === 'accept-sent') - w(ee, (e) => e.kind === 'plugin-event' && e.event === 'incomingcall');
  t.calleeGather = calleeRelay - w(ee, (e) => e.kind === 'accept-sent');
  t.tail = Math.max(conn(ce), conn(ee)) - calleeRelay;
  if (gwLines) {
    // the serial phases of a forwarded call (see docs/performance.md)
    const g = (hid, pred) => (first(gwLines, (l) => l.fields.handle === String(hid) && pred(l)) || {}).wall;
    const relayIn = (hid) => g(hid, (l) => l.msg === 'candidate' && l.fields.typ === 'relay');
    const fwd = (hid) => g(hid, (l) => /^forwarding SDP/.test(l.msg));
    t.callerRelay = relayIn(handles.caller) - t0;
    t.offerHold = fwd(handles.caller) - relayIn(handles.caller);
    t.calleeRelay = relayIn(handles.callee) - g(handles.callee, (l) => l.msg === 'SDP received');
    t.answerHold = fwd(handles.callee) - relayIn(handles.callee);
    const asked = g(handles.callee, (l) => l.msg === 'early offer: asking for permissions');
    const installed = g(handles.callee, (l) => l.msg === 'early offer: permissions installed');
    if (asked !== undefined && installed !== undefined) t.permits = installed - asked;
  }
  t.media = Math.max(...['caller', 'callee'].map((s) => w(call[s], (e) => e.kind === 'remote-unmute'))) - t0;
  return { t, timeline: tl.filter(([, v]) => v !== undefined).sort((a, b) => a[1] - b[1]) };
}

function summary(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const med = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { median: Math.round(med), min: Math.round(s[0]), max: Math.round(s[s.length - 1]), n: s.length };
}

async function main() {
  const o = args();
  const deadline = Date.now() + RUN_BUDGET_MS;
  setupVeth();
  process.env.RUST_LOG = process.env.RUST_LOG || 'info,gateway::core=debug';
  const stacks = {};
  const all = [];
  let browser;
  let web;
  try {
    if (o.stacks.includes('ours')) stacks.ours = await startOurs('ours', 'bench-ours-secret', o.gatewayArgs);
    if (o.stacks.includes('before')) {
      const dir = process.env.CALLRELAY_BEFORE_BIN_DIR;
      if (!dir) throw new Error('--stacks before needs CALLRELAY_BEFORE_BIN_DIR (a directory with the other gateway build)');
      stacks.before = await startOurs('before', 'bench-before-secret', o.gatewayArgs, path.join(path.resolve(dir), 'gateway'));
    }
    if (o.stacks.includes('ours-early')) stacks['ours-early'] = await startOurs('ours-early', 'bench-early-secret', o.gatewayArgs, undefined, true);
    if (o.stacks.includes('janus')) stacks.janus = await startJanus('bench-janus-secret');
    for (const s of Object.values(stacks)) all.push(...s.procs);
    web = await startStaticServer();
    browser = await launch();
    // One warm-up call per stack and generation (Chromium's first getUserMedia, caches).
    for (const gen of o.gens) for (const s of Object.values(stacks)) await oneCall(browser, web, s, gen);
    const order0 = o.stacks.filter((n) => stacks[n]);
    const results = [];
    for (const gen of o.gens) {
      for (let i = 0; i < o.calls; i++) {
        if (Date.now() > deadline) throw new Error(`run budget of ${RUN_BUDGET_MS / 60000} min exceeded`);
        // rotate the order each round: every stack runs first, middle and last alike
        const order = order0.map((_, k) => order0[(k + i) % order0.length]);
        for (const name of order) {
          const s = stacks[name];
          const since = Date.now();
          const call = await oneCall(browser, web, s, gen);
          const a = analyse(call, s.gwProc ? gatewayLines(s.gwProc.log, since - 5) : null);
          results.push({ gen, stack: name, i, ...a });
          console.log(`${gen} ${name.padEnd(10)} #${i + 1}: call sent → both connected ${a.t.connected} ms (incomingcall +${a.t.offerHeld}, answer→accepted ${a.t.answerToAccepted}, accepted→connected ${a.t.acceptedToConnected}, media +${a.t.media})`);
          if (s.gwProc) for (const [what, ms] of a.timeline) console.log(`    TIMELINE ${String(ms).padStart(5)} ms  ${what}`);
        }
      }
    }
    console.log('\nsummary (ms; median min–max over the measured calls; time 0 = `call` sent)');
    for (const gen of o.gens) {
      for (const name of order0) {
        const r = results.filter((x) => x.gen === gen && x.stack === name);
        const f = (k) => { const s = summary(r.map((x) => x.t[k])); return `${s.median} (${s.min}–${s.max})`; };
        console.log(`janus.js ${gen} ${name.padEnd(10)} n=${r.length}: connected ${f('connected')}; incomingcall ${f('offerHeld')}; answer→accepted ${f('answerToAccepted')}; accepted→connected ${f('acceptedToConnected')}; media ${f('media')}`);
        console.log(`    path: caller's first relay candidate ${f('callerGather')}; callee: incomingcall ${f('calleeStart')} + answer ${f('calleeAnswer')} + its relay candidate ${f('calleeGather')} + to both connected ${f('tail')}`);
        if (stacks[name].gwProc) {
          console.log(`    phases: caller's relay candidate at the gateway ${f('callerRelay')}, offer held after it ${f('offerHold')}; ` +
            `callee incomingcall→answer ${f('calleeAnswer')}, answer in→callee's relay candidate ${f('calleeRelay')}, answer held after it ${f('answerHold')}; accepted→connected ${f('acceptedToConnected')}` +
            (r.some((x) => x.t.permits !== undefined) ? `; permissions asked→installed ${f('permits')}` : ''));
        }
      }
    }
    for (const name of order0.filter((n) => n.endsWith('-early'))) {
      // every fallback means a call whose answer went without the permissions
      const text = await (await fetch(stacks[name].gw.adminUrl.replace(/\/admin$/, '/metrics'))).text();
      const lines = text.split('\n').filter((l) => /^callrelay_gateway_early_offer/.test(l));
      console.log(`${name}: ${lines.join('; ')}`);
    }
    if (o.json) fs.writeFileSync(o.json, JSON.stringify(results, null, 1));
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (web) await web.close();
    for (const p of all) await p.stop(3000);
    for (const s of Object.values(stacks)) {
      if (s.gw && s.gw.cleanup) await s.gw.cleanup();
      if (s.dir) fs.rmSync(s.dir, { recursive: true, force: true });
    }
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e.stack || e);
  process.exit(1);
});
