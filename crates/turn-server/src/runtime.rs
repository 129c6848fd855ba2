//! The tokio shell around [`crate::core::Core`]: sockets, TLS, timers, signals, metrics.
//!
//! Sharding: `workers` OS threads, each with a single-threaded tokio runtime that owns one
//! `Core` (its own allocation table and its own slice of the relay port range). Every worker
//! binds its own UDP socket and TCP/TLS listeners on each listen address with `SO_REUSEPORT`,
//! so the kernel spreads clients over workers by 5-tuple hash and a client always reaches
//! the worker that holds its allocation; a relay socket belongs to the worker that opened it.
//! There is no lock on the relay path. The one cross-thread hand-off is relay to relay
//! between two workers ([`Mesh`]): a bounded, preallocated queue per worker. The core sits
//! in a `RefCell` that is borrowed only between awaits.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use shared_ice::framing::Framer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// A UDP socket registered with tokio for readability only. Sends are direct non-blocking
/// syscalls (a full buffer drops the datagram, as a router would), so nothing waits for
/// write space; with write interest registered (what `tokio::net::UdpSocket` does), every
/// time a receiver drained our datagrams the kernel raised EPOLLOUT and woke the worker
/// for nothing — 30 % of its wake-ups under the relay bench.
type UdpSocket = AsyncFd<std::net::UdpSocket>;

// `AsyncFd::with_interest` is deprecated in favour of an `unsafe` constructor because a
// generic `T: AsRawFd` may hand out a different descriptor later. `std::net::UdpSocket`
// owns its descriptor for its whole life and never swaps it, which is the condition the
// unsafe version asks the caller to guarantee; our crates forbid `unsafe`, so we use the
// safe (deprecated) spelling for this one type only.
#[allow(deprecated)]
fn rx_socket(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    AsyncFd::with_interest(s, tokio::io::Interest::READABLE)
}
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StaticUser};
use crate::core::{
    Command, Core, CoreConfig, FiveTuple, Gauges, Proto, Relay, RelayToken, SharedQuota, Stats,
    Transmit,
};
use crate::metrics::{Metrics, StreamReject};
use crate::policy::PeerPolicy;

/// File descriptors kept out of the stream budget for listeners, epoll, timers, the
/// metrics endpoint and logging.
const FD_BASE: u64 = 64;

