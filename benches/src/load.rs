//! The data-plane load: paced ChannelData from client sockets, an echo peer, and
//! loss/latency accounting. Timestamps ride in the payload, so latency is measured
//! with one clock (this process).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;

use crate::stats::Histogram;
use crate::udp::{BatchSocket, RecvScratch};

const MAGIC: u32 = 0x4352_4231; // "CRB1"
/// magic, step id, seq, timestamp.
pub(crate) const MIN_PAYLOAD: usize = 24;

/// Each step stamps its id into the payload so that late packets of an earlier
/// (overloaded) step are not counted in the next one.
pub(crate) static STEP: AtomicU32 = AtomicU32::new(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// One sender: `sockets[sock]` sends ChannelData on `channel` to `dest`.
#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub(crate) sock: usize,
    pub(crate) dest: SocketAddr,
    pub(crate) channel: u16,
}

/// What to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadSpec {
    /// Datagrams per second, all flows together.
    pub(crate) rate: f64,
    /// Application bytes inside each ChannelData message (≥ MIN_PAYLOAD).
    pub(crate) payload: usize,
    pub(crate) duration: Duration,
    /// Time to wait for stragglers after the last send.
    pub(crate) drain: Duration,
    /// A flow sends once this many packets are due, in one GSO call (1 = every tick).
    pub(crate) burst: u64,
}

/// What happened.
#[derive(Clone, Default)]
pub(crate) struct LoadResult {
    pub(crate) sent: u64,
    /// Packets the pacer could not send on time (client-bound when non-zero).
    pub(crate) skipped: u64,
    /// ChannelData received back by the client sockets.
    pub(crate) received: u64,
    /// Datagrams the echo peer received (to_peer direction), if any.
    pub(crate) peer_received: u64,
    pub(crate) send_secs: f64,
    pub(crate) hist: Histogram,
}

impl LoadResult {
    pub(crate) fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    /// Relay operations the server performed: to_peer + to_client.
    pub(crate) fn relayed(&self) -> u64 {
        self.received + self.peer_received
    }

    pub(crate) fn client_bound(&self) -> bool {
        self.skipped as f64 > 0.01 * (self.sent + self.skipped).max(1) as f64
    }
}

