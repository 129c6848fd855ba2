'use strict';
// TLS for the wss and nginx tests: a throwaway self-signed certificate for 127.0.0.1, or a
// test CA + server certificate (openssl command-line tool, Debian's `openssl`), an NSS
// trust store holding that CA for Chromium (certutil, Debian `libnss3-tools`), and an HTTP
// client that trusts exactly that certificate (as Mattermost's server verifies the Admin
// URL's certificate).
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const dns = require('node:dns');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const path = require('node:path');

/** Writes cert.pem/key.pem (EC P-256, SAN IP:127.0.0.1, 1 day) into `dir`. */
function makeSelfSignedCert(dir) {
  const certPath = path.join(dir, 'cert.pem');
  const keyPath = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  const certPem = fs.readFileSync(certPath, 'utf8');
  // Chromium's --ignore-certificate-errors-spki-list: base64 SHA-256 of the SPKI, so the
  // browser trusts this one key and nothing else.
  const spki = new crypto.X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return { certPath, keyPath, certPem, spkiHash: crypto.createHash('sha256').update(spki).digest('base64') };
}

/**
 * A test certificate authority and a server certificate it signed for DNS name `name`
 * (EC P-256, 1 day), as a real deployment has (CA → server certificate), made with the
 * openssl command. The CA can then be put in a browser's trust store (nssDbWithCa).
 * Writes ca.pem, ca.key, server.pem (server + CA chain), server.key into `dir`.
 */
function makeTestCa(dir, name) {
  const f = (n) => path.join(dir, n);
  const run = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run(['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1',
    '-subj', `/CN=callrelay test CA ${crypto.randomBytes(4).toString('hex')}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', `/CN=${name}`]);
  fs.writeFileSync(f('server.ext'), `subjectAltName=DNS:${name}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`);
  run(['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('server-only.pem'), '-days', '1', '-extfile', f('server.ext')]);
  // nginx's ssl_certificate: the server certificate followed by the chain (fullchain.pem).
  fs.writeFileSync(f('server.pem'), fs.readFileSync(f('server-only.pem'), 'utf8') + fs.readFileSync(f('ca.pem'), 'utf8'));
  return { caPath: f('ca.pem'), caPem: fs.readFileSync(f('ca.pem'), 'utf8'), certPath: f('server.pem'), keyPath: f('server.key'), name };
}

/**
 * A fresh HOME whose NSS database ($HOME/.pki/nssdb, where Chromium on Linux reads
 * user-added trust anchors) trusts `caPath` for TLS servers (certutil, Debian
 * libnss3-tools). Returns the HOME folder.
 */
function homeTrustingCa(home, caPath) {
  const db = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(db, { recursive: true });
  const certutil = (args) => execFileSync('certutil', ['-d', `sql:${db}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  certutil(['-N', '--empty-password']);
  certutil(['-A', '-n', 'callrelay-test-ca', '-t', 'C,,', '-i', caPath]);
  const listed = certutil(['-L']);
  if (!/callrelay-test-ca\s+C,,/.test(listed)) throw new Error(`test CA not trusted in ${db}:\n${listed}`);
  return home;
}

/**
 * fetch-like ({url, method, headers, body, timeoutMs} → {status, headers, text}) trusting
 * `ca`. `hosts` maps test host names to addresses (there is no DNS in the test namespace).
 */
function fetchTrusting(ca, hosts = {}) {
  const lookup = (hostname, opts, cb) => {
    const ip = hosts[hostname];
    if (!ip) return dns.lookup(hostname, opts, cb);
    return opts && opts.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4);
  };
  return ({ url, method = 'GET', headers = {}, body, timeoutMs = 5000 }) => new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(u, { method, headers, ca, timeout: timeoutMs, lookup }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${url}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

module.exports = { makeSelfSignedCert, makeTestCa, homeTrustingCa, fetchTrusting };