/// The global cap on TCP/TLS client connections: `configured`, lowered to a quarter of the
/// file descriptors above `FD_BASE` when the process limit (`RLIMIT_NOFILE`) is smaller.
/// A stream connection costs one fd and, once it allocates, a relay socket: two quarters at
/// most, so at least half of the descriptors stay for UDP allocations' relay sockets (and
/// RFC 6062 peer connections) whatever TCP/TLS clients do.
pub fn stream_cap(configured: u32, nofile: Option<u64>) -> usize {
    let configured = configured as usize;
    match nofile {
        Some(n) => {
            configured.min(usize::try_from(n.saturating_sub(FD_BASE) / 4).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux; `None` when
/// unreadable or unlimited).
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counts of TCP/TLS client connections shared by every worker: a global cap and a cap per
/// source address (IPv6 per /64: one host may hold a whole /64).
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_source: u32,
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, u32>>,
    /// Woken when a connection closes (an accept paused at the fd limit resumes).
    freed: tokio::sync::Notify,
}

impl StreamLimits {
    /// Limits of `max_total` connections, `max_per_source` per source address.
    pub fn new(max_total: usize, max_per_source: u32) -> Self {
        Self {
            max_total,
            max_per_source,
            total: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn source_key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        }
    }

    /// Admits a new connection from `ip`, or says which cap it is over.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, StreamReject> {
        let key = Self::source_key(ip);
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(StreamReject::Total);
        }
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_source {
            return Err(StreamReject::PerSource);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(StreamSlot {
            limits: self.clone(),
            key,
        })
    }
}

/// One admitted stream connection; gives its place back when dropped.
#[derive(Debug)]
struct StreamSlot {
    limits: Arc<StreamLimits>,
    key: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        drop(map);
        self.limits.freed.notify_waiters();
    }
}

/// `accept` failed because the process or the system is out of file descriptors (or
/// socket memory): retrying at once would spin. Linux errno values.
fn out_of_fds(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 65_536;
/// Bytes queued per TCP/TLS client before frames are dropped (a slow reader must not
/// grow memory): 512 full-size video packets.
const STREAM_QUEUE_BYTES: usize = 512 * 1500;

/// Frames waiting for one TCP/TLS client. The relay path appends a frame in place
/// (header, payload, padding): no allocation and no channel message per frame.
///
/// Plain TCP: the worker writes the queue itself at the end of the batch that filled it
/// ([`flush_sends`]: one `try_write`, no task wake-up); the connection's writer task takes
/// over only while the socket is full. TLS: the writer task takes everything queued in one
/// swap and writes one record per frame.
#[derive(Default)]
struct StreamOut {
    buf: RefCell<Vec<u8>>,
    /// TLS: end offset in `buf` of every queued frame (one record per frame).
    ends: RefCell<Vec<usize>>,
    ready: tokio::sync::Notify,
    closed: Cell<bool>,
    /// Plain TCP: the write half, written from the relay path.
    direct: Option<OwnedWriteHalf>,
    /// Listed in the worker's `dirty_streams` for the end of the current batch.
    dirty: Cell<bool>,
}

impl StreamOut {
    /// Queues one frame made of `parts` plus `padding` zero bytes; false (dropped) when
    /// the client is that far behind or the connection is closing. Does not write: see
    /// [`queued`] and [`StreamOut::kick`].
    fn push(&self, parts: &[&[u8]], padding: usize) -> bool {
        let len = parts.iter().map(|p| p.len()).sum::<usize>() + padding;
        let mut buf = self.buf.borrow_mut();
        if self.closed.get() || buf.len() + len > STREAM_QUEUE_BYTES {
            return false;
        }
        for p in parts {
            buf.extend_from_slice(p);
        }
        let end = buf.len() + padding;
        buf.resize(end, 0);
        if self.direct.is_none() {
            self.ends.borrow_mut().push(end);
        }
        true
    }

    /// Writer tasks: waits until frames are queued; false once the queue is empty and
    /// the connection closing.
    async fn wait_queued(&self) -> bool {
        loop {
            if !self.buf.borrow().is_empty() {
                return true;
            }
            if self.closed.get() {
                return false;
            }
            self.ready.notified().await;
        }
    }

    /// Wakes the writer task.
    fn kick(&self) {
        self.ready.notify_one();
    }

    /// Plain TCP: one non-blocking write of what is queued, dropping what left; a full
    /// socket is not an error.
    fn try_flush(&self) -> io::Result<()> {
        let Some(wr) = &self.direct else {
            return Ok(());
        };
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return Ok(());
        }
        match wr.try_write(&buf) {
            Ok(n) => {
                buf.drain(..n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Plain TCP, from the relay path: writes what is queued without waiting; what the
    /// socket does not take (full, or an error the writer task then sees) is left to the
    /// writer task.
    fn write_now(&self) {
        if self.try_flush().is_err() || !self.buf.borrow().is_empty() {
            self.kick();
        }
    }

    /// The writer sends what is queued, then returns.
    fn close(&self) {
        self.closed.set(true);
        self.kick();
    }
}

/// After a frame was queued on the relay path: plain TCP streams are written once at the
/// end of the batch ([`flush_sends`]), TLS streams by their writer task.
fn queued(w: &Worker, out: &Rc<StreamOut>) {
    if out.direct.is_none() {
        out.kick();
    } else if !out.dirty.replace(true) {
        w.dirty_streams.borrow_mut().push(out.clone());
    }
}

/// A runtime error (startup only; after start errors are logged and the server keeps going).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Listener kind.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// TLS certificate or key unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Anything else at start.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Live settings a SIGHUP replaces.
#[derive(Clone, Debug)]
pub enum Control {
    /// New secrets, users and peer policy.
    Reload {
        /// TURN REST secrets.
        secrets: Vec<String>,
        /// Static users.
        users: Vec<StaticUser>,
        /// Peer policy.
        policy: PeerPolicy,
    },
    /// Stop accepting allocations.
    Drain,
}

/// Loads a rustls acceptor (ring provider) from PEM files.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, RuntimeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| RuntimeError::Tls(format!("cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::Tls(format!("cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(RuntimeError::Tls(format!(
            "cert {}: no CERTIFICATE in PEM",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| RuntimeError::Tls(format!("key {}: {e}", key.display())))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RuntimeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| RuntimeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Shared, reloadable TLS acceptor.
pub type SharedTls = Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>;

/// A non-blocking UDP socket bound to `addr` (IPv6 sockets are IPv6-only). Listener
/// sockets are shared by the workers with SO_REUSEPORT and get 4 MiB buffers; relay
/// sockets are per allocation and get 1 MiB: room for bursts from the peer (a video
/// keyframe is dozens of datagrams back to back) while the worker serves other sockets.
/// Buffer sizes are limits, not allocations (an idle relay costs nothing); the kernel
/// caps them at net.core.{r,w}mem_max.
fn bind_udp(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_udp(addr, true, 4 << 20)
}

fn relay_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_udp(addr, false, 1 << 20)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Per-worker sockets, bound UDP/TCP addresses, bound TLS addresses.
pub type Bound = (Vec<WorkerSockets>, Vec<SocketAddr>, Vec<SocketAddr>);

type RelayMap = crate::core::FxMap<RelayToken, (Rc<UdpSocket>, JoinHandle<()>)>;

/// Sockets of one worker.
#[derive(Debug, Default)]
pub struct WorkerSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
}

/// Binds every listener once per worker (SO_REUSEPORT); port 0 resolves to one port shared
/// by UDP, TCP and all workers. Returns the sockets and the bound addresses.
pub fn bind_all(cfg: &Config) -> Result<Bound, RuntimeError> {
    let mut workers: Vec<WorkerSockets> =
        (0..cfg.workers).map(|_| WorkerSockets::default()).collect();
    let mut bound = Vec::new();
    for &addr in &cfg.listen {
        let mut last_err = None;
        let mut done = false;
        for _ in 0..20 {
            match bind_pair(addr, cfg.workers) {
                Ok((udps, tcps, a)) => {
                    for (w, (u, t)) in workers.iter_mut().zip(udps.into_iter().zip(tcps)) {
                        w.udp.push(u);
                        w.tcp.push(t);
                    }
                    bound.push(a);
                    done = true;
                    break;
                }
                Err(e) => {
                    last_err = Some(e);
                    if addr.port() != 0 {
                        break;
                    }
                }
            }
        }
        if !done {
            let e = last_err.unwrap_or_else(|| io::Error::other("bind failed"));
            if addr.is_ipv6() && addr.ip().is_unspecified() && cfg.listen.len() > 1 {
                tracing::warn!(%addr, error = %e, "IPv6 listener unavailable, continuing without it");
                continue;
            }
            return Err(RuntimeError::Bind {
                what: "listen",
                addr,
                source: e,
            });
        }
    }
    let mut tls_bound = Vec::new();
    for &addr in &cfg.tls_listen {
        let first = tcp_listener(addr).map_err(|source| RuntimeError::Bind {
            what: "tls_listen",
            addr,
            source,
        })?;
        let a = first.local_addr()?;
        let mut ls = vec![first];
        for _ in 1..cfg.workers {
            ls.push(tcp_listener(a).map_err(|source| RuntimeError::Bind {
                what: "tls_listen",
                addr,
                source,
            })?);
        }
        for (w, l) in workers.iter_mut().zip(ls) {
            w.tls.push(l);
        }
        tls_bound.push(a);
    }
    Ok((workers, bound, tls_bound))
}

type Pair = (
    Vec<std::net::UdpSocket>,
    Vec<std::net::TcpListener>,
    SocketAddr,
);

fn bind_pair(addr: SocketAddr, n: usize) -> io::Result<Pair> {
    if addr.port() != 0 {
        // SO_REUSEPORT would silently share the port with another running instance (same
        // user): probe without it first so a second server fails loudly instead.
        drop(std::net::UdpSocket::bind(addr)?);
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = udp_socket(addr)?;
    let a = first.local_addr()?;
    let mut udps = vec![first];
    for _ in 1..n {
        udps.push(udp_socket(a)?);
    }
    let mut tcps = Vec::new();
    for _ in 0..n {
        tcps.push(tcp_listener(a)?);
    }
    Ok((udps, tcps, a))
}

/// Everything a worker thread needs.
pub struct WorkerArgs {
    /// Shard index.
    pub index: usize,
    /// Validated config.
    pub cfg: Config,
    /// Sockets.
    pub sockets: WorkerSockets,
    /// Shared allocation quota.
    pub quota: Arc<SharedQuota>,
    /// Nonce key shared by all workers.
    pub nonce_key: [u8; 20],
    /// RFC 6062 peer connections, shared by all workers.
    pub peer_streams: PeerStreams,
    /// Metrics.
    pub metrics: Metrics,
    /// TLS acceptor.
    pub tls: SharedTls,
    /// Reload/drain messages.
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Shutdown.
    pub shutdown: CancellationToken,
    /// Relay-to-relay queues of every worker.
    pub mesh: Mesh,
    /// This worker's relay-to-relay queue.
    pub inbox: Inbox,
    /// TCP/TLS connection caps shared by all workers.
    pub streams: Arc<StreamLimits>,
    /// Beats on every turn of the worker's loop (the systemd watchdog checks it).
    pub heartbeat: Heartbeat,
}

/// The last time a worker's loop turned, for the systemd watchdog: the worker writes it
/// (one relaxed store per loop turn, at least once a second), the main thread reads it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that last beat at `epoch` (shared by all of one process's workers).
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last_ms: Arc::default(),
        }
    }

    /// Records that the worker's loop turned now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`; `WATCHDOG_PID`, when set,
/// must be this process), as libsystemd's `sd_watchdog_enabled` reads it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Largest payload handed to another worker in process; larger datagrams take the kernel
/// path (send from our relay socket to theirs), which delivers them to the same place.
const HANDOFF_MAX: usize = 1500;
/// Hand-offs queued per worker before the sender falls back to the kernel path.
const HANDOFF_QUEUE: usize = 256;

/// One relay-to-relay datagram on its way to the worker that owns the destination relayed
/// address. Inline bytes (4 of headroom for the ChannelData header + payload): the queue is
/// an array allocated once, so a hand-off allocates nothing.
pub struct Handoff {
    to: SocketAddr,
    src: SocketAddr,
    len: u16,
    buf: [u8; 4 + HANDOFF_MAX],
}

/// The receiving end of one worker's relay-to-relay queue.
pub type Inbox = std::sync::mpsc::Receiver<Handoff>;

/// Senders and wake-ups for every worker's relay-to-relay queue.
#[derive(Clone, Debug)]
pub struct Mesh {
    queues: Vec<std::sync::mpsc::SyncSender<Handoff>>,
    wake: Vec<Arc<tokio::sync::Notify>>,
}

impl Mesh {
    /// Queues for `n` workers; the i-th inbox belongs to worker i.
    pub fn new(n: usize) -> (Self, Vec<Inbox>) {
        let mut queues = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = std::sync::mpsc::sync_channel(HANDOFF_QUEUE);
            queues.push(tx);
            inboxes.push(rx);
        }
        let wake = (0..n)
            .map(|_| Arc::new(tokio::sync::Notify::new()))
            .collect();
        (Self { queues, wake }, inboxes)
    }
}

struct Worker {
    core: RefCell<Core<StdRng>>,
    udp: crate::core::FxMap<SocketAddr, Rc<UdpSocket>>,
    relays: RefCell<RelayMap>,
    streams: RefCell<HashMap<FiveTuple, Rc<StreamOut>>>,
    /// Plain TCP streams that got frames during the current batch (see [`queued`]).
    dirty_streams: RefCell<Vec<Rc<StreamOut>>>,
    /// One receive buffer shared by all relay sockets of this worker (read synchronously after
    /// readiness), so an idle allocation costs no buffer memory.
    relay_buf: RefCell<Vec<u8>>,
    /// The `recvmmsg` results for `relay_buf`, shared the same way: in each relay socket's
    /// task they would add RELAY_BATCH × 56 bytes to every allocation.
    relay_metas: RefCell<[quinn_udp::RecvMeta; RELAY_BATCH]>,
    /// Used only for its `recvmmsg` on relay sockets (which get no GRO: each datagram
    /// needs its own 4 bytes of headroom for the ChannelData header).
    recv_state: quinn_udp::UdpSocketState,
    /// Splits TCP/TLS streams into frames of at most `max_frame` bytes.
    framer: Framer,
    /// Stream connections without an allocation are closed after this long.
    auth_timeout: Duration,
    stream_limits: Arc<StreamLimits>,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// RFC 6062 relay listeners of this worker, each with the token that closes the
    /// allocation's peer and data connections when the allocation goes (RFC 6062 §5).
    tcp_relays: RefCell<HashMap<RelayToken, (JoinHandle<()>, CancellationToken)>>,
    /// Data connections whose ConnectionBind succeeded, waiting to switch to raw bytes.
    splices: RefCell<HashMap<FiveTuple, u32>>,
    peer_streams: PeerStreams,
    mesh: Mesh,
    /// Workers (bit i) that got hand-offs during the current batch and need a wake-up.
    to_wake: Cell<u32>,
    /// Relayed datagrams of the current receive batch waiting to leave as one GSO send.
    /// Borrowed only inside synchronous batch processing (never across an await).
    gso: RefCell<SendBatch>,
    /// Tasks of this worker alive right now (see [`spawn`]), for the
    /// `callrelay_turn_worker_tasks` gauge: a leaked task shows there.
    tasks: Rc<Cell<usize>>,
}

/// Decrements a worker's task count when its task ends or is aborted.
struct TaskSlot(Rc<Cell<usize>>);

impl Drop for TaskSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// `spawn_local`, counted in `tasks` for as long as the task lives.
fn spawn<F>(tasks: &Rc<Cell<usize>>, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    tasks.set(tasks.get() + 1);
    let slot = TaskSlot(tasks.clone());
    tokio::task::spawn_local(async move {
        let _slot = slot;
        fut.await
    })
}

/// Which of our sockets a batched datagram leaves from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Via {
    /// The allocation's relay socket (toward a peer).
    Relay(RelayToken),
    /// The UDP listener bound to this address (toward a client).
    Listener(SocketAddr),
}

