//! Gateway cluster bench (issue 14, docs/scale-out.md): call cycles/s and call set-up
//! latency with 1, 2 and 3 gateway nodes on this machine over one `nats-server -js`,
//! against a single node without NATS; and idle one-session WebSockets spread over the
//! nodes (RSS per session per node, NATS' RSS, the presence bucket's cost per
//! registered user).
//!
//! Every pair's caller and callee sit on different nodes (connection `i` goes to node
//! `i % nodes`, as a round-robin load balancer spreads browsers), so every call crosses
//! NATS. Each user opens one WebSocket with one session, as a browser does, and
//! registers once; the loop is call (complete offer, `trickle: false`) → incomingcall →
//! accept (complete answer) → accepted → hangup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;

use crate::gateway::{ADMIN_SECRET, ANSWER, Conn, OFFER, add_token, msg, plugin_event};
use crate::procfs::{CpuMeter, nofile_limit, rss_kib};
use crate::report::{self, Figures};
use crate::servers::{ScratchDir, Server, command_output, free_port, sibling_binary, wait_tcp};
use crate::stats::Histogram;
use crate::{Common, first_line, present, print_header};

#[derive(Args, Clone)]
pub(crate) struct ClusterArgs {
    /// Our gateway binary (release build). Default: next to this binary.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// The NATS server (Debian package nats-server).
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Set-ups to compare (comma separated): 1 (one node, no NATS: today's single
    /// node), 1n (one node with nats_url), 2, 3 (nodes on one nats-server).
    #[arg(long, value_delimiter = ',', default_value = "1,1n,2,3")]
    setups: Vec<String>,
    /// Concurrent caller/callee pairs in the call loop.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Seconds of the call loop per run (also the bound of the one-pair latency step).
    #[arg(long, default_value_t = 5.0)]
    loop_secs: f64,
    /// Call cycles of the one-pair (low load) set-up latency step.
    #[arg(long, default_value_t = 300)]
    latency_calls: usize,
    /// One-session WebSockets per node in the idle step (0: skip the step).
    #[arg(long, default_value_t = 2000)]
    idle_per_node: usize,
    /// Set-ups that run the idle step (comma separated, as --setups).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    idle_setups: Vec<String>,
    /// Skip registering the idle WebSockets' users (the presence bucket's cost).
    #[arg(long)]
    no_register: bool,
}

/// One configuration of the bench: a column of the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    /// One node without NATS (today's single node).
    Single,
    /// Nodes with `nats_url` on one nats-server.
    Nats(usize),
}

impl Setup {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "1" => Self::Single,
            "1n" => Self::Nats(1),
            "2" => Self::Nats(2),
            "3" => Self::Nats(3),
            other => bail!("unknown set-up {other:?} (1, 1n, 2, 3)"),
        })
    }

    fn column(self) -> &'static str {
        match self {
            Self::Single => "1 node",
            Self::Nats(1) => "1 node+NATS",
            Self::Nats(2) => "2 nodes",
            Self::Nats(_) => "3 nodes",
        }
    }

    fn nodes(self) -> usize {
        match self {
            Self::Single => 1,
            Self::Nats(n) => n,
        }
    }
}

struct Node {
    server: Server,
    ws: SocketAddr,
    admin: SocketAddr,
}

/// nats-server (absent for [`Setup::Single`]) and the gateway nodes, stopped on drop.
struct Cluster {
    nodes: Vec<Node>,
    nats: Option<Server>,
}

impl Cluster {
    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.server.pid()).collect()
    }

    fn check_alive(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.server.check_alive()?;
        }
        if let Some(n) = &mut self.nats {
            n.check_alive()?;
        }
        Ok(())
    }
}

fn gateway_path(a: &ClusterArgs) -> PathBuf {
    a.gateway
        .clone()
        .unwrap_or_else(|| sibling_binary("gateway"))
}

