//! CPU per relayed packet over TURN-over-TCP (RFC 8656 §12.5): each allocation is a
//! TCP connection to the server carrying its STUN transactions and, padded to a
//! multiple of 4 bytes, its ChannelData frames. The relay side stays UDP (toward the
//! bench's echo peer), so each frame is relayed twice, as in the UDP rows: client →
//! peer and peer → client. Against the bare forwarder the connections skip STUN and
//! carry ChannelData only: the floor for the same traffic.
//!
//! The load side runs on the caller's current-thread runtime: the pacer never waits
//! on a socket (non-blocking `try_write`, one write per connection per burst, with a
//! bounded backlog), and each reader pulls whatever the stream holds into a large
//! buffer and splits it with shared-ice's [`Framer`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::join_all;
use shared_ice::channel::{self, ChannelNumber};
use shared_ice::framing::{FrameKind, Framer, MAX_FRAME_LEN};
use shared_ice::stun::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::load::{EchoPeer, LoadResult, MIN_PAYLOAD, STEP, now_ns};
use crate::procfs::CpuMeter;
use crate::report::Figures;
use crate::stunc::{Creds, Session, Transport, TurnAuth};
use crate::turn::TurnOpts;

/// Payload marker, distinct from the UDP load's so the two can never be confused.
const MAGIC: u32 = 0x4352_4254; // "CRBT"
const CHANNEL: u16 = 0x4000;
/// Time allowed for one STUN transaction over the stream (no retransmission on TCP).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-connection bytes the pacer may queue while the socket is not writable; beyond
/// that, frames are counted as skipped (the step is then client- or server-bound).
const MAX_BACKLOG: usize = 4 << 20;
/// Read buffer per connection.
const READ_BUF: usize = 256 << 10;

/// What one TCP CPU step measured: the counts as for UDP (`sent`, `skipped` by the
/// pacer, `received` back at the clients, `peer_received`), plus the CPU of both sides.
#[derive(Clone, Default)]
pub(crate) struct TcpStep {
    pub(crate) r: LoadResult,
    /// Server process CPU seconds during the step (incl. drain).
    pub(crate) server_cpu: f64,
    /// This process's CPU seconds during the step (pacer, readers, echo peer).
    pub(crate) gen_cpu: f64,
}

impl TcpStep {
    pub(crate) fn server_us_per_pkt(&self) -> f64 {
        self.server_cpu * 1e6 / self.r.relayed().max(1) as f64
    }

    pub(crate) fn gen_us_per_pkt(&self) -> f64 {
        self.gen_cpu * 1e6 / self.r.relayed().max(1) as f64
    }
}