/// Consecutive datagrams from one socket to one destination, packed back to back for one
/// `sendmsg` with `UDP_SEGMENT` (GSO): the kernel splits them into separate datagrams of
/// `seg` bytes (the last may be shorter). A video frame arrives as a burst of equal-sized
/// RTP packets (libwebrtc packetizes frames that way), so one receive batch usually holds
/// several datagrams of one flow: one syscall for all of them instead of one each.
#[derive(Debug)]
struct SendBatch {
    via: Option<Via>,
    to: SocketAddr,
    seg: usize,
    n: usize,
    /// A shorter datagram closes the batch (GSO allows only the last one shorter).
    closed: bool,
    /// Segments per send the kernel accepts (1 = no GSO: plain `sendto` each).
    max: usize,
    buf: Vec<u8>,
}

/// Largest GSO send (the kernel's limit is 64 KiB including headers).
const GSO_BYTES: usize = 60_000;

impl SendBatch {
    fn new(max_segments: usize) -> Self {
        Self {
            via: None,
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            seg: 0,
            n: 0,
            closed: false,
            max: max_segments.clamp(1, 64),
            buf: Vec::with_capacity(GSO_BYTES),
        }
    }
}

/// Queues one relayed datagram: appended to the pending batch when it continues it (same
/// socket and destination, not longer than the first), else the batch leaves first.
fn send_batched(w: &Worker, via: Via, to: SocketAddr, bytes: &[u8]) {
    let mut b = w.gso.borrow_mut();
    if b.max <= 1 || bytes.len() > GSO_BYTES {
        drop(b);
        send_via(w, via, to, bytes, None);
        return;
    }
    let fits = b.via == Some(via)
        && b.to == to
        && !b.closed
        && bytes.len() <= b.seg
        && b.n < b.max
        && b.buf.len() + bytes.len() <= GSO_BYTES;
    if !fits {
        flush_batch(w, &mut b);
        b.via = Some(via);
        b.to = to;
        b.seg = bytes.len();
    } else if bytes.len() < b.seg {
        b.closed = true;
    }
    b.buf.extend_from_slice(bytes);
    b.n += 1;
}

/// Sends what [`send_batched`] holds; call before every await.
fn flush_sends(w: &Worker) {
    flush_batch(w, &mut w.gso.borrow_mut());
    let mut dirty = w.dirty_streams.borrow_mut();
    for out in dirty.drain(..) {
        out.dirty.set(false);
        out.write_now();
    }
}

fn flush_batch(w: &Worker, b: &mut SendBatch) {
    if let Some(via) = b.via.take() {
        let seg = (b.n > 1).then_some(b.seg);
        send_via(w, via, b.to, &b.buf, seg);
    }
    b.buf.clear();
    b.n = 0;
    b.closed = false;
}

