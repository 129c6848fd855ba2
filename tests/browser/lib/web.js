'use strict';
// A tiny static server on 127.0.0.1 (ephemeral port) for the test page and the two
// janus.js generations, both used straight from where they are installed (never copied
// into the repository), plus headless Debian Chromium via playwright-core.
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const JANUS = {
  // Debian libjs-janus-gateway (current generation).
  '1.1.2': '/usr/share/javascript/janus-gateway/janus.js',
  // npm janus-gateway@0.2.3, the 0.2.x janus.js that Mattermost vendored.
  '0.2.3': path.join(path.dirname(require.resolve('janus-gateway/package.json')), 'html', 'janus.nojquery.js'),
};
const ADAPTER = '/usr/share/javascript/webrtc-adapter/adapter.js';
const PAGES = path.join(__dirname, '..', 'pages');

const JS = 'text/javascript; charset=utf-8';
const ROUTES = {
  '/call.js': [path.join(PAGES, 'call.js'), JS],
  '/adapter.js': [ADAPTER, JS],
};
for (const [gen, file] of Object.entries(JANUS)) {
  ROUTES[`/g/${gen}/call.html`] = [path.join(PAGES, 'call.html'), 'text/html; charset=utf-8'];
  ROUTES[`/g/${gen}/janus.js`] = [file, JS];
}

/** Serves the pages on `host`:`port` (default 127.0.0.1, ephemeral port). */
function startStaticServer({ host = '127.0.0.1', port = 0 } = {}) {
  for (const [, [file]] of Object.entries(ROUTES)) {
    if (!fs.existsSync(file)) throw new Error(`${file} missing (install libjs-janus-gateway, libjs-webrtc-adapter; npm ci)`);
  }
  const server = http.createServer((req, res) => {
    const route = ROUTES[new URL(req.url, 'http://x').pathname];
    if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!route) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': route[1], 'Cache-Control': 'no-store' });
    fs.createReadStream(route[0]).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(port, host, () => {
      const bound = server.address().port;
      resolve({ base: `http://${host}:${bound}`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

// Flags from the testing notes: fake devices and auto-granted media, no GPU, and nothing
// that makes Chromium reach the internet from a machine without one.
const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks',
  '--allow-loopback-in-peer-connection',
];

/**
 * Refuses to start Chromium where a non-loopback interface address exists: Chromium binds
 * its WebRTC sockets to every interface address, relay-only or not, so the tests must run
 * in a namespace with only `lo` (npm test does that through run-in-netns.sh).
 */
function assertOnlyLoopback() {
  const found = [];
  for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
    for (const a of addrs || []) if (!a.internal) found.push(`${name} ${a.address}`);
  }
  if (found.length) {
    throw new Error(`refusing to run WebRTC with non-loopback addresses present (${found.join(', ')}): ` +
      'run the tests through `npm test` (run-in-netns.sh gives them a network namespace with only loopback)');
  }
}

/**
 * Headless Debian Chromium. Without `netns` it runs in the test's own loopback-only
 * namespace. With `netns` (test/nat.test.js) it runs inside that network namespace of
 * the test's lab, started through lib/netns-chromium.sh (`ip netns exec`); `secureOrigin`
 * then names the lab's page origin, which Chromium must treat as secure for getUserMedia.
 * `trustSpki` (lib/tls.js spkiHash) makes it accept the wss test's self-signed certificate.
 * `extraArgs` are appended to the command line. `home` replaces HOME (its
 * .pki/nssdb is Chromium's trust store: test/nginx.test.js adds a test CA there).
 */
async function launchChromium({ netns, secureOrigin, trustSpki, extraArgs = [], home } = {}) {
  if (!netns) assertOnlyLoopback();
  const { chromium } = require('playwright-core');
  // Inside the lab the callers have a real interface: no loopback candidates (they would
  // only ever reach the caller's own namespace).
  const args = netns ? CHROMIUM_ARGS.filter((a) => a !== '--allow-loopback-in-peer-connection') : [...CHROMIUM_ARGS];
  if (secureOrigin) args.push(`--unsafely-treat-insecure-origin-as-secure=${secureOrigin}`);
  // Trust exactly one self-signed certificate (by its key), not every certificate.
  if (trustSpki) args.push(`--ignore-certificate-errors-spki-list=${trustSpki}`);
  // e.g. --host-resolver-rules mapping a test host name to 127.0.0.1 (test/testpage.test.js)
  args.push(...extraArgs);
  // launch() gives Chromium a fresh temporary --user-data-dir of its own (playwright
  // refuses the flag in args) and deletes it on close.
  const browser = await chromium.launch({
    executablePath: netns ? path.join(__dirname, 'netns-chromium.sh') : process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    // `home` (lib/tls.js homeTrustingCa): a HOME whose NSS db trusts the test CA.
    env: netns ? { ...process.env, CALLRELAY_CHROMIUM_NETNS: netns } : home ? { ...process.env, HOME: home } : undefined,
    headless: true,
    args,
    timeout: 30000,
  });
  return { browser, close: () => browser.close().catch(() => {}) };
}

/** A page in its own browser context, with its console captured for failure reports. */
async function newPartyPage(browser, base, gen, label, { policy = 'relay' } = {}) {
  const context = await browser.newContext();
  await context.grantPermissions(['camera', 'microphone'], { origin: base });
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${label} ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label} pageerror] ${e.message}`));
  // `policy` reaches pages/call.js before janus.js loads (its RTCPeerConnection guard).
  await page.goto(`${base}/g/${gen}/call.html${policy === 'relay' ? '' : `?policy=${policy}`}`, { timeout: 15000 });
  await page.waitForFunction(() => window.callPageReady === true, null, { timeout: 10000 });
  return {
    page,
    context,
    label,
    consoleLines,
    dumpConsole: () => `----- console ${label}\n${consoleLines.slice(-300).join('\n')}\n----- end console ${label}`,
    close: () => context.close().catch(() => {}),
  };
}

module.exports = { assertOnlyLoopback, startStaticServer, launchChromium, newPartyPage, JANUS, CHROMIUM_ARGS };
