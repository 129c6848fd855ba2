//! Gateway signalling bench: Janus 1.1.2 (videocall plugin, token auth, WebSockets
//! only) vs our gateway, driven by the same WebSocket client.
//!
//! Each pair of clients loops create → attach → register → call (offer) / trickle
//! an mDNS host candidate + completed → incomingcall → accept (answer) / trickle +
//! completed → accepted → hangup → destroy, with the Chrome SDP fixtures in
//! `benches/fixtures/` (no address candidates, so nobody sends connectivity checks
//! anywhere).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procfs::{CpuMeter, nofile_limit, rss_kib};
use crate::report::{self, Figures};
use crate::servers::{ScratchDir, Server, command_output, free_port, sibling_binary, wait_tcp};
use crate::stats::Histogram;
use crate::{Common, first_line, present, print_header};

pub(crate) const OFFER: &str = include_str!("../fixtures/chrome-offer.sdp");
pub(crate) const ANSWER: &str = include_str!("../fixtures/chrome-answer.sdp");
pub(crate) const ADMIN_SECRET: &str = "bench-admin-secret";
pub(crate) const TOKEN: &str = "bench-token-0123456789";
const VIDEOCALL: &str = "janus.plugin.videocall";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Clone)]
pub(crate) struct GatewayArgs {
    /// Which gateway targets to run (comma separated): janus, ours.
    #[arg(long, value_delimiter = ',', default_value = "janus,ours")]
    gw_targets: Vec<String>,
    /// Our gateway binary (release build). Default: next to this binary.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Janus binary.
    #[arg(long, default_value = "/usr/bin/janus")]
    janus: PathBuf,
    /// Concurrent caller/callee pairs in the call loop.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Seconds of the call loop per run.
    #[arg(long, default_value_t = 5.0)]
    loop_secs: f64,
    /// Idle sessions (create + attach videocall) held at once for RSS per session,
    /// including one warm-up session per connection.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// One-session WebSockets held at once, one row per count (comma separated): N
    /// WebSockets, each with one session and one videocall handle, as Mattermost's
    /// browsers hold them. Needs N + 300 open files in this process and in the server.
    #[arg(long, value_delimiter = ',', default_value = "2000")]
    ws_sessions: Vec<usize>,
    /// Which steps to run (comma separated): loop (call cycles), idle (sessions on 20
    /// WebSockets), ws (one session per WebSocket, `--ws-sessions`).
    #[arg(long, value_delimiter = ',', default_value = "loop,idle,ws")]
    gw_steps: Vec<String>,
    /// Janus `event_loops` (0: its default, one thread and GLib loop per handle, which
    /// takes an eventfd per handle: two files per one-session WebSocket). Set it to
    /// hold more than half the open-file limit in one-session WebSockets.
    #[arg(long, default_value_t = 0)]
    janus_event_loops: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gw {
    Janus,
    Ours,
}

impl Gw {
    fn column(self) -> &'static str {
        match self {
            Self::Janus => "janus",
            Self::Ours => "gateway",
        }
    }
}

struct Running {
    server: Server,
    ws: SocketAddr,
    admin: SocketAddr,
}

