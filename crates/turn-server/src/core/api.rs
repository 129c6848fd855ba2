//! What goes into and comes out of the core: transports, 5-tuples, relay tokens, the
//! fast-path [`Relay`] verdict, built [`Transmit`]s, socket [`Command`]s and the static
//! [`CoreConfig`].

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

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
    pub(super) fn index(self) -> usize {
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
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) v6: bool,
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
    /// `buf[payload]` to worker `worker`, which feeds it to [`Core::handle_relayed`](super::Core::handle_relayed) (its
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
    /// Bind a UDP socket at `bind`, then call [`Core::relay_opened`](super::Core::relay_opened).
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
    /// [`Core::relay_opened`](super::Core::relay_opened); incoming ones go to [`Core::tcp_peer_incoming`](super::Core::tcp_peer_incoming).
    OpenTcpRelay {
        /// Token of the allocation's relay.
        relay: RelayToken,
        /// Address to listen on (reuse-address/port: outgoing connects bind it too).
        bind: SocketAddr,
    },
    /// RFC 6062 Connect: open a TCP connection from `bind` to `peer`, then call
    /// [`Core::tcp_peer_connected`](super::Core::tcp_peer_connected); keep the stream under `conn_id` for 30 s.
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

/// One channel binding of a UDP allocation, as the kernel fast path needs it
/// (docs/offload.md): the offload crate's own type, so the shell hands the core's
/// bindings to the kernel maps as they are.
pub use turn_offload::Binding as OffloadBinding;

/// The complete set of a UDP allocation's live channel bindings, emitted whenever it may
/// have changed (ChannelBind, CreatePermission, Refresh, expiry sweeps) and with no
/// bindings when the allocation is gone. The shell makes the kernel hold exactly these.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OffloadSync {
    /// The allocation's client 5-tuple (unique across workers).
    pub client: FiveTuple,
    /// Its bindings now.
    pub bindings: Vec<OffloadBinding>,
}

/// What [`Core::install_permission`](super::Core::install_permission) did: the answer to
/// the control endpoint's "install a permission for IP P on the allocation whose relayed
/// address is R" (docs/turn-server.md, "Control endpoint").
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum InstallResult {
    /// Installed (or refreshed): an ordinary permission, as CreatePermission makes.
    Installed,
    /// No live allocation of this shard has that relayed address.
    NoSuchAllocation,
    /// The peer's address family is not the relayed address's.
    WrongFamily,
    /// The peer policy denies the IP (counted in the denied-peer metric like a refused
    /// CreatePermission).
    Denied(crate::policy::DenyClass),
    /// The allocation holds `max_permissions` live permissions already (counted as a
    /// `permissions` quota rejection).
    Full,
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
    /// How long a permission lives unless refreshed (`permission_lifetime`; RFC 8656:
    /// 300 s).
    pub permission_lifetime: Duration,
    /// How long a channel binding lives unless refreshed (`channel_lifetime`; RFC 8656:
    /// 600 s).
    pub channel_lifetime: Duration,
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
    /// Emit [`OffloadSync`]s for the kernel fast path ([`Core::poll_offload`](super::Core::poll_offload)).
    pub offload: bool,
}
