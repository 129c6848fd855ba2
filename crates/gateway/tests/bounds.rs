//! Hardening bounds (issue 11, gateway items) attacked against the real binary: memory
//! (RSS from /proc), queues in bytes, caps and timeouts. Every load loop is bounded in
//! count and time; all traffic stays on 127.0.0.1.

mod common;
use common::*;

const TOKEN: &str = "Ym91bmRzdGVzdHRva2VuYm91bmRzdGVzdHRva2Vu";
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The gateway binary on ports it picked itself (read back from its `listening` log
/// lines), its stderr collected for assertions.
struct Bin {
    child: Child,
    ws: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Bin {
    fn start(extra: &[&str]) -> Self {
        Self::start_in(&temp_dir(), extra, None)
    }

    /// Starts the binary with `extra` flags; `nofile` runs it under `prlimit`.
    fn start_in(dir: &std::path::Path, extra: &[&str], nofile: Option<u32>) -> Self {
        let exe = env!("CARGO_BIN_EXE_gateway");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}")).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-secret",
                ADMIN_SECRET,
            ])
            .args(["--state-dir", dir.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut addrs: [Option<SocketAddr>; 3] = [None; 3];
        let deadline = Instant::now() + Duration::from_secs(20);
        while addrs.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("gateway did not start: {:?}", log.lock().unwrap()));
            if !line.contains(" listening ") {
                continue;
            }
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
            for (i, name) in ["\"websocket\"", "\"http\"", "\"admin\""]
                .iter()
                .enumerate()
            {
                if line.contains(&format!("listener={name}")) {
                    addrs[i] = addr;
                }
            }
        }
        Self {
            child,
            ws: addrs[0].unwrap(),
            http: addrs[1].unwrap(),
            admin: addrs[2].unwrap(),
            log,
        }
    }

    /// Resident set size of the gateway process, bytes (from /proc).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// The gateway's pid (under `prlimit` the pid is the same: prlimit execs).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one metric series (exact name and labels); panics if it is absent.
    async fn metric(&self, series: &str) -> f64 {
        let (st, _, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(st, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    fn log_contains(&self, s: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(s))
    }

    /// Waits (bounded) for a log line containing `s` (the reader thread lags a little).
    async fn wait_log(&self, s: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_contains(s) {
            assert!(Instant::now() < deadline, "no log line with {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "no exit on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket whose socket receive buffer is tiny, so a client that does not read
/// makes the server queue instead of the kernel buffering for it.
async fn small_buffer_ws(addr: SocketAddr) -> RawWs {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse().unwrap());
    tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap()
        .0
}

/// Sends `v` and reads until the message with transaction `tx` (bounded: 10 s).
async fn ws_req(ws: &mut RawWs, v: Value) -> Value {
    let tx = v["transaction"].as_str().unwrap().to_string();
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to {tx}"))
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["transaction"] == tx.as_str() && v["janus"] != "ack" {
                return v;
            }
        }
    }
}

/// create + `n` attached videocall handles on one session.
async fn session_with_handles(ws: &mut RawWs, n: usize) -> (u64, Vec<u64>) {
    let r = ws_req(ws, json!({"janus": "create", "transaction": "c"})).await;
    let s = r["data"]["id"].as_u64().unwrap();
    let mut hs = Vec::new();
    for i in 0..n {
        let r = ws_req(ws, json!({"janus": "attach", "session_id": s, "plugin": "janus.plugin.videocall", "transaction": format!("a{i}")})).await;
        hs.push(r["data"]["id"].as_u64().unwrap());
    }
    (s, hs)
}

fn register(s: u64, h: u64, name: &str, tx: &str) -> Value {
    json!({"janus": "message", "session_id": s, "handle_id": h, "transaction": tx,
           "body": {"request": "register", "username": name}})
}

/// Item 9: 3.4 kB of requests used to raise RSS by 450 MB: long usernames are refused
/// (474, the videocall plugin's "invalid element"), so `list` replies stay small, while
/// names of a normal length (a Mattermost user id is 26 bytes) still register.
#[tokio::test]
async fn long_usernames_are_refused_so_list_replies_stay_small() {
    let gw = Bin::start(&[]);
    let mut ws = small_buffer_ws(gw.ws).await;
    let (s, hs) = session_with_handles(&mut ws, 20).await;
    let long = "x".repeat(60 * 1024);
    for (i, h) in hs.iter().enumerate().take(10) {
        let name = format!("{i}{long}");
        let r = ws_req(&mut ws, register(s, *h, &name, &format!("r{i}"))).await;
        assert_eq!(
            r["plugindata"]["data"]["error_code"],
            474,
            "a 60 KiB username must be refused: {}",
            r.to_string().chars().take(300).collect::<String>()
        );
    }
    // the bound itself (128 bytes) is accepted
    for (i, h) in hs.iter().enumerate().skip(10) {
        let name = format!("{i:03}{}", "n".repeat(125));
        assert_eq!(name.len(), 128);
        let r = ws_req(&mut ws, register(s, *h, &name, &format!("r{i}"))).await;
        assert_eq!(
            r["plugindata"]["data"]["result"]["event"], "registered",
            "{r}"
        );
    }
    // a client that asks for the list 300 times and reads nothing: at most 10 × 130
    // bytes per reply (old main: 10 × 60 KiB per reply, ~180 MB in all)
    let before = gw.rss();
    for i in 0..300 {
        let l = json!({"janus": "message", "session_id": s, "handle_id": hs[0], "transaction": format!("l{i}"), "body": {"request": "list"}});
        if ws.send(Message::Text(l.to_string().into())).await.is_err() {
            break;
        }
    }
    // the last list request has been handled once a fresh connection gets its answer
    let mut probe = small_buffer_ws(gw.ws).await;
    ws_req(&mut probe, json!({"janus": "ping", "transaction": "p"})).await;
    let grown = gw.rss().saturating_sub(before);
    eprintln!(
        "measured: RSS before {} MB, grown {} kB",
        before / (1024 * 1024),
        grown / 1024
    );
    assert!(
        grown < 30 * 1024 * 1024,
        "RSS grew by {} MB for 300 unread list replies",
        grown / (1024 * 1024)
    );
    assert_eq!(
        gw.metric("callrelay_gateway_errors_total{code=\"474\"}")
            .await,
        10.0
    );
}

/// Item 9: the WebSocket send queue is bounded in bytes: a client that stops reading is
/// disconnected (and counted) instead of being buffered; everyone else is unaffected.
#[tokio::test]
async fn websocket_that_stops_reading_is_disconnected_at_the_byte_bound() {
    let gw = Bin::start(&["--ws-queue-bytes", "262144"]);
    let mut ws = small_buffer_ws(gw.ws).await;
    let (s, hs) = session_with_handles(&mut ws, 60).await;
    for (i, h) in hs.iter().enumerate() {
        let name = format!("{i:03}{}", "u".repeat(120));
        let r = ws_req(&mut ws, register(s, *h, &name, &format!("r{i}"))).await;
        assert_eq!(r["plugindata"]["data"]["result"]["event"], "registered");
    }
    let before = gw.rss();
    // each list reply is ~8 KB; 2000 of them (16 MB) unread overflow the kernel's
    // socket buffers and then the 256 KiB bound
    let mut sent = 0;
    let t = Instant::now();
    for i in 0..2000 {
        let l = json!({"janus": "message", "session_id": s, "handle_id": hs[0], "transaction": format!("l{i}"), "body": {"request": "list"}});
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            ws.send(Message::Text(l.to_string().into())),
        )
        .await;
        if !matches!(r, Ok(Ok(()))) {
            break;
        }
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw
        .metric("callrelay_gateway_slow_clients_total{transport=\"websocket\"}")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "not disconnected after {sent} unread list replies ({:?})",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = gw.rss().saturating_sub(before);
    eprintln!(
        "measured: RSS before {} MB, grown {} kB; disconnected after {sent} unread list requests",
        before / (1024 * 1024),
        grown / 1024
    );
    assert!(
        grown < 40 * 1024 * 1024,
        "RSS grew by {} MB",
        grown / (1024 * 1024)
    );
    // the reader side sees the connection end
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection still open");
    // its session is gone and others work
    let mut c = Client::connect(gw.ws, "janus-protocol").await;
    let r = c.req(json!({"janus": "keepalive", "session_id": s})).await;
    assert_eq!(r["error"]["code"], 458, "{r}");
    let (s2, _) = c.session_handle(None).await;
    assert!(s2 > 0);
}

/// Item 9: an HTTP session whose events nobody fetches is ended at the byte bound of its
/// event queue (counted), instead of buffering every event.
#[tokio::test]
async fn http_session_that_is_not_polled_is_ended_at_the_byte_bound() {
    let gw = Bin::start(&["--http-queue-bytes", "65536"]);
    let h = gw.http;
    let s =
        post_json(h, "/janus", &json!({"janus": "create", "transaction": "c"})).await["data"]["id"]
            .as_u64()
            .unwrap();
    let mut hs = Vec::new();
    for i in 0..40 {
        let r = post_json(h, &format!("/janus/{s}"), &json!({"janus": "attach", "plugin": "janus.plugin.videocall", "transaction": format!("a{i}")})).await;
        hs.push(r["data"]["id"].as_u64().unwrap());
    }
    // 40 registered events (~0.3 KB each) fit in the queue
    for (i, hid) in hs.iter().enumerate() {
        let name = format!("{i:03}{}", "h".repeat(120));
        let r = post_json(
            h,
            &format!("/janus/{s}/{hid}"),
            &json!({"janus": "message", "transaction": format!("r{i}"), "body": {"request": "register", "username": name}}),
        )
        .await;
        assert_eq!(r["janus"], "ack", "{r}");
    }
    assert_eq!(
        gw.metric("callrelay_gateway_slow_clients_total{transport=\"http\"}")
            .await,
        0.0
    );
    // each list event is ~5.6 KB: the 12th or so overflows 64 KiB
    let mut ended_at = None;
    for i in 0..40 {
        let r = post_json(
            h,
            &format!("/janus/{s}/{}", hs[0]),
            &json!({"janus": "message", "transaction": format!("l{i}"), "body": {"request": "list"}}),
        )
        .await;
        if r["janus"] == "error" {
            assert_eq!(r["error"]["code"], 458, "{r}");
            ended_at = Some(i);
            break;
        }
    }
    let i = ended_at.expect("session still alive after 40 unread list events (220 KB)");
    eprintln!("measured: HTTP session ended at list event {i}");
    assert!((5..20).contains(&i), "ended after {i} list events");
    assert_eq!(
        gw.metric("callrelay_gateway_slow_clients_total{transport=\"http\"}")
            .await,
        1.0
    );
    let (st, _, _) = http_get(h, &format!("/janus/{s}")).await;
    assert_eq!(st, 404);
    gw.wait_log("event queue full").await;
}

/// Item 10: one token used to take every session slot (100,000 in 4.6 s, then everyone
/// got 490). With the default caps a flood from one token stops at 16 sessions per
/// WebSocket and 64 per token; a second token's user still creates a session and
/// registers; the refusals are counted.
#[tokio::test]
async fn one_token_cannot_take_the_session_slots_of_others() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    const FLOOD: &str = "Zmxvb2RlcnRva2VuZmxvb2RlcnRva2VuZmxvb2Q=";
    const USER: &str = "dXNlcnRva2VudXNlcnRva2VudXNlcnRva2VudXM=";
    gw.add_token(FLOOD).await;
    gw.add_token(USER).await;
    let mut made = 0;
    let mut by_conn = Vec::new();
    let mut conns = Vec::new();
    // bounded: at most 10 connections × 40 creates
    'flood: for _ in 0..10 {
        let mut c = gw.client().await;
        let mut here = 0;
        for _ in 0..40 {
            let r = c.req(json!({"janus": "create", "token": FLOOD})).await;
            if r["janus"] == "success" {
                made += 1;
                here += 1;
                continue;
            }
            assert_eq!(r["error"]["code"], 490, "{r}");
            let reason = r["error"]["reason"].as_str().unwrap().to_string();
            if reason.contains("token") {
                by_conn.push(here);
                conns.push(c);
                break 'flood;
            }
            assert!(reason.contains("connection"), "{reason}");
            break;
        }
        by_conn.push(here);
        conns.push(c);
    }
    assert_eq!(
        made, 64,
        "sessions of one token (per connection: {by_conn:?})"
    );
    assert!(by_conn.iter().all(|n| *n <= 16), "{by_conn:?}");
    // another user (token) is unaffected
    let mut u = gw.client().await;
    let (s, h) = u.session_handle(Some(USER)).await;
    let r = u
        .req(
            json!({"janus": "message", "session_id": s, "handle_id": h, "token": USER,
                    "body": {"request": "register", "username": "someone"}}),
        )
        .await;
    assert_eq!(r["janus"], "ack");
    // the flooding token gets its slots back when its connections close
    for c in conns.drain(..) {
        c.close().await;
    }
    let mut again = gw.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = again.req(json!({"janus": "create", "token": FLOOD})).await;
        if r["janus"] == "success" {
            break;
        }
        assert!(Instant::now() < deadline, "slots not freed: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, _, m) = http_get(gw.admin, "/metrics").await;
    let refused = |l: &str| {
        m.lines()
            .find_map(|x| {
                x.strip_prefix(&format!(
                    "callrelay_gateway_sessions_refused_total{{limit=\"{l}\"}} "
                ))
            })
            .unwrap_or_else(|| panic!("no series for {l}"))
            .parse::<u64>()
            .unwrap()
    };
    assert!(refused("connection") >= 3, "{m}");
    assert!(refused("token") >= 1);
    assert_eq!(refused("global"), 0);
    gw.stop().await;
}

/// Item 10: the defaults do not hurt a real deployment: one Mattermost token (one
/// browser user) with several tabs/devices, each a WebSocket with one janus.js session.
#[tokio::test]
async fn default_caps_allow_one_user_on_many_devices() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    const T: &str = "bWF0dGVybW9zdHNlc3Npb25pZDAxMjM0NTY3ODk=";
    gw.add_token(T).await;
    let mut cs = Vec::new();
    for _ in 0..12 {
        let mut c = gw.client().await;
        let (s, _) = c.session_handle(Some(T)).await;
        assert!(s > 0);
        cs.push(c);
    }
    gw.stop().await;
}