fn janus_config(dir: &Path, ws: u16, admin: u16, event_loops: usize) -> Result<()> {
    let loops = if event_loops > 0 {
        format!("\tevent_loops = {event_loops}\n")
    } else {
        String::new()
    };
    let general = format!(
        r#"general: {{
	configs_folder = "{dir}"
	plugins_folder = "/usr/lib/x86_64-linux-gnu/janus/plugins"
	transports_folder = "/usr/lib/x86_64-linux-gnu/janus/transports"
	events_folder = "/usr/lib/x86_64-linux-gnu/janus/events"
	loggers_folder = "/usr/lib/x86_64-linux-gnu/janus/loggers"
	debug_level = 3
	token_auth = true
	admin_secret = "{ADMIN_SECRET}"
	session_timeout = 0
	server_name = "callrelay-bench"
{loops}}}
media: {{
	ipv6 = false
}}
nat: {{
	# No stun_server: Janus must never contact anything outside this machine.
	ice_ignore_list = "vmnet"
	ignore_mdns = true
}}
plugins: {{
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videoroom.so,libjanus_voicemail.so"
}}
transports: {{
	disable = "libjanus_http.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
events: {{
	broadcast = false
}}
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("janus.jcfg"), general)?;
    std::fs::write(
        dir.join("janus.transport.websockets.jcfg"),
        format!(
            r#"general: {{
	json = "compact"
	ws = true
	ws_port = {ws}
	ws_ip = "127.0.0.1"
	wss = false
}}
admin: {{
	admin_ws = true
	admin_ws_port = {admin}
	admin_ws_ip = "127.0.0.1"
	admin_wss = false
}}
"#
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videocall.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// Starts a server. `conns`: connections it must accept at once from the load client's
/// one address (None: its defaults).
async fn start(
    gw: Gw,
    a: &GatewayArgs,
    scratch: &Path,
    tag: &str,
    conns: Option<usize>,
) -> Result<Running> {
    let wsp = free_port()?;
    let adminp = free_port()?;
    let log = scratch.join(format!("{}-{tag}.log", gw.column()));
    let mut cmd;
    match gw {
        Gw::Janus => {
            let dir = scratch.join(format!("janus-conf-{tag}"));
            std::fs::create_dir_all(&dir)?;
            janus_config(&dir, wsp, adminp, a.janus_event_loops)?;
            cmd = Command::new(&a.janus);
            cmd.arg("-F")
                .arg(&dir)
                .arg("-C")
                .arg(dir.join("janus.jcfg"))
                .args(["-o", "-d", "3"]);
        }
        Gw::Ours => {
            let httpp = free_port()?;
            let state = scratch.join(format!("gw-state-{tag}"));
            std::fs::create_dir_all(&state)?;
            cmd = Command::new(gateway_path(a));
            cmd.args(["--listen", &format!("127.0.0.1:{wsp}")])
                .args(["--http-listen", &format!("127.0.0.1:{httpp}")])
                .args(["--admin-listen", &format!("127.0.0.1:{adminp}")])
                .args(["--admin-secret", ADMIN_SECRET, "--token-auth"])
                .args(["--session-timeout", "0"])
                // every load client shares one token and the idle-session run puts
                // 10,000 sessions on 20 WebSockets: lift the per-token and
                // per-connection abuse caps (64 / 16), which a real deployment (one
                // token per Mattermost user) never reaches; max_sessions still holds
                .args(["--max-sessions-per-token", "0"])
                .args(["--max-sessions-per-connection", "0"])
                .arg("--state-dir")
                .arg(&state)
                .env("RUST_LOG", "warn");
            if let Some(n) = conns {
                // The load client is one address, like an office behind one NAT: it
                // must not count as a reverse proxy (loopback does by default), and
                // this run raises the total and per-address caps (10,000 / 1,000)
                // to what it opens. A server's own fd limit still bounds both.
                let n = n.to_string();
                cmd.args(["--trusted-proxies", ""])
                    .args(["--max-connections", &n])
                    .args(["--max-connections-per-ip", &n]);
            }
        }
    }
    let mut server = Server::spawn(gw.column(), cmd, &log)?;
    let ws: SocketAddr = ([127, 0, 0, 1], wsp).into();
    let admin: SocketAddr = ([127, 0, 0, 1], adminp).into();
    let ready = tokio::task::spawn_blocking(move || {
        wait_tcp(ws, Duration::from_secs(20))?;
        wait_tcp(admin, Duration::from_secs(20))
    })
    .await?;
    server
        .check_alive()
        .with_context(|| format!("see {log:?}"))?;
    ready.with_context(|| format!("{} not listening; see {log:?}", gw.column()))?;
    add_token(admin)
        .await
        .with_context(|| format!("add_token; see {log:?}"))?;
    Ok(Running { server, ws, admin })
}

fn gateway_path(a: &GatewayArgs) -> PathBuf {
    a.gateway
        .clone()
        .unwrap_or_else(|| sibling_binary("gateway"))
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One WebSocket connection speaking the Janus API.
pub(crate) struct Conn {
    ws: Ws,
    next_tx: u64,
    pending: VecDeque<Value>,
    frames_out: u64,
    frames_in: u64,
}

pub(crate) async fn ws_connect(addr: SocketAddr, protocol: &str) -> Result<Ws> {
    let mut req = format!("ws://{addr}/").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
    // tungstenite zero-fills its whole read buffer (128 KiB by default) before every
    // read; 8 KiB keeps that out of the load client's CPU (Janus messages are smaller).
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), false).await?;
    Ok(ws)
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            ws: ws_connect(addr, "janus-protocol").await?,
            next_tx: 0,
            pending: VecDeque::new(),
            frames_out: 0,
            frames_in: 0,
        })
    }

    async fn send(&mut self, mut v: Value) -> Result<String> {
        self.next_tx += 1;
        let tx = format!("t{}", self.next_tx);
        v["transaction"] = json!(tx);
        v["token"] = json!(TOKEN);
        self.ws.send(WsMessage::text(v.to_string())).await?;
        self.frames_out += 1;
        Ok(tx)
    }

    pub(crate) async fn read(&mut self) -> Result<Value> {
        loop {
            let m = tokio::time::timeout(READ_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {READ_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match m {
                WsMessage::Text(t) => {
                    self.frames_in += 1;
                    return Ok(serde_json::from_str(&t)?);
                }
                WsMessage::Close(_) => bail!("connection closed by server"),
                _ => {}
            }
        }
    }

    /// Waits for the first message matching `pred`, looking at buffered ones first;
    /// others are buffered (bounded).
    pub(crate) async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return Ok(self.pending.remove(i).unwrap_or_default());
        }
        loop {
            let v = self.read().await?;
            if pred(&v) {
                return Ok(v);
            }
            if self.pending.len() >= 64 {
                self.pending.pop_front();
            }
            self.pending.push_back(v);
        }
    }

    /// Sends a request and waits for its final reply (`success`, `ack` for trickle,
    /// the plugin `event` for messages); fails on `error`.
    pub(crate) async fn request(&mut self, v: Value, lat: &mut Histogram) -> Result<Value> {
        let t0 = Instant::now();
        let kind = v["janus"].as_str().unwrap_or_default().to_owned();
        let tx = self.send(v).await?;
        let want: &[&str] = match kind.as_str() {
            "message" => &["event", "error"],
            "trickle" | "keepalive" => &["ack", "error"],
            _ => &["success", "error"],
        };
        let r = self
            .wait(|m| {
                m["transaction"].as_str() == Some(tx.as_str())
                    && want.contains(&m["janus"].as_str().unwrap_or_default())
            })
            .await?;
        lat.record_us(t0.elapsed().as_micros() as u64);
        if r["janus"] == "error" {
            bail!("{kind} failed: {}", r["error"]);
        }
        if let Some(code) = r["plugindata"]["data"].get("error_code") {
            bail!(
                "{kind} plugin error {code}: {}",
                r["plugindata"]["data"]["error"]
            );
        }
        Ok(r)
    }

    pub(crate) async fn create_attach(&mut self, lat: &mut Histogram) -> Result<(u64, u64)> {
        let r = self.request(json!({"janus": "create"}), lat).await?;
        let sid = r["data"]["id"].as_u64().context("create: no data.id")?;
        let r = self
            .request(
                json!({"janus": "attach", "session_id": sid, "plugin": VIDEOCALL}),
                lat,
            )
            .await?;
        let hid = r["data"]["id"].as_u64().context("attach: no data.id")?;
        Ok((sid, hid))
    }
}