/// One `sendto` (single datagram) or one GSO `sendmsg` (several of `seg` bytes).
fn send_via(w: &Worker, via: Via, to: SocketAddr, bytes: &[u8], seg: Option<usize>) {
    let relays;
    let sock = match via {
        Via::Relay(t) => {
            relays = w.relays.borrow();
            relays.get(&t).map(|(s, _)| s)
        }
        Via::Listener(local) => w.udp.get(&local),
    };
    let Some(sock) = sock else { return };
    match seg {
        None => {
            let _ = send_now(sock, bytes, to);
        }
        Some(seg) => {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: bytes,
                segment_size: Some(seg),
                src_ip: None,
            };
            if let Err(e) = w.recv_state.try_send(sock.get_ref().into(), &t) {
                tracing::trace!(target: "wire", error = %e, %to, "GSO send failed");
            }
        }
    }
}

/// A peer connection waiting for its ConnectionBind: the stream, when it was stored, and
/// its allocation's token (cancelled when the allocation is deleted or expires).
type PeerStream = (std::net::TcpStream, Instant, CancellationToken);

/// RFC 6062 peer connections waiting for their ConnectionBind, shared by all workers
/// (the client's data connection may reach another worker than its control connection).
pub type PeerStreams = Arc<Mutex<HashMap<u32, PeerStream>>>;

fn peer_streams_lock(p: &PeerStreams) -> std::sync::MutexGuard<'_, HashMap<u32, PeerStream>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs one worker until shutdown (blocking; call on its own thread).
pub fn run_worker(args: WorkerArgs) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, worker_main(args))
}

async fn worker_main(args: WorkerArgs) -> io::Result<()> {
    let WorkerArgs {
        index,
        nonce_key,
        mesh,
        inbox,
        peer_streams,
        cfg,
        sockets,
        quota,
        metrics,
        tls,
        mut control,
        shutdown,
        streams: stream_limits,
        heartbeat,
    } = args;
    let core_cfg = CoreConfig {
        realm: cfg.realm.clone(),
        relay_ip4: cfg.relay_ip4,
        relay_ip6: cfg.relay_ip6,
        external_ip4: cfg.external_ip4,
        external_ip6: cfg.external_ip6,
        default_lifetime: cfg.default_lifetime,
        max_lifetime: cfg.max_lifetime,
        bandwidth: cfg.bandwidth,
        unauth_rate: cfg.unauth_rate,
        auth_rate: cfg.auth_rate,
        rate_sources: cfg.rate_limit_sources,
        rate_v6_prefix: cfg.rate_limit_ipv6_prefix,
        strict_expiry: cfg.strict_expiry,
        nonce_lifetime: cfg.nonce_lifetime,
        nonce_key: Some(nonce_key),
        worker: index,
        max_permissions: cfg.max_permissions as usize,
        max_channels: cfg.max_channels as usize,
        tx_cache_max: cfg.transaction_cache as usize,
    };
    let core = Core::new(
        core_cfg,
        StdRng::from_os_rng(),
        cfg.auth_secrets.0.clone(),
        cfg.users.clone(),
        cfg.policy.clone(),
        quota,
    );
    let mut udp = crate::core::FxMap::default();
    let mut udp_list = Vec::new();
    for s in sockets.udp {
        let s = Rc::new(rx_socket(s)?);
        udp.insert(s.get_ref().local_addr()?, s.clone());
        udp_list.push(s);
    }
    // Configured on a throwaway unbound socket: relay sockets must not get GRO.
    let probe = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let recv_state = quinn_udp::UdpSocketState::new((&probe).into())?;
    let gso_segments = recv_state.max_gso_segments();
    let w = Rc::new(Worker {
        core: RefCell::new(core),
        udp,
        relays: RefCell::new(RelayMap::default()),
        streams: RefCell::new(HashMap::new()),
        dirty_streams: RefCell::new(Vec::new()),
        relay_buf: RefCell::new(vec![0u8; RELAY_SLOT * RELAY_BATCH]),
        relay_metas: RefCell::new([quinn_udp::RecvMeta::default(); RELAY_BATCH]),
        recv_state,
        framer: Framer::new(cfg.max_frame as usize),
        auth_timeout: cfg.stream_auth_timeout,
        stream_limits,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        tcp_relays: RefCell::new(HashMap::new()),
        splices: RefCell::new(HashMap::new()),
        peer_streams,
        mesh,
        to_wake: Cell::new(0),
        gso: RefCell::new(SendBatch::new(gso_segments)),
        tasks: Rc::new(Cell::new(0)),
    });
    if let Some(wake) = w.mesh.wake.get(index).cloned() {
        spawn(&w.tasks, inbox_loop(w.clone(), inbox, wake));
    }
    for s in udp_list {
        spawn(&w.tasks, udp_loop(w.clone(), s));
    }
    for l in sockets.tcp {
        let l = TcpListener::from_std(l)?;
        spawn(&w.tasks, accept_loop(w.clone(), l, Proto::Tcp, tls.clone()));
    }
    for l in sockets.tls {
        let l = TcpListener::from_std(l)?;
        spawn(&w.tasks, accept_loop(w.clone(), l, Proto::Tls, tls.clone()));
    }
    let mut prev: (Stats, Gauges) = Default::default();
    let mut report_at = Instant::now();
    let mut prev_tasks = 0;
    loop {
        heartbeat.beat();
        let now = Instant::now();
        let wake = w
            .core
            .borrow()
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = control.recv() => match msg {
                Some(Control::Reload { secrets, users, policy }) => {
                    let mut c = w.core.borrow_mut();
                    c.set_credentials(secrets, users);
                    c.set_policy(policy);
                }
                Some(Control::Drain) => w.core.borrow_mut().set_draining(),
                None => {}
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                w.core.borrow_mut().handle_timeout(now);
                flush(&w, now);
                expire_peer_streams(&w.peer_streams, now);
            }
        }
        let now = Instant::now();
        if now >= report_at {
            let c = w.core.borrow();
            metrics.report(&mut prev, c.stats(), c.gauges(now));
            metrics.worker_tasks(&mut prev_tasks, w.tasks.get());
            report_at = now + Duration::from_millis(500);
        }
    }
    metrics.worker_tasks(&mut prev_tasks, 0);
    let c = w.core.borrow();
    metrics.report(&mut prev, c.stats(), Gauges::default());
    Ok(())
}