/// Item 12: trickled candidates used to be capped by count only (100 × 250 kB = 24 MB per
/// handle). A candidate larger than 1 KiB gets 467; the handle's buffer stops at 32 KiB
/// (467 beyond); real candidates (< 300 bytes) pass; everything refused is counted.
#[tokio::test]
async fn trickled_candidates_are_bounded_in_bytes() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    gw.add_token(TOKEN).await;
    let mut c = gw.client().await;
    let (s, h) = c.session_handle(Some(TOKEN)).await;
    let trickle = |cand: Value| json!({"janus": "trickle", "session_id": s, "handle_id": h, "token": TOKEN, "candidate": cand});
    // a real Chrome candidate is accepted
    let r = c.req(trickle(cand(1, "0", 0))).await;
    assert_eq!(r["janus"], "ack", "{r}");
    // a 250 kB candidate is refused
    let huge = json!({"candidate": format!("candidate:1 1 udp 1 127.0.0.1 9 typ host {}", "x".repeat(250_000)), "sdpMid": "0", "sdpMLineIndex": 0});
    let r = c.req(trickle(huge.clone())).await;
    assert_eq!(r["janus"], "error", "{r}");
    assert_eq!(r["error"]["code"], 467);
    // also inside a `candidates` array
    let r = c
        .req(json!({"janus": "trickle", "session_id": s, "handle_id": h, "token": TOKEN, "candidates": [cand(2, "0", 0), huge]}))
        .await;
    assert_eq!(r["error"]["code"], 467, "{r}");
    // 900-byte candidates: the handle's 32 KiB fill after ~36 of them
    let mut accepted = 0;
    let mut refused_at = None;
    for i in 0..100u32 {
        let line = format!(
            "candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ufrag EsAw pad {}",
            40000 + i,
            "p".repeat(800)
        );
        let r = c
            .req(trickle(
                json!({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}),
            ))
            .await;
        if r["janus"] == "ack" {
            accepted += 1;
        } else {
            assert_eq!(r["error"]["code"], 467, "{r}");
            refused_at = Some(i);
            break;
        }
    }
    eprintln!("measured: {accepted} candidates of 900 B buffered before 467");
    assert!(refused_at.is_some(), "100 × 900 B candidates all buffered");
    assert!((30..40).contains(&accepted), "{accepted} accepted");
    let (_, _, m) = http_get(gw.admin, "/metrics").await;
    for (line, want) in [
        (
            "callrelay_gateway_candidates_refused_total{reason=\"size\"} ",
            "2",
        ),
        (
            "callrelay_gateway_candidates_refused_total{reason=\"handle_bytes\"} ",
            "1",
        ),
    ] {
        let got = m.lines().find_map(|l| l.strip_prefix(line));
        assert_eq!(got, Some(want), "{line}");
    }
    gw.stop().await;
}

