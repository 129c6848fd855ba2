//! `gateway doctor` against real binaries: the `gateway` built with this test and the
//! workspace's `turn-server` (built by `cargo build --workspace --bins`, as scripts/test
//! does), all on 127.0.0.1 ephemeral ports.

use serde_json::Value;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod scratch;

const ADMIN_SECRET: &str = "doctor-admin-secret";
const TURN_KEY: &str = "doctor-turn-key";

static RELAY: AtomicU64 = AtomicU64::new(0);

fn temp_dir() -> PathBuf {
    scratch::scratch_dir("callrelay-doctor-test-")
}

/// A free port for TCP and UDP on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn turn_server_bin() -> PathBuf {
    // <target>/<profile>/deps/doctor-… → <target>/<profile>/turn-server
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("turn-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_tcp(port: u16, p: &mut Proc) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "process exited ({st}): {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} never opened");
}

struct Turn {
    port: u16,
    proc: Proc,
}

fn start_turn(secret: &str, allow_loopback_peer: bool) -> Turn {
    start_turn_with(secret, allow_loopback_peer, &[])
}

fn start_turn_with(secret: &str, allow_loopback_peer: bool, extra: &[String]) -> Turn {
    let dir = temp_dir();
    let port = free_port();
    let metrics = free_port();
    // 5 relay ports per turn-server, a block per test in this process
    let relay = 42000
        + (std::process::id() % 100) as u16 * 100
        + (RELAY.fetch_add(1, Ordering::Relaxed) % 20) as u16 * 5;
    let log = dir.join("turn.log");
    let mut cmd = Command::new(turn_server_bin());
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        &format!("{relay}-{}", relay + 4),
        "--auth-secret",
        secret,
        "--realm",
        "test",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
    ]);
    if allow_loopback_peer {
        cmd.args(["--allow-peer", "127.0.0.1/32"]);
    }
    cmd.args(extra);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { child, log };
    wait_tcp(port, &mut proc);
    wait_tcp(metrics, &mut proc);
    Turn { port, proc }
}

struct Gw {
    ws: u16,
    admin: u16,
    proc: Proc,
}

fn start_gateway(extra: &[&str]) -> Gw {
    let dir = temp_dir();
    let (ws, http, admin) = (free_port(), free_port(), free_port());
    let log = dir.join("gateway.log");
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{ws}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--admin-secret",
            ADMIN_SECRET,
            "--token-auth",
            "--state-dir",
            dir.join("state").to_str().unwrap(),
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { child, log };
    wait_tcp(ws, &mut proc);
    wait_tcp(admin, &mut proc);
    Gw { ws, admin, proc }
}

struct Doctor {
    code: i32,
    text: String,
    json: Value,
}

fn doctor(args: &[String]) -> Doctor {
    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gateway"));
        c.arg("doctor").args(["--timeout", "2"]).args(args);
        if json {
            c.arg("--json");
        }
        let t = Instant::now();
        let out = c.output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "doctor took {:?}",
            t.elapsed()
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = run(false);
    let (jcode, jtext, _) = run(true);
    assert_eq!(code, jcode, "text and --json disagree: {text}\n{jtext}");
    let json: Value = serde_json::from_str(&jtext)
        .unwrap_or_else(|e| panic!("--json not JSON ({e}): {jtext}\n{err}"));
    eprintln!("{text}");
    Doctor { code, text, json }
}

fn args(gw: &Gw, turn_port: u16, secret: &str, key: &str) -> Vec<String> {
    vec![
        "--ws-url".into(),
        format!("ws://127.0.0.1:{}", gw.ws),
        "--admin-url".into(),
        format!("http://127.0.0.1:{}/admin", gw.admin),
        "--admin-secret".into(),
        secret.into(),
        "--stun-uri".into(),
        format!("stun:127.0.0.1:{turn_port}"),
        "--turn-uri".into(),
        format!("turn:127.0.0.1:{turn_port} turn:127.0.0.1:{turn_port}?transport=tcp"),
        "--turn-username".into(),
        "mattermost".into(),
        "--turn-shared-key".into(),
        key.into(),
    ]
}

fn check<'a>(d: &'a Doctor, name: &str) -> Vec<&'a Value> {
    d.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == name)
        .collect()
}

fn one<'a>(d: &'a Doctor, name: &str) -> &'a Value {
    let v = check(d, name);
    assert_eq!(v.len(), 1, "{name}: {}", d.json);
    v[0]
}

