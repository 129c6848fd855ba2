//! Configuration: TOML file + command-line flags, validated into [`Config`].
//!
//! Every flag has a TOML key of the same name with `-` replaced by `_`; a flag given on the
//! command line replaces the key from the file. Errors name the key and say how to fix it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use callrelay_service::config::{
    cidrs, in_range, pick, pick_list, read_toml, socket_addr, socket_addrs,
};
use clap::Parser;
use serde::Deserialize;
use shared_ice::auth::{RestSecret, RestSecrets};

use crate::policy::PeerPolicy;

/// The `offload` setting (turn-offload's `Mode`).
pub use turn_offload::Mode as OffloadMode;

/// A configuration error naming the key (or the file) and the fix.
pub use callrelay_service::config::ConfigError;

/// Command-line flags (see docs/turn-server.md).
#[derive(Debug, Default, Parser)]
#[command(name = "turn-server", version, about = "callrelay STUN/TURN relay")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only check the configuration (file and flags, and load the TLS certificate and
    /// key), then exit: 0 when it is valid, 2 with the key named when it is not. Binds
    /// nothing, so it runs next to the running service (systemd ExecReload).
    #[arg(long)]
    pub check_config: bool,
    /// UDP+TCP listen address (repeatable). Default `0.0.0.0:3478` and `[::]:3478`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// TLS listen address (repeatable). Default `0.0.0.0:5349` and `[::]:5349` when a cert is set.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Vec<String>,
    /// PEM certificate chain for TLS.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Realm sent in 401 challenges.
    #[arg(long)]
    pub realm: Option<String>,
    /// TURN REST shared secret (repeatable; all are accepted, first is current).
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Vec<String>,
    /// Static long-term user NAME:PASSWORD (repeatable, for testing).
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// Local IP relay sockets bind to (repeatable: at most one IPv4 and one IPv6).
    #[arg(long, value_name = "IP")]
    pub relay_ip: Vec<String>,
    /// Public IP advertised in XOR-RELAYED-ADDRESS (1:1 NAT), per family (repeatable).
    #[arg(long, value_name = "IP")]
    pub external_ip: Vec<String>,
    /// Relay port range MIN-MAX.
    #[arg(long, value_name = "MIN-MAX")]
    pub relay_ports: Option<String>,
    /// Open a peer range the default policy denies (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow_peer: Vec<String>,
    /// Deny a peer range; wins over --allow-peer (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub deny_peer: Vec<String>,
    /// Prometheus /metrics listen address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Connections open at once on the /metrics listener; more are closed at accept.
    #[arg(long, value_name = "N")]
    pub metrics_max_connections: Option<u32>,
    /// Seconds a /metrics connection may take to send a complete request head (also
    /// how long an idle kept-alive connection stays open).
    #[arg(long, value_name = "SECS")]
    pub metrics_header_timeout: Option<u64>,
    /// Seconds /metrics answers in flight may still run once the server stops.
    #[arg(long, value_name = "SECS")]
    pub metrics_shutdown_grace: Option<u64>,
    /// Seconds the exit waits for the worker threads after the drain.
    #[arg(long, value_name = "SECS")]
    pub worker_stop_timeout: Option<u64>,
    /// Default allocation lifetime in seconds.
    #[arg(long, value_name = "SECS")]
    pub default_lifetime: Option<u32>,
    /// Maximum allocation lifetime in seconds.
    #[arg(long, value_name = "SECS")]
    pub max_lifetime: Option<u32>,
    /// Maximum allocations per username (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub user_quota: Option<u32>,
    /// Maximum allocations on this server (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub total_quota: Option<u32>,
    /// Relay bandwidth per allocation in bytes/s, both directions together (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    pub bandwidth: Option<u64>,
    /// Unauthenticated requests per second per source address.
    #[arg(long, value_name = "N")]
    pub unauth_rate: Option<u32>,
    /// Unauthenticated requests per second per source address that authenticated
    /// successfully within `nonce_lifetime`, and requests per second per source address on
    /// TCP/TLS (over it a connection is closed, never left without an answer).
    #[arg(long, value_name = "N")]
    pub auth_rate: Option<u32>,
    /// Entries of each worker's per-source rate-limit table (a full table replaces its
    /// least recently used entry; 40 bytes each).
    #[arg(long, value_name = "N")]
    pub rate_limit_sources: Option<usize>,
    /// IPv6 sources share one rate-limit entry per prefix of this many bits.
    #[arg(long, value_name = "BITS")]
    pub rate_limit_ipv6_prefix: Option<u8>,
    /// Enforce TURN REST expiry on every request, not only at Allocate.
    #[arg(long)]
    pub strict_expiry: bool,
    /// Nonce lifetime in seconds (stale nonces get 438).
    #[arg(long, value_name = "SECS")]
    pub nonce_lifetime: Option<u32>,
    /// Permission lifetime in seconds, 1-300 (RFC 8656: 300). Lower only for tests.
    #[arg(long, value_name = "SECS")]
    pub permission_lifetime: Option<u32>,
    /// Channel binding lifetime in seconds, 1-600 (RFC 8656: 600). Lower only for tests.
    #[arg(long, value_name = "SECS")]
    pub channel_lifetime: Option<u32>,
    /// Largest accepted TCP/TLS frame in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<u32>,
    /// Worker threads (each owns a shard: its own sockets and allocation table).
    /// Default: half the CPUs, at least 1, at most 16.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Seconds SIGTERM waits for active allocations before exiting.
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// Permissions (peer IPs) per allocation; more get 508.
    #[arg(long, value_name = "N")]
    pub max_permissions: Option<u32>,
    /// Channel bindings per allocation; more get 508.
    #[arg(long, value_name = "N")]
    pub max_channels: Option<u32>,
    /// Answers kept per worker for retransmitted requests (RFC 8489 §6.3.1 idempotency).
    #[arg(long, value_name = "N")]
    pub transaction_cache: Option<u32>,
    /// TCP/TLS client connections on this server (lowered to fit RLIMIT_NOFILE).
    #[arg(long, value_name = "N")]
    pub max_stream_connections: Option<u32>,
    /// TCP/TLS client connections per source address (IPv6: per /64).
    #[arg(long, value_name = "N")]
    pub max_stream_connections_per_ip: Option<u32>,
    /// Seconds a TCP/TLS connection may stay open without an allocation.
    #[arg(long, value_name = "SECS")]
    pub stream_auth_timeout: Option<u64>,
    /// Kernel fast path for UDP ChannelData: auto, xdp, tc or off (docs/offload.md).
    #[arg(long, value_name = "MODE")]
    pub offload: Option<String>,
    /// Interface the offload attaches to (repeatable). Default: the interfaces that carry
    /// the listen and relay addresses, but lo.
    #[arg(long, value_name = "NAME")]
    pub offload_interface: Vec<String>,
    /// Bearer secret of the control endpoint on the metrics listener (`POST
    /// /control/permission`, for the gateway's `early_offer`); without one the endpoint
    /// does not exist (404). Prefer the config file: a flag shows in `ps`.
    #[arg(long, value_name = "SECRET")]
    pub control_secret: Option<String>,
    /// Control requests per second the endpoint accepts (all callers together); more
    /// get 429.
    #[arg(long, value_name = "N")]
    pub control_rate: Option<u32>,
}

