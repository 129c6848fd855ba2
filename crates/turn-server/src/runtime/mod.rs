//! The tokio shell around [`crate::core::Core`]: sockets, TLS, timers, signals, metrics.
//! TLS loading and the reloadable acceptor ([`SharedTls`]) are `callrelay_service::tls`'s.
//!
//! Sharding: `workers` OS threads, each with a single-threaded tokio runtime that owns one
//! `Core` (its own allocation table and its own slice of the relay port range). Every worker
//! binds its own UDP socket and TCP/TLS listeners on each listen address with `SO_REUSEPORT`,
//! so the kernel spreads clients over workers by 5-tuple hash and a client always reaches
//! the worker that holds its allocation; a relay socket belongs to the worker that opened it.
//! There is no lock on the relay path. The one cross-thread hand-off is relay to relay
//! between two workers ([`Mesh`]): a bounded, preallocated queue per worker. The core sits
//! in a `RefCell` that is borrowed only between awaits.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | a worker: its state, its loop (timers, SIGHUP reloads, metrics reports) and `flush`, which carries out the core's commands |
//! | `udp` | UDP receive batches on listeners and relay sockets, what the core decided per datagram (`relay_input`), GSO send batching |
//! | `stream` | TURN over TCP/TLS: accept loops, one task per connection, the per-connection output queue |
//! | `rfc6062` | TCP allocations: peer listeners, Connect, ConnectionBind splices |
//! | `mesh` | relay to relay between workers ([`Mesh`], [`Handoff`]) |
//! | `limits` | caps on TCP/TLS connections ([`StreamLimits`], [`stream_cap`]) |
//! | `bind` | socket set-up ([`bind_all`]) |
//! | `watchdog` | the systemd watchdog: worker heartbeats and the pings ([`Watchdog`]) |
//! | `metrics_http` | the bounded `/metrics` endpoint ([`serve_metrics`]) |
//! | `control` | the gateway's control endpoint on the same listener ([`ControlApi`]): installs a permission through the owning worker's core |

mod bind;
mod control;
mod limits;
mod mesh;
mod metrics_http;
mod rfc6062;
mod stream;
mod udp;
mod watchdog;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callrelay_service::time::unix_now;

use rand::SeedableRng;
use rand::rngs::StdRng;
use shared_ice::auth::RestSecrets;
use shared_ice::framing::Framer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StaticUser};
use crate::core::{
    Command, Core, CoreConfig, FiveTuple, Gauges, Proto, RelayToken, Stats, Transmit,
};
use crate::metrics::Metrics;
use crate::policy::PeerPolicy;
use crate::quota::SharedQuota;

pub use bind::{Bound, WorkerSockets, bind_all};
pub use callrelay_service::tls::SharedTls;
pub use control::{CONTROL_QUEUE, ControlApi, PermitRequest, PermitRx};
pub use limits::{StreamLimits, nofile_limit, stream_cap};
pub use mesh::{Handoff, Inbox, Mesh};
pub use metrics_http::{MetricsBounds, metrics_app, serve_metrics};
pub use rfc6062::PeerStreams;
pub use watchdog::{Heartbeat, Watchdog, watchdog_interval};

use bind::relay_socket;
use mesh::inbox_loop;
use rfc6062::{connect_peer, expire_peer_streams, tcp_relay_listener, tcp_relay_loop};
use stream::{StreamOut, accept_loop};
use udp::{RELAY_BATCH, RELAY_SLOT, SendBatch, relay_loop, send_to_client, udp_loop};

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
#[expect(
    deprecated,
    reason = "the safe spelling; the non-deprecated one is `unsafe`"
)]
fn rx_socket(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    AsyncFd::with_interest(s, tokio::io::Interest::READABLE)
}

/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 65_536;

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
        secrets: RestSecrets,
        /// Static users.
        users: Vec<StaticUser>,
        /// Peer policy.
        policy: PeerPolicy,
    },
    /// Stop accepting allocations.
    Drain,
}

type RelayMap = crate::core::FxMap<RelayToken, (Rc<UdpSocket>, JoinHandle<()>)>;

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
    /// The kernel fast path, shared by all workers, when it runs (docs/offload.md).
    pub offload: Option<SharedOffload>,
    /// Permissions the control endpoint asks this worker's core to install (bounded
    /// queue, [`CONTROL_QUEUE`]).
    pub permits: PermitRx,
}