fn fix(c: &Value) -> &str {
    c["fix"].as_str().unwrap_or("")
}

#[test]
fn healthy_stack_passes_every_check() {
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[]);
    let d = doctor(&args(&gw, turn.port, ADMIN_SECRET, TURN_KEY));
    assert_eq!(d.code, 0, "{}", d.text);
    assert_eq!(d.json["ok"], true);
    assert_eq!(d.json["checks"].as_array().unwrap().len(), 5, "{}", d.json);
    for c in d.json["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
    assert_eq!(d.text.matches('✓').count(), 5, "{}", d.text);
    assert!(d.text.contains("all 5 checks passed"));
    let stun = one(&d, "STUN URI");
    assert!(
        stun["measured"]["mapped_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let turns = check(&d, "TURN URI");
    assert_eq!(turns.len(), 2);
    for t in turns {
        let relay = t["measured"]["relay_address"].as_str().unwrap();
        assert!(relay.starts_with("127.0.0.1:"), "{t}");
        assert!(t["measured"]["rtt_ms"].as_f64().unwrap() >= 0.0);
        assert!(
            t["measured"]["username"]
                .as_str()
                .unwrap()
                .ends_with(":mattermost")
        );
        assert!(
            t["detail"]
                .as_str()
                .unwrap()
                .contains("data relayed both ways")
        );
    }
    assert!(
        check(&d, "TURN URI")[1]["detail"]
            .as_str()
            .unwrap()
            .contains("over TCP")
    );
    // remove_token really removed it: no token left in the store (via /metrics gauge)
    let m = http_get(gw.admin, "/metrics");
    assert!(m.contains("callrelay_gateway_tokens 0"), "{m}");
    // the gateway's log carries no ANSI colour when stderr is a file
    let log = std::fs::read_to_string(&gw.proc.log).unwrap();
    assert!(
        !log.is_empty() && !log.contains('\x1b'),
        "ANSI escapes in a non-terminal log: {log:?}"
    );
    drop(turn);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn wrong_admin_secret_fails_admin_and_websocket_with_the_fix() {
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[]);
    let d = doctor(&args(&gw, turn.port, "not-the-secret", TURN_KEY));
    assert_eq!(d.code, 1);
    let a = one(&d, "Admin URL");
    assert_eq!(a["ok"], false);
    assert!(a["detail"].as_str().unwrap().contains("403"), "{a}");
    assert!(fix(a).contains("Gateway Admin Secret is wrong"), "{a}");
    let w = one(&d, "Gateway WebSocket URL");
    assert_eq!(w["ok"], false);
    assert!(fix(w).contains("Admin URL check failed"), "{w}");
    // the media side is unaffected
    assert_eq!(one(&d, "STUN URI")["ok"], true);
    assert!(check(&d, "TURN URI").iter().all(|t| t["ok"] == true));
    assert!(d.text.contains("✗ Admin URL"), "{}", d.text);
    assert!(
        d.text.contains("fix: the Gateway Admin Secret is wrong"),
        "{}",
        d.text
    );
}

#[test]
fn wrong_turn_shared_key_fails_turn_with_401_and_the_fix() {
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[]);
    let d = doctor(&args(&gw, turn.port, ADMIN_SECRET, "some-other-key"));
    assert_eq!(d.code, 1);
    assert_eq!(one(&d, "Admin URL")["ok"], true);
    assert_eq!(one(&d, "Gateway WebSocket URL")["ok"], true);
    for t in check(&d, "TURN URI") {
        assert_eq!(t["ok"], false);
        assert!(t["detail"].as_str().unwrap().contains("401"), "{t}");
        assert!(fix(t).contains("TURN Shared Key must equal"), "{t}");
    }
}

#[test]
fn stopped_turn_server_fails_stun_and_turn() {
    let mut turn = start_turn(TURN_KEY, true);
    let port = turn.port;
    turn.proc.stop();
    let gw = start_gateway(&[]);
    let d = doctor(&args(&gw, port, ADMIN_SECRET, TURN_KEY));
    assert_eq!(d.code, 1);
    assert_eq!(one(&d, "Admin URL")["ok"], true);
    let s = one(&d, "STUN URI");
    assert_eq!(s["ok"], false);
    assert!(fix(s).contains("no STUN answer"), "{s}");
    let t = check(&d, "TURN URI");
    assert_eq!(t[0]["ok"], false);
    assert!(
        fix(t[0]).contains("no TURN answer") && fix(t[0]).contains("UDP"),
        "{}",
        t[0]
    );
    assert_eq!(t[1]["ok"], false);
    assert!(
        t[1]["detail"].as_str().unwrap().contains("TCP connect"),
        "{}",
        t[1]
    );
}

#[test]
fn wrong_ports_fail_admin_and_websocket_at_the_tcp_step() {
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[]);
    let closed = free_port();
    let mut a = args(&gw, turn.port, ADMIN_SECRET, TURN_KEY);
    a[1] = format!("ws://127.0.0.1:{closed}");
    a[3] = format!("http://127.0.0.1:{closed}/admin");
    let d = doctor(&a);
    assert_eq!(d.code, 1);
    let ad = one(&d, "Admin URL");
    assert!(
        ad["detail"].as_str().unwrap().contains("TCP connect"),
        "{ad}"
    );
    assert!(fix(ad).contains("nothing listens"), "{ad}");
    let w = one(&d, "Gateway WebSocket URL");
    assert!(w["detail"].as_str().unwrap().contains("TCP connect"), "{w}");
    // the admin URL pointed at the WebSocket port: no JSON Admin API there
    let mut a = args(&gw, turn.port, ADMIN_SECRET, TURN_KEY);
    a[3] = format!("http://127.0.0.1:{}/admin", gw.ws);
    let d = doctor(&a);
    assert_eq!(one(&d, "Admin URL")["ok"], false, "{}", d.text);
}