/// Drains the core's transmits and commands.
fn flush(w: &Rc<Worker>, now: Instant) {
    loop {
        let (t, c) = {
            let mut core = w.core.borrow_mut();
            (core.poll_transmit(), core.poll_command())
        };
        if t.is_none() && c.is_none() {
            return;
        }
        if let Some(Transmit::ToClient { client, data }) = t {
            send_to_client(w, client, data);
        }
        match c {
            Some(Command::OpenRelaySocket { relay, bind }) => {
                let ok = match relay_socket(bind).and_then(rx_socket) {
                    Ok(sock) => {
                        let sock = Rc::new(sock);
                        let task = spawn(&w.tasks, relay_loop(w.clone(), relay, sock.clone()));
                        w.relays.borrow_mut().insert(relay, (sock, task));
                        true
                    }
                    Err(e) => {
                        tracing::debug!(%bind, error = %e, "relay port busy, trying another");
                        false
                    }
                };
                w.core.borrow_mut().relay_opened(now, relay, ok);
            }
            Some(Command::CloseRelaySocket { relay }) => {
                if let Some((_, task)) = w.relays.borrow_mut().remove(&relay) {
                    task.abort();
                }
                if let Some((task, conns)) = w.tcp_relays.borrow_mut().remove(&relay) {
                    task.abort();
                    conns.cancel();
                    // Its peer connections still waiting for ConnectionBind close now too.
                    expire_peer_streams(&w.peer_streams, now);
                }
            }
            Some(Command::CloseConnection { client }) => {
                if let Some(out) = w.streams.borrow_mut().remove(&client) {
                    out.close();
                }
            }
            Some(Command::OpenTcpRelay { relay, bind }) => {
                let ok = match tcp_relay_listener(bind).and_then(TcpListener::from_std) {
                    Ok(l) => {
                        let conns = CancellationToken::new();
                        let task =
                            spawn(&w.tasks, tcp_relay_loop(w.clone(), relay, l, conns.clone()));
                        w.tcp_relays.borrow_mut().insert(relay, (task, conns));
                        true
                    }
                    Err(e) => {
                        tracing::debug!(%bind, error = %e, "TCP relay port busy, trying another");
                        false
                    }
                };
                w.core.borrow_mut().relay_opened(now, relay, ok);
            }
            Some(Command::ConnectPeer {
                relay,
                conn_id,
                bind,
                peer,
            }) => {
                let conns = w.tcp_relays.borrow().get(&relay).map(|(_, c)| c.clone());
                // Without a relay listener the allocation is already gone: an already
                // cancelled token makes the connection close at once.
                let conns = conns.unwrap_or_else(|| {
                    let c = CancellationToken::new();
                    c.cancel();
                    c
                });
                spawn(
                    &w.tasks,
                    connect_peer(w.clone(), conn_id, bind, peer, conns),
                );
            }
            Some(Command::SpliceData { client, conn_id }) => {
                w.splices.borrow_mut().insert(client, conn_id);
            }
            None => {}
        }
    }
}

/// RFC 6062 relay listener; reuse-address/port so outgoing Connects can bind the same
/// relayed address.
fn tcp_relay_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    tcp_listener(addr)
}

async fn tcp_relay_loop(
    w: Rc<Worker>,
    relay: RelayToken,
    l: TcpListener,
    conns: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        let id = w.core.borrow_mut().tcp_peer_incoming(now, relay, peer);
        if let (Some(id), Ok(std)) = (id, stream.into_std()) {
            peer_streams_lock(&w.peer_streams).insert(id, (std, now, conns.clone()));
        }
        flush(&w, now);
    }
}

async fn connect_peer(
    w: Rc<Worker>,
    conn_id: u32,
    bind: SocketAddr,
    peer: SocketAddr,
    conns: CancellationToken,
) {
    let attempt = async {
        let sock = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(bind)?;
        sock.connect(peer).await
    };
    let res = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    let now = Instant::now();
    let ok = match res {
        Ok(Ok(stream)) => match stream.into_std() {
            Ok(std) => {
                peer_streams_lock(&w.peer_streams).insert(conn_id, (std, now, conns));
                true
            }
            Err(_) => false,
        },
        _ => false,
    };
    w.core.borrow_mut().tcp_peer_connected(now, conn_id, ok);
    flush(&w, now);
}

/// Drops peer connections nobody bound within 30 s (RFC 6062 §5.3) and those whose
/// allocation is gone.
fn expire_peer_streams(p: &PeerStreams, now: Instant) {
    peer_streams_lock(p).retain(|_, (_, at, conns)| {
        !conns.is_cancelled()
            && now.saturating_duration_since(*at) < crate::core::CONNECTION_BIND_TIMEOUT
    });
}

/// Sends a relayed payload to a client as ChannelData: `buf` holds 4 spare bytes followed by
/// the payload; the header is written in place (no copy for UDP clients).
fn deliver_channel_data(
    w: &Worker,
    client: FiveTuple,
    header: [u8; 4],
    padding: usize,
    buf: &mut [u8],
) {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let Some(h) = buf.get_mut(..4) else { return };
    h.copy_from_slice(&header);
    let Some(frame) = buf.get(..4 + len) else {
        return;
    };
    match client.proto {
        Proto::Udp => send_batched(w, Via::Listener(client.local), client.remote, frame),
        Proto::Tcp | Proto::Tls => {
            if let Some(out) = w.streams.borrow().get(&client)
                && out.push(&[frame], padding)
            {
                queued(w, out);
            }
        }
    }
}

fn send_to_client(w: &Worker, client: FiveTuple, data: Vec<u8>) {
    match client.proto {
        Proto::Udp => {
            if let Some(s) = w.udp.get(&client.local) {
                let _ = send_now(s, &data, client.remote);
            }
        }
        Proto::Tcp | Proto::Tls => {
            if let Some(out) = w.streams.borrow().get(&client)
                && out.push(&[&data], 0)
            {
                out.kick();
            }
        }
    }
}

/// One non-blocking `sendto`, straight to the kernel. tokio's `try_send_to` first consults
/// its cached readiness, which a freshly registered relay socket does not have yet, and
/// then refuses with `WouldBlock` without trying: the first packet of every allocation was
/// lost that way. A full socket buffer still drops the datagram, as a router would.
fn send_now(sock: &UdpSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock.get_ref()).send_to(buf, &to.into())
}

fn relay_to_peer(w: &Worker, relay: RelayToken, peer: SocketAddr, bytes: &[u8]) {
    if let Some((s, _)) = w.relays.borrow().get(&relay) {
        let _ = send_now(s, bytes, peer);
    }
}

/// [`Relay::ToWorker`]: queue the payload for the worker that owns `peer` (woken once per
/// batch by [`wake_workers`]); when its queue is full or the payload too large, send it
/// through our relay socket as an ordinary relayed datagram.
fn hand_off(
    w: &Worker,
    worker: usize,
    relay: RelayToken,
    peer: SocketAddr,
    src: SocketAddr,
    bytes: &[u8],
) {
    if let (Some(q), Ok(len)) = (w.mesh.queues.get(worker), u16::try_from(bytes.len()))
        && bytes.len() <= HANDOFF_MAX
    {
        let mut h = Handoff {
            to: peer,
            src,
            len,
            buf: [0; 4 + HANDOFF_MAX],
        };
        if let Some(dst) = h.buf.get_mut(4..4 + bytes.len()) {
            dst.copy_from_slice(bytes);
            if q.try_send(h).is_ok() {
                w.to_wake.set(w.to_wake.get() | 1 << worker);
                return;
            }
        }
    }
    relay_to_peer(w, relay, peer, bytes);
}

/// Wakes the workers that got hand-offs since the last call (one wake-up per batch).
fn wake_workers(w: &Worker) {
    let mut bits = w.to_wake.replace(0);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(n) = w.mesh.wake.get(i) {
            n.notify_one();
        }
    }
}

