//! Sans-IO TURN core: allocations, permissions, channels, auth, quotas.
//!
//! Driven by the runtime (or a test) with `(now, unix_now, from, bytes)`; never reads a clock,
//! never touches a socket. After every `handle_*` call drain `poll_transmit` and
//! `poll_command` until they return `None`.
//!
//! The two relay directions are the fast path: [`Core::handle_input`] on a ChannelData or Send
//! indication and [`Core::handle_peer_data`] return a [`Relay`] that tells the runtime to send
//! bytes that are already in its own receive buffer; nothing is allocated or copied.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;

use self::rate::{Limits, RateTable};
use crate::auth::{Credentials, Key, Lookup};
use crate::policy::{DenyClass, PeerPolicy};
use crate::stun::{self, Builder, Class, Message, TransactionId, attr, error_code, method};

/// Permission lifetime (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires its number and peer stay reserved this long (RFC 8656 §12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// How long answers to retransmitted requests are kept (RFC 8489 §6.3.1: 40 s).
pub const TRANSACTION_CACHE: Duration = Duration::from_secs(40);
/// RESERVATION-TOKEN lifetime (RFC 8656 §14.9, 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Value of the SOFTWARE attribute in authenticated answers.
pub const SOFTWARE: &str = concat!("callrelay turn-server ", env!("CARGO_PKG_VERSION"));

/// Transport of a client connection.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP (RFC 6544 framing).
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Proto {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
    fn index(self) -> usize {
        match self {
            Self::Udp => 0,
            Self::Tcp => 1,
            Self::Tls => 2,
        }
    }
    /// All transports, in metric order.
    pub const ALL: [Self; 3] = [Self::Udp, Self::Tcp, Self::Tls];
}

/// A client's 5-tuple as seen by the server.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct FiveTuple {
    /// Transport.
    pub proto: Proto,
    /// Our listening address.
    pub local: SocketAddr,
    /// The client's address.
    pub remote: SocketAddr,
}

/// Handle of one relay socket: allocation slot, generation and family.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct RelayToken {
    slot: u32,
    generation: u32,
    v6: bool,
}

/// Fast-path verdict: where the runtime sends bytes it already holds.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Relay {
    /// Send `buf[payload]` from relay socket `relay` to `peer`.
    ToPeer {
        /// The allocation's relay socket.
        relay: RelayToken,
        /// Destination.
        peer: SocketAddr,
        /// Range of the input buffer to send.
        payload: Range<usize>,
    },
    /// Prefix the peer's payload with `header` (ChannelData) and send it to `client`.
    /// Over TCP/TLS pad the frame to a multiple of 4 (`padding` bytes of zeros).
    /// From `handle_peer_data` the payload is the peer datagram; from `handle_input` (in-process
    /// delivery between two allocations) it is the input ChannelData's payload at offset 4,
    /// whose 4 header bytes are to be overwritten.
    ToClient {
        /// Destination.
        client: FiveTuple,
        /// ChannelData header.
        header: [u8; 4],
        /// Zero bytes to append (stream transports only).
        padding: usize,
    },
    /// The peer is the relayed address of an allocation owned by another worker: hand
    /// `buf[payload]` to worker `worker`, which feeds it to [`Core::handle_relayed`] (its
    /// permission, channel and bandwidth checks apply there). If the hand-off is not
    /// possible (queue full, payload too large) send it like [`Relay::ToPeer`] through
    /// `relay` instead: the kernel delivers it to the same place.
    ToWorker {
        /// Index of the worker that owns `peer`.
        worker: usize,
        /// This allocation's relay socket (fallback path).
        relay: RelayToken,
        /// The other allocation's relayed address.
        peer: SocketAddr,
        /// This allocation's relayed address (the source B's client sees).
        src: SocketAddr,
        /// Range of the input buffer to hand over.
        payload: Range<usize>,
    },
}

/// A message the core built (responses, Data indications).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Transmit {
    /// Send to a client over its 5-tuple.
    ToClient {
        /// Destination.
        client: FiveTuple,
        /// Bytes.
        data: Vec<u8>,
    },
}

/// Socket work for the runtime.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Command {
    /// Bind a UDP socket at `bind`, then call [`Core::relay_opened`].
    OpenRelaySocket {
        /// Token to pass back and to `handle_peer_data`.
        relay: RelayToken,
        /// Address to bind.
        bind: SocketAddr,
    },
    /// Close the relay socket.
    CloseRelaySocket {
        /// The socket.
        relay: RelayToken,
    },
    /// Close a TCP/TLS client connection (its allocation is gone or it misbehaved).
    CloseConnection {
        /// The connection.
        client: FiveTuple,
    },
    /// RFC 6062: listen for peer TCP connections on `bind`, then call
    /// [`Core::relay_opened`]; incoming ones go to [`Core::tcp_peer_incoming`].
    OpenTcpRelay {
        /// Token of the allocation's relay.
        relay: RelayToken,
        /// Address to listen on (reuse-address/port: outgoing connects bind it too).
        bind: SocketAddr,
    },
    /// RFC 6062 Connect: open a TCP connection from `bind` to `peer`, then call
    /// [`Core::tcp_peer_connected`]; keep the stream under `conn_id` for 30 s.
    ConnectPeer {
        /// Token of the allocation's relay (its connections close with it, RFC 6062 §5).
        relay: RelayToken,
        /// Connection id.
        conn_id: u32,
        /// Relay address to bind.
        bind: SocketAddr,
        /// Peer.
        peer: SocketAddr,
    },
    /// RFC 6062 ConnectionBind succeeded: after the queued answer, `client`'s connection
    /// carries raw bytes to and from the peer connection `conn_id`.
    SpliceData {
        /// The client's data connection.
        client: FiveTuple,
        /// The peer connection.
        conn_id: u32,
    },
}

/// Counters the runtime exports as Prometheus metrics (monotonic).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Allocate results: ok, unauthorized, quota, capacity, mismatch, bad_request, forbidden.
    pub allocations: [u64; 7],
    /// Auth failures: missing, bad_integrity, unknown_user, expired, stale_nonce, bad_username.
    pub auth_failures: [u64; 6],
    /// Packets relayed, indexed `[direction: to_peer=0, to_client=1][transport]`.
    pub packets: [[u64; 3]; 2],
    /// Bytes relayed, indexed `[direction][transport]`.
    pub bytes: [[u64; 3]; 2],
    /// Denied peers by [`DenyClass::index`].
    pub denied: [u64; 9],
    /// Quota rejections: user_allocations, total_allocations, bandwidth, rate_limit,
    /// relay_ports, permissions, channels.
    pub quota: [u64; 7],
    /// Requests: binding, allocate, refresh, create_permission, channel_bind, connect, connection_bind.
    pub requests: [u64; 7],
    /// Packets delivered in process from one allocation to another, accepted by the
    /// receiving allocation: `[same_worker, cross_worker]`.
    pub in_process: [u64; 2],
    /// Rate-limit table entries replaced to make room for a new source.
    pub rate_evictions: u64,
    /// TCP/TLS connections closed for going over their source's request budget.
    pub rate_limit_closed: u64,
    /// Answers not kept for retransmissions because the transaction cache was full.
    pub tx_cache_full: u64,
}

/// Label tables matching [`Stats`] indexes.
pub mod labels {
    /// `callrelay_turn_allocations_total{result}`.
    pub const ALLOC_RESULT: [&str; 7] = [
        "ok",
        "unauthorized",
        "quota",
        "capacity",
        "mismatch",
        "bad_request",
        "forbidden",
    ];
    /// `callrelay_turn_auth_failures_total{reason}`.
    pub const AUTH_REASON: [&str; 6] = [
        "missing",
        "bad_integrity",
        "unknown_user",
        "expired",
        "stale_nonce",
        "bad_username",
    ];
    /// `direction`.
    pub const DIRECTION: [&str; 2] = ["to_peer", "to_client"];
    /// `callrelay_turn_quota_rejections_total{kind}`.
    pub const QUOTA_KIND: [&str; 7] = [
        "user_allocations",
        "total_allocations",
        "bandwidth",
        "rate_limit",
        "relay_ports",
        "permissions",
        "channels",
    ];
    /// `callrelay_turn_requests_total{method}`.
    pub const METHOD: [&str; 7] = [
        "binding",
        "allocate",
        "refresh",
        "create_permission",
        "channel_bind",
        "connect",
        "connection_bind",
    ];
}

#[derive(Clone, Copy)]
enum AllocResult {
    Ok = 0,
    Unauthorized = 1,
    Quota = 2,
    Capacity = 3,
    Mismatch = 4,
    BadRequest = 5,
    Forbidden = 6,
}

#[derive(Clone, Copy)]
enum AuthFail {
    Missing = 0,
    BadIntegrity = 1,
    UnknownUser = 2,
    Expired = 3,
    StaleNonce = 4,
    BadUsername = 5,
}