/// The TOML file. Keys mirror the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    tls_listen: Vec<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    realm: Option<String>,
    #[serde(default)]
    auth_secret: Vec<String>,
    #[serde(default)]
    user: Vec<String>,
    #[serde(default)]
    relay_ip: Vec<String>,
    #[serde(default)]
    external_ip: Vec<String>,
    relay_ports: Option<String>,
    #[serde(default)]
    allow_peer: Vec<String>,
    #[serde(default)]
    deny_peer: Vec<String>,
    metrics_listen: Option<String>,
    metrics_max_connections: Option<u32>,
    metrics_header_timeout: Option<u64>,
    metrics_shutdown_grace: Option<u64>,
    worker_stop_timeout: Option<u64>,
    default_lifetime: Option<u32>,
    max_lifetime: Option<u32>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    bandwidth: Option<u64>,
    unauth_rate: Option<u32>,
    auth_rate: Option<u32>,
    rate_limit_sources: Option<usize>,
    rate_limit_ipv6_prefix: Option<u8>,
    #[serde(default)]
    strict_expiry: bool,
    nonce_lifetime: Option<u32>,
    permission_lifetime: Option<u32>,
    channel_lifetime: Option<u32>,
    max_frame: Option<u32>,
    workers: Option<usize>,
    drain_timeout: Option<u64>,
    max_permissions: Option<u32>,
    max_channels: Option<u32>,
    transaction_cache: Option<u32>,
    max_stream_connections: Option<u32>,
    max_stream_connections_per_ip: Option<u32>,
    stream_auth_timeout: Option<u64>,
    offload: Option<String>,
    #[serde(default)]
    offload_interface: Vec<String>,
    control_secret: Option<String>,
    control_rate: Option<u32>,
}