/// Relay-to-relay datagrams from other workers: each is checked by our core as if it had
/// arrived on the destination's relay socket, then sent to its client as ChannelData.
async fn inbox_loop(w: Rc<Worker>, inbox: Inbox, wake: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            () = wake.notified() => {}
        }
        // Bounded rounds so a busy sender cannot starve this worker's sockets.
        loop {
            let now = Instant::now();
            let mut pending = false;
            let mut n = 0;
            while n < HANDOFF_QUEUE {
                let Ok(mut h) = inbox.try_recv() else { break };
                n += 1;
                let r = {
                    let mut core = w.core.borrow_mut();
                    let r = h
                        .buf
                        .get(4..4 + usize::from(h.len))
                        .and_then(|p| core.handle_relayed(now, h.to, h.src, p));
                    pending |= core.has_pending();
                    r
                };
                if let Some(Relay::ToClient {
                    client,
                    header,
                    padding,
                }) = r
                {
                    deliver_channel_data(&w, client, header, padding, &mut h.buf);
                }
            }
            flush_sends(&w);
            if pending {
                flush(&w, now);
            }
            if n < HANDOFF_QUEUE {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Carries out what the core decided for one client datagram or TCP/TLS frame `data`:
/// relay toward a peer (batched), deliver in process to another allocation of this
/// worker (header rewritten in place), or hand off to the owning worker (woken by
/// [`wake_workers`] after the batch). Shared by the UDP and the stream paths.
fn relay_input(w: &Worker, relay: Option<Relay>, data: &mut [u8]) {
    match relay {
        Some(Relay::ToPeer {
            relay,
            peer,
            payload,
        }) => {
            if let Some(bytes) = data.get(payload) {
                send_batched(w, Via::Relay(relay), peer, bytes);
            }
        }
        Some(Relay::ToClient {
            client,
            header,
            padding,
        }) => deliver_channel_data(w, client, header, padding, data),
        Some(Relay::ToWorker {
            worker,
            relay,
            peer,
            src,
            payload,
        }) => {
            if let Some(bytes) = data.get(payload) {
                hand_off(w, worker, relay, peer, src, bytes);
            }
        }
        None => {}
    }
}

/// Datagrams read per `recvmmsg` on a listener socket.
const RECV_BATCH: usize = if quinn_udp::BATCH_SIZE < 16 {
    quinn_udp::BATCH_SIZE
} else {
    16
};

async fn udp_loop(w: Rc<Worker>, sock: Rc<UdpSocket>) {
    let Ok(local) = sock.get_ref().local_addr() else {
        return;
    };
    // quinn-udp gives recvmmsg (up to RECV_BATCH datagrams per syscall) and GRO (several
    // datagrams of one flow in one buffer, split at `stride`), without unsafe code here.
    let state = match quinn_udp::UdpSocketState::new(sock.get_ref().into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %local, "UDP listener setup failed");
            return;
        }
    };
    let mut storage = vec![0u8; MAX_DATAGRAM * RECV_BATCH];
    let mut metas = [quinn_udp::RecvMeta::default(); RECV_BATCH];
    loop {
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = sock.readable() => if r.is_err() { return },
        }
        // Drain the socket: one recvmmsg per batch until it would block, but yield to the
        // worker's other tasks (timers, metrics, SIGHUP, TCP connections) every
        // `UDP_BATCHES_PER_TURN` batches: a flood faster than the worker must not starve them.
        let mut batches = 0usize;
        loop {
            batches += 1;
            if batches > UDP_BATCHES_PER_TURN {
                tokio::task::yield_now().await;
                batches = 1;
            }
            let res = {
                let mut chunks = storage.chunks_mut(MAX_DATAGRAM);
                let mut iovs: [io::IoSliceMut<'_>; RECV_BATCH] =
                    std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or_default()));
                recv_batch(&sock, &state, &mut iovs, &mut metas)
            };
            let (n, more) = match res {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface as ECONNREFUSED etc. on Linux: not fatal.
                    tracing::debug!(error = %e, "udp recv");
                    break;
                }
            };
            let now = Instant::now();
            let unix = unix_now();
            let mut pending = false;
            for (meta, chunk) in metas.iter().zip(storage.chunks_mut(MAX_DATAGRAM)).take(n) {
                let Some(filled) = chunk.get_mut(..meta.len) else {
                    continue;
                };
                let from = FiveTuple {
                    proto: Proto::Udp,
                    local,
                    remote: meta.addr,
                };
                for data in filled.chunks_mut(meta.stride.max(1)) {
                    let relay = {
                        let mut core = w.core.borrow_mut();
                        let r = core.handle_input(now, unix, from, data);
                        pending |= core.has_pending();
                        r
                    };
                    relay_input(&w, relay, data);
                }
            }
            flush_sends(&w);
            wake_workers(&w);
            if pending {
                flush(&w, now);
            }
            if !more {
                break;
            }
        }
    }
}

/// `recvmmsg` batches a UDP listener handles before it lets the worker's other tasks run.
const UDP_BATCHES_PER_TURN: usize = 64;

/// Bytes a stream connection reads per syscall (at least; the buffer grows for a frame
/// that does not fit).
const STREAM_READ: usize = 16 * 1024;
/// A TCP/TLS connection with nothing read for this long is closed.
const STREAM_IDLE: Duration = Duration::from_secs(3600);

/// Datagrams read per `recvmmsg` on a relay socket, and the size of one slot of the
/// worker's relay buffer (4 bytes of headroom for the ChannelData header + a datagram).
/// A burst that fills every slot costs one more `recvmmsg` just to see `EAGAIN`; 16
/// slots cover a video frame's burst in one call (8 cost a second call per 8-packet
/// burst). The buffer is per worker (16 × 64 KiB), not per allocation.
const RELAY_BATCH: usize = 16;
const RELAY_SLOT: usize = MAX_DATAGRAM + 4;