fn write_header(seg: &mut [u8], channel: u16, payload: usize, step: u32) {
    seg[0..2].copy_from_slice(&channel.to_be_bytes());
    seg[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
    seg[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    seg[8..12].copy_from_slice(&step.to_be_bytes());
}

fn stamp(seg: &mut [u8], seq: u64, ts: u64) {
    seg[12..20].copy_from_slice(&seq.to_be_bytes());
    seg[20..28].copy_from_slice(&ts.to_be_bytes());
}

/// Parses a received ChannelData datagram; returns the send timestamp.
fn parse_channel_data(d: &[u8], step: u32) -> Option<u64> {
    if d.len() < 4 + MIN_PAYLOAD || d[0] & 0xC0 != 0x40 {
        return None;
    }
    let p = &d[4..];
    if p[0..4] != MAGIC.to_be_bytes() || p[4..8] != step.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(p[16..24].try_into().ok()?))
}

struct Rx {
    received: Cell<u64>,
    hist: RefCell<Histogram>,
}

/// Runs one paced load step on the current (single-threaded) runtime.
pub(crate) async fn run(
    sockets: &[&BatchSocket],
    receivers: &[&BatchSocket],
    flows: &[Flow],
    peer: Option<&EchoPeer>,
    spec: LoadSpec,
) -> Result<LoadResult> {
    let payload = spec.payload.max(MIN_PAYLOAD);
    let seg_len = 4 + payload;
    let rx = Rx {
        received: Cell::new(0),
        hist: RefCell::new(Histogram::default()),
    };
    let scratch = RefCell::new(RecvScratch::default());
    let step = STEP.fetch_add(1, Ordering::Relaxed);
    let peer0 = peer.map_or(0, EchoPeer::received);
    let start = Instant::now();
    let send_end = start + spec.duration;
    let rx_end = tokio::time::Instant::from_std(send_end + spec.drain);

    let receiver_futs = receivers.iter().map(|s| {
        let rx = &rx;
        let scratch = &scratch;
        async move {
            loop {
                let r = tokio::time::timeout_at(
                    rx_end,
                    s.recv_each(scratch, |_, d| {
                        if let Some(ts) = parse_channel_data(d, step) {
                            rx.received.set(rx.received.get() + 1);
                            let us = now_ns().saturating_sub(ts) / 1000;
                            rx.hist.borrow_mut().record_us(us);
                        }
                    }),
                )
                .await;
                match r {
                    Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
    });

    let sender = async {
        let n = flows.len().max(1);
        let per_flow = spec.rate / n as f64;
        // A flow may catch up at most ~50 ms of its rate (plus one batch) per tick.
        let mut templates: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut max_segs = Vec::with_capacity(n);
        for f in flows {
            let segs = sockets[f.sock].max_segments(seg_len);
            let mut t = vec![0u8; segs * seg_len];
            for seg in t.chunks_mut(seg_len) {
                write_header(seg, f.channel, payload, step);
            }
            templates.push(t);
            max_segs.push(segs);
        }
        let cap = (per_flow * 0.05).ceil() as u64 + 64;
        let mut due_sent = vec![0u64; n];
        let mut seq = vec![0u64; n];
        let (mut sent, mut skipped, mut send_errors) = (0u64, 0u64, 0u64);
        let mut late = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= send_end {
                break;
            }
            let t = (now - start).as_secs_f64();
            let due = (per_flow * t) as u64;
            for (i, f) in flows.iter().enumerate() {
                let mut need = due.saturating_sub(due_sent[i]);
                if need < spec.burst {
                    continue;
                }
                if need > cap {
                    late += 1;
                    skipped += need - cap;
                    due_sent[i] += need - cap;
                    need = cap;
                }
                while need > 0 {
                    let k = (need as usize).min(max_segs[i]);
                    let buf = &mut templates[i][..k * seg_len];
                    let ts = now_ns();
                    for seg in buf.chunks_mut(seg_len) {
                        stamp(seg, seq[i], ts);
                        seq[i] += 1;
                    }
                    match sockets[f.sock].send_batch(f.dest, buf, seg_len).await {
                        Ok(()) => sent += k as u64,
                        Err(e) => {
                            if send_errors == 0 {
                                eprintln!("      send to {} failed: {e}", f.dest);
                            }
                            send_errors += 1;
                            skipped += k as u64;
                        }
                    }
                    due_sent[i] += k as u64;
                    need -= k as u64;
                }
            }
        }
        if late > 0 {
            eprintln!(
                "      pacer fell behind {late} times (more than ~50 ms of a flow's rate due)"
            );
        }
        (sent, skipped, start.elapsed().as_secs_f64())
    };

    let ((sent, skipped, send_secs), _) = tokio::join!(sender, join_all(receiver_futs));
    Ok(LoadResult {
        sent,
        skipped,
        received: rx.received.get(),
        peer_received: peer.map_or(0, |p| p.received() - peer0),
        send_secs,
        hist: rx.hist.into_inner(),
    })
}

/// A UDP peer on 127.0.0.1 that echoes every datagram to its sender, batching the
/// echoes with GSO. Runs on its own thread until dropped.
pub(crate) struct EchoPeer {
    pub(crate) addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    pub(crate) fn start() -> Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r2, s2) = (received.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("echo-peer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let sock = match BatchSocket::bind(([127, 0, 0, 1], 0).into()) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = tx.send(sock.local_addr().map_err(Into::into));
                    echo_loop(&sock, &r2, &s2).await;
                });
            })?;
        let addr = rx.recv()??;
        Ok(Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn echo_loop(sock: &BatchSocket, received: &AtomicU64, stop: &AtomicBool) {
    let scratch = RefCell::new(RecvScratch::default());
    // Echo batches: (destination, start, segment length, segments) over `out`.
    let mut groups: Vec<(SocketAddr, usize, usize, usize)> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::Relaxed) {
        groups.clear();
        out.clear();
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            sock.recv_each(&scratch, |from, d| {
                let max = sock.max_segments(d.len());
                match groups.last_mut() {
                    Some((a, _, len, n)) if *a == from && *len == d.len() && *n < max => {
                        *n += 1;
                    }
                    _ => groups.push((from, out.len(), d.len(), 1)),
                }
                out.extend_from_slice(d);
            }),
        )
        .await;
        if let Ok(Ok(n)) = r {
            received.fetch_add(n as u64, Ordering::Relaxed);
            for &(dest, start, len, segs) in &groups {
                let _ = sock
                    .send_batch(dest, &out[start..start + len * segs], len)
                    .await;
            }
        }
    }
}
