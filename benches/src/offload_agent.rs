//! The offload bench's agent (`callrelay-bench offload-agent`, hidden): one process inside
//! the client or the peer network namespace, driven by the orchestrator (`offload.rs`)
//! over stdin/stdout, one command per line and one answer line (`ok …` or `err …`) each.
//!
//! * `alloc SERVER N PEER_IP PORT_BASE` (client): N allocations from `--bind`, each with a
//!   ChannelBind 0x4000 to PEER_IP:PORT_BASE+i; answers the relayed addresses.
//! * `direct N PEER_IP PORT_BASE` (client): N plain UDP sockets from `--bind` sending to
//!   PEER_IP:PORT_BASE+i, no TURN (the kernel-forwarding floor); answers their addresses.
//! * `release` (client): drops the allocations or direct sockets (they close).
//! * `dests A1 A2 …` (peer): where each of the `--peers` sockets sends (the relayed
//!   addresses, in the order of `alloc`).
//! * `blast SECS RATE SIZE BURST`: sends for SECS from every socket, round robin, RATE
//!   datagrams/s in all (0 = as fast as it can), SIZE payload bytes (the client wraps them
//!   in ChannelData), BURST datagrams per send (one GSO call; 1 = lone packets, paced
//!   evenly); answers `sent skipped secs cpu` (cpu = the sender threads' CPU seconds).
//! * `count`: reads what waits in the receiving sockets, then this namespace's UDP MIB
//!   (`/proc/net/snmp`): datagrams delivered to a socket, that is InDatagrams (counted
//!   when read) plus RcvbufErrors (the sockets are read only here, so most overflow the
//!   receive buffer, which the kernel counts there); then InCsumErrors and NoPorts.
//! * `metrics ADDR`: turn-server's offload and relayed counters from `http://ADDR/metrics`.
//! * `quit`.
//!
//! The agent reads its data sockets only for `count`: what arrives is counted by the
//! kernel, so the receiving side costs the load generator little more than its softirq
//! work.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use quinn_udp::{Transmit, UdpSocketState};

use crate::stunc::{Allocation, TurnAuth};

pub(crate) const SECRET: &str = "bench-shared-secret";
pub(crate) const CHANNEL: u16 = 0x4000;
/// Longest a `blast` may run, whatever it is asked.
const MAX_BLAST_SECS: f64 = 60.0;
/// A thread that falls behind its pace by more than this much of its rate skips the
/// excess instead of sending it at once.
const CATCH_UP_SECS: f64 = 0.05;

#[derive(Args, Clone, Debug)]
pub(crate) struct AgentArgs {
    /// Local address of this namespace's interface.
    #[arg(long)]
    bind: IpAddr,
    /// Peer role: bind this many sockets on ports `--port-base`… (0 = client role).
    #[arg(long, default_value_t = 0)]
    peers: usize,
    #[arg(long, default_value_t = 40_000)]
    port_base: u16,
    /// Sender threads (the sockets are split among them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// One sending socket: a blocking std socket with quinn-udp's GSO state.
struct Out {
    sock: UdpSocket,
    state: UdpSocketState,
    dest: SocketAddr,
}

impl Out {
    fn new(sock: UdpSocket, dest: SocketAddr) -> Result<Self> {
        sock.set_nonblocking(false)?;
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20);
        // quinn-udp turns UDP GRO on for the socket its state is made from; this socket
        // must see (and count) every datagram separately, so a throwaway socket gives it.
        let donor = UdpSocket::bind(SocketAddr::new(sock.local_addr()?.ip(), 0))?;
        let state = UdpSocketState::new((&donor).into())?;
        Ok(Self { sock, state, dest })
    }

    /// Sends `buf` (whole `seg_len` datagrams) in as few GSO calls as the socket allows.
    fn send(&self, buf: &[u8], seg_len: usize) -> std::io::Result<()> {
        let max = self.state.max_gso_segments().clamp(1, 64) * seg_len;
        for chunk in buf.chunks(max) {
            let t = Transmit {
                destination: self.dest,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > seg_len).then_some(seg_len),
                src_ip: None,
            };
            self.state.try_send((&self.sock).into(), &t)?;
        }
        Ok(())
    }
}

#[expect(
    clippy::print_stdout,
    reason = "answers go to the orchestrator on stdout"
)]
pub(crate) fn run(a: &AgentArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let peers: Vec<UdpSocket> = (0..a.peers)
        .map(|i| {
            let port = a
                .port_base
                .checked_add(u16::try_from(i)?)
                .context("port range")?;
            let s = UdpSocket::bind(SocketAddr::new(a.bind, port))?;
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(64 << 10);
            anyhow::Ok(s)
        })
        .collect::<Result<_>>()?;
    let mut st = State {
        rt,
        peers,
        allocs: Vec::new(),
        outs: Vec::new(),
        channel_data: false,
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.as_slice() == ["quit"] {
            break;
        }
        let answer = st.handle(a, &w);
        let mut out = std::io::stdout().lock();
        match answer {
            Ok(s) => writeln!(out, "ok {s}")?,
            Err(e) => writeln!(out, "err {}", format!("{e:#}").replace('\n', " "))?,
        }
        out.flush()?;
    }
    println!("ok bye");
    Ok(())
}