/// Starts nats-server and the nodes, shares the bench token, and waits until every
/// node accepts it and (cluster) sees every other node.
async fn start(setup: Setup, a: &ClusterArgs, scratch: &Path, tag: &str) -> Result<Cluster> {
    let dir = scratch.join(format!("{}-{tag}", setup.column().replace([' ', '+'], "_")));
    std::fs::create_dir_all(&dir)?;
    let mut nats = None;
    let mut nats_url = None;
    if let Setup::Nats(_) = setup {
        let port = free_port()?;
        let mut cmd = Command::new(&a.nats_server);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("nats"));
        let mut s = Server::spawn("nats-server", cmd, &dir.join("nats.log"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        tokio::task::spawn_blocking(move || wait_tcp(addr, Duration::from_secs(20))).await??;
        s.check_alive()?;
        nats = Some(s);
        nats_url = Some(format!("nats://{addr}"));
    }
    let mut nodes = Vec::new();
    for i in 0..setup.nodes() {
        let (wsp, httpp, adminp) = (free_port()?, free_port()?, free_port()?);
        let state = dir.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&state)?;
        let mut cmd = Command::new(gateway_path(a));
        cmd.args(["--listen", &format!("127.0.0.1:{wsp}")])
            .args(["--http-listen", &format!("127.0.0.1:{httpp}")])
            .args(["--admin-listen", &format!("127.0.0.1:{adminp}")])
            .args(["--admin-secret", ADMIN_SECRET, "--token-auth"])
            .args(["--session-timeout", "0"])
            // every load client shares one token: lift the per-token cap (64), which
            // a real deployment (one token per Mattermost user) never reaches
            .args(["--max-sessions-per-token", "0"])
            // the idle step's WebSockets come from loopback, which is a trusted proxy
            // by default (no per-address cap); the total cap must hold them
            .args([
                "--max-connections",
                &(a.idle_per_node + 1000).max(10_000).to_string(),
            ])
            .arg("--state-dir")
            .arg(&state)
            // CALLRELAY_BENCH_GATEWAY_LOG (e.g. `info`) with CALLRELAY_BENCH_KEEP=1 keeps
            // the nodes' logs for a failure's diagnosis
            .env(
                "RUST_LOG",
                std::env::var("CALLRELAY_BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            );
        if let Some(url) = &nats_url {
            cmd.args(["--nats-url", url, "--node-id", &format!("n{}", i + 1)]);
        }
        let log = dir.join(format!("gateway-n{}.log", i + 1));
        let server = Server::spawn(&format!("gateway n{}", i + 1), cmd, &log)?;
        let ws: SocketAddr = ([127, 0, 0, 1], wsp).into();
        let admin: SocketAddr = ([127, 0, 0, 1], adminp).into();
        nodes.push(Node { server, ws, admin });
    }
    let mut c = Cluster { nodes, nats };
    for n in &c.nodes {
        let (ws, admin) = (n.ws, n.admin);
        tokio::task::spawn_blocking(move || {
            wait_tcp(ws, Duration::from_secs(20))?;
            wait_tcp(admin, Duration::from_secs(20))
        })
        .await?
        .with_context(|| format!("a gateway node is not listening; see {dir:?}"))?;
    }
    c.check_alive()
        .with_context(|| format!("see the logs in {dir:?}"))?;
    // Mattermost adds the token on one node; the others learn it through NATS
    add_token(c.nodes[0].admin).await?;
    for n in &c.nodes {
        until_token(n.ws).await?;
    }
    if setup.nodes() > 1 {
        for n in &c.nodes {
            until_metric(
                n.admin,
                "callrelay_gateway_cluster_peers",
                (setup.nodes() - 1) as f64,
            )
            .await?;
        }
    }
    Ok(c)
}

/// Polls `create` with the bench token on `ws` until it succeeds (10 s bound).
async fn until_token(ws: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = Conn::connect(ws).await?;
    loop {
        match c
            .request(json!({"janus": "create"}), &mut Histogram::default())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("the token never reached the node at {ws}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The Prometheus text on the node's admin listener (`GET /metrics`).
async fn metrics_text(admin: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out)).await??;
    Ok(out)
}

/// One series of the node's metrics.
async fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    metrics_text(admin)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .context("series not found")?
        .trim()
        .parse()
        .with_context(|| format!("{series} on {admin}"))
}

async fn until_metric(admin: SocketAddr, series: &str, want: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = metric(admin, series).await;
        if matches!(v, Ok(x) if x == want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{series} on {admin} is {v:?} after 15 s, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A user: one WebSocket, one session, one videocall handle, registered as `name`.
struct User {
    c: Conn,
    sid: u64,
    hid: u64,
    name: String,
}

async fn user(ws: SocketAddr, name: String) -> Result<User> {
    let mut c = Conn::connect(ws).await?;
    let lat = &mut Histogram::default();
    let (sid, hid) = c.create_attach(lat).await?;
    register(&mut c, sid, hid, &name).await?;
    Ok(User { c, sid, hid, name })
}

async fn register(c: &mut Conn, sid: u64, hid: u64, name: &str) -> Result<()> {
    let r = c
        .request(
            msg(sid, hid, json!({"request": "register", "username": name})),
            &mut Histogram::default(),
        )
        .await?;
    if plugin_event(&r) != Some("registered") {
        bail!("register {name}: {r}");
    }
    Ok(())
}

/// Polls the videocall `list` of `u` until it names `who` (10 s bound): the caller's
/// node knows the callee (its copy of the presence bucket is a watch).
async fn until_listed(u: &mut User, who: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r =
            u.c.request(
                msg(u.sid, u.hid, json!({"request": "list"})),
                &mut Histogram::default(),
            )
            .await?;
        let listed = r["plugindata"]["data"]["result"]["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == who));
        if listed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{who} not in {}'s list after 10 s: {r}", u.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct PairStats {
    cycles: u64,
    /// call sent → incomingcall read at the callee.
    setup: Histogram,
    error: Option<String>,
}

/// One caller/callee pair (registered once) looping call cycles until `deadline` or
/// `max_cycles`.
async fn pair_cycles(
    caller_ws: SocketAddr,
    callee_ws: SocketAddr,
    names: (String, String),
    start: Instant,
    deadline: Instant,
    max_cycles: usize,
) -> PairStats {
    let mut st = PairStats::default();
    let r = async {
        let mut a = user(caller_ws, names.0).await?;
        let mut b = user(callee_ws, names.1).await?;
        until_listed(&mut a, &b.name).await?;
        // every pair starts together, after every user registered
        tokio::time::sleep_until(start.into()).await;
        // request latencies (the gateway bench reports them; here only set-up counts)
        let lat = &mut Histogram::default();
        for _ in 0..max_cycles {
            if Instant::now() >= deadline {
                break;
            }
            let mut call = msg(a.sid, a.hid, json!({"request": "call", "username": b.name}));
            call["jsep"] = json!({"type": "offer", "sdp": OFFER, "trickle": false});
            let t0 = Instant::now();
            let sb = b.sid;
            let (calling, inc) = tokio::join!(a.c.request(call, lat), async {
                let m =
                    b.c.wait(|m| m["session_id"] == sb && plugin_event(m) == Some("incomingcall"))
                        .await;
                (m, t0.elapsed())
            });
            let calling = calling?;
            if plugin_event(&calling) != Some("calling") {
                bail!("call: expected calling, got {calling}");
            }
            let (inc, took) = (inc.0?, inc.1);
            if inc["jsep"]["type"] != "offer" {
                bail!("incomingcall without offer: {inc}");
            }
            st.setup.record_us(took.as_micros() as u64);
            let mut accept = msg(b.sid, b.hid, json!({"request": "accept"}));
            accept["jsep"] = json!({"type": "answer", "sdp": ANSWER, "trickle": false});
            b.c.request(accept, lat).await?;
            let sa = a.sid;
            let acc =
                a.c.wait(|m| m["session_id"] == sa && plugin_event(m) == Some("accepted"))
                    .await?;
            if acc["jsep"]["type"] != "answer" {
                bail!("accepted without answer: {acc}");
            }
            a.c.request(msg(a.sid, a.hid, json!({"request": "hangup"})), lat)
                .await?;
            b.c.wait(|m| m["session_id"] == sb && plugin_event(m) == Some("hangup"))
                .await?;
            st.cycles += 1;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        st.error = Some(format!("{e:#}"));
    }
    st
}

/// Node of connection `i`: round robin, so caller `2p` and callee `2p + 1` are on
/// different nodes whenever there are two or more.
fn node_of(c: &Cluster, i: usize) -> SocketAddr {
    c.nodes[i % c.nodes.len()].ws
}

fn set_latency(f: &mut Figures, what: &str, h: &Histogram) {
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        f.set(
            &format!("call set-up {name} µs ({what})"),
            h.quantile_us(q).unwrap_or(f64::NAN),
        );
    }
}

/// Rows 1 and 2: set-up latency with one pair, then call cycles/s, CPU and set-up
/// latency under the load of `pairs` pairs.
async fn loop_step(
    setup: Setup,
    a: &ClusterArgs,
    scratch: &Path,
    run: usize,
    f: &mut Figures,
) -> Result<()> {
    let mut c = start(setup, a, scratch, &format!("loop{run}")).await?;
    // low load: one pair
    let t0 = Instant::now() + Duration::from_millis(100);
    let one = pair_cycles(
        node_of(&c, 0),
        node_of(&c, 1),
        ("lat-a".into(), "lat-b".into()),
        t0,
        t0 + Duration::from_secs_f64(a.loop_secs),
        a.latency_calls,
    )
    .await;
    if let Some(e) = one.error {
        bail!("{}: the one-pair step failed: {e}", setup.column());
    }
    set_latency(f, "1 pair", &one.setup);

    // load: every pair starts once all registered (bounded: 20 s for that)
    let start_at =
        Instant::now() + Duration::from_millis(200) + Duration::from_millis(20) * a.pairs as u32;
    let deadline = start_at + Duration::from_secs_f64(a.loop_secs);
    let pairs = a.pairs;
    let loads = (0..pairs).map(|p| {
        pair_cycles(
            node_of(&c, 2 * p),
            node_of(&c, 2 * p + 1),
            (format!("p{p}a"), format!("p{p}b")),
            start_at,
            deadline,
            1_000_000,
        )
    });
    let measure = async {
        tokio::time::sleep_until(start_at.into()).await;
        let nodes: Vec<CpuMeter> = c
            .pids()
            .into_iter()
            .map(CpuMeter::start)
            .collect::<Result<_>>()?;
        let nats = c
            .nats
            .as_ref()
            .map(|n| CpuMeter::start(n.pid()))
            .transpose()?;
        let client = CpuMeter::start(std::process::id())?;
        tokio::time::sleep_until(deadline.into()).await;
        let mut node_cpu = 0.0;
        for m in &nodes {
            node_cpu += m.stop()?.0;
        }
        let nats_cpu = nats.map(|m| m.stop()).transpose()?.map_or(0.0, |x| x.0);
        let (client_cpu, secs) = client.stop()?;
        anyhow::Ok((node_cpu, nats_cpu, client_cpu, secs))
    };
    let (stats, cpu) = tokio::join!(join_all(loads), measure);
    let (node_cpu, nats_cpu, client_cpu, secs) = cpu?;
    let mut setup_lat = Histogram::default();
    let (mut cycles, mut errors) = (0, 0);
    for p in &stats {
        setup_lat.merge(&p.setup);
        cycles += p.cycles;
        if let Some(e) = &p.error {
            if errors == 0 {
                eprintln!("  {} pair failed: {e}", setup.column());
            }
            errors += 1;
        }
    }
    eprintln!(
        "  {}: 1 pair: {} cycles, set-up p50 {:?} µs; {pairs} pairs: {cycles} call cycles in {secs:.2}s, {errors} failed pairs, nodes cpu {:.0}%, nats cpu {:.0}%, load client cpu {:.0}%",
        setup.column(),
        one.cycles,
        one.setup.quantile_us(0.5),
        100.0 * node_cpu / secs,
        100.0 * nats_cpu / secs,
        100.0 * client_cpu / secs,
    );
    if errors > 0 {
        // what each node counted of its cluster messages, for the failure's diagnosis
        for n in &c.nodes {
            if let Ok(text) = metrics_text(n.admin).await {
                for l in text.lines().filter(|l| {
                    l.starts_with("callrelay_gateway_cluster_message")
                        || l.starts_with("callrelay_gateway_nats_connected")
                }) {
                    eprintln!("    {} {l}", n.admin);
                }
            }
        }
    }
    c.check_alive()?;
    if cycles == 0 {
        bail!("{}: no call cycle completed", setup.column());
    }
    if errors > 0 {
        crate::mark_failed();
    }
    f.set(
        &format!("call cycles/s ({pairs} pairs)"),
        cycles as f64 / secs,
    );
    f.set(
        "server CPU µs per call cycle (all nodes)",
        node_cpu * 1e6 / cycles as f64,
    );
    f.set(
        "  NATS CPU µs per call cycle",
        nats_cpu * 1e6 / cycles as f64,
    );
    f.set(
        "  load client CPU µs per call cycle",
        client_cpu * 1e6 / cycles as f64,
    );
    f.set(
        "CPU % in use (nodes + NATS + load client)",
        100.0 * (node_cpu + nats_cpu + client_cpu) / secs,
    );
    set_latency(f, &format!("{pairs} pairs"), &setup_lat);
    f.set("failed pairs", errors as f64);
    Ok(())
}

/// A WebSocket with one session and one videocall handle.
struct Idle {
    c: Conn,
    sid: u64,
    hid: u64,
}

/// Opens `count` one-session WebSockets, connection `i` on node `i % nodes`, at most
/// 64 set-ups at a time, until `deadline`.
async fn open_idle(c: &Cluster, count: usize, deadline: Instant) -> Result<Vec<Idle>> {
    let mut set_ups = futures_util::stream::iter(0..count)
        .map(|i| {
            let ws = node_of(c, i);
            async move {
                let mut c = Conn::connect(ws).await?;
                let (sid, hid) = c.create_attach(&mut Histogram::default()).await?;
                anyhow::Ok(Idle { c, sid, hid })
            }
        })
        .buffered(64);
    let mut out = Vec::with_capacity(count);
    loop {
        match tokio::time::timeout_at(deadline.into(), set_ups.next()).await {
            Ok(Some(Ok(s))) => out.push(s),
            Ok(Some(Err(e))) => return Err(e.context(format!("after {} WebSockets", out.len()))),
            Ok(None) => return Ok(out),
            Err(_) => bail!("time bound reached after {} WebSockets", out.len()),
        }
    }
}

fn rss_all(c: &Cluster) -> Result<(Vec<u64>, Option<u64>)> {
    let nodes = c.pids().into_iter().map(rss_kib).collect::<Result<_>>()?;
    let nats = c.nats.as_ref().map(|n| rss_kib(n.pid())).transpose()?;
    Ok((nodes, nats))
}

/// Per node: (after − before) in bytes / `per_node`; the mean over nodes.
fn per_item(before: &[u64], after: &[u64], per_node: usize) -> f64 {
    let sum: f64 = before
        .iter()
        .zip(after)
        .map(|(b, a)| (a.saturating_sub(*b) * 1024) as f64 / per_node as f64)
        .sum();
    sum / before.len().max(1) as f64
}

/// Row 3: `idle_per_node` one-session WebSockets on every node, then (unless
/// `--no-register`) each registers a user.
async fn idle_step(
    setup: Setup,
    a: &ClusterArgs,
    scratch: &Path,
    run: usize,
    f: &mut Figures,
) -> Result<()> {
    const WARM: usize = 20;
    let k = setup.nodes();
    let per = a.idle_per_node;
    let n = per * k;
    let need = (n + WARM * k + 300) as u64;
    if let Some(limit) = nofile_limit(std::process::id())?
        && limit < need
    {
        bail!(
            "{n} WebSockets need {need} open files, this process may open {limit} \
             (benches/run raises the soft limit to the hard limit)"
        );
    }
    let mut c = start(setup, a, scratch, &format!("idle{run}")).await?;
    let warm = open_idle(&c, WARM * k, Instant::now() + Duration::from_secs(20))
        .await
        .context("warm-up")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, nats0) = rss_all(&c)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20) + Duration::from_millis(3) * n as u32;
    let mut idle = open_idle(&c, n, deadline).await?;
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, nats1) = rss_all(&c)?;
    c.check_alive()?;
    let ws_per = per_item(&rss0, &rss1, per);
    eprintln!(
        "  {}: {n} one-session WebSockets in {secs:.1}s; node RSS KiB {rss0:?} -> {rss1:?} ({ws_per:.0} B each); NATS RSS KiB {nats0:?} -> {nats1:?}",
        setup.column()
    );
    f.set(
        &format!("RSS bytes per one-session WebSocket, per node ({per} per node)"),
        ws_per,
    );
    f.set(
        "one-session WebSocket set-ups/s (all nodes)",
        n as f64 / secs,
    );
    if let Some(x) = nats1 {
        f.set("NATS RSS MiB with the WebSockets open", x as f64 / 1024.0);
    }
    if !a.no_register {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(20) + Duration::from_millis(3) * n as u32;
        let regs = futures_util::stream::iter(idle.iter_mut().enumerate())
            .map(
                |(i, s)| async move { register(&mut s.c, s.sid, s.hid, &format!("idle{i}")).await },
            )
            .buffer_unordered(64);
        let done = tokio::time::timeout_at(
            deadline.into(),
            regs.fold(Ok(0usize), |acc, r| async move {
                match (acc, r) {
                    (Ok(n), Ok(())) => Ok(n + 1),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }),
        )
        .await
        .map_err(|_| anyhow!("time bound reached registering {n} users"))??;
        let secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss2, nats2) = rss_all(&c)?;
        c.check_alive()?;
        let reg_per = per_item(&rss1, &rss2, per);
        eprintln!(
            "  {}: {done} users registered in {secs:.1}s; node RSS KiB {rss1:?} -> {rss2:?} ({reg_per:.0} B each); NATS RSS KiB {nats1:?} -> {nats2:?}",
            setup.column()
        );
        f.set("RSS bytes per registered user, per node", reg_per);
        f.set("registrations/s (all nodes, 64 in flight)", n as f64 / secs);
        if let (Some(a0), Some(a1)) = (nats1, nats2) {
            f.set(
                "  NATS RSS bytes per registered user",
                (a1.saturating_sub(a0) * 1024) as f64 / n as f64,
            );
            f.set("NATS RSS MiB with the users registered", a1 as f64 / 1024.0);
        }
    }
    // the servers go first: their side holds the closed sockets' TIME_WAIT
    drop(c);
    drop(idle);
    drop(warm);
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
pub(crate) fn run(common: Common, a: &ClusterArgs) -> Result<()> {
    let mut a = a.clone();
    let mut runs = common.runs.max(1);
    if common.smoke {
        runs = 1;
        a.setups = vec!["1".into(), "3".into()];
        a.pairs = a.pairs.min(2);
        a.loop_secs = 1.0;
        a.latency_calls = 20;
        a.idle_per_node = a.idle_per_node.min(50);
        a.idle_setups = vec!["3".into()];
    }
    let setups = a
        .setups
        .iter()
        .map(|s| Setup::parse(s))
        .collect::<Result<Vec<_>>>()
        .context("--setups")?;
    let idle_setups = a
        .idle_setups
        .iter()
        .map(|s| Setup::parse(s))
        .collect::<Result<Vec<_>>>()
        .context("--idle-setups")?;
    if !present(
        &gateway_path(&a),
        "gateway (cargo build --release -p gateway)",
    ) {
        bail!("no gateway binary");
    }
    let need_nats = setups
        .iter()
        .chain(&idle_setups)
        .any(|s| matches!(s, Setup::Nats(_)));
    if need_nats && !a.nats_server.is_file() {
        eprintln!(
            "note: nats-server not found at {} (Debian package nats-server) — skipping the cluster bench",
            a.nats_server.display()
        );
        return Ok(());
    }
    let scratch = ScratchDir::new("cluster")?;
    print_header("Gateway cluster: 1, 2 and 3 nodes over NATS vs one node");
    println!(
        "versions: gateway {} ({}); {}",
        first_line(&command_output(
            &gateway_path(&a).to_string_lossy(),
            &["--version"]
        )),
        gateway_path(&a).display(),
        first_line(&command_output(
            &a.nats_server.to_string_lossy(),
            &["--version"]
        )),
    );
    println!(
        "runs={runs} pairs={} loop_secs={} latency_calls={} idle_per_node={} idle_setups={:?} register={}",
        a.pairs, a.loop_secs, a.latency_calls, a.idle_per_node, a.idle_setups, !a.no_register
    );
    println!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cols: Vec<Setup> = setups.clone();
    for s in &idle_setups {
        if !cols.contains(s) {
            cols.push(*s);
        }
    }
    let mut all: Vec<(Setup, Vec<Figures>)> = cols.iter().map(|&s| (s, Vec::new())).collect();
    for run in 0..runs {
        eprintln!("== cluster run {}/{runs}", run + 1);
        for (setup, figs) in &mut all {
            let mut f = Figures::default();
            let s = *setup;
            let r: Result<()> = rt.block_on(async {
                if setups.contains(&s) {
                    loop_step(s, &a, &scratch.0, run, &mut f).await?;
                }
                if a.idle_per_node > 0 && idle_setups.contains(&s) {
                    idle_step(s, &a, &scratch.0, run, &mut f).await?;
                }
                anyhow::Ok(())
            });
            if let Err(e) = r {
                eprintln!("  {} failed: {e:#}", s.column());
                crate::mark_failed();
            }
            figs.push(f);
        }
    }
    let columns: Vec<(&str, &[Figures])> = all
        .iter()
        .map(|(s, f)| (s.column(), f.as_slice()))
        .collect();
    let reference = Setup::Single.column();
    let ours = all
        .iter()
        .rev()
        .find(|(s, _)| *s != Setup::Single)
        .map_or(reference, |(s, _)| s.column());
    println!("{}", report::table(&columns, ours, reference, ""));
    Ok(())
}