/// Waits (bounded) until the metric series reaches `at_least`.
async fn wait_metric(gw: &Bin, series: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = gw.metric(series).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {v}, wanted ≥ {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 11: WebSockets without a session and HTTP bodies that trickle in are reaped;
/// a WebSocket with a live session stays.
#[tokio::test]
async fn idle_websockets_and_trickling_bodies_are_reaped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Bin::start(&["--ws-idle-timeout", "2", "--http-body-timeout", "2"]);
    let mut idle = small_buffer_ws(gw.ws).await;
    let mut busy = Client::connect(gw.ws, "janus-protocol").await;
    let (s, _) = busy.session_handle(None).await;
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match idle.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a WebSocket without a session stayed open");
    let took = t.elapsed();
    eprintln!("measured: idle WebSocket closed after {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );
    wait_metric(
        &gw,
        "callrelay_gateway_connections_rejected_total{reason=\"ws_idle\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    // the one with a session is still served (keepalives are what janus.js sends)
    let r = busy
        .req(json!({"janus": "keepalive", "session_id": s}))
        .await;
    assert_eq!(r["janus"], "ack", "{r}");
    // a client that churns sessions (create, destroy, create …) stays, even when the
    // checks fall between its sessions: 6 s (3 idle periods) of churn, bounded
    let mut churn = Client::connect(gw.ws, "janus-protocol").await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        let r = churn.req(json!({"janus": "create"})).await;
        let cs = r["data"]["id"].as_u64().expect("create");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = churn
            .req(json!({"janus": "destroy", "session_id": cs}))
            .await;
        assert_eq!(r["janus"], "success", "{r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // a body announced as 100 bytes that sends 1: 408 after ~2 s, connection closed
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"POST /janus HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf))
        .await
        .expect("trickling body not reaped")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        gw.metric("callrelay_gateway_connections_rejected_total{reason=\"body_timeout\"}")
            .await,
        1.0
    );
}

/// Item 11: connections from one source address are capped (an office behind one NAT
/// is a few hundred users: the default is 1000); another address is unaffected.
#[tokio::test]
async fn connections_per_source_address_are_capped() {
    // no trusted proxy: 127.0.0.1 is an ordinary client here
    let gw = Bin::start(&["--max-connections-per-ip", "20", "--trusted-proxies", ""]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(gw.ws).await.unwrap());
    }
    // wait until the server has counted them all (the gauge) before the 21st
    wait_metric(
        &gw,
        "callrelay_gateway_tcp_connections{listener=\"websocket\"}",
        20.0,
        Duration::from_secs(10),
    )
    .await;
    let mut extra = tokio::net::TcpStream::connect(gw.ws).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut extra, &mut b),
    )
    .await
    .expect("21st connection from one address not closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(
        gw.metric("callrelay_gateway_connections_rejected_total{reason=\"per_ip\"}")
            .await,
        1.0
    );
    // another source address (127.0.0.2) still gets a WebSocket and a session
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = sock.connect(gw.ws).await.unwrap();
    let mut req = format!("ws://{}/", gw.ws).into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse().unwrap());
    let mut ws = tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap()
        .0;
    let r = ws_req(&mut ws, json!({"janus": "create", "transaction": "c"})).await;
    assert_eq!(r["janus"], "success");
    // closing the held ones frees the slots
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = gw
            .metric("callrelay_gateway_tcp_connections{listener=\"websocket\"}")
            .await;
        if open == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "slots not released: {open} open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Client::connect(gw.ws, "janus-protocol").await;
}

