'use strict';
// TLS for the wss test: a throwaway self-signed certificate for 127.0.0.1 (made with the
// openssl command-line tool, Debian's `openssl`), and an HTTP client that trusts exactly
// that certificate (as Mattermost's server verifies the Admin URL's certificate).
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
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

/** fetch-like ({url, method, headers, body, timeoutMs} → {status, headers, text}) trusting `ca`. */
function fetchTrusting(ca) {
  return ({ url, method = 'GET', headers = {}, body, timeoutMs = 5000 }) => new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(u, { method, headers, ca, timeout: timeoutMs }, (res) => {
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

module.exports = { makeSelfSignedCert, fetchTrusting };