#[test]
fn token_not_accepted_when_admin_and_websocket_reach_different_gateways() {
    let turn = start_turn(TURN_KEY, true);
    let a_gw = start_gateway(&[]);
    let b_gw = start_gateway(&[]);
    let mut a = args(&a_gw, turn.port, ADMIN_SECRET, TURN_KEY);
    a[1] = format!("ws://127.0.0.1:{}", b_gw.ws);
    let d = doctor(&a);
    assert_eq!(d.code, 1);
    assert_eq!(one(&d, "Admin URL")["ok"], true);
    let w = one(&d, "Gateway WebSocket URL");
    assert_eq!(w["ok"], false);
    assert!(w["detail"].as_str().unwrap().contains("403"), "{w}");
    assert!(fix(w).contains("different gateways"), "{w}");
}

#[test]
fn turn_peer_policy_denying_doctors_address_is_reported_as_403() {
    // default peer policy: loopback peers are denied, so the echo through the relay to
    // doctor's own loopback socket is refused with 403 although Allocate works
    let turn = start_turn(TURN_KEY, false);
    let gw = start_gateway(&[]);
    let d = doctor(&args(&gw, turn.port, ADMIN_SECRET, TURN_KEY));
    assert_eq!(d.code, 1);
    for t in check(&d, "TURN URI") {
        assert_eq!(t["ok"], false);
        assert!(
            t["detail"].as_str().unwrap().contains("Allocate over"),
            "{t}"
        );
        assert!(t["measured"]["relay_address"].is_string(), "{t}");
        assert!(
            fix(t).contains("403 Forbidden") && fix(t).contains("peer policy"),
            "{t}"
        );
    }
}

#[test]
fn tls_admin_and_wss_certificates_are_verified() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = fixtures.join("cert1.pem");
    let key = fixtures.join("key1.pem");
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let mut a = args(&gw, turn.port, ADMIN_SECRET, TURN_KEY);
    a[1] = format!("wss://127.0.0.1:{}", gw.ws);
    a[3] = format!("https://127.0.0.1:{}/admin", gw.admin);
    // self-signed: untrusted, with the Mattermost-specific fix
    let d = doctor(&a);
    assert_eq!(d.code, 1);
    let ad = one(&d, "Admin URL");
    assert!(
        ad["detail"].as_str().unwrap().contains("TLS handshake"),
        "{ad}"
    );
    assert!(fix(ad).contains("Insecure Outgoing Connections"), "{ad}");
    let w = one(&d, "Gateway WebSocket URL");
    assert!(fix(w).contains("Browsers refuse wss://"), "{w}");
    // trusted (as after adding the CA to the system store): everything passes
    a.extend(["--ca-file".to_string(), cert.to_str().unwrap().to_string()]);
    let d = doctor(&a);
    assert_eq!(d.code, 0, "{}", d.text);
    assert!(
        one(&d, "Admin URL")["detail"]
            .as_str()
            .unwrap()
            .contains("certificate valid for 127.0.0.1")
    );
    // plain http:// to a TLS admin listener: answered, because this doctor is a loopback
    // peer (the ssh-tunnel path to the test call page, docs/gateway.md); from any other
    // address (the Mattermost server on its own host) the listener speaks TLS only
    // (server/admin.rs `plain_http_on_a_tls_listener_only_from_loopback`)
    let mut a = args(&gw, turn.port, ADMIN_SECRET, TURN_KEY);
    a[3] = format!("http://127.0.0.1:{}/admin", gw.admin);
    let d = doctor(&a);
    assert_eq!(one(&d, "Admin URL")["ok"], true, "{}", d.text);
    // plain ws:// to the TLS WebSocket listener stays refused, even from loopback
    assert_eq!(one(&d, "Gateway WebSocket URL")["ok"], false, "{}", d.text);
}

