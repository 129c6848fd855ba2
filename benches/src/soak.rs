//! `callrelay-bench soak`: both services under a bounded mix of legitimate churn, abuse
//! and chaos for `--secs`, then proof that nothing leaked (docs/reliability.md, "Soak
//! and chaos").
//!
//! Legitimate load (every operation must succeed):
//! * UDP allocation cycles, each from a fresh loopback source address: Allocate with the
//!   401 round trip, CreatePermission + ChannelBind to an echo peer, 20 ChannelData
//!   packets relayed there and back, Refresh 0;
//! * the same over TCP, all from 127.0.0.1 (a strict firewall: TURN over TCP from one
//!   address);
//! * one long-lived allocation carrying a steady 50 packets/s for the whole run (media
//!   of a call in progress, which must keep flowing through the chaos below);
//! * gateway call cycles on WebSockets (create, attach, register, call with an offer,
//!   trickle, accept with an answer, hangup, destroy);
//! * calls whose callee's WebSocket is dropped mid-call: the caller must get `hangup`.
//!
//! Abuse, at a bounded rate, all the time: garbage and unauthenticated STUN from
//! rotating source addresses, idle and garbage TCP connections to the TURN port,
//! garbage, unauthorised and oversized Janus messages, half-sent HTTP requests.
//!
//! Chaos: the TURN secret is rotated with SIGHUP under load (the clients switch to the
//! new secret; no request may fail), the gateway is killed with SIGKILL mid-call and
//! restarted on the same state directory (its token survives; call cycles resume;
//! relayed media never stops), and both services are stopped with SIGTERM at the end
//! (bounded exit, status 0).
//!
//! Afterwards: 0 allocations, permissions, channels, sessions, handles, registered
//! users and WebSockets; every relay port back in the pool; file descriptors and
//! threads back to their level before the load; RSS within 10 % from the end of the
//! warm-up to the end.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shared_ice::channel::{self, ChannelData, ChannelNumber};
use shared_ice::framing::{FrameKind, Framer};
use shared_ice::stun::{Class, MessageBuilder, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::gateway::{self, Conn, msg, plugin_event};
use crate::load::EchoPeer;
use crate::procfs::rss_kib;
use crate::servers::{ScratchDir, Server, free_port, sibling_binary, wait_tcp};
use crate::stats::Histogram;
use crate::stunc::{Creds, Session, TurnAuth, UdpPath, tid, wait_stun};
use crate::tcpload::TcpPath;

const CHANNEL: u16 = 0x4000;
const REALM: &str = "soak";
const PACKETS_PER_CYCLE: usize = 20;
const PAYLOAD: usize = 100;
/// How long the counters and gauges may take to settle once the load stopped.
const SETTLE: Duration = Duration::from_secs(30);
/// A SIGTERM'd service must be gone within its drain bound plus this.
const EXIT_BOUND: Duration = Duration::from_secs(10);

#[derive(Args, Clone)]
pub(crate) struct SoakArgs {
    /// Seconds of load (the full soak: 1800; CI runs 180).
    #[arg(long, default_value_t = 1800)]
    secs: u64,
    /// Fraction of the run that is warm-up before RSS must stay flat.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Our turn-server binary. Default: next to this binary.
    #[arg(long)]
    turn_server: Option<PathBuf>,
    /// Our gateway binary. Default: next to this binary.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Concurrent UDP allocation loops (each cycle from a fresh source address).
    #[arg(long, default_value_t = 4)]
    udp_loops: usize,
    /// Concurrent TURN-over-TCP allocation loops (all from 127.0.0.1).
    #[arg(long, default_value_t = 2)]
    tcp_loops: usize,
    /// Concurrent caller/callee pairs looping call cycles.
    #[arg(long, default_value_t = 3)]
    call_pairs: usize,
    /// Concurrent pairs whose callee drops its WebSocket mid-call.
    #[arg(long, default_value_t = 1)]
    drop_pairs: usize,
    /// Concurrent TURN-over-TLS loops, and as many Janus-over-HTTPS loops.
    #[arg(long, default_value_t = 1)]
    tls_loops: usize,
    /// Abuse datagrams per second toward the TURN port.
    #[arg(long, default_value_t = 400)]
    abuse_rate: u64,
    /// Seconds between samples of RSS, fds, threads and gauges.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
    /// Point of the run (fraction) where the TURN secret is rotated with SIGHUP (0 = never).
    #[arg(long, default_value_t = 0.3)]
    rotate_at: f64,
    /// Point of the run (fraction) where the gateway is killed (SIGKILL) mid-call and
    /// restarted (0 = never).
    #[arg(long, default_value_t = 0.5)]
    kill_at: f64,
}

/// Counters shared by every load task.
#[derive(Default)]
struct Tally {
    udp_cycles: AtomicU64,
    tcp_cycles: AtomicU64,
    calls: AtomicU64,
    dropped_calls: AtomicU64,
    relayed_sent: AtomicU64,
    relayed_back: AtomicU64,
    steady_sent: AtomicU64,
    steady_back: AtomicU64,
    /// TURN-over-TLS cycles by the certificate the server presented.
    tls_turn: [AtomicU64; 2],
    /// Janus-over-HTTPS cycles by the certificate the server presented (the newer of
    /// the cycle's three connections).
    https: [AtomicU64; 2],
    abuse: AtomicU64,
    failures: AtomicU64,
    /// The first failures, for the report.
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: &str, e: &anyhow::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.errors.lock()
            && v.len() < 20
        {
            v.push(format!("{what}: {e:#}"));
        }
    }
}

/// The TURN secret the clients mint with; rotated under load.
struct Secret(RwLock<String>);

impl Secret {
    fn auth(&self, server: SocketAddr) -> TurnAuth {
        TurnAuth {
            server,
            secret: self.0.read().map(|s| s.clone()).unwrap_or_default(),
        }
    }
}

/// Wall-clock window in which gateway requests may fail because the gateway was
/// killed on purpose; failures of gateway tasks inside it are expected.
#[derive(Default)]
struct ChaosWindow(Mutex<Option<(Instant, Option<Instant>)>>);

impl ChaosWindow {
    fn covers(&self, t: Instant) -> bool {
        match self.0.lock().ok().and_then(|w| *w) {
            Some((from, None)) => t >= from,
            // Clients see the outage up to one read timeout after the restart.
            Some((from, Some(to))) => t >= from && t <= to + Duration::from_secs(12),
            None => false,
        }
    }
}

struct Ctx {
    turn: SocketAddr,
    turn_tls: SocketAddr,
    gw_https: SocketAddr,
    tls: Tls,
    ws: RwLock<SocketAddr>,
    echo: SocketAddr,
    secret: Secret,
    tally: Tally,
    chaos: ChaosWindow,
    deadline: Instant,
    stop: AtomicBool,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline && !self.stop.load(Ordering::Relaxed)
    }

    fn ws(&self) -> SocketAddr {
        self.ws
            .read()
            .map(|a| *a)
            .unwrap_or(([127, 0, 0, 1], 0).into())
    }
}