/// Opens `n` TCP connections to `to` from source address `from`.
async fn connect_from(from: &str, to: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        v.push(sock.connect(to).await.unwrap());
    }
    v
}

/// Issue 13: behind a reverse proxy every client arrives from the proxy's address, so
/// the per-address cap used to cap the whole site. A trusted proxy (`trusted_proxies`)
/// is exempt from it — a 127.0.0.1 proxy carries 3× the per-address cap — while an
/// untrusted address is still refused and counted, and `max_connections` still holds
/// for the proxy.
#[tokio::test]
async fn trusted_proxy_is_exempt_from_the_per_address_cap() {
    let gw = Bin::start(&[
        "--max-connections-per-ip",
        "20",
        "--max-connections",
        "100",
        "--trusted-proxies",
        "127.0.0.1/32, ::1",
    ]);
    let open = "callrelay_gateway_tcp_connections{listener=\"websocket\"}";
    let per_ip = "callrelay_gateway_connections_rejected_total{reason=\"per_ip\"}";
    let proxy = connect_from("127.0.0.1", gw.ws, 60).await;
    wait_metric(&gw, open, 60.0, Duration::from_secs(10)).await;
    assert_eq!(gw.metric(per_ip).await, 0.0);
    // every proxied connection is served: a WebSocket session on the 60th
    let mut req = format!("ws://{}/", gw.ws).into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse().unwrap());
    let last = connect_from("127.0.0.1", gw.ws, 1).await.pop().unwrap();
    let mut ws = tokio_tungstenite::client_async(req, last).await.unwrap().0;
    let r = ws_req(&mut ws, json!({"janus": "create", "transaction": "c"})).await;
    assert_eq!(r["janus"], "success");
    // an untrusted address (127.0.0.2) still has the cap of 20
    let client = connect_from("127.0.0.2", gw.ws, 20).await;
    wait_metric(&gw, open, 81.0, Duration::from_secs(10)).await;
    let mut extra = connect_from("127.0.0.2", gw.ws, 1).await.pop().unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut extra, &mut b),
    )
    .await
    .expect("21st connection from an untrusted address not closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(gw.metric(per_ip).await, 1.0);
    // the global cap still applies to the proxy
    let more = connect_from("127.0.0.1", gw.ws, 30).await;
    let max = "callrelay_gateway_connections_rejected_total{reason=\"max_connections\"}";
    let rejected = wait_metric(&gw, max, 1.0, Duration::from_secs(10)).await;
    assert!(rejected >= 1.0);
    assert!(gw.metric(open).await <= 100.0);
    assert_eq!(gw.metric(per_ip).await, 1.0);
    drop((proxy, client, more));
}