#[test]
fn mattermost_config_json_is_read() {
    let turn = start_turn(TURN_KEY, true);
    let gw = start_gateway(&[]);
    let dir = temp_dir();
    let p = dir.join("config.json");
    let cfg = serde_json::json!({
        "ServiceSettings": {"SiteURL": "http://127.0.0.1:8065"},
        "WebrtcSettings": {
            "Enable": true,
            "GatewayWebsocketUrl": format!("ws://127.0.0.1:{}", gw.ws),
            "GatewayAdminUrl": format!("http://127.0.0.1:{}/admin", gw.admin),
            "GatewayAdminSecret": ADMIN_SECRET,
            "StunURI": format!("stun:127.0.0.1:{}", turn.port),
            "TurnURI": format!("turn:127.0.0.1:{}", turn.port),
            "TurnUsername": "mattermost",
            "TurnSharedKey": TURN_KEY
        }
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    let d = doctor(&["--mattermost-config".into(), p.to_str().unwrap().into()]);
    assert_eq!(d.code, 0, "{}", d.text);
    assert_eq!(d.json["checks"].as_array().unwrap().len(), 4);
    // a missing file: exit 2 with the path named
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["doctor", "--mattermost-config", "/nonexistent/config.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.json"));
}

// ---------------------------------------------------------------- Calls plugin mode

/// A turn-server that also speaks TURN over TLS (the test certificate for 127.0.0.1):
/// (server, TLS port, the certificate that makes doctor trust it).
fn start_turn_tls(secret: &str) -> (Turn, u16, PathBuf) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = fixtures.join("cert1.pem");
    let tls = free_port();
    let turn = start_turn_with(
        secret,
        true,
        &[
            "--tls-listen".into(),
            format!("127.0.0.1:{tls}"),
            "--cert".into(),
            cert.to_str().unwrap().into(),
            "--key".into(),
            fixtures.join("key1.pem").to_str().unwrap().into(),
        ],
    );
    (turn, tls, cert)
}