/// Workers when the configuration does not say: half the CPUs (at least 1, at most 16).
/// Most of a relayed packet's CPU is the kernel's network stack, which needs CPUs beside
/// the workers; and each worker wakes up for its own share of every burst, so fewer
/// workers do more per wake-up. On the 2-CPU bench machine one worker relays over
/// 1,000,000 packets/s at about half the CPU per packet of two (docs/performance.md).
pub fn default_workers(cpus: usize) -> usize {
    (cpus / 2).clamp(1, 16)
}

/// A static long-term user: the core's type, parsed straight into.
pub use crate::core::StaticUser;

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// UDP+TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate path.
    pub cert: Option<PathBuf>,
    /// Key path.
    pub key: Option<PathBuf>,
    /// Realm.
    pub realm: String,
    /// TURN REST secrets.
    pub auth_secrets: RestSecrets,
    /// Static users.
    pub users: Vec<StaticUser>,
    /// Relay bind IPv4.
    pub relay_ip4: Option<IpAddr>,
    /// Relay bind IPv6.
    pub relay_ip6: Option<IpAddr>,
    /// Advertised IPv4.
    pub external_ip4: Option<IpAddr>,
    /// Advertised IPv6.
    pub external_ip6: Option<IpAddr>,
    /// Relay port range (inclusive).
    pub relay_ports: (u16, u16),
    /// Peer policy.
    pub policy: PeerPolicy,
    /// Metrics listener.
    pub metrics_listen: SocketAddr,
    /// Connections open at once on the metrics listener.
    pub metrics_max_connections: u32,
    /// Time a metrics connection has for a complete request head.
    pub metrics_header_timeout: Duration,
    /// Time metrics answers in flight may still run at shutdown.
    pub metrics_shutdown_grace: Duration,
    /// Time the exit waits for the worker threads after the drain.
    pub worker_stop_timeout: Duration,
    /// Default allocation lifetime.
    pub default_lifetime: u32,
    /// Max allocation lifetime.
    pub max_lifetime: u32,
    /// Allocations per user (0 unlimited).
    pub user_quota: u32,
    /// Total allocations (0 unlimited).
    pub total_quota: u32,
    /// Bytes/s per allocation (0 unlimited).
    pub bandwidth: u64,
    /// Unauthenticated requests/s per source.
    pub unauth_rate: u32,
    /// Requests/s per recently authenticated source, and per source on TCP/TLS.
    pub auth_rate: u32,
    /// Entries of each worker's rate-limit table.
    pub rate_limit_sources: usize,
    /// IPv6 rate-limit prefix length.
    pub rate_limit_ipv6_prefix: u8,
    /// Strict REST expiry.
    pub strict_expiry: bool,
    /// Nonce lifetime.
    pub nonce_lifetime: u32,
    /// Permission lifetime (s).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (s).
    pub channel_lifetime: u32,
    /// Max TCP/TLS frame.
    pub max_frame: u32,
    /// Worker threads.
    pub workers: usize,
    /// Drain bound.
    pub drain_timeout: Duration,
    /// Permissions per allocation.
    pub max_permissions: u32,
    /// Channel bindings per allocation.
    pub max_channels: u32,
    /// Answers kept per worker for retransmissions.
    pub transaction_cache: u32,
    /// TCP/TLS client connections (before the RLIMIT_NOFILE share).
    pub max_stream_connections: u32,
    /// TCP/TLS client connections per source address.
    pub max_stream_connections_per_ip: u32,
    /// Time a stream connection may stay without an allocation.
    pub stream_auth_timeout: Duration,
    /// Kernel fast path for UDP ChannelData.
    pub offload: OffloadMode,
    /// Interfaces the offload attaches to (empty: those carrying the listen and relay
    /// addresses, but lo).
    pub offload_interfaces: Vec<String>,
    /// The control endpoint's bearer secret; `None`: no endpoint.
    pub control_secret: Option<ControlSecret>,
    /// Control requests per second.
    pub control_rate: u32,
}

/// The control endpoint's bearer secret. Only its SHA-256 digest is kept, compared in
/// constant time with the digest of what a request presents (so neither the length nor
/// the bytes of the secret leak through timing); `Debug` prints no part of it.
#[derive(Clone)]
pub struct ControlSecret([u8; 32]);