/// The stream of one TURN-over-TCP (or, with a TLS stream, TURN-over-TLS) allocation:
/// STUN transactions and ChannelData.
pub(crate) struct TcpPath<S = TcpStream> {
    pub(crate) stream: S,
    /// Bytes read but not yet framed.
    pub(crate) inbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for TcpPath<S> {
    /// Writes `req` and reads frames until the STUN response with its transaction id.
    async fn transact(&mut self, req: &[u8]) -> Result<Vec<u8>> {
        let want = Message::parse(req)
            .context("parse own request")?
            .transaction_id();
        self.stream.write_all(req).await?;
        let framer = Framer::default();
        let deadline = tokio::time::Instant::now() + TRANSACTION_TIMEOUT;
        // Bounded by the deadline and by a frame count.
        for _ in 0..10_000 {
            while let Some(fr) = framer.next_frame(&self.inbuf)? {
                let frame: Vec<u8> = self.inbuf.drain(..fr.len).collect();
                if fr.kind == FrameKind::Stun
                    && let Ok(m) = Message::parse(&frame)
                    && m.transaction_id() == want
                {
                    return Ok(frame);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .context("no STUN response over the stream in time")??;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
        bail!("no STUN response among 10,000 frames")
    }
}

impl<S> TcpPath<S> {
    /// A path over an already connected stream (e.g. TLS).
    pub(crate) fn over(stream: S) -> Self {
        Self {
            stream,
            inbuf: Vec::with_capacity(READ_BUF),
        }
    }
}

impl TcpPath {
    pub(crate) async fn connect(server: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(server)
            .await
            .with_context(|| format!("TCP connect to {server}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            inbuf: Vec::with_capacity(READ_BUF),
        })
    }
}

/// `allocs` streams to `server` that carry ChannelData 0x4000 toward `peer`. With a
/// `secret`, each is a TURN-over-TCP allocation: REST credentials, Allocate with the
/// 401 round trip as over UDP (see `stunc`), CreatePermission and ChannelBind. Without
/// one (the bare forwarder, which relays every frame to its fixed peer), just the
/// connection.
async fn allocate_tcp(
    server: SocketAddr,
    secret: Option<&str>,
    peer: SocketAddr,
    allocs: usize,
) -> Result<Vec<TcpPath>> {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(allocs);
    for chunk in (0..allocs).collect::<Vec<_>>().chunks(32) {
        let batch = chunk.iter().map(|&k| async move {
            let mut path = TcpPath::connect(server).await?;
            if let Some(secret) = secret {
                let auth = TurnAuth {
                    server,
                    secret: secret.to_owned(),
                };
                let creds = Creds::mint(&auth, &format!("tcp{run}-{k}"))?;
                let mut session = Session::allocate(&mut path, &creds).await?;
                session.create_permission(&mut path, peer).await?;
                session.channel_bind(&mut path, CHANNEL, peer).await?;
            }
            anyhow::Ok(path)
        });
        for r in join_all(batch).await {
            out.push(r?);
        }
    }
    Ok(out)
}

/// A ChannelData frame as sent over a stream: header, payload (marker, step, then
/// seq and timestamp stamped per frame), zero padding to a multiple of 4.
fn frame_template(payload: usize, step: u32) -> Result<Vec<u8>> {
    let mut data = vec![0u8; payload];
    data[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    data[4..8].copy_from_slice(&step.to_be_bytes());
    let ch = ChannelNumber::new(CHANNEL).context("channel number out of range")?;
    let mut frame = Vec::with_capacity(channel::HEADER_LEN + channel::padded_len(payload));
    channel::encode(&mut frame, ch, &data, channel::Padding::Stream)?;
    Ok(frame)
}

/// Whether a received ChannelData frame carries this step's marker.
fn ours(frame: &[u8], step: u32) -> bool {
    matches!(channel::ChannelData::parse(frame), Ok(cd)
        if cd.data().len() >= MIN_PAYLOAD
            && cd.data()[0..4] == MAGIC.to_be_bytes()
            && cd.data()[4..8] == step.to_be_bytes())
}

/// Counts this step's ChannelData frames on one stream until `end`. `pending` is
/// what the control phase had read past its last response.
async fn read_frames(
    mut rd: OwnedReadHalf,
    pending: Vec<u8>,
    step: u32,
    end: tokio::time::Instant,
    received: &Cell<u64>,
    broken: &Cell<bool>,
) {
    let framer = Framer::default();
    let mut buf = vec![0u8; READ_BUF.max(pending.len() + MAX_FRAME_LEN)];
    buf[..pending.len()].copy_from_slice(&pending);
    // Unframed bytes are buf[lo..hi].
    let (mut lo, mut hi) = (0usize, pending.len());
    loop {
        loop {
            match framer.next_frame(&buf[lo..hi]) {
                Ok(Some(fr)) => {
                    let f = &buf[lo..lo + fr.len];
                    if fr.kind == FrameKind::ChannelData && ours(f, step) {
                        received.set(received.get() + 1);
                    }
                    lo += fr.len;
                }
                Ok(None) => break,
                Err(e) => {
                    if !broken.replace(true) {
                        eprintln!("      TCP stream out of sync: {e}");
                    }
                    return;
                }
            }
        }
        if lo == hi {
            (lo, hi) = (0, 0);
        } else if buf.len() - lo < MAX_FRAME_LEN {
            // A partial frame that might not fit behind `lo`: move it to the front.
            buf.copy_within(lo..hi, 0);
            (lo, hi) = (0, hi - lo);
        }
        let r = tokio::time::timeout_at(end, rd.read(&mut buf[hi..])).await;
        match r {
            Ok(Ok(n)) if n > 0 => hi += n,
            Ok(Ok(_)) | Ok(Err(_)) => {
                if !broken.replace(true) {
                    eprintln!("      server closed a TCP connection during the step");
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// Writes as much of `backlog` as the socket takes without waiting.
fn flush(wr: &OwnedWriteHalf, backlog: &mut Vec<u8>) -> std::io::Result<()> {
    while !backlog.is_empty() {
        match wr.try_write(backlog) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                backlog.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Paced ChannelData over the allocations' streams; `rate` is frames/s sent by all
/// connections together (each is relayed twice).
async fn run_step(
    allocs: Vec<TcpPath>,
    peer: &EchoPeer,
    payload: usize,
    rate: f64,
    burst: u64,
    duration: Duration,
    server_pid: u32,
) -> Result<TcpStep> {
    let payload = payload.max(MIN_PAYLOAD);
    let step = STEP.fetch_add(1, Ordering::Relaxed);
    let template = frame_template(payload, step)?;
    let frame_len = template.len();
    let mut writers = Vec::with_capacity(allocs.len());
    let mut readers = Vec::with_capacity(allocs.len());
    for a in allocs {
        let (rd, wr) = a.stream.into_split();
        readers.push((rd, a.inbuf));
        writers.push(wr);
    }
    let received = Cell::new(0u64);
    let broken = Cell::new(false);

    tokio::time::sleep(Duration::from_millis(50)).await;
    let srv = CpuMeter::start(server_pid)?;
    let gen_meter = CpuMeter::start(std::process::id())?;
    let peer0 = peer.received();
    let start = Instant::now();
    let send_end = start + duration;
    let drain = Duration::from_millis(200);
    let rx_end = tokio::time::Instant::from_std(send_end + drain);

    let reader_futs = readers
        .into_iter()
        .map(|(rd, buf)| read_frames(rd, buf, step, rx_end, &received, &broken));

    let sender = async {
        let n = writers.len().max(1);
        let per_flow = rate / n as f64;
        // A flow may catch up at most ~50 ms of its rate (plus one burst) per tick.
        let cap = (per_flow * 0.05).ceil() as u64 + 64;
        let mut due_sent = vec![0u64; n];
        let mut seq = vec![0u64; n];
        let mut backlog: Vec<Vec<u8>> = (0..n)
            .map(|_| Vec::with_capacity(cap as usize * frame_len))
            .collect();
        let mut dead = vec![false; n];
        let (mut sent, mut skipped, mut late) = (0u64, 0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Bounded by `send_end`.
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= send_end {
                break;
            }
            let due = (per_flow * (now - start).as_secs_f64()) as u64;
            for (i, wr) in writers.iter().enumerate() {
                let mut need = due.saturating_sub(due_sent[i]);
                if need < burst {
                    continue;
                }
                if need > cap {
                    late += 1;
                    skipped += need - cap;
                    due_sent[i] += need - cap;
                    need = cap;
                }
                due_sent[i] += need;
                let b = &mut backlog[i];
                if dead[i] || b.len() + need as usize * frame_len > MAX_BACKLOG {
                    skipped += need;
                    continue;
                }
                let ts = now_ns();
                for _ in 0..need {
                    let at = b.len();
                    b.extend_from_slice(&template);
                    b[at + 12..at + 20].copy_from_slice(&seq[i].to_be_bytes());
                    b[at + 20..at + 28].copy_from_slice(&ts.to_be_bytes());
                    seq[i] += 1;
                }
                sent += need;
                if let Err(e) = flush(wr, b) {
                    eprintln!("      TCP write failed: {e}");
                    dead[i] = true;
                }
            }
        }
        // Hand over what is still queued (normally nothing), within the drain time.
        let flush_end = tokio::time::Instant::from_std(send_end + drain / 2);
        for (i, wr) in writers.iter_mut().enumerate() {
            if !dead[i] && !backlog[i].is_empty() {
                let _ = tokio::time::timeout_at(flush_end, wr.write_all(&backlog[i])).await;
            }
        }
        if late > 0 {
            eprintln!(
                "      TCP pacer fell behind {late} times (more than ~50 ms of a flow's rate due)"
            );
        }
        (sent, skipped)
    };

    let ((sent, skipped), _) = tokio::join!(sender, join_all(reader_futs));
    let (server_cpu, _) = srv.stop()?;
    let (gen_cpu, _) = gen_meter.stop()?;
    let peer_received = peer.received() - peer0;
    // Dropping the write halves closes the connections: the server frees the
    // allocations (RFC 8656 §3.3: a TCP allocation lives as long as its connection).
    drop(writers);
    Ok(TcpStep {
        r: LoadResult {
            sent,
            skipped,
            received: received.get(),
            peer_received,
            ..LoadResult::default()
        },
        server_cpu,
        gen_cpu,
    })
}

/// One CPU step over TCP: `opts.cpu_allocs` fresh TURN-over-TCP allocations on `server`
/// (channel 0x4000 to the echo peer; bare connections without a `secret`),
/// `size`-byte payloads at `rate` relayed packets/s in total (to_peer + to_client),
/// each connection writing `opts.burst` frames at a time, for `opts.step`. Allocation
/// set-up is outside the measured window.
pub(crate) async fn tcp_cpu_step(
    server: SocketAddr,
    secret: Option<&str>,
    peer: &EchoPeer,
    opts: &TurnOpts,
    size: usize,
    rate: f64,
    server_pid: u32,
) -> Result<TcpStep> {
    let a = allocate_tcp(server, secret, peer.addr, opts.cpu_allocs.max(1)).await?;
    run_step(
        a,
        peer,
        size,
        rate / 2.0,
        opts.burst.max(1),
        opts.step,
        server_pid,
    )
    .await
}

/// The TCP rows of the data session: "CPU µs/relayed pkt, TCP N B" and the load
/// generator's CPU, for every `--sizes` entry, with `--cpu-allocs` connections at
/// `--cpu-rate` relayed packets/s in `--burst` frame writes. `secret` as for
/// [`tcp_cpu_step`].
pub(crate) async fn tcp_cpu_rows(
    label: &str,
    server: SocketAddr,
    secret: Option<&str>,
    peer: &EchoPeer,
    opts: &TurnOpts,
    server_pid: u32,
    f: &mut Figures,
) -> Result<()> {
    for (rate, tag) in &opts.cpu_rates() {
        for &size in &opts.sizes {
            let s = tcp_cpu_step(server, secret, peer, opts, size, *rate, server_pid).await?;
            eprintln!(
                "  {label} cpu TCP {size}B{tag}: relayed {} loss {:.3}%{} server {:.2} µs/pkt loadgen {:.2} µs/pkt",
                s.r.relayed(),
                s.r.loss() * 100.0,
                if s.r.skipped > 0 {
                    format!(" ({} frames skipped by the pacer)", s.r.skipped)
                } else {
                    String::new()
                },
                s.server_us_per_pkt(),
                s.gen_us_per_pkt(),
            );
            f.set(
                &format!("CPU µs/relayed pkt, TCP {size} B{tag}"),
                s.server_us_per_pkt(),
            );
            f.set(
                &format!("  load generator CPU µs/pkt (TCP {size} B{tag})"),
                s.gen_us_per_pkt(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_padded_and_recognised_by_step() {
        for payload in [24usize, 100, 101, 173, 1201] {
            let mut f = frame_template(payload, 7).unwrap();
            assert_eq!(f.len() % 4, 0, "payload {payload}");
            assert_eq!(f.len(), 4 + payload.div_ceil(4) * 4);
            // Two frames back to back on a stream split where they should.
            let len = f.len();
            f.extend_from_within(..);
            let fr = Framer::default().next_frame(&f).unwrap().unwrap();
            assert_eq!((fr.kind, fr.len), (FrameKind::ChannelData, len));
            assert!(ours(&f[..len], 7));
            assert!(!ours(&f[..len], 8), "another step's frame is not counted");
        }
    }
}