/// One non-blocking `recvmmsg` inside tokio's readiness protocol. When it returns fewer
/// datagrams than buffers the queue was empty at that instant, so readiness is cleared
/// right away (reported as `WouldBlock` to `try_io`, the count kept aside) instead of
/// paying one more syscall just to see `EAGAIN`. Safe: a datagram arriving afterwards
/// raises a new readiness event that this clear does not erase.
fn recv_batch(
    sock: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    bufs: &mut [io::IoSliceMut<'_>],
    metas: &mut [quinn_udp::RecvMeta],
) -> io::Result<(usize, bool)> {
    let mut got = 0;
    let res = sock.try_io(tokio::io::Interest::READABLE, |s| {
        got = state.recv(s.into(), bufs, metas)?;
        if got < bufs.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match res {
        Ok(()) => Ok((got, true)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((got, false)),
        Err(e) => Err(e),
    }
}

async fn relay_loop(w: Rc<Worker>, token: RelayToken, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        loop {
            let mut buf = w.relay_buf.borrow_mut();
            let mut metas = w.relay_metas.borrow_mut();
            let res = {
                let mut slots = buf.chunks_mut(RELAY_SLOT);
                let mut iovs: [io::IoSliceMut<'_>; RELAY_BATCH] = std::array::from_fn(|_| {
                    io::IoSliceMut::new(
                        slots
                            .next()
                            .and_then(|s| s.get_mut(4..))
                            .unwrap_or_default(),
                    )
                });
                recv_batch(&sock, &w.recv_state, &mut iovs, &mut *metas)
            };
            let Ok((n, more)) = res else { break };
            let now = Instant::now();
            let mut pending = false;
            for (meta, slot) in metas.iter().zip(buf.chunks_mut(RELAY_SLOT)).take(n) {
                let len = meta.len;
                let r = {
                    let mut core = w.core.borrow_mut();
                    let r = slot
                        .get(4..4 + len)
                        .and_then(|p| core.handle_peer_data(now, token, meta.addr, p));
                    pending |= core.has_pending();
                    r
                };
                let Some(Relay::ToClient {
                    client,
                    header,
                    padding,
                }) = r
                else {
                    continue;
                };
                deliver_channel_data(&w, client, header, padding, slot);
            }
            flush_sends(&w);
            drop(metas);
            drop(buf);
            if pending {
                flush(&w, now);
            }
            if !more {
                break;
            }
        }
    }
}

async fn accept_loop(w: Rc<Worker>, l: TcpListener, proto: Proto, tls: SharedTls) {
    let Ok(local) = l.local_addr() else { return };
    loop {
        let (stream, remote) = tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) if out_of_fds(&e) => {
                    // The connection stays in the backlog: accepting again at once would
                    // spin. Pause until one of ours closes (or 1 s: fds held elsewhere).
                    w.metrics.stream_rejected(StreamReject::FdLimit);
                    tracing::warn!(error = %e, "out of file descriptors: accept paused");
                    tokio::select! {
                        _ = w.shutdown.cancelled() => return,
                        () = w.stream_limits.freed.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slot = match w.stream_limits.admit(remote.ip()) {
            Ok(s) => s,
            Err(reason) => {
                // Closed at once (the client sees the connection end), counted.
                w.metrics.stream_rejected(reason);
                tracing::debug!(client = ?remote, ?reason, "stream connection over its cap, closed");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let five = FiveTuple {
            proto,
            local,
            remote,
        };
        match proto {
            Proto::Tls => {
                let acceptor = tls.read().ok().and_then(|g| g.clone());
                let Some(acceptor) = acceptor else { continue };
                let ws = w.clone();
                spawn(&w.tasks, async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            serve_stream(ws, ClientConn::Tls(Box::new(s)), five, slot).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
            _ => {
                spawn(
                    &w.tasks,
                    serve_stream(w.clone(), ClientConn::Tcp(stream), five, slot),
                );
            }
        }
    }
}

/// A client's TURN-over-TCP or TURN-over-TLS connection.
enum ClientConn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a [`ClientConn`].
enum StreamRead {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl StreamRead {
    /// Reads into `buf`'s spare capacity. A short read clears the socket's readiness
    /// (tokio's `AsyncRead` does), so a burst costs one `read`, not one more for `EAGAIN`.
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Self::Tcp(r) => r.read_buf(buf).await,
            Self::Tls(r) => r.read_buf(buf).await,
        }
    }
}

/// The writer task of a connection, which returns the write half for RFC 6062 splicing
/// (plain TCP keeps its write half in the [`StreamOut`]).
enum StreamWriter {
    Tcp(JoinHandle<()>),
    Tls(JoinHandle<WriteHalf<TlsStream<TcpStream>>>),
}

/// Plain TCP: writes the queue while the relay path could not (socket full), and what
/// is left when the connection closes.
async fn tcp_writer(out: Rc<StreamOut>) {
    let Some(wr) = &out.direct else { return };
    while out.wait_queued().await {
        if wr.writable().await.is_err() {
            break;
        }
        if out.try_flush().is_err() {
            // Nothing more will leave: stop queueing for this client.
            out.closed.set(true);
            break;
        }
    }
}

/// TLS: one record per frame, because some clients (coturn's uclient) handle only one
/// TURN frame per SSL_read; the records still leave in as few TCP segments as the kernel
/// likes. Returns the write half (closed by the caller, or spliced: RFC 6062).
async fn tls_writer(
    out: Rc<StreamOut>,
    mut wr: WriteHalf<TlsStream<TcpStream>>,
) -> WriteHalf<TlsStream<TcpStream>> {
    let (mut batch, mut ends) = (Vec::new(), Vec::new());
    while out.wait_queued().await {
        std::mem::swap(&mut *out.buf.borrow_mut(), &mut batch);
        std::mem::swap(&mut *out.ends.borrow_mut(), &mut ends);
        let mut start = 0;
        let mut sent = Ok(());
        for &end in &ends {
            sent = wr
                .write_all(batch.get(start..end).unwrap_or_default())
                .await;
            if sent.is_err() {
                break;
            }
            start = end;
        }
        batch.clear();
        ends.clear();
        if sent.is_err() {
            out.closed.set(true);
            break;
        }
    }
    wr
}

async fn serve_stream(w: Rc<Worker>, conn: ClientConn, five: FiveTuple, slot: StreamSlot) {
    w.metrics.stream_opened();
    // Held (and the active gauge kept) until the connection, spliced or not, ends.
    struct Open {
        _slot: StreamSlot,
        metrics: Metrics,
    }
    impl Drop for Open {
        fn drop(&mut self) {
            self.metrics.stream_closed();
        }
    }
    let _open = Open {
        _slot: slot,
        metrics: w.metrics.clone(),
    };
    let (mut rd, out, writer) = match conn {
        ClientConn::Tcp(s) => {
            let (rd, wr) = s.into_split();
            let out = Rc::new(StreamOut {
                direct: Some(wr),
                ..StreamOut::default()
            });
            let writer = spawn(&w.tasks, tcp_writer(out.clone()));
            (StreamRead::Tcp(rd), out, StreamWriter::Tcp(writer))
        }
        ClientConn::Tls(s) => {
            let (rd, wr) = tokio::io::split(*s);
            let out = Rc::new(StreamOut::default());
            let writer = spawn(&w.tasks, tls_writer(out.clone(), wr));
            (StreamRead::Tls(rd), out, StreamWriter::Tls(writer))
        }
    };
    w.streams.borrow_mut().insert(five, out.clone());
    let mut splice: Option<(u32, Vec<u8>)> = None;
    // Frames are parsed where they are read: no copy from a read chunk. The buffer holds
    // at most one partial frame between reads, so `drain` moves little.
    let mut buf: Vec<u8> = Vec::with_capacity(STREAM_READ);
    // One shutdown future and one idle timer for the connection's life, re-armed only when
    // it fires: a timer per read (insert + remove in the wheel) was measurable per burst.
    let shutdown = w.shutdown.cancelled();
    tokio::pin!(shutdown);
    let idle = tokio::time::sleep(STREAM_IDLE);
    tokio::pin!(idle);
    // A connection without an allocation (not authenticated, or its allocation gone) is
    // closed when this fires; with one, it is checked again a period later.
    let auth = tokio::time::sleep(w.auth_timeout);
    tokio::pin!(auth);
    let mut last_read = tokio::time::Instant::now();
    'conn: loop {
        if buf.capacity() - buf.len() < STREAM_READ / 2 {
            buf.reserve(STREAM_READ);
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            () = &mut idle => {
                let due = last_read + STREAM_IDLE;
                if tokio::time::Instant::now() >= due {
                    tracing::debug!(client = ?five.remote, "idle stream, closing");
                    break;
                }
                idle.as_mut().reset(due);
                continue;
            }
            () = &mut auth => {
                if !w.core.borrow().has_allocation(five) {
                    w.metrics.stream_rejected(StreamReject::AuthTimeout);
                    tracing::debug!(client = ?five.remote, "stream without allocation, closing");
                    break;
                }
                auth.as_mut().reset(tokio::time::Instant::now() + w.auth_timeout);
                continue;
            }
        }
        // All frames of one read arrived at the same moment: one clock read per read.
        let now = Instant::now();
        last_read = now.into();
        let unix = unix_now();
        let mut off = 0;
        loop {
            let rest = buf.get(off..).unwrap_or_default();
            // The fuzzed shared-ice framer (fuzz/fuzz_targets/turn_tcp_framing.rs): not
            // STUN/ChannelData, a bad STUN header or a frame over `max_frame` closes the
            // connection (counted), it is never skipped silently.
            let len = match w.framer.next_frame(rest) {
                Ok(Some(f)) => f.len,
                Ok(None) => break,
                Err(e) => {
                    w.metrics.stream_rejected(StreamReject::BadFrame);
                    tracing::debug!(client = ?five.remote, error = %e, "unframeable stream, closing");
                    break 'conn;
                }
            };
            let Some(frame) = buf.get_mut(off..off + len) else {
                break;
            };
            let (relay, pending) = {
                let mut core = w.core.borrow_mut();
                let r = core.handle_input(now, unix, five, frame);
                (r, core.has_pending())
            };
            // A burst of frames from one read toward one peer leaves in one GSO send,
            // flushed after the read's frames (before any await).
            relay_input(&w, relay, frame);
            if pending {
                flush(&w, now);
            }
            // The core closed this connection (`Command::CloseConnection`, e.g. over its
            // source's request rate) or its writer failed: stop reading, so the socket
            // closes and the client sees it at once.
            if out.closed.get() {
                break 'conn;
            }
            off += len;
            // RFC 6062: after a successful ConnectionBind the rest of the stream is raw
            // data. (The map is empty except during a bind: no hashing per frame.)
            let bound = {
                let mut splices = w.splices.borrow_mut();
                if splices.is_empty() {
                    None
                } else {
                    splices.remove(&five)
                }
            };
            if let Some(id) = bound {
                splice = Some((id, buf.get(off..).unwrap_or_default().to_vec()));
                break 'conn;
            }
        }
        flush_sends(&w);
        wake_workers(&w);
        buf.drain(..off);
    }
    flush_sends(&w);
    wake_workers(&w);
    // Closing lets the writer send what is queued and return.
    if let Some(out) = w.streams.borrow_mut().remove(&five) {
        out.close();
    }
    if let Some((id, leftover)) = splice {
        let peer = peer_streams_lock(&w.peer_streams)
            .remove(&id)
            .map(|(s, _, conns)| (s, conns));
        match (rd, writer) {
            (StreamRead::Tcp(rd), StreamWriter::Tcp(h)) => {
                let _ = h.await;
                // The writer and the worker's maps have let go of the queue by now.
                let Some(wr) = Rc::try_unwrap(out).ok().and_then(|o| o.direct) else {
                    return;
                };
                if let (Ok(client), Some((peer, conns))) = (rd.reunite(wr), peer) {
                    splice_data(&w, five.proto, client, peer, &leftover, &conns).await;
                }
            }
            (StreamRead::Tls(rd), StreamWriter::Tls(h)) => {
                if let (Ok(wr), Some((peer, conns))) = (h.await, peer) {
                    splice_data(&w, five.proto, rd.unsplit(wr), peer, &leftover, &conns).await;
                }
            }
            _ => {}
        }
        return;
    }
    w.core.borrow_mut().connection_closed(five);
    flush(&w, Instant::now());
    match writer {
        // Dropping the write half (with the queue) shuts the write side down.
        StreamWriter::Tcp(h) => {
            let _ = h.await;
        }
        StreamWriter::Tls(h) => {
            if let Ok(mut wr) = h.await {
                let _ = wr.shutdown().await;
            }
        }
    }
}

/// Pipes a client data connection and a peer TCP connection (RFC 6062) until either side
/// closes, the allocation goes (`conns` cancelled: both connections are closed, RFC 6062
/// §5) or the server shuts down. Relayed bytes are counted per chunk, so the metrics
/// follow long-lived connections while they run.
async fn splice_data<S: AsyncRead + AsyncWrite + Unpin>(
    w: &Worker,
    proto: Proto,
    client: S,
    peer: std::net::TcpStream,
    leftover: &[u8],
    conns: &CancellationToken,
) {
    if conns.is_cancelled() {
        return;
    }
    let Ok(mut peer) = TcpStream::from_std(peer) else {
        return;
    };
    if peer.write_all(leftover).await.is_err() {
        return;
    }
    w.core
        .borrow_mut()
        .count_stream_relay(proto, leftover.len() as u64, 0);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut peer_rd, mut peer_wr) = peer.split();
    let up = pipe(w, proto, &mut client_rd, &mut peer_wr, true);
    let down = pipe(w, proto, &mut peer_rd, &mut client_wr, false);
    tokio::select! {
        _ = w.shutdown.cancelled() => {}
        _ = conns.cancelled() => {
            tracing::debug!("allocation gone, closing its TCP relay connection");
        }
        (up, down) = async { tokio::join!(up, down) } => {
            tracing::debug!(up, down, "TCP relay connection closed");
        }
    }
}

/// Copies one direction of a spliced connection until EOF or error, counting each chunk;
/// on EOF the write side is shut down (half-close passes through). Returns the bytes copied.
async fn pipe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    w: &Worker,
    proto: Proto,
    rd: &mut R,
    wr: &mut W,
    to_peer: bool,
) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get(..n) else { break };
        if wr.write_all(chunk).await.is_err() {
            break;
        }
        total += n as u64;
        let (p, c) = if to_peer {
            (n as u64, 0)
        } else {
            (0, n as u64)
        };
        w.core.borrow_mut().count_stream_relay(proto, p, c);
    }
    let _ = wr.shutdown().await;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_max_frame() {
        // The runtime's framer as configured from `max_frame` (default 16384).
        let f = Framer::new(16_384);
        assert_eq!(f.next_frame(&[0x00, 0x01]), Ok(None));
        assert_eq!(
            f.next_frame(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]),
            Ok(Some(shared_ice::framing::Frame {
                kind: shared_ice::framing::FrameKind::ChannelData,
                len: 12
            }))
        );
        assert!(f.next_frame(&[0x80]).is_err());
        // "GET " reads as a ChannelData frame of 21540 bytes: over max_frame, closed.
        assert!(f.next_frame(b"GET / HTTP/1.1").is_err());
        // A STUN header with a wrong magic cookie is not TURN: closed.
        assert!(f.next_frame(&[0, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef]).is_err());
    }
}