/// ICE Servers Configurations as an admin pastes them: STUN in its own entry, one TURN
/// entry without credentials (UDP, TCP, TLS).
fn calls_ice_servers(port: u16, tls: u16) -> String {
    serde_json::json!([
        {"urls": [format!("stun:127.0.0.1:{port}")]},
        {"urls": [
            format!("turn:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
            format!("turns:127.0.0.1:{tls}?transport=tcp"),
        ]}
    ])
    .to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn calls_plugin_settings_pass_over_udp_tcp_and_tls() {
    let (turn, tls, cert) = start_turn_tls(TURN_KEY);
    let t0 = unix_now();
    let d = doctor(&[
        "--ice-servers".into(),
        calls_ice_servers(turn.port, tls),
        "--turn-static-auth-secret".into(),
        TURN_KEY.into(),
        "--mattermost-username".into(),
        "alice".into(),
        "--ca-file".into(),
        cert.to_str().unwrap().into(),
    ]);
    assert_eq!(d.code, 0, "{}", d.text);
    assert_eq!(d.json["checks"].as_array().unwrap().len(), 5, "{}", d.json);
    assert!(d.text.contains("all 5 checks passed"), "{}", d.text);
    let cfg = one(&d, "ICE servers");
    assert_eq!(cfg["measured"]["turn_urls"], 3);
    assert_eq!(one(&d, "STUN URI")["ok"], true);
    let turns = check(&d, "TURN URI");
    assert_eq!(turns.len(), 3);
    for (t, over) in turns.iter().zip(["over UDP", "over TCP", "over TLS"]) {
        let detail = t["detail"].as_str().unwrap();
        assert!(detail.contains(over), "{t}");
        assert!(detail.contains("data relayed both ways"), "{t}");
        // minted as the plugin mints: "<now + 1440 min>:<Mattermost username>"
        let user = t["measured"]["username"].as_str().unwrap();
        let (expiry, name) = user.split_once(':').unwrap();
        assert_eq!(name, "alice");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (t0 + 1440 * 60..=unix_now() + 1440 * 60).contains(&expiry),
            "{user}"
        );
    }
    assert!(turns[2]["measured"]["tls_handshake_ms"].as_f64().is_some());
    drop(turn);
}

#[test]
fn calls_plugin_with_a_wrong_secret_fails_every_turn_url_with_the_fix() {
    let (turn, tls, cert) = start_turn_tls(TURN_KEY);
    let d = doctor(&[
        "--ice-servers".into(),
        calls_ice_servers(turn.port, tls),
        "--turn-static-auth-secret".into(),
        "not-the-turn-servers-secret".into(),
        "--ca-file".into(),
        cert.to_str().unwrap().into(),
    ]);
    assert_eq!(d.code, 1, "{}", d.text);
    assert_eq!(
        one(&d, "ICE servers")["ok"],
        true,
        "the setting itself is fine"
    );
    assert_eq!(one(&d, "STUN URI")["ok"], true, "STUN needs no credentials");
    let turns = check(&d, "TURN URI");
    assert_eq!(turns.len(), 3);
    for t in turns {
        assert_eq!(t["ok"], false, "{t}");
        assert!(t["detail"].as_str().unwrap().contains("401"), "{t}");
        assert!(
            fix(t).contains(
                "TURN Static Auth Secret must equal one of the turn-server's auth_secret"
            ),
            "{t}"
        );
    }
    assert!(d.text.contains("3 of 5 checks failed"), "{}", d.text);
    drop(turn);
}

#[test]
fn calls_plugin_settings_are_read_from_mattermost_config_json() {
    let turn = start_turn(TURN_KEY, true);
    let dir = temp_dir();
    let p = dir.join("config.json");
    // as Mattermost stores them: plugin keys lowercased, the ICE servers as a string
    let ice = serde_json::json!([
        {"urls": [format!("stun:127.0.0.1:{}", turn.port)]},
        {"urls": [format!("turn:127.0.0.1:{}?transport=tcp", turn.port)]}
    ]);
    let cfg = serde_json::json!({
        "ServiceSettings": {"SiteURL": "http://127.0.0.1:8065"},
        "PluginSettings": {"Plugins": {"com.mattermost.calls": {
            "iceserversconfigs": ice.to_string(),
            "turnstaticauthsecret": TURN_KEY,
            "turncredentialsexpirationminutes": 240,
            "serversideturn": false
        }}}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    let d = doctor(&["--mattermost-config".into(), p.to_str().unwrap().into()]);
    assert_eq!(d.code, 0, "{}", d.text);
    assert_eq!(d.json["checks"].as_array().unwrap().len(), 3, "{}", d.json);
    let user = one(&d, "TURN URI")["measured"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let expiry: u64 = user.split_once(':').unwrap().0.parse().unwrap();
    assert!(
        expiry <= unix_now() + 240 * 60 && expiry + 120 >= unix_now() + 240 * 60,
        "{user}"
    );
    assert!(user.ends_with(":callrelay-doctor"), "{user}");

    // an entry mixing stun: and turn: gets no credentials from the plugin: both the
    // setting and that URL fail, saying so
    let mixed = serde_json::json!([
        {"urls": [format!("stun:127.0.0.1:{}", turn.port), format!("turn:127.0.0.1:{}", turn.port)]}
    ]);
    let d = doctor(&[
        "--mattermost-config".into(),
        p.to_str().unwrap().into(),
        "--ice-servers".into(),
        mixed.to_string(),
    ]);
    assert_eq!(d.code, 1, "{}", d.text);
    let c = one(&d, "ICE servers");
    assert_eq!(c["ok"], false);
    assert!(fix(c).contains("entry of their own"), "{c}");
    let t = one(&d, "TURN URI");
    assert_eq!(t["ok"], false);
    assert!(
        t["detail"].as_str().unwrap().contains("no credentials"),
        "{t}"
    );
    drop(turn);
}