/// One process sample.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn sample(pid: u32) -> Result<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Threads line")?;
    Ok(Sample {
        rss_kib: rss_kib(pid)?,
        fds,
        threads,
    })
}

/// GET /metrics over plain HTTP/1.1.
async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await??;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The value of one exact series (`name` or `name{labels}`); None when the series does
/// not exist, so a typo can never read as 0.
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// The sum over every label set of a metric; None when it has no series at all.
fn sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((k, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let base = k.split('{').next().unwrap_or(k);
        if base == name
            && let Ok(x) = v.parse::<f64>()
        {
            found = true;
            total += x;
        }
    }
    found.then_some(total)
}

fn want(text: &str, key: &str) -> Result<f64> {
    series(text, key).ok_or_else(|| anyhow!("series {key} missing from /metrics"))
}

// ---------------------------------------------------------------- TURN clients

fn channel_frame(seq: u32, padding: channel::Padding) -> Result<Vec<u8>> {
    let mut data = vec![0u8; PAYLOAD];
    data[0..4].copy_from_slice(b"SOAK");
    data[4..8].copy_from_slice(&seq.to_be_bytes());
    let ch = ChannelNumber::new(CHANNEL).context("channel number")?;
    let mut out = Vec::with_capacity(PAYLOAD + 8);
    channel::encode(&mut out, ch, &data, padding)?;
    Ok(out)
}

fn is_soak_data(buf: &[u8]) -> bool {
    matches!(ChannelData::parse(buf), Ok(cd) if cd.data().starts_with(b"SOAK"))
}

/// A loopback source address for UDP cycle `n` of loop `i`: every cycle a fresh one
/// (a new client), never .0 or .255.
fn fresh_source(i: usize, n: u64) -> Ipv4Addr {
    let n = n % (200 * 254);
    Ipv4Addr::new(
        127,
        10 + (i % 50) as u8,
        (n / 254) as u8 + 1,
        (n % 254) as u8 + 1,
    )
}

async fn udp_cycle(ctx: &Ctx, src: Ipv4Addr, user: &str) -> Result<()> {
    let sock = UdpSocket::bind(SocketAddr::from((src, 0))).await?;
    let auth = ctx.secret.auth(ctx.turn);
    let creds = Creds::mint(&auth, user)?;
    let mut path = UdpPath {
        sock: &sock,
        server: ctx.turn,
    };
    let mut s = Session::allocate(&mut path, &creds).await?;
    s.create_permission(&mut path, ctx.echo).await?;
    s.channel_bind(&mut path, CHANNEL, ctx.echo).await?;
    for seq in 0..PACKETS_PER_CYCLE as u32 {
        sock.send_to(&channel_frame(seq, channel::Padding::Datagram)?, ctx.turn)
            .await?;
    }
    ctx.tally
        .relayed_sent
        .fetch_add(PACKETS_PER_CYCLE as u64, Ordering::Relaxed);
    let mut back = 0;
    let mut buf = vec![0u8; 2048];
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while back < PACKETS_PER_CYCLE {
        match tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if is_soak_data(&buf[..n]) => back += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    ctx.tally
        .relayed_back
        .fetch_add(back as u64, Ordering::Relaxed);
    if back == 0 {
        bail!("no relayed packet came back");
    }
    s.release(&mut path).await
}

async fn udp_loop(ctx: Arc<Ctx>, i: usize) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let src = fresh_source(i, n);
        match udp_cycle(&ctx, src, &format!("udp{i}-{n}")).await {
            Ok(()) => {
                ctx.tally.udp_cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.tally.fail(&format!("UDP cycle from {src}"), &e),
        }
    }
}

/// One allocation cycle over a stream (TCP or TLS): Allocate, CreatePermission,
/// ChannelBind, 20 ChannelData frames to the echo peer and back, Refresh 0.
async fn stream_cycle<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    path: &mut TcpPath<S>,
    user: &str,
) -> Result<()> {
    let auth = ctx.secret.auth(ctx.turn);
    let creds = Creds::mint(&auth, user)?;
    let mut s = Session::allocate(path, &creds).await?;
    s.create_permission(path, ctx.echo).await?;
    s.channel_bind(path, CHANNEL, ctx.echo).await?;
    let mut out = Vec::new();
    for seq in 0..PACKETS_PER_CYCLE as u32 {
        out.extend_from_slice(&channel_frame(seq, channel::Padding::Stream)?);
    }
    path.stream.write_all(&out).await?;
    path.stream.flush().await?;
    ctx.tally
        .relayed_sent
        .fetch_add(PACKETS_PER_CYCLE as u64, Ordering::Relaxed);
    let framer = Framer::default();
    let mut back = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    'read: while back < PACKETS_PER_CYCLE {
        while let Some(fr) = framer.next_frame(&path.inbuf)? {
            let frame: Vec<u8> = path.inbuf.drain(..fr.len).collect();
            if fr.kind == FrameKind::ChannelData && is_soak_data(&frame) {
                back += 1;
            }
        }
        if back >= PACKETS_PER_CYCLE {
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(end, path.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => path.inbuf.extend_from_slice(&chunk[..n]),
            _ => break 'read,
        }
    }
    ctx.tally
        .relayed_back
        .fetch_add(back as u64, Ordering::Relaxed);
    if back < PACKETS_PER_CYCLE {
        bail!("{back} of {PACKETS_PER_CYCLE} frames came back over the stream");
    }
    s.release(path).await
}

async fn tcp_cycle(ctx: &Ctx, user: &str) -> Result<()> {
    let mut path = TcpPath::connect(ctx.turn).await?;
    stream_cycle(ctx, &mut path, user).await
}

async fn tcp_loop(ctx: Arc<Ctx>, i: usize) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        match tcp_cycle(&ctx, &format!("tcp{i}-{n}")).await {
            Ok(()) => {
                ctx.tally.tcp_cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.tally.fail("TCP cycle", &e),
        }
    }
}