/// What an agent holds between commands.
struct State {
    rt: tokio::runtime::Runtime,
    peers: Vec<UdpSocket>,
    allocs: Vec<Allocation>,
    outs: Vec<Out>,
    channel_data: bool,
}

impl State {
    /// Reads what waits in the receiving sockets: the kernel counts a datagram in
    /// InDatagrams only when it is read (RcvbufErrors when it did not fit).
    fn drain(&self) -> Result<()> {
        let socks: Vec<&UdpSocket> = if self.peers.is_empty() {
            self.outs.iter().map(|o| &o.sock).collect()
        } else {
            self.peers.iter().collect()
        };
        let mut buf = vec![0u8; 2048];
        for s in socks {
            s.set_nonblocking(true)?;
            // bounded: a receive buffer holds far fewer
            for _ in 0..1_000_000 {
                if s.recv(&mut buf).is_err() {
                    break;
                }
            }
            s.set_nonblocking(false)?;
        }
        Ok(())
    }

    fn handle(&mut self, a: &AgentArgs, w: &[&str]) -> Result<String> {
        match w {
            ["alloc", server, n, peer_ip, base] => {
                let auth = TurnAuth {
                    server: server.parse()?,
                    secret: SECRET.into(),
                };
                let (n, peer_ip, base): (usize, IpAddr, u16) =
                    (n.parse()?, peer_ip.parse()?, base.parse()?);
                self.outs.clear();
                self.allocs.clear();
                self.allocs = self
                    .rt
                    .block_on(allocate(&auth, a.bind, n, peer_ip, base))?;
                self.channel_data = true;
                let mut relays = String::new();
                for al in &self.allocs {
                    let dup = socket2::SockRef::from(&al.sock.sock).try_clone()?;
                    self.outs.push(Out::new(dup.into(), auth.server)?);
                    relays.push(' ');
                    relays.push_str(&al.relay.to_string());
                }
                Ok(relays.trim().to_owned())
            }
            ["direct", n, peer_ip, base] => {
                let (n, peer_ip, base): (usize, IpAddr, u16) =
                    (n.parse()?, peer_ip.parse()?, base.parse()?);
                self.outs.clear();
                self.allocs.clear();
                self.channel_data = false;
                let mut locals = String::new();
                for i in 0..n {
                    let sock = UdpSocket::bind(SocketAddr::new(a.bind, 0))?;
                    let port = base.checked_add(u16::try_from(i)?).context("port range")?;
                    locals.push(' ');
                    locals.push_str(&sock.local_addr()?.to_string());
                    self.outs
                        .push(Out::new(sock, SocketAddr::new(peer_ip, port))?);
                }
                Ok(locals.trim().to_owned())
            }
            ["release"] => {
                self.outs.clear();
                self.allocs.clear();
                Ok(String::new())
            }
            ["dests", dests @ ..] => {
                if dests.len() > self.peers.len() {
                    bail!(
                        "{} destinations for {} sockets",
                        dests.len(),
                        self.peers.len()
                    );
                }
                self.outs.clear();
                self.channel_data = false;
                for (s, d) in self.peers.iter().zip(dests) {
                    self.outs.push(Out::new(s.try_clone()?, d.parse()?)?);
                }
                Ok(String::new())
            }
            ["blast", secs, rate, size, burst] => {
                let secs: f64 = secs.parse()?;
                let spec = Blast {
                    secs: secs.clamp(0.0, MAX_BLAST_SECS),
                    rate: rate.parse()?,
                    size: size.parse()?,
                    burst: burst.parse::<usize>()?.clamp(1, 64),
                    channel_data: self.channel_data,
                };
                let (sent, skipped, secs, cpu) = blast(&self.outs, a.threads, &spec)?;
                Ok(format!("{sent} {skipped} {secs:.6} {cpu:.6}"))
            }
            ["count"] => {
                self.drain()?;
                let (delivered, csum, noports) = udp_mib()?;
                Ok(format!("{delivered} {csum} {noports}"))
            }
            ["metrics", addr] => metrics(addr.parse()?),
            _ => bail!("unknown command {:?}", w.join(" ")),
        }
    }
}

