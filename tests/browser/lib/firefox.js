'use strict';
// Headless Debian Firefox ESR driven by puppeteer-core over WebDriver BiDi (no browser
// download: puppeteer-core only talks to /usr/bin/firefox-esr). The returned `browser`
// answers the few calls lib/web.js newPartyPage and lib/call.js make on a playwright
// browser (newContext → grantPermissions/newPage/close; page goto/evaluate/
// waitForFunction/on), so the same Mattermost flow runs unchanged in either browser.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { assertOnlyLoopback } = require('./web');
const { withTimeout } = require('./util');

// Every Firefox started, so none outlives the test process (timeout, Ctrl-C, a failed
// close over BiDi).
const running = new Set();
process.on('exit', () => {
  for (const child of running) if (child.exitCode === null) child.kill('SIGKILL');
});

const FIREFOX_PATH = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';

// testing-notes.md: in a namespace with only `lo` Firefox gathers nothing (not even its
// TURN allocation) unless the page holds a camera/microphone permission, and only
// gathers on loopback with ice.loopback. Fake devices, no prompt. The rest keeps a
// machine without internet from being contacted at start (updates, telemetry, captive
// portal, safe browsing, remote settings).
const FIREFOX_PREFS = {
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  'media.peerconnection.ice.loopback': true,
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.autoplay.default': 0,
  'app.update.enabled': false,
  'app.update.auto': false,
  'browser.shell.checkDefaultBrowser': false,
  'browser.safebrowsing.malware.enabled': false,
  'browser.safebrowsing.phishing.enabled': false,
  'browser.safebrowsing.downloads.enabled': false,
  'datareporting.healthreport.uploadEnabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'extensions.update.enabled': false,
  'services.settings.server': 'http://127.0.0.1:9/',
};

/** Firefox's version string, e.g. "Mozilla Firefox 153.8.0esr". */
function firefoxVersion() {
  return require('node:child_process').execFileSync(FIREFOX_PATH, ['--version'], { encoding: 'utf8' }).trim();
}

/** A puppeteer page dressed as the playwright page lib/web.js and lib/call.js use. */
function asPlaywrightPage(page) {
  return {
    raw: page,
    goto: (url, opts) => page.goto(url, opts),
    // playwright: (fn, arg, {timeout}); puppeteer: (fn, {timeout}, ...args)
    waitForFunction: (fn, arg, opts = {}) => page.waitForFunction(fn, { timeout: opts.timeout, polling: 100 }, arg),
    evaluate: (fn, arg) => (arg === undefined ? page.evaluate(fn) : page.evaluate(fn, arg)),
    on: (ev, cb) => page.on(ev, cb),
    close: () => page.close(),
  };
}

/**
 * Launches headless Firefox ESR (fresh profile in a temp folder, deleted on close).
 * `prefs` are added to FIREFOX_PREFS. `nssDb` (lib/tls.js homeTrustingCa's
 * .pki/nssdb) becomes the profile's certificate store: Firefox keeps its trust anchors in
 * the profile's NSS db (cert9.db), so a test CA added there is trusted like a real one.
 */
async function launchFirefox({ prefs = {}, nssDb } = {}) {
  assertOnlyLoopback();
  const puppeteer = require('puppeteer-core');
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-ff-'));
  if (nssDb) for (const f of ['cert9.db', 'key4.db', 'pkcs11.txt']) if (fs.existsSync(path.join(nssDb, f))) fs.copyFileSync(path.join(nssDb, f), path.join(profile, f));
  const raw = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX_PATH,
    headless: true,
    userDataDir: profile,
    extraPrefsFirefox: { ...FIREFOX_PREFS, ...prefs },
    timeout: 60000,
    protocolTimeout: 60000,
    env: { ...process.env, MOZ_HEADLESS: '1' },
  });
  const browser = {
    raw,
    async newContext() {
      const ctx = await raw.createBrowserContext();
      return {
        // Camera/microphone are granted by the prefs above for every origin.
        grantPermissions: async () => {},
        newPage: async () => asPlaywrightPage(await ctx.newPage()),
        close: () => ctx.close(),
      };
    },
  };
  const child = raw.process();
  if (child) running.add(child);
  return {
    browser,
    version: await raw.version(),
    close: async () => {
      // BiDi close, bounded; then make sure the process is gone before its profile is.
      await withTimeout(raw.close(), 15000, 'Firefox to close').catch(() => {});
      if (child && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await withTimeout(new Promise((r) => child.once('exit', r)), 5000, 'Firefox to exit on SIGKILL').catch(() => {});
      }
      if (child) running.delete(child);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

module.exports = { launchFirefox, firefoxVersion, FIREFOX_PREFS, FIREFOX_PATH };
