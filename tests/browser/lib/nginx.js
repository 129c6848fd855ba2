'use strict';
// Debian's nginx in front of the gateway, running unprivileged from a private folder
// (testing-notes.md): `daemon off`, pid, logs and every *_temp_path inside the test's
// folder. The server block is deploy/nginx/callrelay.conf as shipped, with only its host
// name, ports and certificate paths substituted; each substitution must match exactly
// once, so a change to the shipped file's shape fails here instead of testing something
// else.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Proc, REPO } = require('./servers');
const { fatal, waitUntil, tcpConnects } = require('./util');

const SHIPPED = path.join(REPO, 'deploy', 'nginx', 'callrelay.conf');
const NGINX = process.env.NGINX_PATH || '/usr/sbin/nginx';

function substitute(text, pairs) {
  let out = text;
  for (const [from, to] of pairs) {
    const n = out.split(from).length - 1;
    if (n !== 1) throw new Error(`deploy/nginx/callrelay.conf: expected "${from}" exactly once, found ${n} (update lib/nginx.js with the file)`);
    out = out.replace(from, to);
  }
  return out;
}

/**
 * Starts nginx with the shipped config for `name` on 127.0.0.1:`port`, TLS from
 * `certPath`/`keyPath`, proxying to the gateway's WebSocket listener `wsPort` and HTTP
 * listener `httpPort` — or, for several gateway nodes (docs/scale-out.md, Load balancer),
 * arrays of ports: one `server` line each in the upstream, round robin. Its files live in
 * a fresh folder of its own (removed by cleanup()). Returns {proc, port, accessLog(), cleanup()}.
 */
async function startNginx({ name, port, certPath, keyPath, wsPort, httpPort }) {
  const servers = (ports) => [].concat(ports).map((p) => `server 127.0.0.1:${p};`).join('\n    ');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'callrelay-nginx-'));
  const conf = substitute(fs.readFileSync(SHIPPED, 'utf8'), [
    ['listen 443 ssl;', `listen 127.0.0.1:${port} ssl;`],
    ['    listen [::]:443 ssl;\n', ''],
    ['server_name rtc.example.com;', `server_name ${name};`],
    ['/etc/letsencrypt/live/rtc.example.com/fullchain.pem', certPath],
    ['/etc/letsencrypt/live/rtc.example.com/privkey.pem', keyPath],
    ['server 127.0.0.1:8188;', servers(wsPort)],
    ['server 127.0.0.1:8088;', servers(httpPort)],
  ]);
  fs.writeFileSync(path.join(dir, 'callrelay.conf'), conf);
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp, { recursive: true });
  const accessLog = path.join(dir, 'access.log');
  const main = [
    'daemon off;',
    // One process (no master/workers): SIGTERM/SIGKILL to it leaves nothing behind, and
    // there is no switch to the `user` of a production install.
    'master_process off;',
    `pid ${path.join(dir, 'nginx.pid')};`,
    'error_log stderr info;',
    'events { worker_connections 512; }',
    'http {',
    "  log_format callrelay '$remote_addr \"$request\" $status $body_bytes_sent upgrade=$http_upgrade proto=$upstream_http_sec_websocket_protocol rt=$request_time';",
    `  access_log ${accessLog} callrelay;`,
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${path.join(tmp, t)};`),
    `  include ${path.join(dir, 'callrelay.conf')};`,
    '}',
    '',
  ].join('\n');
  const mainPath = path.join(dir, 'nginx.conf');
  fs.writeFileSync(mainPath, main);
  // -e: the error log before the config is read (default /var/log/nginx is not ours).
  const proc = new Proc('nginx', NGINX, ['-e', 'stderr', '-p', dir, '-c', mainPath]);
  try {
    await waitUntil(`nginx to accept TCP on 127.0.0.1:${port}`, async () => {
      if (!proc.alive()) throw fatal('nginx exited early');
      return tcpConnects(port);
    }, { timeoutMs: 15000 });
  } catch (e) {
    await proc.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    e.message += `\n${proc.dump()}`;
    throw e;
  }
  return {
    proc,
    port,
    confPath: path.join(dir, 'callrelay.conf'),
    accessLog: () => (fs.existsSync(accessLog) ? fs.readFileSync(accessLog, 'utf8') : ''),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

module.exports = { startNginx, SHIPPED };
