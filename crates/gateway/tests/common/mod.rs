//! Test harness: starts the gateway in-process on 127.0.0.1 ephemeral ports and talks
//! to it over real WebSocket (tokio-tungstenite) and raw HTTP/1.1.
#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use gateway::{Config, FileConfig, Listeners};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

pub const ADMIN_SECRET: &str = "janusoverlord";
pub const TURN_SECRET: &str = "turn-shared-secret";

static N: AtomicU64 = AtomicU64::new(0);

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "callrelay-gw-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