/// Item 11: 1,100 idle connections at LimitNOFILE=1024 used to take every fd: then
/// add_token failed and tokens could not be persisted. Now the public listeners stop
/// below the fd limit (counted) and the admin listener keeps answering and persisting.
#[tokio::test]
async fn fd_flood_under_prlimit_leaves_the_admin_api_working() {
    let dir = temp_dir();
    let gw = Bin::start_in(&dir, &[], Some(1024));
    let mut held = Vec::new();
    for _ in 0..1100 {
        match tokio::net::TcpStream::connect(gw.ws).await {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    wait_metric(
        &gw,
        "callrelay_gateway_connections_rejected_total{reason=\"max_connections\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    let open = gw
        .metric("callrelay_gateway_tcp_connections{listener=\"websocket\"}")
        .await;
    let refused = gw
        .metric("callrelay_gateway_connections_rejected_total{reason=\"max_connections\"}")
        .await;
    eprintln!("measured: {open} public connections open, {refused} refused at accept");
    assert!(open <= 1024.0 - 64.0 - 64.0, "{open} public connections");
    let v = post_json(
        gw.admin,
        "/admin",
        &json!({"admin_secret": ADMIN_SECRET, "janus": "add_token", "token": TOKEN, "transaction": "x"}),
    )
    .await;
    assert_eq!(v["janus"], "success", "{v}");
    let stored = std::fs::read_to_string(dir.join("tokens.json")).unwrap();
    assert!(stored.contains(TOKEN), "token not persisted: {stored}");
    drop(held);
}

/// Item 14: when tokens.json cannot be written, add_token answers a Janus error
/// (counted) instead of success, keeps the token in memory, retries the write, flags
/// it in /metrics; a SIGTERM with unsaved tokens says so in the log and exits non-zero.
#[tokio::test]
async fn unwritable_token_store_is_reported_not_hidden() {
    let dir = temp_dir();
    let mut gw = Bin::start_in(&dir, &["--token-auth"], None);
    // the write goes through tokens.json.tmp: a directory there makes every write fail
    // (even for root, unlike a read-only mode)
    let blocker = dir.join("tokens.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let add = |t: &str| json!({"admin_secret": ADMIN_SECRET, "janus": "add_token", "token": t, "transaction": "x"});
    let v = post_json(gw.admin, "/admin", &add(TOKEN)).await;
    assert_eq!(v["janus"], "error", "{v}");
    assert_eq!(v["error"]["code"], 490);
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("tokens.json"),
        "{v}"
    );
    assert_eq!(v["transaction"], "x");
    assert_eq!(
        gw.metric("callrelay_gateway_token_store_unsaved").await,
        1.0
    );
    assert!(
        gw.metric("callrelay_gateway_token_store_write_failures_total")
            .await
            >= 1.0
    );
    assert_eq!(
        gw.metric("callrelay_gateway_errors_total{code=\"490\"}")
            .await,
        1.0
    );
    // the token works meanwhile (kept in memory)
    let mut c = Client::connect(gw.ws, "janus-protocol").await;
    let (s, _) = c.session_handle(Some(TOKEN)).await;
    assert!(s > 0);
    // the write is retried once the directory is usable again
    std::fs::remove_dir(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.metric("callrelay_gateway_token_store_unsaved").await != 0.0 {
        assert!(Instant::now() < deadline, "write not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::read_to_string(dir.join("tokens.json"))
            .unwrap()
            .contains(TOKEN)
    );
    // broken again, then SIGTERM: the log says so and the exit status is not 0
    std::fs::create_dir(&blocker).unwrap();
    let v = post_json(
        gw.admin,
        "/admin",
        &add("c2Vjb25kdG9rZW5zZWNvbmR0b2tlbnNlY29uZA=="),
    )
    .await;
    assert_eq!(v["error"]["code"], 490, "{v}");
    let status = gw.terminate().await;
    assert!(!status.success(), "exit status {status:?}");
    gw.wait_log("NOT saved").await;
}