/// The loaded kernel fast path; its maps are written only on the control path
/// (ChannelBind, CreatePermission, Refresh, expiry), never per packet.
pub type SharedOffload = Arc<std::sync::Mutex<turn_offload::Offload>>;

struct Worker {
    core: RefCell<Core<StdRng>>,
    udp: crate::core::FxMap<SocketAddr, Rc<UdpSocket>>,
    relays: RefCell<RelayMap>,
    streams: RefCell<HashMap<FiveTuple, Rc<StreamOut>>>,
    /// Plain TCP streams that got frames during the current batch (see [`queued`](stream::queued)).
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
    offload: Option<SharedOffload>,
    /// This worker's allocations with bindings in the kernel fast path, with the payload
    /// bytes of theirs the kernel relayed that the core has been charged for, and the
    /// bytes the core relayed that the kernel's bucket has been charged for.
    offloaded: RefCell<HashMap<FiveTuple, (u64, u64)>>,
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
        offload,
        mut permits,
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
        permission_lifetime: Duration::from_secs(cfg.permission_lifetime.into()),
        channel_lifetime: Duration::from_secs(cfg.channel_lifetime.into()),
        nonce_key: Some(nonce_key),
        worker: index,
        max_permissions: cfg.max_permissions as usize,
        max_channels: cfg.max_channels as usize,
        tx_cache_max: cfg.transaction_cache as usize,
        offload: offload.is_some(),
    };
    let core = Core::new(
        core_cfg,
        StdRng::from_os_rng(),
        cfg.auth_secrets.clone(),
        &cfg.users,
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
        offload,
        offloaded: RefCell::new(HashMap::new()),
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
            .min(now + Duration::from_secs(1))
            // the twice-a-second report (and the kernel's bandwidth charges) on time,
            // even when no timer of the core is due
            .min(report_at)
            .max(now);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = control.recv() => match msg {
                Some(Control::Reload { secrets, users, policy }) => {
                    let now = Instant::now();
                    let revoked = {
                        let mut c = w.core.borrow_mut();
                        c.set_credentials(secrets, &users);
                        c.set_policy(now, policy)
                    };
                    // the kernel's entries of those bindings go now, not at the next sweep,
                    // and before the log says they ended
                    flush(&w, now);
                    if revoked > 0 {
                        tracing::info!(revoked, "permissions of peers the new policy denies ended");
                    }
                }
                Some(Control::Drain) => w.core.borrow_mut().set_draining(),
                None => {}
            },
            Some(p) = permits.recv() => {
                let now = Instant::now();
                let result = w.core.borrow_mut().install_permission(now, p.relay, p.peer);
                // the kernel fast path hears of it before the answer goes
                flush(&w, now);
                // the endpoint may have given up waiting: nothing to do then
                let _ = p.reply.send(result);
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                w.core.borrow_mut().handle_timeout(now);
                flush(&w, now);
                expire_peer_streams(&w.peer_streams, now);
            }
        }
        let now = Instant::now();
        if now >= report_at {
            charge_offloaded(&w, now);
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

/// Charges each of this worker's offloaded allocations with the payload bytes the kernel
/// relayed for it since the last call (its per-allocation counters), and its kernel bucket
/// with the bytes relayed here, so both buckets count both paths. One or two map
/// operations per such allocation, twice a second, each under the shared lock on its own:
/// the other workers' syncs never wait for the whole sweep.
fn charge_offloaded(w: &Rc<Worker>, now: Instant) {
    let Some(offload) = &w.offload else {
        return;
    };
    let mut charges = Vec::new();
    {
        let mut offloaded = w.offloaded.borrow_mut();
        if offloaded.is_empty() {
            return;
        }
        let core = w.core.borrow();
        for (client, (seen, user_seen)) in offloaded.iter_mut() {
            let key = (client.remote, client.local);
            let user = core.relayed_bytes(*client).unwrap_or(*user_seen);
            let counters = {
                let mut o = offload
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if user > *user_seen {
                    o.charge(&key, user - *user_seen);
                    *user_seen = user;
                }
                o.allocation_counters(&key)
            };
            if let Some(c) = counters {
                let total = c.bytes();
                if total > *seen {
                    charges.push((*client, total - *seen));
                    *seen = total;
                }
            }
        }
    }
    let mut core = w.core.borrow_mut();
    for (client, bytes) in charges {
        core.charge_offloaded(now, client, bytes);
    }
}

/// A binding made through a wildcard listener (`0.0.0.0`, `[::]`) names no local
/// address; the kernel path needs the one the client's datagrams arrive at. Our replies
/// on that socket leave from the address the kernel routes from toward the client, so
/// that is the one the client talks to: it goes into the bindings (outside the offload's
/// lock; one routing lookup per change of the allocation's bindings, never per packet).
/// Without a route the bindings keep the wildcard and stay in userspace.
fn wildcard_source(s: &mut crate::core::OffloadSync) {
    let local = s.client.local;
    if !local.ip().is_unspecified() || s.bindings.is_empty() {
        return;
    }
    if let Some(ip) = turn_offload::source_toward(s.client.remote) {
        for b in &mut s.bindings {
            if b.server == local {
                b.server.set_ip(ip);
            }
        }
    }
}

/// Drains the core's transmits, commands and offload changes.
fn flush(w: &Rc<Worker>, now: Instant) {
    if let Some(offload) = &w.offload {
        let mut syncs = Vec::new();
        {
            let mut core = w.core.borrow_mut();
            while let Some(mut s) = core.poll_offload() {
                wildcard_source(&mut s);
                syncs.push(s);
            }
        }
        if !syncs.is_empty() {
            let mut charges = Vec::new();
            {
                let mut o = offload
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut offloaded = w.offloaded.borrow_mut();
                for s in syncs {
                    let key = (s.client.remote, s.client.local);
                    if let Some(total) = o.sync(key, &s.bindings) {
                        // out of the kernel: its last bytes, and its account in the log
                        let (seen, _) = offloaded.remove(&s.client).unwrap_or_default();
                        charges.push((s.client, total.bytes().saturating_sub(seen)));
                        tracing::debug!(
                            client = %s.client.remote,
                            to_peer_packets = total.to_peer_packets,
                            to_peer_bytes = total.to_peer_bytes,
                            to_client_packets = total.to_client_packets,
                            to_client_bytes = total.to_client_bytes,
                            "allocation left the kernel fast path"
                        );
                    } else if o.allocation_counters(&key).is_some() {
                        // what userspace relayed before counts against its own bucket
                        // only: the kernel's starts full, as a new allocation's does
                        let user = w.core.borrow().relayed_bytes(s.client).unwrap_or(0);
                        offloaded.entry(s.client).or_insert((0, user));
                    }
                }
            }
            let mut core = w.core.borrow_mut();
            for (client, bytes) in charges {
                core.charge_offloaded(now, client, bytes);
            }
        }
    }
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
                let ok = relay_bound(bind, relay_socket(bind).and_then(rx_socket), |sock| {
                    let sock = Rc::new(sock);
                    let task = spawn(&w.tasks, relay_loop(w.clone(), relay, sock.clone()));
                    w.relays.borrow_mut().insert(relay, (sock, task));
                });
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
                let listener = tcp_relay_listener(bind).and_then(TcpListener::from_std);
                let ok = relay_bound(bind, listener, |l| {
                    let conns = CancellationToken::new();
                    let task = spawn(&w.tasks, tcp_relay_loop(w.clone(), relay, l, conns.clone()));
                    w.tcp_relays.borrow_mut().insert(relay, (task, conns));
                });
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

/// Whether a relay socket (UDP) or listener (RFC 6062 TCP) could be bound: `keep` starts
/// its task; a bind error is the port busy on this host, and the core picks another.
fn relay_bound<S>(bind: SocketAddr, bound: io::Result<S>, keep: impl FnOnce(S)) -> bool {
    match bound {
        Ok(s) => {
            keep(s);
            true
        }
        Err(e) => {
            tracing::debug!(%bind, error = %e, "relay port busy, trying another");
            false
        }
    }
}

#[cfg(test)]
mod tests;
