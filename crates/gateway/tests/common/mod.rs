//! Test harness: starts the gateway in-process on 127.0.0.1 ephemeral ports and talks
//! to it over real WebSocket (tokio-tungstenite) and raw HTTP/1.1.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of this helper module"
)]

use futures_util::{SinkExt, StreamExt};
use gateway::{Config, FileConfig, Listeners};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

pub const ADMIN_SECRET: &str = "janusoverlord";
pub const TURN_SECRET: &str = "turn-shared-secret";

#[path = "../scratch/mod.rs"]
mod scratch;

/// A fresh scratch directory (stale ones of earlier runs are swept: `scratch`).
pub fn temp_dir() -> PathBuf {
    scratch::scratch_dir("callrelay-gw-test-")
}

pub struct Gw {
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    pub reload: std::sync::Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Base test configuration: token auth on, admin secret, TURN configured.
pub fn base_config(state_dir: &std::path::Path) -> FileConfig {
    FileConfig {
        admin_secret: Some(ADMIN_SECRET.into()),
        token_auth: Some(true),
        turn_secret: Some(TURN_SECRET.into()),
        turn_uris: Some(vec![
            "turn:127.0.0.1:3478".into(),
            "turn:127.0.0.1:3478?transport=tcp".into(),
        ]),
        stun_uri: Some("stun:127.0.0.1:3478".into()),
        state_dir: Some(state_dir.to_path_buf()),
        candidate_wait_ms: Some(500),
        longpoll_timeout: Some(2),
        ..FileConfig::default()
    }
}

impl Gw {
    pub async fn start(f: FileConfig) -> Self {
        let state_dir = f.state_dir.clone().unwrap_or_else(temp_dir);
        let cfg = Config::resolve(
            FileConfig {
                state_dir: Some(state_dir.clone()),
                ..f
            },
            FileConfig::default(),
        )
        .unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (wa, ha, aa) = (
            ws.local_addr().unwrap(),
            http.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let reload = std::sync::Arc::new(tokio::sync::Notify::new());
        let r = reload.clone();
        let task = tokio::spawn(async move {
            gateway::serve_with_reload(
                cfg,
                Listeners { ws, http, admin },
                s,
                r,
                std::sync::Arc::new(tokio::sync::Notify::new()),
            )
            .await
            .unwrap();
        });
        Self {
            reload,
            ws: wa,
            http: ha,
            admin: aa,
            state_dir,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.ws, "janus-protocol").await
    }

    pub async fn admin(&self, body: Value) -> Value {
        let (status, _h, b) =
            http(self.admin, "POST", "/admin", Some(&body.to_string()), &[]).await;
        assert_eq!(status, 200);
        serde_json::from_str(&b).unwrap()
    }

    pub async fn add_token(&self, token: &str) {
        let r = self
            .admin(json!({"admin_secret": ADMIN_SECRET, "janus": "add_token", "token": token, "transaction": "abcdefghijklmnopqrstuvwxyz"}))
            .await;
        assert_eq!(r["janus"], "success", "{r}");
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Client {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    pub backlog: Vec<Value>,
    pub protocol: Option<String>,
    n: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr, proto: &str) -> Self {
        let mut req = format!("ws://{addr}/whatever/path")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Self {
            ws,
            backlog: Vec::new(),
            protocol,
            n: 0,
        }
    }

    pub fn tx(&mut self) -> String {
        self.n += 1;
        format!("tx{}", self.n)
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn try_send_text(
        &mut self,
        t: &str,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(t.to_string().into())).await
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Next message (from the backlog first), or None after `ms`.
    pub async fn next_within(&mut self, ms: u64) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        self.read_one(ms).await
    }

    async fn read_one(&mut self, ms: u64) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(Duration::from_millis(ms), self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Waits (up to 5 s) for the first message matching `pred`; others stay in the backlog.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.read_one(left.as_millis() as u64 + 1).await else {
                panic!("timed out waiting for {what}; backlog: {:?}", self.backlog);
            };
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// Sends a request (adding a transaction) and returns the reply with that transaction.
    pub async fn req(&mut self, mut v: Value) -> Value {
        let tx = self.tx();
        v["transaction"] = tx.clone().into();
        self.send(&v).await;
        self.wait(&format!("reply to {v}"), |m| {
            m["transaction"] == tx.as_str() && m["janus"] != "event"
        })
        .await
    }

    /// True when the server closed the socket (or it yields nothing) within `ms`.
    pub async fn closed_within(&mut self, ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.backlog.push(serde_json::from_str(&t).unwrap())
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// create + attach videocall; returns (session, handle).
    pub async fn session_handle(&mut self, token: Option<&str>) -> (u64, u64) {
        let mut c = json!({"janus": "create"});
        if let Some(t) = token {
            c["token"] = t.into();
        }
        let r = self.req(c).await;
        assert_eq!(r["janus"], "success", "{r}");
        let s = r["data"]["id"].as_u64().unwrap();
        let mut a = json!({"janus": "attach", "session_id": s, "plugin": "janus.plugin.videocall"});
        if let Some(t) = token {
            a["token"] = t.into();
        }
        let r = self.req(a).await;
        assert_eq!(r["janus"], "success", "{r}");
        (s, r["data"]["id"].as_u64().unwrap())
    }
}

/// Minimal HTTP/1.1 client: returns (status, lower-cased headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, hdrs, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A plain GET without extra headers: (status, lower-cased headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    http(addr, "GET", path, None, &[]).await
}

/// Creates a Janus session over HTTP `POST /janus` with `token`; returns its id.
pub async fn http_create(addr: SocketAddr, token: &str) -> u64 {
    let v = post_json(
        addr,
        "/janus",
        &json!({"janus": "create", "transaction": "c", "token": token}),
    )
    .await;
    v["data"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("create failed: {v}"))
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (status, _h, b) = http(addr, "POST", path, Some(&body.to_string()), &[]).await;
    assert_eq!(status, 200, "{b}");
    serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"))
}

/// A Chrome-like offer: BUNDLE, audio + video, CRLF.
pub const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\na=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\na=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\na=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";

pub fn answer_sdp() -> String {
    OFFER
        .replace("a=setup:actpass", "a=setup:active")
        .replace("EsAw", "AnSw")
}

/// A Chrome-style host candidate of the caller (ufrag of [`OFFER`]).
pub fn cand(i: u32, mid: &str, idx: u32) -> Value {
    cand_u(i, mid, idx, "EsAw")
}

/// A Chrome-style host candidate with the given ufrag (`AnSw` = [`answer_sdp`]).
pub fn cand_u(i: u32, mid: &str, idx: u32, ufrag: &str) -> Value {
    json!({
        "candidate": format!("candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ufrag {ufrag} network-id 1", 50000 + i),
        "sdpMid": mid,
        "sdpMLineIndex": idx,
    })
}

// ---------------------------------------------------------------------------- metrics

/// The value of exactly the series `series` (`name` or `name{labels}` as the exposition
/// prints it) in the Prometheus text `text`. Panics when the series is absent, so a
/// missing metric can never pass as 0, and a prefix (`…_sessions 1` vs `…_sessions 10`)
/// never matches another series or value.
pub fn metric(text: &str, series: &str) -> f64 {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name == series {
            assert!(found.is_none(), "series {series} printed twice:\n{text}");
            found = Some(
                value
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{series}: bad value {value:?}: {e}")),
            );
        }
    }
    found.unwrap_or_else(|| panic!("series {series} missing from\n{text}"))
}

/// [`metric`] from the gateway's `GET /metrics` on `admin`.
pub async fn metric_at(admin: SocketAddr, series: &str) -> f64 {
    let (st, _, text) = http_get(admin, "/metrics").await;
    assert_eq!(st, 200, "{text}");
    metric(&text, series)
}

/// Polls `/metrics` until `series` equals `want` (up to 10 s); panics with the last value.
pub async fn wait_metric(admin: SocketAddr, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric_at(admin, series).await;
        if v == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed {v}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------- the binary

/// The stderr lines of a child process collected so far, and a condition variable
/// notified on each new line.
pub type LogLines = std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>;

/// The real `gateway` binary as a child process, on ports it picked itself (port 0) and
/// reported in its `listening` log lines; its stderr is collected line by line so tests
/// wait for log events instead of sleeping.
pub struct Bin {
    pub child: std::process::Child,
    lines: LogLines,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

/// Spawns `gateway` with `args` (plus port-0 listeners unless `args` sets them) and
/// collects stderr. Returns the child and its log without waiting for anything.
pub fn spawn_bin(args: &[&str]) -> (std::process::Child, LogLines) {
    spawn_bin_env(args, &[])
}

/// [`spawn_bin`] with extra environment variables (the `CALLRELAY_GATEWAY_*` secrets
/// of the test's own environment are removed first).
pub fn spawn_bin_env(args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, LogLines) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (flag, default) in [
        ("--listen", "127.0.0.1:0"),
        ("--http-listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
    ] {
        if !args.contains(&flag) {
            cmd.args([flag, default]);
        }
    }
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "gateway=info")
        .env_remove("CALLRELAY_GATEWAY_ADMIN_SECRET")
        .env_remove("CALLRELAY_GATEWAY_API_SECRET")
        .env_remove("CALLRELAY_GATEWAY_TURN_SECRET")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines: LogLines =
        std::sync::Arc::new((std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new()));
    let l = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[gateway] {line}");
            l.0.lock().unwrap().push(line);
            l.1.notify_all();
        }
        // EOF: wake waiters so they can see the process is gone
        l.0.lock().unwrap().push(String::from("<stderr closed>"));
        l.1.notify_all();
    });
    (child, lines)
}

/// Waits (blocking, up to `secs`) for a stderr line containing every one of `parts`
/// after the first `skip` lines; returns (its index, the line).
pub fn wait_line(
    lines: &(std::sync::Mutex<Vec<String>>, std::sync::Condvar),
    skip: usize,
    parts: &[&str],
    secs: u64,
) -> (usize, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut g = lines.0.lock().unwrap();
    loop {
        if let Some((i, l)) = g
            .iter()
            .enumerate()
            .skip(skip)
            .find(|(_, l)| parts.iter().all(|p| l.contains(p)))
        {
            return (i, l.clone());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no log line with {parts:?} within {secs} s; log:\n{}",
            g.join("\n")
        );
        g = lines.1.wait_timeout(g, left).unwrap().0;
    }
}

impl Bin {
    /// Starts the binary and waits for its three `listening` lines (the addresses the
    /// server actually bound).
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// [`Bin::start`] with extra environment variables.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let (child, lines) = spawn_bin_env(args, envs);
        let addr = |name: &str| -> SocketAddr {
            let (_, l) = wait_line(
                &lines,
                0,
                &["listening", &format!("listener=\"{name}\"")],
                30,
            );
            let a = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {l}"));
            a.parse().unwrap_or_else(|e| panic!("{a}: {e}"))
        };
        let (ws, http, admin) = (addr("websocket"), addr("http"), addr("admin"));
        Self {
            child,
            lines,
            ws,
            http,
            admin,
        }
    }

    /// Number of stderr lines so far (to wait only for lines logged after this point).
    pub fn log_len(&self) -> usize {
        self.lines.0.lock().unwrap().len()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line after the first `skip` containing all of `parts`.
    pub fn wait_log(&self, skip: usize, parts: &[&str]) -> String {
        wait_line(&self.lines, skip, parts, 30).1
    }

    /// Sends `sig` (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits (up to `secs`) for the process to exit; returns its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        wait_exit(&mut self.child, secs)
    }
}

/// Waits (up to `secs`) for `child` to exit (polling `try_wait`: std has no timed wait).
pub fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("gateway did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