/// One allocation for the whole run with a steady 50 packets/s: the media of a call in
/// progress. Returns the longest gap between two echoed packets.
async fn steady_media(ctx: Arc<Ctx>) -> Result<Duration> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let auth = ctx.secret.auth(ctx.turn);
    let creds = Creds::mint(&auth, "steady")?;
    let mut path = UdpPath {
        sock: &sock,
        server: ctx.turn,
    };
    let mut s = Session::allocate(&mut path, &creds).await?;
    s.create_permission(&mut path, ctx.echo).await?;
    s.channel_bind(&mut path, CHANNEL, ctx.echo).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last_back = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut last_refresh = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut seq = 0u32;
    while ctx.running() {
        tick.tick().await;
        // Permissions last 300 s, channels 600 s, the allocation its lifetime: refresh
        // all three well before, over the same socket (answers are read below).
        if last_refresh.elapsed() > Duration::from_secs(120) {
            let mut refresh = UdpPath {
                sock: &sock,
                server: ctx.turn,
            };
            s.refresh(&mut refresh, 600).await?;
            s.create_permission(&mut refresh, ctx.echo).await?;
            s.channel_bind(&mut refresh, CHANNEL, ctx.echo).await?;
            last_refresh = Instant::now();
        }
        seq += 1;
        sock.send_to(&channel_frame(seq, channel::Padding::Datagram)?, ctx.turn)
            .await?;
        ctx.tally.steady_sent.fetch_add(1, Ordering::Relaxed);
        while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
            if is_soak_data(&buf[..n]) {
                ctx.tally.steady_back.fetch_add(1, Ordering::Relaxed);
                max_gap = max_gap.max(last_back.elapsed());
                last_back = Instant::now();
            }
        }
    }
    s.release(&mut path).await?;
    Ok(max_gap)
}

// ---------------------------------------------------------------- gateway clients