#[derive(Clone, Copy)]
enum QuotaKind {
    User = 0,
    Total = 1,
    Bandwidth = 2,
    RateLimit = 3,
    RelayPorts = 4,
    Permissions = 5,
    Channels = 6,
}

/// Gauges computed on demand.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Gauges {
    /// Active allocations per transport.
    pub allocations: [u64; 3],
    /// Active permissions.
    pub permissions: u64,
    /// Active channel bindings.
    pub channels: u64,
    /// Free relay ports of this shard.
    pub relay_ports_free: u64,
}

/// Allocation limits shared by every worker (touched only on allocate/free, never per packet).
///
/// It also holds the relay-port pool, so EVEN-PORT reservations work whichever worker the
/// second Allocate reaches.
#[derive(Debug)]
pub struct SharedQuota {
    user_limit: u32,
    total_limit: u32,
    total: AtomicU32,
    per_user: Mutex<HashMap<String, u32>>,
    ports: Mutex<PortPool>,
    /// RFC 6062 peer connections waiting for ConnectionBind: id → (username, deadline).
    /// Shared because the data connection may reach another worker.
    tcp_conns: Mutex<HashMap<u32, (String, Instant)>>,
    /// Owner of each open UDP relay port: worker index + 1, 0 = none. Lock-free (one
    /// relaxed load per relay-to-relay packet); written on allocate/free only. A port is in
    /// the pool at most once, so the port alone names the relayed address.
    owners: Box<[AtomicU8]>,
}

impl SharedQuota {
    /// `0` means unlimited.
    pub fn new(user_limit: u32, total_limit: u32, ports: (u16, u16)) -> Self {
        Self {
            user_limit,
            total_limit,
            total: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
            ports: Mutex::new(PortPool::new(ports.0, ports.1)),
            tcp_conns: Mutex::new(HashMap::new()),
            owners: (0..=u16::MAX).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// The worker that owns UDP relay port `port`, if any.
    fn owner(&self, port: u16) -> Option<usize> {
        let v = self.owners.get(usize::from(port))?.load(Ordering::Relaxed);
        (v != 0).then(|| usize::from(v - 1))
    }

    fn set_owner(&self, port: u16, worker: Option<usize>) {
        let v = worker.map_or(0, |w| u8::try_from(w + 1).unwrap_or(0));
        if let Some(o) = self.owners.get(usize::from(port)) {
            o.store(v, Ordering::Relaxed);
        }
    }

    fn tcp_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (String, Instant)>> {
        self.tcp_conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, PortPool> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free relay ports.
    pub fn ports_free(&self) -> usize {
        self.ports().free
    }

    fn acquire(&self, user: &str) -> Result<(), QuotaKind> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(QuotaKind::User);
        }
        if self.total_limit != 0 && self.total.load(Ordering::Relaxed) >= self.total_limit {
            return Err(QuotaKind::Total);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    fn release(&self, user: &str) {
        if self.unreserve(user) {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts an EVEN-PORT reservation (the held second port) against `user`'s quota, like
    /// an allocation; not against `total_limit`, which counts allocations.
    fn reserve(&self, user: &str) -> Result<(), QuotaKind> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(QuotaKind::User);
        }
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    /// Gives back one unit of `user`'s quota (a reservation); whether there was one.
    fn unreserve(&self, user: &str) -> bool {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = map.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(user);
        }
        true
    }

    /// Allocations across all workers.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Static settings of one core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Realm.
    pub realm: String,
    /// Relay bind IPv4 address.
    pub relay_ip4: Option<IpAddr>,
    /// Relay bind IPv6 address.
    pub relay_ip6: Option<IpAddr>,
    /// Advertised IPv4 address.
    pub external_ip4: Option<IpAddr>,
    /// Advertised IPv6 address.
    pub external_ip6: Option<IpAddr>,
    /// Default lifetime (s).
    pub default_lifetime: u32,
    /// Max lifetime (s).
    pub max_lifetime: u32,
    /// Bytes/s per allocation, 0 unlimited.
    pub bandwidth: u64,
    /// Unauthenticated requests per second per source IP.
    pub unauth_rate: u32,
    /// Unauthenticated requests per second per source IP that authenticated successfully
    /// within the nonce lifetime, and requests per second per source on TCP/TLS.
    pub auth_rate: u32,
    /// Entries of the per-source rate-limit table (`rate_limit_sources`).
    pub rate_sources: usize,
    /// IPv6 sources share a rate-limit entry per prefix of this length.
    pub rate_v6_prefix: u8,
    /// Enforce REST expiry on every request.
    pub strict_expiry: bool,
    /// Nonce lifetime (s).
    pub nonce_lifetime: u32,
    /// Key of the stateless nonces. Give every worker the same one so a nonce from one
    /// connection works on another (a client's TCP connections may reach different
    /// workers); `None` draws one from the RNG.
    pub nonce_key: Option<[u8; 20]>,
    /// Index of this core's worker (shard), for relay-to-relay hand-off between workers.
    pub worker: usize,
    /// Permissions (peer IPs) per allocation; CreatePermission beyond it gets 508.
    pub max_permissions: usize,
    /// Channel bindings per allocation (cooling-down ones included); beyond it 508.
    pub max_channels: usize,
    /// Answers kept for retransmitted requests (`transaction_cache`); the table is
    /// allocated at start for twice that, so its memory never steps up under churn.
    pub tx_cache_max: usize,
}

/// A token bucket in bytes or requests.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }
    fn take(&mut self, now: Instant, rate: f64, burst: f64, n: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Clone, Copy, Debug)]
struct RelaySlot {
    bind: SocketAddr,
    advertised: SocketAddr,
    open: bool,
}

#[derive(Debug)]
struct Allocation {
    generation: u32,
    client: FiveTuple,
    username: String,
    key: Key,
    rest_expiry: Option<u64>,
    expires: Instant,
    relays: [Option<RelaySlot>; 2],
    /// Peer IP → expiry. Bounded by [`CoreConfig::max_permissions`]; hashed so the
    /// packet path costs one lookup whatever the size.
    permissions: FxMap<IpAddr, Instant>,
    /// Channel number → binding, bounded by [`CoreConfig::max_channels`].
    channels: FxMap<u16, Channel>,
    /// Peer → channel number (the reverse index of `channels`, same entries).
    channel_of: FxMap<SocketAddr, u16>,
    bucket: Bucket,
    /// The Allocate answer waits for the relay sockets to be open.
    pending: Option<PendingAllocate>,
    reservation: Option<u64>,
    /// RFC 6062 TCP allocation.
    tcp: bool,
    /// Peers with a connection or a pending Connect (446 on a second Connect).
    tcp_peers: Vec<SocketAddr>,
}

/// A Connect waiting for the runtime's TCP connect.
#[derive(Debug)]
struct PendingConnect {
    slot: u32,
    generation: u32,
    peer: SocketAddr,
    tid: TransactionId,
    fingerprint: bool,
}

/// Usernames whose verified key [`Core`] keeps (a few hundred bytes each).
const KEY_CACHE_MAX: usize = 4096;

/// What `user_quota` counts allocations under: the user part of a TURN REST username
/// (`"<expiry>:<user>"` → `user`), else the whole name (static users). Every credential
/// Mattermost's Calls plugin or the gateway mints carries a new expiry, so counting whole
/// names would give each fetch its own quota instead of each user.
fn quota_key(username: &str, rest_expiry: Option<u64>) -> &str {
    match rest_expiry {
        Some(_) => username.split_once(':').map_or(username, |(_, user)| user),
        None => username,
    }
}

/// How long a peer TCP connection waits for its ConnectionBind (RFC 6062 §5.3).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct PendingAllocate {
    tid: TransactionId,
    lifetime: u32,
    fingerprint: bool,
    reservation_token: Option<u64>,
    v6_error: bool,
    /// Relay ports tried again because the bind failed (port busy on this host).
    bind_retries: u8,
}

/// Busy relay ports an Allocate tries before it gets 508.
const MAX_BIND_RETRIES: u8 = 8;

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }
    /// Whether `ips` (deduplicated by the caller or not) fit under `max` permissions,
    /// dropping this allocation's expired ones first if needed.
    fn permissions_fit(&mut self, ips: &[IpAddr], max: usize, now: Instant) -> bool {
        let count_new = |a: &Self| {
            ips.iter()
                .enumerate()
                .filter(|(i, ip)| {
                    !a.permissions.contains_key(ip)
                        && !ips.get(..*i).is_some_and(|s| s.contains(ip))
                })
                .count()
        };
        if self.permissions.len() + count_new(self) <= max {
            return true;
        }
        self.permissions.retain(|_, e| *e > now);
        self.permissions.len() + count_new(self) <= max
    }
    fn relay_for(&self, peer: SocketAddr) -> Option<usize> {
        let i = usize::from(peer.is_ipv6());
        self.relays.get(i).and_then(|r| r.as_ref()).map(|_| i)
    }
}