/// Host candidates as Chrome trickles them by default: an mDNS name instead of an
/// address. Janus runs with `ignore_mdns`, so it never resolves or checks them; our
/// gateway merges them into the SDP. No packet goes anywhere because of them.
const CALLER_MDNS: &str = "candidate:1467250027 1 udp 2122260223 5f0c1c9e-2b7a-4d43-9a51-3c1d2e4f6a70.local 54400 typ host generation 0 ufrag Bc4x network-id 1";
const CALLEE_MDNS: &str = "candidate:2999745851 1 udp 2122260223 8d2e4b61-7c3f-4e9a-b0d5-6a7b8c9d0e1f.local 54401 typ host generation 0 ufrag q9Zt network-id 1";

fn trickle(sid: u64, hid: u64, candidate: &str) -> Value {
    json!({"janus": "trickle", "session_id": sid, "handle_id": hid,
        "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}})
}

pub(crate) fn msg(sid: u64, hid: u64, body: Value) -> Value {
    json!({"janus": "message", "session_id": sid, "handle_id": hid, "body": body})
}

pub(crate) fn plugin_event(v: &Value) -> Option<&str> {
    v["plugindata"]["data"]["result"]["event"].as_str()
}

/// Adds the bench token through the Admin API over WebSocket
/// (`janus-admin-protocol`), falling back to HTTP POST /admin.
pub(crate) async fn add_token(admin: SocketAddr) -> Result<()> {
    let body = json!({"janus": "add_token", "token": TOKEN, "transaction": "a1",
        "admin_secret": ADMIN_SECRET});
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = anyhow!("not tried");
    while Instant::now() < deadline {
        match add_token_ws(admin, &body).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        match add_token_http(admin, &body).await {
            Ok(()) => return Ok(()),
            Err(e) => last = last.context(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

async fn add_token_ws(admin: SocketAddr, body: &Value) -> Result<()> {
    let mut ws = ws_connect(admin, "janus-admin-protocol").await?;
    ws.send(WsMessage::text(body.to_string())).await?;
    let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await?
        .context("closed")??;
    let v: Value = serde_json::from_str(m.to_text()?)?;
    if v["janus"] != "success" {
        bail!("add_token over WS: {v}");
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn add_token_http(admin: SocketAddr, body: &Value) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = body.to_string();
    let mut s = TcpStream::connect(admin).await?;
    let req = format!(
        "POST /admin HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out)).await??;
    if !out.contains("\"success\"") {
        bail!("add_token over HTTP: {out}");
    }
    Ok(())
}

/// Per-pair results.
#[derive(Default)]
pub(crate) struct PairStats {
    pub(crate) calls: u64,
    requests: u64,
    frames: u64,
    lat: Histogram,
    pub(crate) error: Option<String>,
}

/// One caller/callee pair looping full call cycles until `deadline` (or a count bound).
pub(crate) async fn pair_loop(ws: SocketAddr, pair: usize, deadline: Instant) -> PairStats {
    let mut st = PairStats::default();
    let r = async {
        let mut a = Conn::connect(ws).await?;
        let mut b = Conn::connect(ws).await?;
        for it in 0..1_000_000u64 {
            if Instant::now() >= deadline {
                break;
            }
            a.pending.clear();
            b.pending.clear();
            let lat = &mut st.lat;
            let (sa, ha) = a.create_attach(lat).await?;
            let (sb, hb) = b.create_attach(lat).await?;
            let (ua, ub) = (format!("p{pair}a{it}"), format!("p{pair}b{it}"));
            a.request(
                msg(sa, ha, json!({"request": "register", "username": ua})),
                lat,
            )
            .await?;
            b.request(
                msg(sb, hb, json!({"request": "register", "username": ub})),
                lat,
            )
            .await?;
            let mut call = msg(sa, ha, json!({"request": "call", "username": ub}));
            call["jsep"] = json!({"type": "offer", "sdp": OFFER});
            let r = a.request(call, lat).await?;
            if plugin_event(&r) != Some("calling") {
                bail!("call: expected calling, got {r}");
            }
            a.request(trickle(sa, ha, CALLER_MDNS), lat).await?;
            a.request(
                json!({"janus": "trickle", "session_id": sa, "handle_id": ha,
                    "candidate": {"completed": true}}),
                lat,
            )
            .await?;
            let inc = b
                .wait(|m| m["session_id"] == sb && plugin_event(m) == Some("incomingcall"))
                .await?;
            if inc["jsep"]["type"] != "offer" {
                bail!("incomingcall without offer: {inc}");
            }
            let mut accept = msg(sb, hb, json!({"request": "accept"}));
            accept["jsep"] = json!({"type": "answer", "sdp": ANSWER});
            b.request(accept, lat).await?;
            b.request(trickle(sb, hb, CALLEE_MDNS), lat).await?;
            b.request(
                json!({"janus": "trickle", "session_id": sb, "handle_id": hb,
                    "candidate": {"completed": true}}),
                lat,
            )
            .await?;
            let acc = a
                .wait(|m| m["session_id"] == sa && plugin_event(m) == Some("accepted"))
                .await?;
            if acc["jsep"]["type"] != "answer" {
                bail!("accepted without answer: {acc}");
            }
            a.request(msg(sa, ha, json!({"request": "hangup"})), lat)
                .await?;
            b.wait(|m| m["session_id"] == sb && plugin_event(m) == Some("hangup"))
                .await?;
            a.request(json!({"janus": "destroy", "session_id": sa}), lat)
                .await?;
            b.request(json!({"janus": "destroy", "session_id": sb}), lat)
                .await?;
            st.calls += 1;
            st.requests += 15;
        }
        st.frames = a.frames_in + a.frames_out + b.frames_in + b.frames_out;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        st.error = Some(format!("{e:#}"));
    }
    st
}

async fn loop_session(
    gw: Gw,
    a: &GatewayArgs,
    scratch: &Path,
    run: usize,
    f: &mut Figures,
) -> Result<()> {
    let srv = start(gw, a, scratch, &format!("loop{run}"), None).await?;
    let meter = CpuMeter::start(srv.server.pid())?;
    let client_meter = CpuMeter::start(std::process::id())?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.loop_secs);
    let pairs = join_all((0..a.pairs).map(|p| pair_loop(srv.ws, p, deadline))).await;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, _) = meter.stop()?;
    let (client_cpu, _) = client_meter.stop()?;
    let mut lat = Histogram::default();
    let (mut calls, mut requests, mut frames, mut errors) = (0, 0, 0, 0);
    for p in &pairs {
        lat.merge(&p.lat);
        calls += p.calls;
        requests += p.requests;
        frames += p.frames;
        if let Some(e) = &p.error {
            if errors == 0 {
                eprintln!("  {} pair failed: {e}", gw.column());
            }
            errors += 1;
        }
    }
    eprintln!(
        "  {}: {calls} call cycles, {requests} requests, {frames} WS messages in {secs:.2}s, {errors} failed pairs, server cpu {:.0}%, load client cpu {:.0}%",
        gw.column(),
        100.0 * cpu / secs,
        100.0 * client_cpu / secs
    );
    if calls == 0 {
        bail!("{}: no call cycle completed", gw.column());
    }
    if errors > 0 {
        crate::mark_failed();
    }
    f.set("WS messages/s (both directions)", frames as f64 / secs);
    f.set("requests/s", requests as f64 / secs);
    f.set("call cycles/s", calls as f64 / secs);
    f.set(
        "request latency p50 µs",
        lat.quantile_us(0.5).unwrap_or(f64::NAN),
    );
    f.set(
        "request latency p99 µs",
        lat.quantile_us(0.99).unwrap_or(f64::NAN),
    );
    f.set("server CPU µs per call cycle", cpu * 1e6 / calls as f64);
    f.set(
        "  load client CPU µs per call cycle",
        client_cpu * 1e6 / calls as f64,
    );
    f.set("failed pairs", errors as f64);
    let _ = srv.admin;
    Ok(())
}

async fn idle_session(
    gw: Gw,
    a: &GatewayArgs,
    scratch: &Path,
    run: usize,
    f: &mut Figures,
) -> Result<()> {
    let srv = start(gw, a, scratch, &format!("idle{run}"), None).await?;
    let conns = 20.min(a.idle_sessions.max(1));
    let mut cs = Vec::with_capacity(conns);
    for _ in 0..conns {
        cs.push(Conn::connect(srv.ws).await?);
    }
    // Warm up: one session per connection.
    for c in &mut cs {
        let mut h = Histogram::default();
        c.create_attach(&mut h).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(srv.server.pid())?;
    // The warm-up sessions count toward the total (our gateway caps sessions at 10,000).
    let per_conn = a.idle_sessions.saturating_sub(conns) / conns;
    let t0 = Instant::now();
    let results = join_all(cs.iter_mut().map(|c| async move {
        let mut h = Histogram::default();
        for _ in 0..per_conn {
            c.create_attach(&mut h).await?;
            c.pending.clear();
        }
        anyhow::Ok(())
    }))
    .await;
    for r in results {
        r?;
    }
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_kib(srv.server.pid())?;
    let n = per_conn * conns;
    let per = (rss1.saturating_sub(rss0) * 1024) as f64 / n as f64;
    eprintln!(
        "  {}: {n} idle sessions in {secs:.1}s, RSS {rss0} KiB -> {rss1} KiB ({per:.0} B each)",
        gw.column()
    );
    f.set(&format!("RSS bytes per idle session+handle ({n})"), per);
    f.set("session+handle set-ups/s", n as f64 / secs);
    drop(cs);
    Ok(())
}

/// Opens `count` WebSockets, each with one session and one videocall handle, at most
/// `CONCURRENT` set-ups at a time, until `deadline`. Returns the connections opened
/// and the first failure (a refused connection, a timeout) that stopped it.
async fn open_one_session_sockets(
    ws: SocketAddr,
    count: usize,
    deadline: Instant,
    into: &mut Vec<Conn>,
) -> Option<anyhow::Error> {
    const CONCURRENT: usize = 64;
    let mut set_ups = futures_util::stream::iter(0..count)
        .map(|_| async move {
            let mut c = Conn::connect(ws).await?;
            c.create_attach(&mut Histogram::default()).await?;
            c.pending.clear();
            anyhow::Ok(c)
        })
        .buffer_unordered(CONCURRENT);
    loop {
        match tokio::time::timeout_at(deadline.into(), set_ups.next()).await {
            Ok(Some(Ok(c))) => into.push(c),
            Ok(Some(Err(e))) => return Some(e),
            Ok(None) => return None,
            Err(_) => return Some(anyhow!("time bound reached")),
        }
    }
}

/// RSS per idle WebSocket holding one session + handle: a fresh server, 20 warm-up
/// one-session WebSockets, VmRSS, then `n` more, VmRSS again; delta / n.
async fn ws_sessions(
    gw: Gw,
    a: &GatewayArgs,
    scratch: &Path,
    run: usize,
    n: usize,
    f: &mut Figures,
) -> Result<()> {
    const WARM: usize = 20;
    // the sockets, plus the runtime's, the servers' logs and the admin connection
    let need = (n + WARM + 300) as u64;
    if let Some(limit) = nofile_limit(std::process::id())?
        && limit < need
    {
        bail!(
            "{n} one-session WebSockets need {need} open files, this process may open {limit} \
             (benches/run raises the soft limit to the hard limit, and the hard limit to \
             65536 where it may)"
        );
    }
    let mut srv = start(gw, a, scratch, &format!("ws{run}-{n}"), Some(n + WARM + 64)).await?;
    if let Some(limit) = nofile_limit(srv.server.pid())?
        && limit < need
    {
        bail!(
            "{}: may open {limit} files, {n} WebSockets need {need}",
            gw.column()
        );
    }
    let mut conns = Vec::with_capacity(n + WARM);
    let warm_deadline = Instant::now() + Duration::from_secs(20);
    if let Some(e) = open_one_session_sockets(srv.ws, WARM, warm_deadline, &mut conns).await {
        return Err(e.context("warm-up"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(srv.server.pid())?;
    // bounded: 20 s plus 3 ms per WebSocket (Janus sets up ~13,000 sessions/s)
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20) + Duration::from_millis(3) * n as u32;
    let failed = open_one_session_sockets(srv.ws, n, deadline, &mut conns).await;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = failed {
        bail!(
            "{}: {} of {n} one-session WebSockets open after {secs:.1}s, then: {e:#}",
            gw.column(),
            conns.len() - WARM
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_kib(srv.server.pid())?;
    srv.server
        .check_alive()
        .context("server exited while the WebSockets were open")?;
    let per = (rss1.saturating_sub(rss0) * 1024) as f64 / n as f64;
    eprintln!(
        "  {}: {n} one-session WebSockets in {secs:.1}s, RSS {rss0} KiB -> {rss1} KiB ({per:.0} B each)",
        gw.column()
    );
    f.set(&format!("RSS bytes per one-session WebSocket ({n})"), per);
    f.set(
        &format!("one-session WebSocket set-ups/s ({n})"),
        n as f64 / secs,
    );
    // the server goes first: its side holds the closed sockets' TIME_WAIT, not the
    // load client's ephemeral ports
    drop(srv);
    drop(conns);
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
pub(crate) fn run(c: Common, a: &GatewayArgs) -> Result<()> {
    let mut a = a.clone();
    let mut runs = c.runs.max(1);
    if c.smoke {
        runs = 1;
        a.pairs = a.pairs.min(2);
        a.loop_secs = 1.0;
        a.idle_sessions = 100;
        a.ws_sessions = vec![50];
    }
    for step in &a.gw_steps {
        if !["loop", "idle", "ws"].contains(&step.as_str()) {
            bail!("--gw-steps: unknown step {step:?} (loop, idle, ws)");
        }
    }
    let step = |s: &str| a.gw_steps.iter().any(|x| x == s);
    let (do_loop, do_idle, do_ws) = (step("loop"), step("idle"), step("ws"));
    let mut targets = Vec::new();
    for t in &a.gw_targets {
        let (g, ok) = match t.as_str() {
            "janus" => (Gw::Janus, present(&a.janus, "Janus (Debian package janus)")),
            "ours" | "gateway" => (
                Gw::Ours,
                present(
                    &gateway_path(&a),
                    "gateway (cargo build --release -p gateway)",
                ),
            ),
            other => bail!("--gw-targets: unknown target {other:?} (janus, ours)"),
        };
        if ok {
            targets.push(g);
        }
    }
    let scratch = ScratchDir::new("gateway")?;
    print_header("Gateway signalling: gateway vs Janus");
    println!(
        "versions: janus {} ({}); gateway {} ({})",
        first_line(
            &command_output(&a.janus.to_string_lossy(), &["--version"])
                .replace("Janus version:", "")
        ),
        a.janus.display(),
        first_line(&command_output(
            &gateway_path(&a).to_string_lossy(),
            &["--version"]
        )),
        gateway_path(&a).display()
    );
    println!(
        "runs={runs} pairs={} loop_secs={} idle_sessions={} ws_sessions={:?} steps={:?} janus_event_loops={}",
        a.pairs, a.loop_secs, a.idle_sessions, a.ws_sessions, a.gw_steps, a.janus_event_loops
    );
    println!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut all: Vec<(Gw, Vec<Figures>)> = targets.iter().map(|&t| (t, Vec::new())).collect();
    for run in 0..runs {
        eprintln!("== gateway run {}/{runs}", run + 1);
        for (gw, figs) in &mut all {
            let mut f = Figures::default();
            let g = *gw;
            let r: Result<()> = rt.block_on(async {
                if do_loop {
                    loop_session(g, &a, &scratch.0, run, &mut f).await?;
                }
                if do_idle {
                    idle_session(g, &a, &scratch.0, run, &mut f).await?;
                }
                if do_ws {
                    for &n in &a.ws_sessions {
                        ws_sessions(g, &a, &scratch.0, run, n, &mut f).await?;
                    }
                }
                anyhow::Ok(())
            });
            if let Err(e) = r {
                eprintln!("  {} failed: {e:#}", g.column());
                crate::mark_failed();
            }
            figs.push(f);
        }
    }
    let cols: Vec<(&str, &[Figures])> = all
        .iter()
        .map(|(g, f)| (g.column(), f.as_slice()))
        .collect();
    println!(
        "{}",
        report::table(&cols, Gw::Ours.column(), Gw::Janus.column(), "")
    );
    Ok(())
}