/// Call cycles; a failure outside the chaos window counts.
async fn call_loop(ctx: Arc<Ctx>, p: usize) {
    let mut restart = 0usize;
    while ctx.running() {
        restart += 1;
        // Each (re)start registers fresh usernames: the previous connection's may still
        // be being torn down.
        let st = gateway::pair_loop(ctx.ws(), p * 100_000 + restart, ctx.deadline).await;
        ctx.tally.calls.fetch_add(st.calls, Ordering::Relaxed);
        if let Some(e) = st.error {
            if !ctx.chaos.covers(Instant::now()) && ctx.running() {
                ctx.tally.fail("call cycle", &anyhow!(e));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A call whose callee's WebSocket is dropped (no close frame) once the call is up:
/// the caller must get `hangup`.
async fn dropped_call(ctx: &Ctx, tag: &str) -> Result<()> {
    let ws = ctx.ws();
    let mut lat = Histogram::default();
    let mut a = Conn::connect(ws).await?;
    let mut b = Conn::connect(ws).await?;
    let (sa, ha) = a.create_attach(&mut lat).await?;
    let (sb, hb) = b.create_attach(&mut lat).await?;
    let (ua, ub) = (format!("{tag}a"), format!("{tag}b"));
    a.request(
        msg(sa, ha, json!({"request": "register", "username": ua})),
        &mut lat,
    )
    .await?;
    b.request(
        msg(sb, hb, json!({"request": "register", "username": ub})),
        &mut lat,
    )
    .await?;
    let mut call = msg(sa, ha, json!({"request": "call", "username": ub}));
    call["jsep"] = json!({"type": "offer", "sdp": gateway::OFFER});
    a.request(call, &mut lat).await?;
    b.wait(|m| m["session_id"] == sb && plugin_event(m) == Some("incomingcall"))
        .await?;
    let mut accept = msg(sb, hb, json!({"request": "accept"}));
    accept["jsep"] = json!({"type": "answer", "sdp": gateway::ANSWER});
    b.request(accept, &mut lat).await?;
    a.wait(|m| m["session_id"] == sa && plugin_event(m) == Some("accepted"))
        .await?;
    // The callee's browser tab dies: TCP closes without a WebSocket close frame.
    drop(b);
    let t0 = Instant::now();
    a.wait(|m| m["session_id"] == sa && plugin_event(m) == Some("hangup"))
        .await
        .context("caller got no hangup after the callee's WebSocket dropped")?;
    if t0.elapsed() > Duration::from_secs(5) {
        bail!("hangup took {:?}", t0.elapsed());
    }
    a.request(json!({"janus": "destroy", "session_id": sa}), &mut lat)
        .await?;
    Ok(())
}

async fn drop_loop(ctx: Arc<Ctx>, p: usize) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        match dropped_call(&ctx, &format!("drop{p}x{n}")).await {
            Ok(()) => {
                ctx.tally.dropped_calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !ctx.chaos.covers(Instant::now()) && ctx.running() {
                    ctx.tally.fail("dropped-WebSocket call", &e);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

// ---------------------------------------------------------------- abuse

/// Garbage datagrams, truncated STUN and unauthenticated requests (Binding, Allocate,
/// an unknown comprehension-required attribute) from rotating source addresses, at
/// `rate` per second.
async fn abuse_udp(ctx: Arc<Ctx>, rate: u64) {
    let socks: Vec<UdpSocket> =
        join_all((0..64u8).map(|k| async move {
            UdpSocket::bind(SocketAddr::from(([127, 77, 1, k + 1], 0))).await
        }))
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    if socks.is_empty() || rate == 0 {
        return;
    }
    let mut kinds: Vec<Vec<u8>> = vec![b"GARBAGE-GARBAGE-GARBAGE".to_vec(), vec![0u8; 3]];
    let mut out = Vec::new();
    if let Ok(m) = MessageBuilder::new(&mut out, Class::Request, Method::BINDING, tid())
        .finish_with_fingerprint()
    {
        let m = m.to_vec();
        kinds.push(m[..m.len() - 4].to_vec()); // truncated
        kinds.push(m);
    }
    out.clear();
    if let Ok(m) = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, tid())
        .requested_transport(shared_ice::stun::PROTOCOL_UDP)
        .finish_with_fingerprint()
    {
        kinds.push(m.to_vec());
    }
    let period = Duration::from_secs_f64(1.0 / rate as f64).max(Duration::from_micros(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0usize;
    let mut drain = vec![0u8; 2048];
    while ctx.running() {
        tick.tick().await;
        n += 1;
        let s = &socks[n % socks.len()];
        let _ = s.try_send_to(&kinds[n % kinds.len()], ctx.turn);
        let _ = s.try_recv_from(&mut drain);
        ctx.tally.abuse.fetch_add(1, Ordering::Relaxed);
    }
}

/// TCP connections to the TURN port that never authenticate: 20 idle, a few sending
/// garbage, replaced every 15 s.
async fn abuse_tcp(ctx: Arc<Ctx>) {
    while ctx.running() {
        let mut held = Vec::new();
        for k in 0..20u8 {
            let Ok(sock) = TcpSocket::new_v4() else {
                continue;
            };
            if sock
                .bind(SocketAddr::from(([127, 78, 0, k + 1], 0)))
                .is_err()
            {
                continue;
            }
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), sock.connect(ctx.turn)).await
            {
                if k % 5 == 0 {
                    let _ = s.write_all(b"\x00\x01\xff\xffnot a STUN message").await;
                }
                held.push(s);
            }
            ctx.tally.abuse.fetch_add(1, Ordering::Relaxed);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while ctx.running() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(held);
    }
}

/// Janus abuse: garbage, requests without a token, unknown requests, an oversized
/// username, a message over `max_message_bytes`, and half-sent HTTP requests.
async fn abuse_gateway(ctx: Arc<Ctx>, http: SocketAddr) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let ws = ctx.ws();
        if let Ok(mut ws) = gateway::ws_connect(ws, "janus-protocol").await {
            let long_name = "x".repeat(100_000);
            let msgs = [
                "{not json".to_owned(),
                json!({"janus": "create", "transaction": "x"}).to_string(),
                json!({"janus": "nonsense", "transaction": "y", "token": gateway::TOKEN})
                    .to_string(),
                json!({"janus": "create", "transaction": "z", "token": "wrong"}).to_string(),
                json!({"janus": "message", "transaction": "u", "token": gateway::TOKEN,
                    "session_id": 1, "handle_id": 2,
                    "body": {"request": "register", "username": long_name}})
                .to_string(),
                "[".repeat(300_000),
            ];
            for m in msgs {
                if ws.send(WsMessage::text(m)).await.is_err() {
                    break;
                }
                ctx.tally.abuse.fetch_add(1, Ordering::Relaxed);
            }
            // Read what comes back for a moment, then go (the server may close first).
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        // A request head that never ends: the server must cut it off on its own.
        if let Ok(mut s) = TcpStream::connect(http).await {
            let _ = s
                .write_all(b"POST /janus HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
                .await;
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
            });
            ctx.tally.abuse.fetch_add(1, Ordering::Relaxed);
        }
        if n.is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------- TLS

/// The two certificates the services swap between under load (the gateway's test
/// fixtures: self-signed, 127.0.0.1, valid until 2126).
const CERTS: [(&str, &str); 2] = [
    (
        include_str!("../../crates/gateway/tests/fixtures/cert1.pem"),
        include_str!("../../crates/gateway/tests/fixtures/key1.pem"),
    ),
    (
        include_str!("../../crates/gateway/tests/fixtures/cert2.pem"),
        include_str!("../../crates/gateway/tests/fixtures/key2.pem"),
    ),
];

struct Tls {
    connector: TlsConnector,
    /// DER of `CERTS[0]` and `CERTS[1]`.
    der: [Vec<u8>; 2],
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Tls {
    fn new(dir: &Path) -> Result<Self> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let mut der = [Vec::new(), Vec::new()];
        for (i, (pem, _)) in CERTS.iter().enumerate() {
            let c = CertificateDer::from_pem_slice(pem.as_bytes())?;
            der[i] = c.as_ref().to_vec();
            roots.add(c)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Self {
            connector: TlsConnector::from(Arc::new(cfg)),
            der,
            cert_path: dir.join("tls-cert.pem"),
            key_path: dir.join("tls-key.pem"),
        };
        tls.install(0)?;
        Ok(tls)
    }

    /// Writes certificate `i` where both services read theirs.
    fn install(&self, i: usize) -> Result<()> {
        std::fs::write(&self.cert_path, CERTS[i].0)?;
        std::fs::write(&self.key_path, CERTS[i].1)?;
        Ok(())
    }

    /// A verified TLS connection and the index of the certificate the server presented.
    async fn connect(&self, addr: SocketAddr) -> Result<(TlsStream<TcpStream>, usize)> {
        let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
        let s = tokio::time::timeout(Duration::from_secs(5), self.connector.connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        let presented = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let which = self
            .der
            .iter()
            .position(|d| *d == presented)
            .context("the server presented a certificate that is neither of ours")?;
        Ok((s, which))
    }
}

/// TURN over TLS: allocation cycles; counts which certificate each connection saw.
async fn tls_turn_loop(ctx: Arc<Ctx>) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let r = async {
            let (s, which) = ctx.tls.connect(ctx.turn_tls).await?;
            let mut path = TcpPath::over(s);
            stream_cycle(&ctx, &mut path, &format!("tls-{n}")).await?;
            anyhow::Ok(which)
        }
        .await;
        match r {
            Ok(which) => {
                ctx.tally.tls_turn[which].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.tally.fail("TURN-over-TLS cycle", &e),
        }
    }
}

/// One HTTPS request to the gateway's Janus REST listener; the JSON reply and the
/// certificate index.
async fn https_janus(
    ctx: &Ctx,
    path: &str,
    body: serde_json::Value,
) -> Result<(serde_json::Value, usize)> {
    let (mut s, which) = ctx.tls.connect(ctx.gw_https).await?;
    let b = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut raw = Vec::new();
    // A close_notify-less close is fine here: the reply is complete when the body is.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP reply")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{path}: {}", head.lines().next().unwrap_or_default());
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
    if v["janus"] == "error" {
        bail!("{path}: {}", v["error"]);
    }
    Ok((v, which))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).context("short chunk")?;
    }
}

/// Janus over HTTPS: create, attach videocall, destroy.
async fn https_loop(ctx: Arc<Ctx>) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let r = async {
            let tx = |k: &str| format!("h{n}{k}");
            let (v, w1) = https_janus(
                &ctx,
                "/janus",
                json!({"janus": "create", "transaction": tx("c"), "token": gateway::TOKEN}),
            )
            .await?;
            let sid = v["data"]["id"].as_u64().context("create: no data.id")?;
            let (_, w2) = https_janus(
                &ctx,
                &format!("/janus/{sid}"),
                json!({"janus": "attach", "plugin": "janus.plugin.videocall",
                    "transaction": tx("a"), "token": gateway::TOKEN}),
            )
            .await?;
            let (_, w3) = https_janus(
                &ctx,
                &format!("/janus/{sid}"),
                json!({"janus": "destroy", "transaction": tx("d"), "token": gateway::TOKEN}),
            )
            .await?;
            anyhow::Ok(w1.max(w2).max(w3))
        }
        .await;
        match r {
            Ok(which) => {
                ctx.tally.https[which].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !ctx.chaos.covers(Instant::now()) && ctx.running() {
                    ctx.tally.fail("Janus over HTTPS", &e);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- servers

struct Turn {
    server: Server,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    metrics: SocketAddr,
    config: PathBuf,
}

/// The part of turn-server's config that SIGHUP re-reads: secrets and certificate.
fn turn_config(path: &Path, secrets: &[&str], tls: &Tls, tls_listen: SocketAddr) -> Result<()> {
    let list = secrets
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        path,
        format!(
            "auth_secret = [{list}]\ncert = {:?}\nkey = {:?}\ntls_listen = [\"{tls_listen}\"]\n",
            tls.cert_path, tls.key_path
        ),
    )?;
    Ok(())
}

async fn start_turn(bin: &Path, scratch: &Path, tls: &Tls) -> Result<Turn> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let config = scratch.join("turn-server.toml");
    turn_config(&config, &["soak-secret-1"], tls, tls_addr)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string()])
        .args(["--relay-ip", "127.0.0.1", "--relay-ports", "40000-40999"])
        .args(["--realm", REALM, "--allow-peer", "127.0.0.1/32"])
        .args(["--metrics-listen", &metrics.to_string()])
        .env("RUST_LOG", "warn");
    let log = scratch.join("turn-server.log");
    let mut server = Server::spawn("turn-server", cmd, &log)?;
    wait_stun(addr, Duration::from_secs(20))
        .await
        .with_context(|| format!("turn-server did not answer; see {log:?}"))?;
    server.check_alive()?;
    tokio::task::spawn_blocking(move || {
        wait_tcp(metrics, Duration::from_secs(10))?;
        wait_tcp(tls_addr, Duration::from_secs(10))
    })
    .await??;
    Ok(Turn {
        server,
        addr,
        tls_addr,
        metrics,
        config,
    })
}

struct Gw {
    server: Server,
    ws: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

/// The gateway with TLS on its HTTP (Janus REST) listener only, so that the WebSocket
/// load stays plain and the certificate swap is seen over HTTPS.
async fn start_gateway(
    bin: &Path,
    scratch: &Path,
    tls: &Tls,
    ports: Option<(u16, u16, u16)>,
    add_token: bool,
    tag: &str,
) -> Result<Gw> {
    let (wsp, httpp, adminp) = match ports {
        Some(p) => p,
        None => (free_port()?, free_port()?, free_port()?),
    };
    let state = scratch.join("gateway-state");
    std::fs::create_dir_all(&state)?;
    let config = scratch.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "cert = {:?}\nkey = {:?}\nws_tls = false\nadmin_tls = false\n",
            tls.cert_path, tls.key_path
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{wsp}")])
        .args(["--http-listen", &format!("127.0.0.1:{httpp}")])
        .args(["--admin-listen", &format!("127.0.0.1:{adminp}")])
        .args(["--admin-secret", gateway::ADMIN_SECRET, "--token-auth"])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "warn");
    let log = scratch.join(format!("gateway-{tag}.log"));
    let mut server = Server::spawn("gateway", cmd, &log)?;
    let ws: SocketAddr = ([127, 0, 0, 1], wsp).into();
    let http: SocketAddr = ([127, 0, 0, 1], httpp).into();
    let admin: SocketAddr = ([127, 0, 0, 1], adminp).into();
    tokio::task::spawn_blocking(move || {
        wait_tcp(ws, Duration::from_secs(20))?;
        wait_tcp(http, Duration::from_secs(20))?;
        wait_tcp(admin, Duration::from_secs(20))
    })
    .await?
    .with_context(|| format!("gateway not listening; see {log:?}"))?;
    server.check_alive()?;
    if add_token {
        gateway::add_token(admin).await?;
    }
    Ok(Gw {
        server,
        ws,
        http,
        admin,
    })
}

/// SIGTERM and the time until the process is gone, with its exit status.
fn terminate(server: &mut Server) -> Result<(Duration, Option<i32>)> {
    let t0 = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status()?;
    loop {
        if let Some(st) = server.try_wait()? {
            return Ok((t0.elapsed(), st.code()));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("still running 60 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- the run

/// One line of the verdict.
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

fn check(list: &mut Vec<Check>, what: &str, ok: bool, detail: String) {
    list.push(Check {
        what: what.to_owned(),
        ok,
        detail,
    });
}

/// Samples of one process over the run (time since start, sample).
type Series = Vec<(f64, Sample)>;

pub(crate) fn run(a: &SoakArgs) -> Result<()> {
    // One load thread (the servers get the other core); the clients' state is !Send.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, soak(a))
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
async fn soak(a: &SoakArgs) -> Result<()> {
    let scratch = ScratchDir::new("soak")?;
    let turn_bin = a
        .turn_server
        .clone()
        .unwrap_or_else(|| sibling_binary("turn-server"));
    let gw_bin = a
        .gateway
        .clone()
        .unwrap_or_else(|| sibling_binary("gateway"));
    crate::print_header("Soak: churn, abuse and chaos against turn-server and gateway");
    println!(
        "secs={} udp_loops={} tcp_loops={} call_pairs={} drop_pairs={} abuse_rate={} rotate_at={} kill_at={}",
        a.secs,
        a.udp_loops,
        a.tcp_loops,
        a.call_pairs,
        a.drop_pairs,
        a.abuse_rate,
        a.rotate_at,
        a.kill_at
    );
    println!();

    let echo = EchoPeer::start()?;
    let tls = Tls::new(&scratch.0)?;
    let mut turn = start_turn(&turn_bin, &scratch.0, &tls).await?;
    let mut gw = start_gateway(&gw_bin, &scratch.0, &tls, None, true, "1").await?;
    let gw_ports = (gw.ws.port(), gw.http.port(), gw.admin.port());

    // Baselines before any load (one scrape first so its own connection is in both).
    // The gauges are refreshed by the server's own tick: wait for the first one.
    let mut ports_free0 = 0.0;
    for _ in 0..100 {
        ports_free0 = want(
            &scrape(turn.metrics).await?,
            "callrelay_turn_relay_ports_free",
        )?;
        if ports_free0 > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if ports_free0 <= 0.0 {
        bail!("callrelay_turn_relay_ports_free stayed 0 for 10 s");
    }
    let gw_m0 = scrape(gw.admin).await?;
    let turn_tasks0 = want(&scrape(turn.metrics).await?, "callrelay_turn_worker_tasks")?;
    let gw_tasks0 = want(&gw_m0, "callrelay_gateway_tasks")?;
    let turn_base = sample(turn.server.pid())?;
    let gw_base = sample(gw.server.pid())?;
    println!(
        "baseline: turn-server {turn_base:?}, gateway {gw_base:?}, relay ports free {ports_free0}"
    );

    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        turn: turn.addr,
        turn_tls: turn.tls_addr,
        gw_https: gw.http,
        tls,
        ws: RwLock::new(gw.ws),
        echo: echo.addr,
        secret: Secret(RwLock::new("soak-secret-1".into())),
        tally: Tally::default(),
        chaos: ChaosWindow::default(),
        deadline: t0 + Duration::from_secs(a.secs),
        stop: AtomicBool::new(false),
    });

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.udp_loops {
        tasks.spawn_local(udp_loop(ctx.clone(), i));
    }
    for i in 0..a.tcp_loops {
        tasks.spawn_local(tcp_loop(ctx.clone(), i));
    }
    for p in 0..a.call_pairs {
        tasks.spawn_local(call_loop(ctx.clone(), p));
    }
    for p in 0..a.drop_pairs {
        tasks.spawn_local(drop_loop(ctx.clone(), p));
    }
    for _ in 0..a.tls_loops {
        tasks.spawn_local(tls_turn_loop(ctx.clone()));
        tasks.spawn_local(https_loop(ctx.clone()));
    }
    tasks.spawn_local(abuse_udp(ctx.clone(), a.abuse_rate));
    tasks.spawn_local(abuse_tcp(ctx.clone()));
    tasks.spawn_local(abuse_gateway(ctx.clone(), gw.http));
    let steady = tokio::task::spawn_local(steady_media(ctx.clone()));

    // The run: samples, the secret rotation, the gateway kill.
    let mut turn_series: Series = Vec::new();
    let mut gw_series: Series = Vec::new();
    let mut peak_allocs = 0.0f64;
    let mut peak_sessions = 0.0f64;
    let mut gw_restarted_at: Option<f64> = None;
    let mut rotated = a.rotate_at <= 0.0;
    let mut killed = a.kill_at <= 0.0;
    let mut rotation = String::new();
    let mut kill_report = String::new();
    let mut last_print = Instant::now();
    while ctx.running() {
        tokio::time::sleep(Duration::from_secs(a.sample_secs.max(1)).min(
            ctx.deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1),
        ))
        .await;
        let t = t0.elapsed().as_secs_f64();
        if let Ok(s) = sample(turn.server.pid()) {
            turn_series.push((t, s));
        }
        if let Ok(s) = sample(gw.server.pid()) {
            gw_series.push((t, s));
        }
        if let Ok(m) = scrape(turn.metrics).await
            && let Some(v) = sum(&m, "callrelay_turn_allocations_active")
        {
            peak_allocs = peak_allocs.max(v);
        }
        if let Ok(m) = scrape(gw.admin).await
            && let Some(v) = series(&m, "callrelay_gateway_sessions")
        {
            peak_sessions = peak_sessions.max(v);
        }
        let frac = t / a.secs as f64;
        if !rotated && frac >= a.rotate_at {
            rotated = true;
            rotation = rotate(&ctx, &turn, &gw).await?;
        }
        if !killed && frac >= a.kill_at {
            killed = true;
            kill_report = kill_gateway(&ctx, &mut gw, &gw_bin, &scratch.0, gw_ports).await?;
            gw_restarted_at = Some(t0.elapsed().as_secs_f64());
        }
        if last_print.elapsed() >= Duration::from_secs(30) {
            last_print = Instant::now();
            let tl = &ctx.tally;
            eprintln!(
                "  [{t:>5.0}s] udp {} tcp {} calls {} dropped-ws calls {} failures {} | turn {:?} | gateway {:?}",
                tl.udp_cycles.load(Ordering::Relaxed),
                tl.tcp_cycles.load(Ordering::Relaxed),
                tl.calls.load(Ordering::Relaxed),
                tl.dropped_calls.load(Ordering::Relaxed),
                tl.failures.load(Ordering::Relaxed),
                turn_series.last().map(|x| x.1),
                gw_series.last().map(|x| x.1),
            );
        }
    }
    ctx.stop.store(true, Ordering::Relaxed);
    // Every loop ends within one cycle (bounded by its own timeouts).
    let join = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if join.is_err() {
        tasks.abort_all();
    }
    let max_gap = match steady.await {
        Ok(Ok(g)) => Some(g),
        Ok(Err(e)) => {
            ctx.tally.fail("steady media", &e);
            None
        }
        Err(e) => {
            ctx.tally.fail("steady media", &anyhow!(e));
            None
        }
    };
    let load_secs = t0.elapsed().as_secs_f64();

    // Settle: wait for the gauges to reach zero (bounded).
    let settle_t0 = Instant::now();
    let (mut turn_m, mut gw_m);
    loop {
        turn_m = scrape(turn.metrics).await?;
        gw_m = scrape(gw.admin).await?;
        let zero = |t: &str, k: &str| series(t, k) == Some(0.0);
        let done = sum(&turn_m, "callrelay_turn_allocations_active") == Some(0.0)
            && zero(&turn_m, "callrelay_turn_permissions_active")
            && zero(&turn_m, "callrelay_turn_channels_active")
            && series(&turn_m, "callrelay_turn_relay_ports_free") == Some(ports_free0)
            && zero(&gw_m, "callrelay_gateway_sessions")
            && zero(&gw_m, "callrelay_gateway_handles")
            && zero(&gw_m, "callrelay_gateway_registered_users")
            && zero(&gw_m, "callrelay_gateway_websocket_connections")
            && series(&turn_m, "callrelay_turn_worker_tasks").is_some_and(|t| t <= turn_tasks0)
            && series(&gw_m, "callrelay_gateway_tasks").is_some_and(|t| t <= gw_tasks0);
        if done || settle_t0.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_secs = settle_t0.elapsed().as_secs_f64();
    // The held abuse connections were dropped with their tasks; give the servers a
    // moment to see the FINs before counting fds.
    let fd_t0 = Instant::now();
    let (mut turn_end, mut gw_end);
    loop {
        turn_end = sample(turn.server.pid())?;
        gw_end = sample(gw.server.pid())?;
        if (turn_end.fds <= turn_base.fds && gw_end.fds <= gw_base.fds) || fd_t0.elapsed() > SETTLE
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Verdict.
    let tl = &ctx.tally;
    let mut checks = Vec::new();
    let udp = tl.udp_cycles.load(Ordering::Relaxed);
    let tcp = tl.tcp_cycles.load(Ordering::Relaxed);
    let calls = tl.calls.load(Ordering::Relaxed);
    let dropped = tl.dropped_calls.load(Ordering::Relaxed);
    let failures = tl.failures.load(Ordering::Relaxed);
    let (sent, back) = (
        tl.relayed_sent.load(Ordering::Relaxed),
        tl.relayed_back.load(Ordering::Relaxed),
    );
    let (ssent, sback) = (
        tl.steady_sent.load(Ordering::Relaxed),
        tl.steady_back.load(Ordering::Relaxed),
    );
    check(
        &mut checks,
        "every legitimate operation succeeded",
        failures == 0,
        format!(
            "{failures} failed; {udp} UDP + {tcp} TCP allocation cycles, {calls} calls, {dropped} calls with a dropped WebSocket"
        ),
    );
    check(
        &mut checks,
        "each kind of legitimate load ran",
        udp > 0
            && (tcp > 0 || a.tcp_loops == 0)
            && (calls > 0 || a.call_pairs == 0)
            && (dropped > 0 || a.drop_pairs == 0)
            && peak_allocs > 0.0
            && peak_sessions > 0.0,
        format!("peak allocations {peak_allocs}, peak sessions {peak_sessions}"),
    );
    check(
        &mut checks,
        "relayed packets came back",
        sent > 0 && back * 1000 >= sent * 999,
        format!("{back} of {sent} in the cycles; steady call {sback} of {ssent}"),
    );
    if let Some(g) = max_gap {
        check(
            &mut checks,
            "steady call media never stopped (also while the gateway was down)",
            g < Duration::from_secs(2) && sback * 100 >= ssent * 99,
            format!(
                "longest gap between echoed packets {:.0} ms",
                g.as_secs_f64() * 1e3
            ),
        );
    }
    let v = sum(&turn_m, "callrelay_turn_allocations_active");
    check(
        &mut checks,
        "callrelay_turn_allocations_active (all transports) back to 0",
        v == Some(0.0),
        format!("{v:?} after {settle_secs:.1} s"),
    );
    for (key, text) in [
        ("callrelay_turn_permissions_active", &turn_m),
        ("callrelay_turn_channels_active", &turn_m),
        ("callrelay_gateway_sessions", &gw_m),
        ("callrelay_gateway_handles", &gw_m),
        ("callrelay_gateway_registered_users", &gw_m),
        ("callrelay_gateway_websocket_connections", &gw_m),
    ] {
        let v = series(text, key);
        check(
            &mut checks,
            &format!("{key} back to 0"),
            v == Some(0.0),
            format!("{v:?} after {settle_secs:.1} s"),
        );
    }
    // The restarted gateway's baseline is the first one's (same configuration); a
    // scrape's own connection task is counted in both.
    for (name, key, text, base) in [
        (
            "turn-server",
            "callrelay_turn_worker_tasks",
            &turn_m,
            turn_tasks0,
        ),
        ("gateway", "callrelay_gateway_tasks", &gw_m, gw_tasks0),
    ] {
        let now = series(text, key);
        check(
            &mut checks,
            &format!("{name} tasks back to the level before the load"),
            now.is_some_and(|t| t <= base),
            format!("{base} -> {now:?}"),
        );
    }
    let pf = series(&turn_m, "callrelay_turn_relay_ports_free");
    check(
        &mut checks,
        "every relay port back in the pool",
        pf == Some(ports_free0),
        format!("{pf:?} free, {ports_free0} before"),
    );
    check(
        &mut checks,
        "turn-server fds back to the level before the load",
        turn_end.fds <= turn_base.fds,
        format!("{} -> {}", turn_base.fds, turn_end.fds),
    );
    check(
        &mut checks,
        "turn-server threads back to the level before the load",
        turn_end.threads <= turn_base.threads,
        format!("{} -> {}", turn_base.threads, turn_end.threads),
    );
    check(
        &mut checks,
        "gateway fds back to the level before the load",
        gw_end.fds <= gw_base.fds,
        format!("{} -> {}", gw_base.fds, gw_end.fds),
    );
    check(
        &mut checks,
        "gateway threads back to the level before the load",
        // The blocking pool keeps an idle thread up to 10 s (token file writes).
        gw_end.threads <= gw_base.threads + 1,
        format!("{} -> {}", gw_base.threads, gw_end.threads),
    );
    let warm = a.secs as f64 * a.warmup;
    for (name, s, from) in [
        ("turn-server", &turn_series, warm),
        (
            "gateway",
            &gw_series,
            // A restarted gateway is a new process with its own warm-up: the same
            // fraction of its own life in this run.
            gw_restarted_at.map_or(warm, |r| (r + (a.secs as f64 - r) * a.warmup).max(warm)),
        ),
    ] {
        let after: Vec<u64> = s
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, x)| x.rss_kib)
            .collect();
        match (after.first(), after.last(), after.iter().max()) {
            (Some(&first), Some(&last), Some(&max)) if after.len() >= 2 => {
                check(
                    &mut checks,
                    &format!("{name} RSS flat within 10 % after warm-up"),
                    last * 10 <= first * 11,
                    format!(
                        "{first} KiB at {from:.0} s -> {last} KiB at the end (max {max} KiB, {} samples)",
                        after.len()
                    ),
                );
            }
            _ => check(
                &mut checks,
                &format!("{name} RSS flat within 10 % after warm-up"),
                false,
                format!("too few samples after {from:.0} s (run longer)"),
            ),
        }
    }
    if !rotation.is_empty() {
        let tt = [0, 1].map(|i| tl.tls_turn[i].load(Ordering::Relaxed));
        let hs = [0, 1].map(|i| tl.https[i].load(Ordering::Relaxed));
        check(
            &mut checks,
            "TURN secret and both certificates swapped with SIGHUP under load",
            tt[0] > 0 && tt[1] > 0 && hs[0] > 0 && hs[1] > 0,
            format!(
                "{rotation}; TURN-over-TLS cycles {} on the old / {} on the new certificate, Janus-over-HTTPS {} / {} (failures: first check)",
                tt[0], tt[1], hs[0], hs[1]
            ),
        );
    }
    if !kill_report.is_empty() {
        check(
            &mut checks,
            "gateway SIGKILL mid-call + restart",
            true,
            kill_report,
        );
    }
    let abuse = tl.abuse.load(Ordering::Relaxed);
    let turn_rejected = sum(&turn_m, "callrelay_turn_quota_rejections_total").unwrap_or(0.0);
    let gw_errors = sum(&gw_m, "callrelay_gateway_errors_total").unwrap_or(0.0);
    // Bounded exit on SIGTERM, status 0.
    let (turn_exit, turn_code) = terminate(&mut turn.server)?;
    check(
        &mut checks,
        "turn-server exits on SIGTERM within its drain bound, status 0",
        turn_exit <= EXIT_BOUND && turn_code == Some(0),
        format!("{:.2} s, status {turn_code:?}", turn_exit.as_secs_f64()),
    );
    let (gw_exit, gw_code) = terminate(&mut gw.server)?;
    check(
        &mut checks,
        "gateway exits on SIGTERM, status 0",
        gw_exit <= EXIT_BOUND && gw_code == Some(0),
        format!("{:.2} s, status {gw_code:?}", gw_exit.as_secs_f64()),
    );

    println!(
        "load {load_secs:.0} s: {udp} UDP and {tcp} TCP allocation cycles ({:.1}/s), {calls} call cycles, {dropped} calls with a dropped WebSocket, {abuse} abuse messages",
        (udp + tcp) as f64 / load_secs
    );
    println!(
        "rejected by bounds: turn-server {turn_rejected} (quota_rejections_total), gateway {gw_errors} Janus errors (errors_total, since the restart)"
    );
    println!(
        "turn-server: RSS {} -> {} KiB, fds {} -> {}; gateway: RSS {} -> {} KiB, fds {} -> {}",
        turn_base.rss_kib,
        turn_end.rss_kib,
        turn_base.fds,
        turn_end.fds,
        gw_base.rss_kib,
        gw_end.rss_kib,
        gw_base.fds,
        gw_end.fds
    );
    println!();
    println!("| check | result | detail |");
    println!("|---|---|---|");
    let mut bad = 0;
    for c in &checks {
        if !c.ok {
            bad += 1;
        }
        println!(
            "| {} | {} | {} |",
            c.what,
            if c.ok { "pass" } else { "FAIL" },
            c.detail
        );
    }
    if let Ok(errs) = tl.errors.lock() {
        for e in errs.iter() {
            println!("failure: {e}");
        }
    }
    drop(echo);
    if bad > 0 {
        bail!(
            "soak: {bad} check(s) failed (logs: set CALLRELAY_BENCH_KEEP=1 to keep {:?})",
            scratch.0
        );
    }
    println!("soak: all {} checks passed", checks.len());
    Ok(())
}

fn sighup(pid: u32) -> Result<()> {
    Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()?;
    Ok(())
}

/// Waits (bounded) until a new TLS connection to `addr` presents certificate 1.
async fn wait_new_cert(ctx: &Ctx, addr: SocketAddr, t0: Instant) -> Result<f64> {
    for _ in 0..200 {
        if let Ok((_, 1)) = ctx.tls.connect(addr).await {
            return Ok(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} still presents the old certificate 10 s after SIGHUP")
}

/// Rotates the TURN secret and swaps both services' certificates under load: the
/// turn-server config gets secrets [new, old] and the second certificate is written
/// where both services read theirs, then SIGHUP to both. Once an Allocate with the new
/// secret succeeds the clients switch to it; 5 s later the old secret is dropped with a
/// second SIGHUP. Returns what it saw.
async fn rotate(ctx: &Ctx, turn: &Turn, gw: &Gw) -> Result<String> {
    ctx.tls.install(1)?;
    turn_config(
        &turn.config,
        &["soak-secret-2", "soak-secret-1"],
        &ctx.tls,
        turn.tls_addr,
    )?;
    let t0 = Instant::now();
    sighup(turn.server.pid())?;
    sighup(gw.server.pid())?;
    let probe = TurnAuth {
        server: turn.addr,
        secret: "soak-secret-2".into(),
    };
    // Observable event: the new secret is accepted.
    let mut secret_secs = None;
    for k in 0..100 {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let mut path = UdpPath {
            sock: &sock,
            server: turn.addr,
        };
        let creds = Creds::mint(&probe, &format!("probe{k}"))?;
        if let Ok(mut s) = Session::allocate(&mut path, &creds).await {
            s.release(&mut path).await?;
            secret_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secret_secs =
        secret_secs.context("the rotated secret was not accepted within 10 s of SIGHUP")?;
    if let Ok(mut s) = ctx.secret.0.write() {
        *s = "soak-secret-2".into();
    }
    let turn_cert = wait_new_cert(ctx, turn.tls_addr, t0).await?;
    let gw_cert = wait_new_cert(ctx, gw.http, t0).await?;
    // In-flight cycles minted with the old secret finish within a few seconds; then
    // the old secret goes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    turn_config(&turn.config, &["soak-secret-2"], &ctx.tls, turn.tls_addr)?;
    sighup(turn.server.pid())?;
    let report = format!(
        "after SIGHUP: new TURN secret accepted in {secret_secs:.2} s, new certificate served by turn-server in {turn_cert:.2} s and by the gateway in {gw_cert:.2} s; old secret removed 5 s later"
    );
    eprintln!("  rotated under load: {report}");
    Ok(report)
}

/// SIGKILL of the gateway while calls are up, then a restart on the same state
/// directory and ports. The token added before must still work (nobody re-adds it).
async fn kill_gateway(
    ctx: &Ctx,
    gw: &mut Gw,
    bin: &Path,
    scratch: &Path,
    ports: (u16, u16, u16),
) -> Result<String> {
    // A call that is up when the gateway dies: both sides must see their connection go.
    let mut lat = Histogram::default();
    let mut a = Conn::connect(gw.ws).await?;
    let mut b = Conn::connect(gw.ws).await?;
    let (sa, ha) = a.create_attach(&mut lat).await?;
    let (sb, hb) = b.create_attach(&mut lat).await?;
    a.request(
        msg(
            sa,
            ha,
            json!({"request": "register", "username": "chaos-a"}),
        ),
        &mut lat,
    )
    .await?;
    b.request(
        msg(
            sb,
            hb,
            json!({"request": "register", "username": "chaos-b"}),
        ),
        &mut lat,
    )
    .await?;
    let mut call = msg(sa, ha, json!({"request": "call", "username": "chaos-b"}));
    call["jsep"] = json!({"type": "offer", "sdp": gateway::OFFER});
    a.request(call, &mut lat).await?;
    b.wait(|m| plugin_event(m) == Some("incomingcall")).await?;
    let mut accept = msg(sb, hb, json!({"request": "accept"}));
    accept["jsep"] = json!({"type": "answer", "sdp": gateway::ANSWER});
    b.request(accept, &mut lat).await?;
    a.wait(|m| plugin_event(m) == Some("accepted")).await?;

    if let Ok(mut w) = ctx.chaos.0.lock() {
        *w = Some((Instant::now(), None));
    }
    let t0 = Instant::now();
    Command::new("kill")
        .arg("-KILL")
        .arg(gw.server.pid().to_string())
        .status()?;
    // Both browsers learn at once that the call is gone (their WebSocket closes).
    let ra = tokio::time::timeout(Duration::from_secs(5), a.read()).await;
    let rb = tokio::time::timeout(Duration::from_secs(5), b.read()).await;
    let closed_ms = t0.elapsed().as_secs_f64() * 1e3;
    let both_closed = matches!(ra, Ok(Err(_))) && matches!(rb, Ok(Err(_)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.server.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("gateway still alive after SIGKILL");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let down = Instant::now();
    // Restart on the same ports and state directory; the token is NOT added again.
    let new = start_gateway(bin, scratch, &ctx.tls, Some(ports), false, "2").await?;
    let restart_ms = down.elapsed().as_secs_f64() * 1e3;
    *gw = new;
    if let Ok(mut w) = ctx.chaos.0.lock()
        && let Some((from, _)) = *w
    {
        *w = Some((from, Some(Instant::now())));
    }
    // The token survived: a session can be created with it right away.
    let mut c = Conn::connect(gw.ws).await?;
    c.create_attach(&mut lat)
        .await
        .context("the token added before the SIGKILL was lost")?;
    drop(c);
    if !both_closed {
        bail!("after SIGKILL of the gateway a client's WebSocket stayed open: {ra:?} {rb:?}");
    }
    let report = format!(
        "both WebSockets of the call in progress closed {closed_ms:.0} ms after SIGKILL; restarted in {restart_ms:.0} ms; the token survived"
    );
    eprintln!("  gateway killed and restarted: {report}");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_reads_exact_keys_only() {
        let m = "# HELP x\ncallrelay_a 3\ncallrelay_a_total 5\ncallrelay_b{k=\"v\"} 2\ncallrelay_b{k=\"w\"} 4\n";
        assert_eq!(series(m, "callrelay_a"), Some(3.0));
        assert_eq!(series(m, "callrelay_c"), None);
        assert_eq!(series(m, "callrelay_b{k=\"w\"}"), Some(4.0));
        assert_eq!(sum(m, "callrelay_b"), Some(6.0));
        assert_eq!(sum(m, "callrelay_c"), None);
    }

    #[test]
    fn fresh_sources_are_distinct_and_never_network_or_broadcast() {
        let mut seen = std::collections::HashSet::new();
        for n in 1..=10_000 {
            let a = fresh_source(3, n);
            let o = a.octets();
            assert!(o[3] != 0 && o[3] != 255 && o[2] != 0, "{a}");
            assert!(seen.insert(a), "{a} twice");
            assert!(a.is_loopback());
        }
    }
}