/// `n` allocations from `bind`, each bound to channel 0x4000 toward `peer_ip:base+i`.
/// The first one is retried for up to 10 s: the server may still be starting.
async fn allocate(
    auth: &TurnAuth,
    bind: IpAddr,
    n: usize,
    peer_ip: IpAddr,
    base: u16,
) -> Result<Vec<Allocation>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("offload{i}");
        let mut a = loop {
            match Allocation::allocate_from(auth, &user, bind).await {
                Ok(a) => break a,
                Err(e) if i == 0 && Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let port = base.checked_add(u16::try_from(i)?).context("port range")?;
        let peer = SocketAddr::new(peer_ip, port);
        a.create_permission(peer).await?;
        a.channel_bind(CHANNEL, peer).await?;
        out.push(a);
    }
    Ok(out)
}

struct Blast {
    secs: f64,
    /// Datagrams/s over all threads; 0 = unpaced.
    rate: f64,
    size: usize,
    burst: usize,
    channel_data: bool,
}

/// Sends on every socket for `spec.secs`; returns (sent, skipped, seconds, the sender
/// threads' CPU seconds).
fn blast(outs: &[Out], threads: usize, spec: &Blast) -> Result<(u64, u64, f64, f64)> {
    if outs.is_empty() {
        bail!("nothing to send from: no allocation or destination yet");
    }
    let threads = threads.clamp(1, outs.len());
    let start = Instant::now();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<&Out> = outs.iter().skip(t).step_by(threads).collect();
                scope.spawn(move || blast_thread(&mine, spec, spec.rate / threads as f64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, 0.0)))
            .collect::<Vec<_>>()
    });
    let secs = start.elapsed().as_secs_f64();
    let sent = results.iter().map(|r| r.0).sum();
    let skipped = results.iter().map(|r| r.1).sum();
    let cpu = results.iter().map(|r| r.2).sum();
    Ok((sent, skipped, secs, cpu))
}

/// One sender thread: bursts round robin over `outs`, paced to `rate` (0 = unpaced).
/// Bounded by time; a send that fails counts as skipped. Returns (sent, skipped, this
/// thread's CPU seconds).
fn blast_thread(outs: &[&Out], spec: &Blast, rate: f64) -> (u64, u64, f64) {
    let cpu0 = crate::procfs::thread_cpu_secs().unwrap_or(0.0);
    let header = if spec.channel_data { 4 } else { 0 };
    let seg_len = header + spec.size;
    let mut buf = vec![0u8; seg_len * spec.burst];
    for (i, seg) in buf.chunks_mut(seg_len).enumerate() {
        if spec.channel_data {
            seg[0..2].copy_from_slice(&CHANNEL.to_be_bytes());
            seg[2..4].copy_from_slice(&(spec.size as u16).to_be_bytes());
        }
        for (k, b) in seg[header..].iter_mut().enumerate() {
            *b = (i + k) as u8;
        }
    }
    let burst = spec.burst as u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(spec.secs);
    let (mut sent, mut skipped, mut next) = (0u64, 0u64, 0usize);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if rate > 0.0 {
            let el = (now - start).as_secs_f64();
            let done = sent + skipped;
            let due = (rate * el) as u64;
            if due < done + burst {
                let wait = (done + burst) as f64 / rate - el;
                if wait > 0.000_5 {
                    std::thread::sleep(Duration::from_secs_f64(wait - 0.000_2));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let cap = (rate * CATCH_UP_SECS) as u64 + burst;
            if due - done > cap {
                skipped += due - done - cap;
            }
        }
        let out = outs[next % outs.len()];
        next = next.wrapping_add(1);
        match out.send(&buf, seg_len) {
            Ok(()) => sent += burst,
            Err(_) => skipped += burst,
        }
    }
    let cpu = crate::procfs::thread_cpu_secs().unwrap_or(0.0) - cpu0;
    (sent, skipped, cpu)
}

/// (delivered to a socket, checksum errors, no port) from this namespace's UDP MIB.
fn udp_mib() -> Result<(u64, u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let get = |name: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .with_context(|| format!("no {name} in /proc/net/snmp"))?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .context("short Udp line")?
            .parse()?)
    };
    Ok((
        get("InDatagrams")? + get("RcvbufErrors")?,
        get("InCsumErrors")?,
        get("NoPorts")?,
    ))
}

/// The offload and relayed counters of turn-server's `/metrics` at `addr`.
fn metrics(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let fallback = text
        .lines()
        .filter(|l| l.starts_with("callrelay_turn_offload_fallback_total{"))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
        .filter_map(|l| l.split('"').nth(1))
        .collect::<Vec<_>>()
        .join(",");
    Ok(format!(
        "{} {} {} {} {} {}",
        value("callrelay_turn_offload_active "),
        value("callrelay_turn_offload_packets_total{direction=\"to_peer\"} "),
        value("callrelay_turn_offload_packets_total{direction=\"to_client\"} "),
        value("callrelay_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} "),
        value("callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"} "),
        if fallback.is_empty() { "-" } else { &fallback },
    ))
}