/// Fast, non-cryptographic hasher for 5-tuples (keys come from the kernel, and one
/// allocation per 5-tuple is authenticated, so HashDoS needs credentials).
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Relay-port pool of one shard (bitset, random probing).
#[derive(Debug)]
struct PortPool {
    lo: u16,
    used: Vec<bool>,
    free: usize,
    /// Reserved by RESERVATION-TOKEN: token → (port, expiry, quota key of the user who
    /// holds it: a reservation counts against `user_quota` until redeemed or expired).
    reserved: HashMap<u64, (u16, Instant, String)>,
}

impl PortPool {
    fn new(lo: u16, hi: u16) -> Self {
        let n = usize::from(hi - lo) + 1;
        Self {
            lo,
            used: vec![false; n],
            free: n,
            reserved: HashMap::new(),
        }
    }
    fn is_free(&self, p: u16) -> bool {
        p.checked_sub(self.lo)
            .and_then(|i| self.used.get(usize::from(i)))
            .is_some_and(|u| !u)
    }
    fn take(&mut self, p: u16) {
        if let Some(u) = p
            .checked_sub(self.lo)
            .and_then(|i| self.used.get_mut(usize::from(i)))
            && !*u
        {
            *u = true;
            self.free -= 1;
        }
    }
    fn release(&mut self, p: u16) {
        if let Some(u) = p
            .checked_sub(self.lo)
            .and_then(|i| self.used.get_mut(usize::from(i)))
            && *u
        {
            *u = false;
            self.free += 1;
        }
    }
    /// A random free port; `even` also requires port+1 free when `pair`.
    fn pick(&mut self, rng: &mut impl RngCore, even: bool, pair: bool) -> Option<u16> {
        let n = self.used.len();
        if self.free == 0 {
            return None;
        }
        let ok = |s: &Self, p: u16| {
            s.is_free(p)
                && (!even || p.is_multiple_of(2))
                && (!pair || p.checked_add(1).is_some_and(|q| s.is_free(q)))
        };
        for _ in 0..32 {
            let p = self.lo + (rng.next_u32() as usize % n) as u16;
            if ok(self, p) {
                return Some(p);
            }
        }
        let start = rng.next_u32() as usize % n;
        (0..n)
            .map(|i| self.lo + ((start + i) % n) as u16)
            .find(|p| ok(self, *p))
    }
}

/// The sans-IO TURN server state of one shard.
pub struct Core<R> {
    cfg: CoreConfig,
    rng: R,
    creds: Credentials,
    /// Long-term keys that verified recently, per username, for the nonce lifetime: a TURN
    /// REST key costs HMAC-SHA1 + base64 + MD5 per secret to derive, and Mattermost gives
    /// every user of a day the same username. Used only when MESSAGE-INTEGRITY verifies
    /// with it; emptied on SIGHUP (secrets may have changed) and when it reaches
    /// `KEY_CACHE_MAX` entries.
    key_cache: HashMap<String, (Key, Instant)>,
    policy: PeerPolicy,
    quota: Arc<SharedQuota>,
    nonce_key: [u8; 20],
    slots: Vec<Option<Allocation>>,
    free_slots: Vec<u32>,
    next_generation: u32,
    by_client: FxMap<FiveTuple, u32>,
    /// Advertised relayed addresses of this shard's UDP relays, for in-process delivery
    /// between two allocations of the same worker (the common one-to-one call).
    by_relay_addr: FxMap<SocketAddr, RelayToken>,
    tx_cache: HashMap<(FiveTuple, TransactionId), (Instant, Vec<u8>)>,
    rate: RateTable,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<Command>,
    next_sweep: Option<Instant>,
    draining: bool,
    stats: Stats,
    scratch: Vec<u16>,
    pending_connects: HashMap<u32, PendingConnect>,
}

struct Authed {
    username: String,
    key: Key,
    rest_expiry: Option<u64>,
}

impl<R: RngCore> Core<R> {
    /// A new core; `quota` is shared across workers.
    pub fn new(
        cfg: CoreConfig,
        mut rng: R,
        secrets: Vec<String>,
        users: Vec<crate::config::StaticUser>,
        policy: PeerPolicy,
        quota: Arc<SharedQuota>,
    ) -> Self {
        let nonce_key = cfg.nonce_key.unwrap_or_else(|| {
            let mut k = [0u8; 20];
            rng.fill_bytes(&mut k);
            k
        });
        let rate = RateTable::new(
            cfg.rate_sources,
            cfg.rate_v6_prefix,
            (rng.next_u64(), rng.next_u64()),
        );
        // Twice the bound: the cache churns (every entry expires after 40 s), and the
        // tombstones expiry leaves make hashbrown grow a table whose live entries are
        // above half its capacity instead of rehashing it in place. At 2x the bound that
        // never happens, so the table's size is fixed from the start (a 30-minute soak saw
        // it double once, +16 MB, after 8 minutes when sized at 1x).
        let tx_cache = HashMap::with_capacity(cfg.tx_cache_max.saturating_mul(2));
        Self {
            cfg,
            rng,
            key_cache: HashMap::new(),
            creds: Credentials {
                secrets: secrets.into_iter().map(String::into_bytes).collect(),
                users,
            },
            policy,
            quota,
            nonce_key,
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 1,
            by_client: FxMap::default(),
            by_relay_addr: FxMap::default(),
            tx_cache,
            rate,
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            next_sweep: None,
            draining: false,
            stats: Stats::default(),
            scratch: Vec::new(),
            pending_connects: HashMap::new(),
        }
    }

    /// Replaces secrets and static users (SIGHUP). Existing allocations keep their keys.
    pub fn set_credentials(&mut self, secrets: Vec<String>, users: Vec<crate::config::StaticUser>) {
        self.creds = Credentials {
            secrets: secrets.into_iter().map(String::into_bytes).collect(),
            users,
        };
        self.key_cache.clear();
    }

    /// Replaces the peer policy (SIGHUP). Existing permissions stay until they expire.
    pub fn set_policy(&mut self, policy: PeerPolicy) {
        self.policy = policy;
    }

    /// Stop accepting new allocations (SIGTERM drain); existing ones keep working.
    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Adds the bytes of a finished RFC 6062 data connection to the relayed-bytes counters
    /// (byte streams have no packets to count).
    pub fn count_stream_relay(&mut self, proto: Proto, to_peer: u64, to_client: u64) {
        let t = proto.index();
        self.stats.bytes[0][t] += to_peer;
        self.stats.bytes[1][t] += to_client;
    }

    /// Whether `client` (a TCP/TLS connection) holds an allocation.
    pub fn has_allocation(&self, client: FiveTuple) -> bool {
        self.by_client.contains_key(&client)
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// Current gauge values.
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut g = Gauges {
            relay_ports_free: self.quota.ports().free as u64,
            ..Gauges::default()
        };
        for a in self.slots.iter().flatten() {
            if a.pending.is_some() {
                continue;
            }
            g.allocations[a.client.proto.index()] += 1;
            g.permissions += a.permissions.values().filter(|e| **e > now).count() as u64;
            g.channels += a.channels.values().filter(|c| c.expires > now).count() as u64;
        }
        g
    }

    /// Next time [`Self::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Whether `poll_transmit`/`poll_command` have something (cheap check for the fast path).
    pub fn has_pending(&self) -> bool {
        !self.transmits.is_empty() || !self.commands.is_empty()
    }