impl ControlSecret {
    /// The digest of `secret`.
    pub fn new(secret: &str) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `presented` is the secret (constant time in its content).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let d: [u8; 32] = sha2::Sha256::digest(presented).into();
        d.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for ControlSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSecret(<redacted>)")
    }
}

fn ips(key: &'static str, v: &[String]) -> Result<(Option<IpAddr>, Option<IpAddr>), ConfigError> {
    let (mut v4, mut v6) = (None, None);
    for s in v {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ConfigError::key(key, format!("`{s}` is not an IP address")))?;
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.replace(ip).is_some() {
            return Err(ConfigError::key(
                key,
                "give at most one IPv4 and one IPv6 address",
            ));
        }
    }
    Ok((v4, v6))
}

impl Config {
    /// Loads `cli.config` (if any) and merges the flags over it.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => read_toml(p)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Merges flags over a parsed file and validates.
    pub fn merge(cli: &Cli, f: FileConfig) -> Result<Self, ConfigError> {
        let listen = {
            let l = pick_list(cli.listen.clone(), f.listen);
            if l.is_empty() {
                vec![
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 3478)),
                ]
            } else {
                socket_addrs("listen", &l)?
            }
        };
        let cert = cli.cert.clone().or(f.cert);
        let key = cli.key.clone().or(f.key);
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(ConfigError::key(
                    "key",
                    "`cert` is set: also set `key` (PEM private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "cert",
                    "`key` is set: also set `cert` (PEM chain)",
                ));
            }
            _ => {}
        }
        let tls_listen = {
            let l = pick_list(cli.tls_listen.clone(), f.tls_listen);
            if l.is_empty() && cert.is_some() {
                vec![
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5349)),
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5349)),
                ]
            } else {
                socket_addrs("tls_listen", &l)?
            }
        };
        if !tls_listen.is_empty() && cert.is_none() {
            return Err(ConfigError::key(
                "tls_listen",
                "TLS needs `cert` and `key` (PEM files)",
            ));
        }
        let realm = pick(cli.realm.clone(), f.realm, "callrelay".into());
        if realm.is_empty() || realm.len() > 127 || realm.contains('"') {
            return Err(ConfigError::key(
                "realm",
                "use 1-127 characters without quotes",
            ));
        }
        let auth_secrets = pick_list(cli.auth_secret.clone(), f.auth_secret);
        if auth_secrets.iter().any(String::is_empty) {
            return Err(ConfigError::key(
                "auth_secret",
                "a secret must not be empty",
            ));
        }
        let users = pick_list(cli.user.clone(), f.user)
            .into_iter()
            .map(|u| match u.split_once(':') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok(StaticUser {
                    name: n.into(),
                    password: p.into(),
                }),
                _ => Err(ConfigError::key("user", "write NAME:PASSWORD")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if auth_secrets.is_empty() && users.is_empty() {
            return Err(ConfigError::key(
                "auth_secret",
                "no credentials configured: set `auth_secret` (TURN REST shared secret, the TURN Shared Key in Mattermost) or `user`",
            ));
        }
        let (mut relay_ip4, mut relay_ip6) =
            ips("relay_ip", &pick_list(cli.relay_ip.clone(), f.relay_ip))?;
        if relay_ip4.is_none() && relay_ip6.is_none() {
            // Default: the first specific listen address of each family.
            relay_ip4 = listen
                .iter()
                .map(|a| a.ip())
                .find(|i| i.is_ipv4() && !i.is_unspecified());
            relay_ip6 = listen
                .iter()
                .map(|a| a.ip())
                .find(|i| i.is_ipv6() && !i.is_unspecified());
            if relay_ip4.is_none() && relay_ip6.is_none() {
                return Err(ConfigError::key(
                    "relay_ip",
                    "listening on a wildcard address: set `relay_ip` to the local address relay sockets bind to",
                ));
            }
        }
        for ip in [relay_ip4, relay_ip6].into_iter().flatten() {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::key(
                    "relay_ip",
                    format!("{ip} cannot be a relay address: use a unicast local IP"),
                ));
            }
        }
        let (external_ip4, external_ip6) = ips(
            "external_ip",
            &pick_list(cli.external_ip.clone(), f.external_ip),
        )?;
        if external_ip4.is_some() && relay_ip4.is_none() {
            return Err(ConfigError::key(
                "external_ip",
                "an IPv4 external_ip needs an IPv4 relay_ip",
            ));
        }
        if external_ip6.is_some() && relay_ip6.is_none() {
            return Err(ConfigError::key(
                "external_ip",
                "an IPv6 external_ip needs an IPv6 relay_ip",
            ));
        }
        let relay_ports = {
            let s = pick(cli.relay_ports.clone(), f.relay_ports, "49152-65535".into());
            let bad = || {
                ConfigError::key(
                    "relay_ports",
                    format!("`{s}` is not MIN-MAX with 1024 <= MIN <= MAX <= 65535"),
                )
            };
            let (a, b) = s.split_once('-').ok_or_else(bad)?;
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a < 1024 || a > b {
                return Err(bad());
            }
            (a, b)
        };
        let policy = PeerPolicy::new(
            cidrs(
                "allow_peer",
                &pick_list(cli.allow_peer.clone(), f.allow_peer),
            )?,
            cidrs("deny_peer", &pick_list(cli.deny_peer.clone(), f.deny_peer))?,
        );
        let metrics_listen = socket_addr(
            "metrics_listen",
            &pick(
                cli.metrics_listen.clone(),
                f.metrics_listen,
                "127.0.0.1:9641".into(),
            ),
        )?;
        let metrics_max_connections = in_range(
            "metrics_max_connections",
            pick(cli.metrics_max_connections, f.metrics_max_connections, 64),
            4..=10_000,
            " (64 is the default; a Prometheus server holds one)",
        )?;
        let metrics_header_timeout = in_range(
            "metrics_header_timeout",
            pick(cli.metrics_header_timeout, f.metrics_header_timeout, 10),
            1..=300,
            " seconds (10 is the default)",
        )?;
        let metrics_shutdown_grace = in_range(
            "metrics_shutdown_grace",
            pick(cli.metrics_shutdown_grace, f.metrics_shutdown_grace, 1),
            0..=30,
            " seconds (1 is the default)",
        )?;
        let worker_stop_timeout = in_range(
            "worker_stop_timeout",
            pick(cli.worker_stop_timeout, f.worker_stop_timeout, 3),
            1..=60,
            " seconds (3 is the default)",
        )?;
        let default_lifetime = in_range(
            "default_lifetime",
            pick(cli.default_lifetime, f.default_lifetime, 600),
            2..,
            " seconds (600 is the RFC default)",
        )?;
        let max_lifetime = pick(cli.max_lifetime, f.max_lifetime, 3600);
        if max_lifetime < default_lifetime {
            return Err(ConfigError::key(
                "max_lifetime",
                "must be >= default_lifetime",
            ));
        }
        let nonce_lifetime = in_range(
            "nonce_lifetime",
            pick(cli.nonce_lifetime, f.nonce_lifetime, 600),
            10..,
            " seconds",
        )?;
        let permission_lifetime = in_range(
            "permission_lifetime",
            pick(cli.permission_lifetime, f.permission_lifetime, 300),
            1..=300,
            " seconds (300, the RFC 8656 value, is the default; clients refresh on that timing)",
        )?;
        let channel_lifetime = in_range(
            "channel_lifetime",
            pick(cli.channel_lifetime, f.channel_lifetime, 600),
            1..=600,
            " seconds (600, the RFC 8656 value, is the default; clients refresh on that timing)",
        )?;
        let max_frame = in_range(
            "max_frame",
            pick(cli.max_frame, f.max_frame, 16384),
            1500..=65540,
            " bytes",
        )?;
        let workers = match cli.workers.or(f.workers) {
            Some(n) => in_range("workers", n, 1.., "")?,
            None => default_workers(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            ),
        };
        let unauth_rate = pick(cli.unauth_rate, f.unauth_rate, 50).max(1);
        // Never below `unauth_rate` (benchmarks raise that one alone to disable the limit).
        let auth_rate = pick(cli.auth_rate, f.auth_rate, 2000).max(unauth_rate);
        let rate_limit_sources = in_range(
            "rate_limit_sources",
            pick(cli.rate_limit_sources, f.rate_limit_sources, 65_536),
            64..=4_194_304,
            " entries (40 bytes each, per worker)",
        )?;
        let rate_limit_ipv6_prefix = in_range(
            "rate_limit_ipv6_prefix",
            pick(cli.rate_limit_ipv6_prefix, f.rate_limit_ipv6_prefix, 64),
            16..=128,
            " bits (64: one entry per IPv6 subnet)",
        )?;
        let max_permissions = in_range(
            "max_permissions",
            pick(cli.max_permissions, f.max_permissions, 256),
            1..=65_536,
            " (a call needs a few; 256 is the default)",
        )?;
        let max_channels = in_range(
            "max_channels",
            pick(cli.max_channels, f.max_channels, 256),
            1..=4096,
            " (the channel-number range; 256 is the default)",
        )?;
        let transaction_cache = in_range(
            "transaction_cache",
            pick(cli.transaction_cache, f.transaction_cache, 65_536),
            1024..=1_048_576,
            " answers per worker (at most about 600 bytes each)",
        )?;
        let max_stream_connections = in_range(
            "max_stream_connections",
            pick(cli.max_stream_connections, f.max_stream_connections, 10_000),
            1..,
            " (10000 is the default)",
        )?;
        let max_stream_connections_per_ip = in_range(
            "max_stream_connections_per_ip",
            pick(
                cli.max_stream_connections_per_ip,
                f.max_stream_connections_per_ip,
                1_000,
            ),
            1..,
            " (1000 is the default: an office behind one NAT address)",
        )?;
        let stream_auth_timeout = in_range(
            "stream_auth_timeout",
            pick(cli.stream_auth_timeout, f.stream_auth_timeout, 15),
            1..=600,
            " seconds (15 is the default)",
        )?;
        let offload = {
            let s = pick(cli.offload.clone(), f.offload, "auto".into());
            OffloadMode::parse(&s).ok_or_else(|| {
                ConfigError::key(
                    "offload",
                    format!("`{s}` is not one of \"auto\", \"xdp\", \"tc\", \"off\""),
                )
            })?
        };
        let offload_interfaces = pick_list(cli.offload_interface.clone(), f.offload_interface);
        if let Some(bad) = offload_interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
        {
            return Err(ConfigError::key(
                "offload_interface",
                format!("`{bad}` is not an interface name (1-15 characters, no `/` or space)"),
            ));
        }
        let control_secret = match cli.control_secret.clone().or(f.control_secret) {
            Some(s) if s.len() < 16 => {
                return Err(ConfigError::key(
                    "control_secret",
                    "use at least 16 characters (e.g. `openssl rand -hex 32`), or leave it unset to disable the control endpoint",
                ));
            }
            s => s.as_deref().map(ControlSecret::new),
        };
        let control_rate = in_range(
            "control_rate",
            pick(cli.control_rate, f.control_rate, 200),
            1..=100_000,
            " requests per second (200 is the default: two per call set-up)",
        )?;
        let span = usize::from(relay_ports.1 - relay_ports.0) + 1;
        if span < workers {
            return Err(ConfigError::key(
                "relay_ports",
                format!("the range needs at least {workers} ports (one shard per worker)"),
            ));
        }
        Ok(Self {
            listen,
            tls_listen,
            cert,
            key,
            realm,
            auth_secrets: RestSecrets::new(auth_secrets.into_iter().map(RestSecret::from)),
            users,
            relay_ip4,
            relay_ip6,
            external_ip4,
            external_ip6,
            relay_ports,
            policy,
            metrics_listen,
            metrics_max_connections,
            metrics_header_timeout: Duration::from_secs(metrics_header_timeout),
            metrics_shutdown_grace: Duration::from_secs(metrics_shutdown_grace),
            worker_stop_timeout: Duration::from_secs(worker_stop_timeout),
            default_lifetime,
            max_lifetime,
            user_quota: pick(cli.user_quota, f.user_quota, 0),
            total_quota: pick(cli.total_quota, f.total_quota, 0),
            bandwidth: pick(cli.bandwidth, f.bandwidth, 2_000_000),
            unauth_rate,
            auth_rate,
            rate_limit_sources,
            rate_limit_ipv6_prefix,
            strict_expiry: cli.strict_expiry || f.strict_expiry,
            nonce_lifetime,
            permission_lifetime,
            channel_lifetime,
            max_frame,
            workers,
            drain_timeout: Duration::from_secs(pick(cli.drain_timeout, f.drain_timeout, 30)),
            max_permissions,
            max_channels,
            transaction_cache,
            max_stream_connections,
            max_stream_connections_per_ip,
            stream_auth_timeout: Duration::from_secs(stream_auth_timeout),
            offload,
            offload_interfaces,
            control_secret,
            control_rate,
        })
    }
}

#[cfg(test)]
mod tests;