    /// Next datagram/frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next socket command.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Expires allocations, permissions, channels, cached answers and rate-limit state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().filter(|a| a.expires <= now).map(|_| i as u32))
            .collect();
        for slot in expired {
            self.delete(slot);
        }
        for a in self.slots.iter_mut().flatten() {
            a.permissions.retain(|_, e| *e > now);
            let channel_of = &mut a.channel_of;
            a.channels.retain(|_, c| {
                let keep = c.expires + CHANNEL_COOLDOWN > now;
                if !keep {
                    channel_of.remove(&c.peer);
                }
                keep
            });
        }
        self.tx_cache.retain(|_, (t, _)| *t > now);
        self.quota
            .tcp_conns()
            .retain(|_, (_, deadline)| *deadline > now);
        let (reservations, holders) = {
            let mut pool = self.quota.ports();
            let expired: Vec<u64> = pool
                .reserved
                .iter()
                .filter(|(_, (_, e, _))| *e <= now)
                .map(|(t, _)| *t)
                .collect();
            let mut holders = Vec::new();
            for t in expired {
                if let Some((p, _, user)) = pool.reserved.remove(&t) {
                    pool.release(p);
                    holders.push(user);
                }
            }
            (!pool.reserved.is_empty(), holders)
        };
        // Outside the pool lock: the quota map has its own.
        for user in holders {
            self.quota.unreserve(&user);
        }
        self.next_sweep = if self.slots.iter().any(Option::is_some)
            || !self.tx_cache.is_empty()
            || reservations
        {
            Some(now + SWEEP_INTERVAL)
        } else {
            None
        };
    }

    fn arm(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    /// The runtime's answer to [`Command::OpenRelaySocket`].
    pub fn relay_opened(&mut self, now: Instant, relay: RelayToken, ok: bool) {
        let Some(a) = self.alloc_mut(relay) else {
            return;
        };
        let idx = usize::from(relay.v6);
        if ok {
            let udp = !a.tcp;
            let mut advertised = None;
            if let Some(Some(r)) = a.relays.get_mut(idx) {
                r.open = true;
                advertised = Some(r.advertised);
            }
            let complete = a.relays.iter().flatten().all(|r| r.open);
            if let (true, Some(addr)) = (udp, advertised) {
                self.by_relay_addr.insert(addr, relay);
                self.quota.set_owner(addr.port(), Some(self.cfg.worker));
            }
            if complete {
                self.answer_allocate(now, relay.slot);
            }
            return;
        }
        // The port is busy on this host: try another one.
        let port = a
            .relays
            .get(idx)
            .and_then(|r| r.as_ref())
            .map(|r| r.bind.port());
        let fp_even = a
            .pending
            .as_ref()
            .is_some_and(|p| p.reservation_token.is_some());
        let retries = a.pending.as_mut().map_or(u8::MAX, |p| {
            p.bind_retries = p.bind_retries.saturating_add(1);
            p.bind_retries
        });
        // A port that another socket still holds (often our own relay socket of an
        // allocation just deleted, whose task has not dropped it yet) stays marked used
        // until a replacement is picked, so the pick cannot return it; then it goes back
        // to the pool. (Kept used for good, each such collision leaked a port: under
        // allocation churn the pool ran dry and every Allocate got 508.)
        let picked = if retries > MAX_BIND_RETRIES {
            None
        } else {
            let mut pool = self.quota.ports();
            let p = pool.pick(&mut self.rng, fp_even, false);
            if let Some(p) = p {
                pool.take(p);
                if let Some(busy) = port {
                    pool.release(busy);
                }
            }
            p
        };
        match picked {
            Some(p) => {
                let Some(a) = self
                    .slots
                    .get_mut(relay.slot as usize)
                    .and_then(Option::as_mut)
                else {
                    return;
                };
                let tcp = a.tcp;
                if let Some(Some(r)) = a.relays.get_mut(idx) {
                    r.bind.set_port(p);
                    r.advertised.set_port(p);
                    self.commands.push_back(if tcp {
                        Command::OpenTcpRelay {
                            relay,
                            bind: r.bind,
                        }
                    } else {
                        Command::OpenRelaySocket {
                            relay,
                            bind: r.bind,
                        }
                    });
                }
            }
            None => {
                self.stats.quota[QuotaKind::RelayPorts as usize] += 1;
                self.stats.allocations[AllocResult::Capacity as usize] += 1;
                let a = self.slots.get(relay.slot as usize).and_then(Option::as_ref);
                if let Some((client, p)) = a.and_then(|a| {
                    a.pending
                        .as_ref()
                        .map(|p| (a.client, (p.tid, p.fingerprint)))
                }) {
                    let mut out = Vec::new();
                    let mut b = Builder::new(&mut out, method::ALLOCATE, Class::Error, p.0);
                    b.error(508, "Insufficient Capacity");
                    if !b.finish(None, p.1) {
                        return;
                    }
                    self.transmits
                        .push_back(Transmit::ToClient { client, data: out });
                }
                self.delete(relay.slot);
            }
        }
    }

    /// A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn connection_closed(&mut self, client: FiveTuple) {
        if let Some(&slot) = self.by_client.get(&client) {
            self.delete(slot);
        }
    }

    fn alloc_mut(&mut self, t: RelayToken) -> Option<&mut Allocation> {
        self.slots
            .get_mut(t.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == t.generation)
    }

    fn delete(&mut self, slot: u32) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for (i, r) in a.relays.iter().enumerate() {
            if let Some(r) = r {
                if self.by_relay_addr.remove(&r.advertised).is_some() {
                    self.quota.set_owner(r.advertised.port(), None);
                }
                self.quota.ports().release(r.bind.port());
                self.commands.push_back(Command::CloseRelaySocket {
                    relay: RelayToken {
                        slot,
                        generation: a.generation,
                        v6: i == 1,
                    },
                });
            }
        }
        if let Some(tok) = a.reservation {
            // The reserved odd port stays reserved until its token expires.
            let _ = tok;
        }
        self.by_client.remove(&a.client);
        self.quota.release(quota_key(&a.username, a.rest_expiry));
        self.free_slots.push(slot);
    }

    /// Data from a peer arrived on relay socket `relay`. `payload` is the datagram.
    pub fn handle_peer_data(
        &mut self,
        now: Instant,
        relay: RelayToken,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<Relay> {
        let bandwidth = self.cfg.bandwidth;
        let a = self
            .slots
            .get_mut(relay.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == relay.generation)?;
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        if bandwidth != 0
            && !a.bucket.take(
                now,
                bandwidth as f64,
                bandwidth as f64,
                payload.len() as f64,
            )
        {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let client = a.client;
        let t = client.proto.index();
        self.stats.packets[1][t] += 1;
        self.stats.bytes[1][t] += payload.len() as u64;
        if let Some(&number) = a.channel_of.get(&peer)
            && a.channels.get(&number).is_some_and(|c| c.expires > now)
        {
            let len = payload.len() as u16;
            let n = number.to_be_bytes();
            let l = len.to_be_bytes();
            let padding = if client.proto == Proto::Udp {
                0
            } else {
                (4 - payload.len() % 4) % 4
            };
            return Some(Relay::ToClient {
                client,
                header: [n[0], n[1], l[0], l[1]],
                padding,
            });
        }
        // No channel: Data indication (RFC 8656 §11.3), built in our own buffer.
        let mut out = Vec::with_capacity(payload.len() + 48);
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let mut b = Builder::new(
            &mut out,
            method::DATA,
            Class::Indication,
            TransactionId(tid),
        );
        b.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        b.attr(attr::DATA, payload);
        if !b.finish(None, false) {
            return None;
        }
        self.transmits
            .push_back(Transmit::ToClient { client, data: out });
        None
    }

    /// Bytes from a client (one UDP datagram or one TCP/TLS frame).
    pub fn handle_input(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        buf: &[u8],
    ) -> Option<Relay> {
        let first = *buf.first()?;
        if first & 0xC0 == 0x40 {
            return self.channel_data(now, from, buf);
        }
        let Ok(msg) = Message::parse(buf) else {
            tracing::trace!(target: "wire", client = ?from.remote, "not STUN/ChannelData, dropped");
            return None;
        };
        if !msg.fingerprint_ok() {
            return None;
        }
        match msg.class {
            Class::Request => {
                self.request(now, unix_now, from, &msg);
                None
            }
            Class::Indication if msg.method == method::SEND => {
                self.send_indication(now, from, &msg, buf)
            }
            _ => None,
        }
    }

    fn channel_data(&mut self, now: Instant, from: FiveTuple, buf: &[u8]) -> Option<Relay> {
        let (number, payload) = stun::parse_channel_data(buf)?;
        let bandwidth = self.cfg.bandwidth;
        let slot = *self.by_client.get(&from)?;
        let a = self.slots.get_mut(slot as usize)?.as_mut()?;
        if a.expires <= now {
            return None;
        }
        let peer = a.channels.get(&number).filter(|c| c.expires > now)?.peer;
        if !a.permitted(peer.ip(), now) {
            return None;
        }
        if bandwidth != 0
            && !a.bucket.take(
                now,
                bandwidth as f64,
                bandwidth as f64,
                payload.len() as f64,
            )
        {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let v6 = a.relay_for(peer)? == 1;
        let relay = RelayToken {
            slot,
            generation: a.generation,
            v6,
        };
        let src = a
            .relays
            .get(usize::from(v6))
            .copied()
            .flatten()
            .map(|r| r.advertised);
        let t = from.proto.index();
        self.stats.packets[0][t] += 1;
        self.stats.bytes[0][t] += payload.len() as u64;
        // The peer is another allocation's relayed address on this worker: deliver in
        // process, as if the datagram had left our relay socket and come back in on theirs
        // (their permission and bandwidth checks still apply). The runtime rewrites the
        // 4-byte ChannelData header in place, so this costs no copy and no syscall but the
        // final send. A missing channel on their side yields a Data indication instead.
        if let (Some(&dst), Some(src)) = (self.by_relay_addr.get(&peer), src) {
            let before = self.stats.packets[1];
            let r = self.handle_peer_data(now, dst, src, payload);
            if self.stats.packets[1] != before {
                self.stats.in_process[0] += 1;
            }
            return r;
        }
        // Another worker's allocation (the kernel hashed B's client to another shard):
        // hand the payload to that worker instead of a send + receive through the kernel.
        if let Some(src) = src
            && self.is_relay_ip(peer.ip())
            && let Some(worker) = self.quota.owner(peer.port())
            && worker != self.cfg.worker
        {
            return Some(Relay::ToWorker {
                worker,
                relay,
                peer,
                src,
                payload: 4..4 + payload.len(),
            });
        }
        Some(Relay::ToPeer {
            relay,
            peer,
            payload: 4..4 + payload.len(),
        })
    }

    /// Is `ip` the address our relayed addresses carry (advertised or bound)?
    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        let (ext, bind) = if ip.is_ipv4() {
            (self.cfg.external_ip4, self.cfg.relay_ip4)
        } else {
            (self.cfg.external_ip6, self.cfg.relay_ip6)
        };
        ext.or(bind) == Some(ip)
    }

    /// Relay-to-relay hand-off from another worker ([`Relay::ToWorker`]): `payload` left the
    /// allocation whose relayed address is `src` toward our relayed address `to`. Treated
    /// exactly as a datagram from `src` arriving on `to`'s relay socket; a relayed address
    /// that is gone by now drops it, as the kernel would.
    pub fn handle_relayed(
        &mut self,
        now: Instant,
        to: SocketAddr,
        src: SocketAddr,
        payload: &[u8],
    ) -> Option<Relay> {
        let dst = *self.by_relay_addr.get(&to)?;
        let before = self.stats.packets[1];
        let r = self.handle_peer_data(now, dst, src, payload);
        if self.stats.packets[1] != before {
            self.stats.in_process[1] += 1;
        }
        r
    }

    fn send_indication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        buf: &[u8],
    ) -> Option<Relay> {
        let bandwidth = self.cfg.bandwidth;
        let slot = *self.by_client.get(&from)?;
        let peer = msg.peer_address()?;
        let data = msg.get(attr::DATA)?;
        let a = self.slots.get_mut(slot as usize)?.as_mut()?;
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        if bandwidth != 0
            && !a
                .bucket
                .take(now, bandwidth as f64, bandwidth as f64, data.len() as f64)
        {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let v6 = a.relay_for(peer)? == 1;
        // Offset of DATA's value inside `buf` (both borrow the same allocation).
        let start = (data.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
        let t = from.proto.index();
        self.stats.packets[0][t] += 1;
        self.stats.bytes[0][t] += data.len() as u64;
        Some(Relay::ToPeer {
            relay: RelayToken {
                slot,
                generation: a.generation,
                v6,
            },
            peer,
            payload: start..start + data.len(),
        })
    }

    fn rate_limits(&self) -> Limits {
        Limits {
            unauth_rate: self.cfg.unauth_rate as f32,
            auth_rate: self.cfg.auth_rate as f32,
        }
    }

    /// May an unauthenticated answer go to `from`? The per-source limit: a fixed table that
    /// replaces old entries and never refuses a source it has not seen; `auth_rate` for a
    /// source that authenticated recently. Over UDP the excess is dropped (the client
    /// retransmits); a TCP/TLS client never retransmits (RFC 8489 §6.2.2), so over its
    /// budget its connection is closed and counted instead of left hanging.
    fn rate_ok(&mut self, now: Instant, from: FiveTuple) -> bool {
        let stream = from.proto != Proto::Udp;
        let limits = self.rate_limits();
        let v = self.rate.allow(now, from.remote.ip(), stream, limits);
        self.stats.rate_evictions += u64::from(v.evicted);
        if !v.allowed {
            if stream {
                self.stats.rate_limit_closed += 1;
                tracing::debug!(client = ?from.remote, "stream over the request rate, closing");
                self.commands
                    .push_back(Command::CloseConnection { client: from });
            } else {
                self.stats.quota[QuotaKind::RateLimit as usize] += 1;
            }
        }
        v.allowed
    }

    /// A request from `from` authenticated: its source gets `auth_rate` for the nonce
    /// lifetime (a nonce is bound to the source address, so this needs a real round trip).
    fn trust_source(&mut self, now: Instant, from: FiveTuple) {
        let limits = self.rate_limits();
        let secs = self.cfg.nonce_lifetime;
        if self.rate.trust(now, from.remote.ip(), secs, limits) {
            self.stats.rate_evictions += 1;
        }
    }

    fn count_method(&mut self, m: u16) {
        let i = match m {
            method::BINDING => 0,
            method::ALLOCATE => 1,
            method::REFRESH => 2,
            method::CREATE_PERMISSION => 3,
            method::CHANNEL_BIND => 4,
            method::CONNECT => 5,
            method::CONNECTION_BIND => 6,
            _ => return,
        };
        self.stats.requests[i] += 1;
    }

    fn request(&mut self, now: Instant, unix_now: u64, from: FiveTuple, msg: &Message<'_>) {
        self.count_method(msg.method);
        // Never answer sources that cannot be real (reflection targets): port 0,
        // unspecified, broadcast, multicast; IPv4-mapped spellings (a dual-stack socket's
        // view of IPv4) included.
        let ip = from.remote.ip().to_canonical();
        let bogus = from.remote.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if bogus {
            if msg.method == method::ALLOCATE {
                self.stats.allocations[AllocResult::Forbidden as usize] += 1;
            }
            return;
        }
        if let Some((_, cached)) = self.tx_cache.get(&(from, msg.tid)) {
            self.transmits.push_back(Transmit::ToClient {
                client: from,
                data: cached.clone(),
            });
            return;
        }
        let fp = msg.has_fingerprint();
        if !matches!(
            msg.method,
            method::BINDING
                | method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND
        ) {
            if self.rate_ok(now, from) {
                self.error_plain(from, msg, error_code::BAD_REQUEST, fp);
            }
            return;
        }
        // Unknown comprehension-required attributes → 420 with UNKNOWN-ATTRIBUTES, for
        // every method including Binding (RFC 8489 §6.3.1).
        let mut unknown = std::mem::take(&mut self.scratch);
        unknown.clear();
        msg.unknown_required(&mut unknown);
        if !unknown.is_empty() {
            if self.rate_ok(now, from) {
                let mut out = Vec::with_capacity(48 + unknown.len() * 2);
                let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
                b.error(
                    error_code::UNKNOWN_ATTRIBUTE,
                    error_code::reason(error_code::UNKNOWN_ATTRIBUTE),
                );
                b.unknown_attributes(&unknown);
                if b.finish(None, fp) {
                    self.transmits.push_back(Transmit::ToClient {
                        client: from,
                        data: out,
                    });
                }
            }
            self.scratch = unknown;
            return;
        }
        self.scratch = unknown;
        if msg.method == method::BINDING {
            if !self.rate_ok(now, from) {
                return;
            }
            let mut out = Vec::with_capacity(48);
            let mut b = Builder::new(&mut out, method::BINDING, Class::Success, msg.tid);
            b.xor_addr(attr::XOR_MAPPED_ADDRESS, from.remote);
            if !b.finish(None, fp) {
                return;
            }
            self.transmits.push_back(Transmit::ToClient {
                client: from,
                data: out,
            });
            return;
        }
        let Ok(authed) = self.authenticate(now, unix_now, from, msg) else {
            if msg.method == method::ALLOCATE {
                self.stats.allocations[AllocResult::Unauthorized as usize] += 1;
            }
            return;
        };
        self.trust_source(now, from);
        match msg.method {
            method::ALLOCATE => self.allocate(now, from, msg, authed),
            method::REFRESH => self.refresh(now, from, msg, &authed),
            method::CREATE_PERMISSION => self.create_permission(now, from, msg, &authed),
            method::CHANNEL_BIND => self.channel_bind(now, from, msg, &authed),
            method::CONNECT => self.connect(now, from, msg, &authed),
            method::CONNECTION_BIND => self.connection_bind(now, from, msg, &authed),
            _ => self.reply_error(now, from, msg, &authed, 400, "Bad Request"),
        }
    }

    fn nonce(&self, unix_now: u64, client: IpAddr) -> String {
        let expiry = (unix_now + u64::from(self.cfg.nonce_lifetime)) as u32;
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v) => mac.update(&v.octets()),
            IpAddr::V6(v) => mac.update(&v.octets()),
        }
        let tag = mac.finalize().into_bytes();
        let mut s = format!("{expiry:08x}");
        for b in tag.iter().take(8) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_valid(&self, nonce: &[u8], unix_now: u64, client: IpAddr) -> bool {
        let Ok(s) = std::str::from_utf8(nonce) else {
            return false;
        };
        if s.len() != 24 {
            return false;
        }
        let Some(Ok(expiry)) = s.get(..8).map(|h| u32::from_str_radix(h, 16)) else {
            return false;
        };
        if u64::from(expiry) <= unix_now {
            return false;
        }
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v) => mac.update(&v.octets()),
            IpAddr::V6(v) => mac.update(&v.octets()),
        }
        let tag = mac.finalize().into_bytes();
        let mut want = String::with_capacity(16);
        for b in tag.iter().take(8) {
            want.push_str(&format!("{b:02x}"));
        }
        use subtle::ConstantTimeEq as _;
        s.get(8..)
            .is_some_and(|got| bool::from(got.as_bytes().ct_eq(want.as_bytes())))
    }

    /// 401 / 438 challenge: only mandatory attributes, no SOFTWARE (keeps the answer small).
    fn challenge(&mut self, unix_now: u64, from: FiveTuple, msg: &Message<'_>, code: u16) {
        let nonce = self.nonce(unix_now, from.remote.ip());
        let mut out = Vec::with_capacity(80);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(
            code,
            if code == 438 {
                "Stale Nonce"
            } else {
                "Unauthorized"
            },
        );
        b.attr(attr::REALM, self.cfg.realm.as_bytes());
        b.attr(attr::NONCE, nonce.as_bytes());
        if !b.finish(None, msg.has_fingerprint()) {
            return;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    fn error_plain(&mut self, from: FiveTuple, msg: &Message<'_>, code: u16, fp: bool) {
        let mut out = Vec::with_capacity(40);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(code, "");
        if !b.finish(None, fp) {
            return;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Authed, ()> {
        let ip = from.remote.ip();
        if !msg.has(attr::MESSAGE_INTEGRITY) {
            self.stats.auth_failures[AuthFail::Missing as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        }
        let (Some(user), Some(realm), Some(nonce)) = (
            msg.get(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.stats.auth_failures[AuthFail::Missing as usize] += 1;
            if self.rate_ok(now, from) {
                self.error_plain(from, msg, 400, msg.has_fingerprint());
            }
            return Err(());
        };
        if !self.nonce_valid(nonce, unix_now, ip) {
            self.stats.auth_failures[AuthFail::StaleNonce as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 438);
            }
            return Err(());
        }
        let Ok(username) = std::str::from_utf8(user) else {
            self.stats.auth_failures[AuthFail::BadUsername as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        };
        if realm != self.cfg.realm.as_bytes() {
            self.stats.auth_failures[AuthFail::BadIntegrity as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        }
        // An existing allocation keeps its key: the call outlives its credentials.
        if let Some(a) = self
            .by_client
            .get(&from)
            .and_then(|s| self.slots.get(*s as usize))
            .and_then(Option::as_ref)
            && a.username == username
            && msg.integrity_ok(&a.key.0)
        {
            if self.cfg.strict_expiry && a.rest_expiry.is_some_and(|e| e < unix_now) {
                self.stats.auth_failures[AuthFail::Expired as usize] += 1;
                self.challenge(unix_now, from, msg, 401);
                return Err(());
            }
            return Ok(Authed {
                username: username.to_owned(),
                key: a.key,
                rest_expiry: a.rest_expiry,
            });
        }
        if let Some((key, until)) = self.key_cache.get(username)
            && *until > now
            && msg.integrity_ok(&key.0)
        {
            let key = *key;
            // Same checks as the lookup below, minus the key derivation.
            let rest_expiry = if self.creds.users.iter().any(|u| u.name == username) {
                None
            } else {
                crate::auth::rest_expiry(username)
            };
            if rest_expiry.is_none_or(|e| e >= unix_now) {
                return Ok(Authed {
                    username: username.to_owned(),
                    key,
                    rest_expiry,
                });
            }
        }
        match self.creds.lookup(username, &self.cfg.realm, unix_now) {
            Lookup::Keys(keys, rest_expiry) => {
                if let Some(key) = keys.into_iter().find(|k| msg.integrity_ok(&k.0)) {
                    if self.key_cache.len() >= KEY_CACHE_MAX {
                        self.key_cache.clear();
                    }
                    let until = now + Duration::from_secs(u64::from(self.cfg.nonce_lifetime));
                    self.key_cache.insert(username.to_owned(), (key, until));
                    return Ok(Authed {
                        username: username.to_owned(),
                        key,
                        rest_expiry,
                    });
                }
                self.stats.auth_failures[AuthFail::BadIntegrity as usize] += 1;
            }
            Lookup::Expired => self.stats.auth_failures[AuthFail::Expired as usize] += 1,
            Lookup::BadUsername => {
                let reason = if self.creds.secrets.is_empty() {
                    AuthFail::UnknownUser
                } else {
                    AuthFail::BadUsername
                };
                self.stats.auth_failures[reason as usize] += 1;
            }
        }
        if self.rate_ok(now, from) {
            self.challenge(unix_now, from, msg, 401);
        }
        Err(())
    }

    /// Authenticated answer: SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT when the client uses it;
    /// cached for retransmissions.
    fn send_authed(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        key: &Key,
        out: Vec<u8>,
    ) {
        let _ = (msg, key);
        if self.tx_cache.len() < self.cfg.tx_cache_max {
            self.tx_cache
                .insert((from, msg.tid), (now + TRANSACTION_CACHE, out.clone()));
            self.arm(now);
        } else {
            self.stats.tx_cache_full += 1;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    fn reply_error(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        code: u16,
        reason: &str,
    ) {
        tracing::debug!(method = msg.method, code, reason, tid = ?msg.tid, "request rejected");
        let mut out = Vec::with_capacity(96);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(code, reason);
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        if !b.finish(Some(&authed.key.0), msg.has_fingerprint()) {
            return;
        }
        self.send_authed(now, from, msg, &authed.key, out);
    }

    fn reply_ok(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        lifetime: Option<u32>,
    ) {
        let mut out = Vec::with_capacity(96);
        let mut b = Builder::new(&mut out, msg.method, Class::Success, msg.tid);
        if let Some(l) = lifetime {
            b.u32_attr(attr::LIFETIME, l);
        }
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        if !b.finish(Some(&authed.key.0), msg.has_fingerprint()) {
            return;
        }
        self.send_authed(now, from, msg, &authed.key, out);
    }

    /// Allocate: the requested lifetime capped at the maximum, never below the default
    /// (RFC 8656 §7.2). Refresh: capped at the maximum only (RFC 8656 §7.3).
    fn lifetime(&self, msg: &Message<'_>, floor: bool) -> u32 {
        match msg.u32_attr(attr::LIFETIME) {
            Some(l) if floor => l.min(self.cfg.max_lifetime).max(self.cfg.default_lifetime),
            Some(l) => l.min(self.cfg.max_lifetime),
            None => self.cfg.default_lifetime,
        }
    }

    fn allocate(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>, authed: Authed) {
        let bad = |s: &mut Self, code: u16, reason: &str, result: AllocResult| {
            s.stats.allocations[result as usize] += 1;
            s.reply_error(now, from, msg, &authed, code, reason);
        };
        if let Some(&slot) = self.by_client.get(&from) {
            let live = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|a| a.expires > now);
            if live {
                return bad(self, 437, "Allocation Mismatch", AllocResult::Mismatch);
            }
            self.delete(slot);
        }
        match msg
            .get(attr::REQUESTED_TRANSPORT)
            .and_then(|v| v.first().copied())
        {
            None => {
                return bad(
                    self,
                    400,
                    "Missing REQUESTED-TRANSPORT",
                    AllocResult::BadRequest,
                );
            }
            Some(17) => {}
            // RFC 6062 §5.1: TCP relaying only for clients on TCP/TLS, without the UDP-only
            // options.
            Some(6) if from.proto == Proto::Udp => {
                return bad(
                    self,
                    400,
                    "TCP relay needs a TCP/TLS connection",
                    AllocResult::BadRequest,
                );
            }
            Some(6) => {
                if msg.has(attr::EVEN_PORT)
                    || msg.has(attr::RESERVATION_TOKEN)
                    || msg.has(attr::DONT_FRAGMENT)
                    || msg.has(attr::ADDITIONAL_ADDRESS_FAMILY)
                {
                    return bad(
                        self,
                        400,
                        "Option not valid for a TCP relay",
                        AllocResult::BadRequest,
                    );
                }
            }
            Some(_) => {
                return bad(
                    self,
                    442,
                    "Unsupported Transport Protocol",
                    AllocResult::BadRequest,
                );
            }
        }
        let tcp = msg
            .get(attr::REQUESTED_TRANSPORT)
            .and_then(|v| v.first().copied())
            == Some(6);
        let even = msg.get(attr::EVEN_PORT);
        let token = msg.get(attr::RESERVATION_TOKEN);
        let raf = msg
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .map(|v| v.first().copied().unwrap_or(0));
        let aaf = msg
            .get(attr::ADDITIONAL_ADDRESS_FAMILY)
            .map(|v| v.first().copied().unwrap_or(0));
        if (even.is_some() && token.is_some())
            || (raf.is_some() && token.is_some())
            || (raf.is_some() && aaf.is_some())
        {
            return bad(self, 400, "Conflicting attributes", AllocResult::BadRequest);
        }
        if aaf.is_some_and(|f| f != 2) {
            return bad(
                self,
                400,
                "ADDITIONAL-ADDRESS-FAMILY must be IPv6",
                AllocResult::BadRequest,
            );
        }
        if self.draining {
            return bad(self, 508, "Server Draining", AllocResult::Capacity);
        }
        // Which relay families: requested (default IPv4), plus IPv6 for dual-stack.
        let (want4, want6) = match raf {
            None | Some(1) => (true, aaf.is_some()),
            Some(2) => (false, true),
            Some(_) => {
                return bad(
                    self,
                    440,
                    "Address Family not Supported",
                    AllocResult::BadRequest,
                );
            }
        };
        let have4 = self.cfg.relay_ip4.is_some();
        let have6 = self.cfg.relay_ip6.is_some();
        let mut v6_error = false;
        let (use4, use6) = if aaf.is_some() {
            v6_error = !have6;
            (have4, have6)
        } else {
            (want4 && have4, want6 && have6)
        };
        if (want4 && !have4 && raf.is_some()) || (raf == Some(2) && !have6) || (!use4 && !use6) {
            return bad(
                self,
                440,
                "Address Family not Supported",
                AllocResult::BadRequest,
            );
        }
        // Port selection.
        let mut port4 = None;
        let mut reservation_token = None;
        if let Some(t) = token {
            let Ok(t) = <[u8; 8]>::try_from(t) else {
                return bad(self, 400, "Bad RESERVATION-TOKEN", AllocResult::BadRequest);
            };
            let r = self.quota.ports().reserved.remove(&u64::from_be_bytes(t));
            // The reservation's quota unit goes back to its holder; the allocation that
            // redeems it takes one below like any other.
            if let Some((_, _, holder)) = &r {
                self.quota.unreserve(holder);
            }
            match r {
                Some((p, e, _)) if e > now => port4 = Some(p),
                Some((p, _, _)) => {
                    // Expired, not yet swept: its port goes back now.
                    self.quota.ports().release(p);
                    return bad(self, 508, "Insufficient Capacity", AllocResult::Capacity);
                }
                None => return bad(self, 508, "Insufficient Capacity", AllocResult::Capacity),
            }
        }
        if let Err(kind) = self
            .quota
            .acquire(quota_key(&authed.username, authed.rest_expiry))
        {
            if let Some(p) = port4 {
                self.quota.ports().release(p);
            }
            self.stats.quota[kind as usize] += 1;
            return match kind {
                QuotaKind::User => bad(self, 486, "Allocation Quota Reached", AllocResult::Quota),
                _ => bad(self, 508, "Insufficient Capacity", AllocResult::Capacity),
            };
        }
        let reserve_next = even.and_then(|v| v.first()).is_some_and(|b| b & 0x80 != 0);
        let pick = |s: &mut Self, even: bool, pair: bool| {
            let mut pool = s.quota.ports();
            let p = pool.pick(&mut s.rng, even, pair)?;
            pool.take(p);
            Some(p)
        };
        let p_main = match port4 {
            Some(p) => Some(p),
            None => pick(self, even.is_some(), reserve_next),
        };
        let Some(p_main) = p_main else {
            self.quota
                .release(quota_key(&authed.username, authed.rest_expiry));
            self.stats.quota[QuotaKind::RelayPorts as usize] += 1;
            return bad(self, 508, "Insufficient Capacity", AllocResult::Capacity);
        };
        if reserve_next {
            // The held port counts against the user's quota like an allocation: without
            // this one user held half the port range with `user_quota = 1` by allocating
            // with EVEN-PORT and deleting the allocation, again and again.
            let holder = quota_key(&authed.username, authed.rest_expiry);
            if let Err(kind) = self.quota.reserve(holder) {
                self.quota.ports().release(p_main);
                self.quota.release(holder);
                self.stats.quota[kind as usize] += 1;
                return bad(self, 486, "Allocation Quota Reached", AllocResult::Quota);
            }
            let next = p_main + 1;
            let t = self.rng.next_u64();
            let mut pool = self.quota.ports();
            pool.take(next);
            pool.reserved
                .insert(t, (next, now + RESERVATION_LIFETIME, holder.to_owned()));
            reservation_token = Some(t);
        }
        let mut relays = [None, None];
        let mk = |ip: Option<IpAddr>, ext: Option<IpAddr>, port: u16| {
            ip.map(|ip| RelaySlot {
                bind: SocketAddr::new(ip, port),
                advertised: SocketAddr::new(ext.unwrap_or(ip), port),
                open: false,
            })
        };
        if use4 {
            relays[0] = mk(self.cfg.relay_ip4, self.cfg.external_ip4, p_main);
        }
        if use6 {
            let p6 = if use4 {
                pick(self, false, false)
            } else {
                Some(p_main)
            };
            let Some(p6) = p6 else {
                self.quota.ports().release(p_main);
                self.quota
                    .release(quota_key(&authed.username, authed.rest_expiry));
                self.stats.quota[QuotaKind::RelayPorts as usize] += 1;
                return bad(self, 508, "Insufficient Capacity", AllocResult::Capacity);
            };
            relays[1] = mk(self.cfg.relay_ip6, self.cfg.external_ip6, p6);
        }
        let lifetime = self.lifetime(msg, true);
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as u32
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let burst = self.cfg.bandwidth as f64;
        let alloc = Allocation {
            generation,
            client: from,
            username: authed.username,
            key: authed.key,
            rest_expiry: authed.rest_expiry,
            expires: now + Duration::from_secs(u64::from(lifetime)),
            relays,
            permissions: FxMap::default(),
            channels: FxMap::default(),
            channel_of: FxMap::default(),
            bucket: Bucket::new(now, burst),
            pending: Some(PendingAllocate {
                tid: msg.tid,
                lifetime,
                fingerprint: msg.has_fingerprint(),
                reservation_token,
                v6_error,
                bind_retries: 0,
            }),
            reservation: reservation_token,
            tcp,
            tcp_peers: Vec::new(),
        };
        for (i, r) in alloc.relays.iter().enumerate() {
            if let Some(r) = r {
                let relay = RelayToken {
                    slot,
                    generation,
                    v6: i == 1,
                };
                self.commands.push_back(if tcp {
                    Command::OpenTcpRelay {
                        relay,
                        bind: r.bind,
                    }
                } else {
                    Command::OpenRelaySocket {
                        relay,
                        bind: r.bind,
                    }
                });
            }
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(alloc);
        }
        self.by_client.insert(from, slot);
        self.arm(now);
    }

    fn answer_allocate(&mut self, now: Instant, slot: u32) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(p) = a.pending.take() else { return };
        let mut out = Vec::with_capacity(128);
        let mut b = Builder::new(&mut out, method::ALLOCATE, Class::Success, p.tid);
        for r in a.relays.iter().flatten() {
            b.xor_addr(attr::XOR_RELAYED_ADDRESS, r.advertised);
        }
        if p.v6_error {
            // ADDRESS-ERROR-CODE (RFC 8656 §18.11): family 0x02, 440.
            b.ipv6_not_supported();
        }
        b.u32_attr(attr::LIFETIME, p.lifetime);
        if let Some(t) = p.reservation_token {
            b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, a.client.remote);
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        if !b.finish(Some(&a.key.0), p.fingerprint) {
            return;
        }
        let client = a.client;
        self.stats.allocations[AllocResult::Ok as usize] += 1;
        tracing::debug!(relay = ?a.relays.iter().flatten().map(|r| r.bind).collect::<Vec<_>>(), proto = client.proto.label(), "allocation created");
        if self.tx_cache.len() < self.cfg.tx_cache_max {
            // The transaction cache keeps retransmitted Allocates from hitting 437.
            self.tx_cache
                .insert((client, p.tid), (now + TRANSACTION_CACHE, out.clone()));
        } else {
            self.stats.tx_cache_full += 1;
        }
        self.transmits
            .push_back(Transmit::ToClient { client, data: out });
    }

    fn own_allocation(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Option<u32> {
        let slot = self.by_client.get(&from).copied();
        match slot
            .and_then(|s| self.slots.get(s as usize))
            .and_then(Option::as_ref)
        {
            Some(a) if a.expires > now && a.pending.is_none() => {
                if a.username != authed.username {
                    self.reply_error(now, from, msg, authed, 441, "Wrong Credentials");
                    return None;
                }
                slot
            }
            _ => {
                self.reply_error(now, from, msg, authed, 437, "Allocation Mismatch");
                None
            }
        }
    }

    fn refresh(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>, authed: &Authed) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let requested = msg.u32_attr(attr::LIFETIME);
        if requested == Some(0) {
            self.delete(slot);
            self.reply_ok(now, from, msg, authed, Some(0));
            return;
        }
        let lifetime = self.lifetime(msg, false);
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        self.reply_ok(now, from, msg, authed, Some(lifetime));
    }

    /// Family and policy checks for a peer address. `Err((code, reason))` to answer.
    fn check_peer(&mut self, slot: u32, peer: SocketAddr) -> Result<(), (u16, &'static str)> {
        let a = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .ok_or((437, "Allocation Mismatch"))?;
        if a.relay_for(peer).is_none() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        if let Err(class) = self.policy.check(peer.ip()) {
            self.stats.denied[class.index()] += 1;
            tracing::debug!(class = class.label(), "peer denied by policy");
            return Err((403, "Forbidden"));
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let mut peers: Vec<SocketAddr> = Vec::new();
        for p in msg.peer_addresses() {
            match p {
                Some(p) => peers.push(p),
                None => {
                    return self.reply_error(now, from, msg, authed, 400, "Bad XOR-PEER-ADDRESS");
                }
            }
        }
        if peers.is_empty() {
            return self.reply_error(now, from, msg, authed, 400, "Missing XOR-PEER-ADDRESS");
        }
        for p in &peers {
            if let Err((code, reason)) = self.check_peer(slot, *p) {
                return self.reply_error(now, from, msg, authed, code, reason);
            }
        }
        let ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        let max = self.cfg.max_permissions;
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // All or nothing (RFC 8656 §10.2): a request that would pass the cap installs none.
        if !a.permissions_fit(&ips, max, now) {
            self.stats.quota[QuotaKind::Permissions as usize] += 1;
            return self.reply_error(now, from, msg, authed, 508, "Insufficient Capacity");
        }
        for ip in ips {
            install_permission(a, ip, now);
        }
        self.reply_ok(now, from, msg, authed, None);
    }

    fn channel_bind(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>, authed: &Authed) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .and_then(|v| v.get(..2))
            .map(|v| u16::from_be_bytes([v[0], v[1]]));
        let Some(number) = number.filter(|n| stun::valid_channel(*n)) else {
            return self.reply_error(now, from, msg, authed, 400, "Bad CHANNEL-NUMBER");
        };
        let Some(peer) = msg.peer_address() else {
            return self.reply_error(now, from, msg, authed, 400, "Missing XOR-PEER-ADDRESS");
        };
        if let Err((code, reason)) = self.check_peer(slot, peer) {
            return self.reply_error(now, from, msg, authed, code, reason);
        }
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // Entries linger CHANNEL_COOLDOWN after expiry: the same pairing may be rebound,
        // a different pairing of either the number or the peer may not (RFC 8656 §12).
        let conflict = a.channels.get(&number).is_some_and(|c| c.peer != peer)
            || a.channel_of.get(&peer).is_some_and(|n| *n != number);
        if conflict {
            return self.reply_error(now, from, msg, authed, 400, "Channel or peer already bound");
        }
        let expires = now + CHANNEL_LIFETIME;
        let is_new = !a.channels.contains_key(&number);
        if is_new && a.channels.len() >= self.cfg.max_channels {
            self.stats.quota[QuotaKind::Channels as usize] += 1;
            return self.reply_error(now, from, msg, authed, 508, "Insufficient Capacity");
        }
        if !a.permissions_fit(&[peer.ip()], self.cfg.max_permissions, now) {
            self.stats.quota[QuotaKind::Permissions as usize] += 1;
            return self.reply_error(now, from, msg, authed, 508, "Insufficient Capacity");
        }
        a.channels.insert(number, Channel { peer, expires });
        a.channel_of.insert(peer, number);
        install_permission(a, peer.ip(), now);
        self.reply_ok(now, from, msg, authed, None);
    }
}

impl<R: RngCore> Core<R> {
    fn new_conn_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0
                && !self.pending_connects.contains_key(&id)
                && !self.quota.tcp_conns().contains_key(&id)
            {
                return id;
            }
        }
    }

    /// RFC 6062 §5.2 Connect.
    fn connect(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>, authed: &Authed) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let Some(peer) = msg.peer_address() else {
            return self.reply_error(now, from, msg, authed, 400, "Missing XOR-PEER-ADDRESS");
        };
        let (tcp, busy, generation) = match self.slots.get(slot as usize).and_then(Option::as_ref) {
            Some(a) => (a.tcp, a.tcp_peers.contains(&peer), a.generation),
            None => return,
        };
        if !tcp {
            return self.reply_error(now, from, msg, authed, 400, "Not a TCP allocation");
        }
        if busy {
            return self.reply_error(now, from, msg, authed, 446, "Connection Already Exists");
        }
        // Each peer connection needs a permission: bounded like CreatePermission.
        let max = self.cfg.max_permissions;
        let fits = self
            .slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .is_some_and(|a| a.tcp_peers.len() < max && a.permissions_fit(&[peer.ip()], max, now));
        if !fits {
            self.stats.quota[QuotaKind::Permissions as usize] += 1;
            return self.reply_error(now, from, msg, authed, 508, "Insufficient Capacity");
        }
        if let Err((code, reason)) = self.check_peer(slot, peer) {
            return self.reply_error(now, from, msg, authed, code, reason);
        }
        let Some((i, bind)) = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .and_then(|a| {
                a.relay_for(peer)
                    .and_then(|i| a.relays.get(i).copied().flatten().map(|r| (i, r.bind)))
            })
        else {
            return self.reply_error(now, from, msg, authed, 443, "Peer Address Family Mismatch");
        };
        let conn_id = self.new_conn_id();
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.tcp_peers.push(peer);
        }
        self.pending_connects.insert(
            conn_id,
            PendingConnect {
                slot,
                generation,
                peer,
                tid: msg.tid,
                fingerprint: msg.has_fingerprint(),
            },
        );
        self.commands.push_back(Command::ConnectPeer {
            relay: RelayToken {
                slot,
                generation,
                v6: i == 1,
            },
            conn_id,
            bind,
            peer,
        });
    }

    /// The runtime's answer to [`Command::ConnectPeer`]: success (the stream is kept under
    /// `conn_id`) or failure (447).
    pub fn tcp_peer_connected(&mut self, now: Instant, conn_id: u32, ok: bool) {
        let Some(p) = self.pending_connects.remove(&conn_id) else {
            return;
        };
        let Some(a) = self
            .slots
            .get_mut(p.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == p.generation)
        else {
            return;
        };
        let mut out = Vec::with_capacity(96);
        let mut b = Builder::new(
            &mut out,
            method::CONNECT,
            if ok { Class::Success } else { Class::Error },
            p.tid,
        );
        if ok {
            install_permission(a, p.peer.ip(), now);
            b.u32_attr(attr::CONNECTION_ID, conn_id);
            self.quota
                .tcp_conns()
                .insert(conn_id, (a.username.clone(), now + CONNECTION_BIND_TIMEOUT));
        } else {
            a.tcp_peers.retain(|x| *x != p.peer);
            b.error(447, "Connection Timeout or Failure");
        }
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        let client = a.client;
        if b.finish(Some(&a.key.0), p.fingerprint) {
            self.transmits
                .push_back(Transmit::ToClient { client, data: out });
        }
    }

    /// RFC 6062 §5.3: a peer connected to a TCP relay. `Some(conn_id)` when its IP has a
    /// permission (the runtime keeps the stream for ConnectionBind); `None` → close it.
    pub fn tcp_peer_incoming(
        &mut self,
        now: Instant,
        relay: RelayToken,
        peer: SocketAddr,
    ) -> Option<u32> {
        let a = self.alloc_mut(relay)?;
        if !a.tcp || a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        let (client, username) = (a.client, a.username.clone());
        let conn_id = self.new_conn_id();
        self.quota
            .tcp_conns()
            .insert(conn_id, (username, now + CONNECTION_BIND_TIMEOUT));
        let mut out = Vec::with_capacity(64);
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let mut b = Builder::new(
            &mut out,
            method::CONNECTION_ATTEMPT,
            Class::Indication,
            TransactionId(tid),
        );
        b.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        b.u32_attr(attr::CONNECTION_ID, conn_id);
        if b.finish(None, false) {
            self.transmits
                .push_back(Transmit::ToClient { client, data: out });
        }
        Some(conn_id)
    }

    /// RFC 6062 §5.4 ConnectionBind, on a new TCP/TLS connection without allocation.
    fn connection_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) {
        if from.proto == Proto::Udp || self.by_client.contains_key(&from) {
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                400,
                "ConnectionBind needs a new TCP connection",
            );
        }
        let Some(conn_id) = msg.u32_attr(attr::CONNECTION_ID) else {
            return self.reply_error(now, from, msg, authed, 400, "Missing CONNECTION-ID");
        };
        let entry = {
            let mut conns = self.quota.tcp_conns();
            match conns.get(&conn_id) {
                Some((user, deadline)) if *deadline > now && *user == authed.username => {
                    conns.remove(&conn_id)
                }
                Some((_, deadline)) if *deadline > now => None,
                _ => {
                    conns.remove(&conn_id);
                    None
                }
            }
        };
        if entry.is_none() {
            return self.reply_error(now, from, msg, authed, 400, "Unknown CONNECTION-ID");
        }
        self.reply_ok(now, from, msg, authed, None);
        self.commands.push_back(Command::SpliceData {
            client: from,
            conn_id,
        });
    }
}

/// Installs or refreshes a permission; the caller checked the cap
/// ([`Allocation::permissions_fit`]).
fn install_permission(a: &mut Allocation, ip: IpAddr, now: Instant) {
    a.permissions.insert(ip, now + PERMISSION_LIFETIME);
}

/// Exposes deny classes for the metrics registry.
pub fn deny_labels() -> impl Iterator<Item = &'static str> {
    DenyClass::ALL.iter().map(|c| c.label())
}

mod rate;
#[cfg(test)]
mod tests;
