//! Gateway configuration: TOML file + command-line flags (flags win), validated at start.

use callrelay_service::config::{cidrs, in_range, pick, read_toml};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use callrelay_service::config::{Cidr, ConfigError};
pub use cluster::{ClusterConfig, NatsAuth, default_node_id};

mod cluster;

/// The TOML file schema. Every key is optional; see docs/configuration.md.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// WebSocket (`janus-protocol`) listener.
    pub listen: Option<SocketAddr>,
    /// HTTP REST + long-poll listener.
    pub http_listen: Option<SocketAddr>,
    /// Admin API + /metrics listener.
    pub admin_listen: Option<SocketAddr>,
    /// Admin API secret.
    pub admin_secret: Option<String>,
    /// Require stored tokens.
    pub token_auth: Option<bool>,
    /// Janus api_secret.
    pub api_secret: Option<String>,
    /// TLS certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub key: Option<PathBuf>,
    /// TLS on the WebSocket listener (default: on when cert/key are set).
    pub ws_tls: Option<bool>,
    /// TLS on the HTTP listener (default: on when cert/key are set).
    pub http_tls: Option<bool>,
    /// TLS on the admin listener (default: on when cert/key are set).
    pub admin_tls: Option<bool>,
    /// WebSocket URL the test call page connects to (default: derived from the page's host).
    pub test_page_ws_url: Option<String>,
    /// STUN URI handed to browsers.
    pub stun_uri: Option<String>,
    /// TURN URIs handed to browsers.
    pub turn_uris: Option<Vec<String>>,
    /// TURN REST shared secret.
    pub turn_secret: Option<String>,
    /// Lifetime of minted TURN credentials, seconds.
    pub turn_ttl: Option<u64>,
    /// Forward a local call's offer at once and have the turn-server install the two
    /// browsers' permissions before the answer goes (docs/gateway.md, "Early offer").
    pub early_offer: Option<bool>,
    /// Milliseconds an early-offer answer waits for the turn-server's confirmations.
    pub early_offer_timeout_ms: Option<u64>,
    /// The turn-servers' control endpoints (`http://IP:PORT`, their metrics listener).
    pub turn_control_urls: Option<Vec<String>>,
    /// The turn-servers' `control_secret`.
    pub turn_control_secret: Option<String>,
    /// Directory for tokens.json.
    pub state_dir: Option<PathBuf>,
    /// Session idle timeout, seconds (0 = never).
    pub session_timeout: Option<u64>,
    /// Seconds a session of a closed WebSocket waits for `claim` (0 = destroy at once).
    pub reclaim_session_timeout: Option<u64>,
    /// Milliseconds an offer/answer waits for trickled candidates.
    pub candidate_wait_ms: Option<u64>,
    /// Milliseconds a held offer/answer that can already connect (a relay candidate
    /// for every transport) still waits for host/server-reflexive candidates.
    pub candidate_grace_ms: Option<u64>,
    /// Seconds after which an unused token is dropped (0 = never).
    pub token_max_idle: Option<u64>,
    /// Most Janus sessions held at once (`create` beyond it gets 490).
    pub max_sessions: Option<usize>,
    /// Most sessions alive at once created with one token (0 = no limit).
    pub max_sessions_per_token: Option<usize>,
    /// Most sessions alive at once owned by one WebSocket (0 = no limit).
    pub max_sessions_per_connection: Option<usize>,
    /// Seconds a long poll waits before answering `keepalive`.
    pub longpoll_timeout: Option<u64>,
    /// Largest accepted WebSocket message / HTTP body, bytes.
    pub max_message_bytes: Option<usize>,
    /// Outgoing messages queued per WebSocket before the client is dropped as too slow.
    pub ws_queue: Option<usize>,
    /// Outgoing bytes queued per WebSocket before the client is dropped as too slow.
    pub ws_queue_bytes: Option<usize>,
    /// Event bytes queued per HTTP session before the session is ended as unread.
    pub http_queue_bytes: Option<usize>,
    /// Longest videocall username, bytes (`register` beyond it gets 474).
    pub max_username_bytes: Option<usize>,
    /// Seconds a WebSocket may stay open without owning a session (Admin API
    /// WebSockets: without a request) before it is closed.
    pub ws_idle_timeout: Option<u64>,
    /// Seconds an HTTP request body may take to arrive.
    pub http_body_timeout: Option<u64>,
    /// Connections open at once on the WebSocket and HTTP listeners together.
    pub max_connections: Option<usize>,
    /// Connections open at once from one source address (WebSocket + HTTP listeners).
    pub max_connections_per_ip: Option<usize>,
    /// Source addresses (CIDR) exempt from `max_connections_per_ip`: reverse proxies.
    pub trusted_proxies: Option<Vec<String>>,
    /// Connections open at once on the admin listener.
    pub max_admin_connections: Option<usize>,
    /// Largest trickled candidate, bytes (beyond it 467).
    pub max_candidate_bytes: Option<usize>,
    /// Candidate bytes buffered per handle (beyond it 467).
    pub max_candidate_bytes_per_handle: Option<usize>,
    /// `Access-Control-Allow-Origin` value of the HTTP transport.
    pub cors_allow_origin: Option<String>,
    /// NATS server URLs (`nats://`, `tls://`); set = cluster mode (docs/scale-out.md).
    pub nats_url: Option<Vec<String>>,
    /// This node's name in the cluster (default: the host name).
    pub node_id: Option<String>,
    /// Prefix of the cluster's NATS subjects and key-value buckets.
    pub cluster: Option<String>,
    /// NATS user (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// NATS authentication token.
    pub nats_token: Option<String>,
    /// File holding the NATS NKey seed (`SU…`).
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// CA certificate (PEM) the NATS server's certificate must chain to; implies TLS.
    pub nats_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // secrets never reach logs or panic messages
        f.debug_struct("FileConfig").finish_non_exhaustive()
    }
}

/// Command-line values (None = not given). Mirrors [`FileConfig`].
#[derive(Debug, Default, Clone)]
pub struct CliConfig {
    /// `--config`
    pub config: Option<PathBuf>,
    /// Everything else, same meaning as the TOML keys.
    pub values: FileConfig,
}

/// The validated configuration. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct Config {
    /// WebSocket listener.
    pub listen: SocketAddr,
    /// HTTP listener.
    pub http_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Admin secret.
    pub admin_secret: Option<String>,
    /// token_auth.
    pub token_auth: bool,
    /// api_secret.
    pub api_secret: Option<String>,
    /// TLS cert + key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Which listeners speak TLS (all false without cert/key).
    pub tls_on: TlsListeners,
    /// WebSocket URL for the test call page (None = same host, WS listener port).
    pub test_page_ws_url: Option<String>,
    /// STUN URI.
    pub stun_uri: Option<String>,
    /// TURN URIs.
    pub turn_uris: Vec<String>,
    /// TURN secret.
    pub turn_secret: Option<String>,
    /// TURN credential lifetime.
    pub turn_ttl: Duration,
    /// `early_offer`.
    pub early_offer: bool,
    /// `early_offer_timeout_ms`.
    pub early_offer_timeout: Duration,
    /// The turn-servers' control endpoints (address of each metrics listener).
    pub turn_control: Vec<SocketAddr>,
    /// Their `control_secret`.
    pub turn_control_secret: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Reclaim timeout.
    pub reclaim_timeout: Duration,
    /// Candidate wait.
    pub candidate_wait: Duration,
    /// Candidate grace.
    pub candidate_grace: Duration,
    /// Token idle expiry.
    pub token_max_idle: Duration,
    /// Session cap.
    pub max_sessions: usize,
    /// Session cap per token.
    pub max_sessions_per_token: usize,
    /// Session cap per WebSocket.
    pub max_sessions_per_connection: usize,
    /// Long poll timeout.
    pub longpoll_timeout: Duration,
    /// Max message size.
    pub max_message_bytes: usize,
    /// Per-WebSocket queue length.
    pub ws_queue: usize,
    /// Per-WebSocket queue size in bytes.
    pub ws_queue_bytes: usize,
    /// Per-HTTP-session event queue size in bytes.
    pub http_queue_bytes: usize,
    /// Longest videocall username in bytes.
    pub max_username_bytes: usize,
    /// WebSocket idle timeout (no session owned).
    pub ws_idle_timeout: Duration,
    /// HTTP request body timeout.
    pub http_body_timeout: Duration,
    /// Connection cap of the WebSocket + HTTP listeners.
    pub max_connections: usize,
    /// Connection cap per source address.
    pub max_connections_per_ip: usize,
    /// Source networks exempt from the per-address cap (reverse proxies).
    pub trusted_proxies: Vec<Cidr>,
    /// Connection cap of the admin listener.
    pub max_admin_connections: usize,
    /// Largest trickled candidate in bytes.
    pub max_candidate_bytes: usize,
    /// Candidate bytes buffered per handle.
    pub max_candidate_bytes_per_handle: usize,
    /// CORS origin.
    pub cors_allow_origin: String,
    /// Cluster mode (tokens shared through NATS); None = a node alone.
    pub cluster: Option<ClusterConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_secret", &redact(&self.admin_secret))
            .field("token_auth", &self.token_auth)
            .field("api_secret", &redact(&self.api_secret))
            .field("tls", &self.tls)
            .field("tls_on", &self.tls_on)
            .field("test_page_ws_url", &self.test_page_ws_url)
            .field("stun_uri", &self.stun_uri)
            .field("turn_uris", &self.turn_uris)
            .field("turn_secret", &redact(&self.turn_secret))
            .field("turn_ttl", &self.turn_ttl)
            .field("early_offer", &self.early_offer)
            .field("early_offer_timeout", &self.early_offer_timeout)
            .field("turn_control", &self.turn_control)
            .field("turn_control_secret", &redact(&self.turn_control_secret))
            .field("state_dir", &self.state_dir)
            .field("session_timeout", &self.session_timeout)
            .field("reclaim_timeout", &self.reclaim_timeout)
            .field("candidate_wait", &self.candidate_wait)
            .field("candidate_grace", &self.candidate_grace)
            .field("token_max_idle", &self.token_max_idle)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_token", &self.max_sessions_per_token)
            .field(
                "max_sessions_per_connection",
                &self.max_sessions_per_connection,
            )
            .field("longpoll_timeout", &self.longpoll_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ws_queue", &self.ws_queue)
            .field("ws_queue_bytes", &self.ws_queue_bytes)
            .field("http_queue_bytes", &self.http_queue_bytes)
            .field("max_username_bytes", &self.max_username_bytes)
            .field("ws_idle_timeout", &self.ws_idle_timeout)
            .field("http_body_timeout", &self.http_body_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_admin_connections", &self.max_admin_connections)
            .field("max_candidate_bytes", &self.max_candidate_bytes)
            .field(
                "max_candidate_bytes_per_handle",
                &self.max_candidate_bytes_per_handle,
            )
            .field("cors_allow_origin", &self.cors_allow_origin)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Which of the three listeners speak TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsListeners {
    /// WebSocket listener (`wss://`).
    pub ws: bool,
    /// HTTP listener (`https://`).
    pub http: bool,
    /// Admin listener (`https://…/admin`, `/metrics`, `/test`).
    pub admin: bool,
}

/// `trusted_proxies` by default: a reverse proxy on the same host.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Default state directory (systemd's `StateDirectory=callrelay-gateway`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/callrelay-gateway";

impl Default for Config {
    #[expect(
        clippy::expect_used,
        reason = "the defaults resolve (tests build Config::default() and --check-config resolves them)"
    )]
    fn default() -> Self {
        Self::resolve(FileConfig::default(), FileConfig::default()).expect("defaults are valid")
    }
}

impl Config {
    /// Reads the TOML file (if any) and overlays the flags.
    pub fn load(cli: CliConfig) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_toml(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(cli.values, file)
    }

    /// Merges flags over file values over defaults and validates.
    pub fn resolve(cli: FileConfig, file: FileConfig) -> Result<Self, ConfigError> {
        let cluster = cluster::resolve_cluster(&cli, &file)?;
        let listen = pick(
            cli.listen,
            file.listen,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8188)),
        );
        let http_listen = pick(
            cli.http_listen,
            file.http_listen,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8088)),
        );
        let admin_listen = pick(
            cli.admin_listen,
            file.admin_listen,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 7088)),
        );
        let admin_secret = cli
            .admin_secret
            .or(file.admin_secret)
            .filter(|s| !s.is_empty());
        let api_secret = cli.api_secret.or(file.api_secret).filter(|s| !s.is_empty());
        let token_auth = pick(cli.token_auth, file.token_auth, false);
        let tls = match (cli.cert.or(file.cert), cli.key.or(file.key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::key(
                    "key",
                    "cert is set but key is not; give both --cert and --key (PEM files)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "cert",
                    "key is set but cert is not; give both --cert and --key (PEM files)",
                ));
            }
        };
        let tls_on = {
            let mut on = TlsListeners::default();
            for (key, v, slot) in [
                ("ws_tls", cli.ws_tls.or(file.ws_tls), &mut on.ws),
                ("http_tls", cli.http_tls.or(file.http_tls), &mut on.http),
                ("admin_tls", cli.admin_tls.or(file.admin_tls), &mut on.admin),
            ] {
                *slot = v.unwrap_or(tls.is_some());
                if *slot && tls.is_none() {
                    return Err(ConfigError::key(
                        key,
                        format!(
                            "{key} = true needs a certificate; set cert and key (PEM files) or {key} = false"
                        ),
                    ));
                }
            }
            on
        };
        let test_page_ws_url = cli
            .test_page_ws_url
            .or(file.test_page_ws_url)
            .filter(|s| !s.is_empty());
        if let Some(u) = &test_page_ws_url
            && !(u.starts_with("ws://") || u.starts_with("wss://"))
        {
            return Err(ConfigError::key(
                "test_page_ws_url",
                format!("{u:?} must start with ws:// or wss:// (the URL browsers open)"),
            ));
        }
        let stun_uri = cli.stun_uri.or(file.stun_uri).filter(|s| !s.is_empty());
        if let Some(s) = &stun_uri
            && !(s.starts_with("stun:") || s.starts_with("stuns:"))
        {
            return Err(ConfigError::key(
                "stun_uri",
                format!("{s:?} must start with stun: or stuns:"),
            ));
        }
        let turn_uris = cli.turn_uris.or(file.turn_uris).unwrap_or_default();
        for u in &turn_uris {
            if !(u.starts_with("turn:") || u.starts_with("turns:")) {
                return Err(ConfigError::key(
                    "turn_uris",
                    format!("{u:?} must start with turn: or turns:"),
                ));
            }
        }
        let turn_secret = cli
            .turn_secret
            .or(file.turn_secret)
            .filter(|s| !s.is_empty());
        if !turn_uris.is_empty() && turn_secret.is_none() {
            return Err(ConfigError::key(
                "turn_secret",
                "turn URIs are configured but no TURN shared secret; set --turn-secret (the turn-server's --auth-secret)",
            ));
        }
        let turn_ttl = in_range(
            "turn_ttl",
            pick(cli.turn_ttl, file.turn_ttl, 86400),
            60..=7 * 86400,
            " seconds",
        )?;
        let early_offer = pick(cli.early_offer, file.early_offer, false);
        let early_offer_timeout_ms = in_range(
            "early_offer_timeout_ms",
            pick(cli.early_offer_timeout_ms, file.early_offer_timeout_ms, 50),
            1..=1000,
            " ms (the turn-server answers in about 1 ms on its own host)",
        )?;
        let mut turn_control = Vec::new();
        for u in cli
            .turn_control_urls
            .or(file.turn_control_urls)
            .unwrap_or_default()
        {
            let addr = u
                .strip_prefix("http://")
                .map(|a| a.trim_end_matches('/'))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| {
                    ConfigError::key(
                        "turn_control_urls",
                        format!("{u:?} must be http://IP:PORT (a turn-server's metrics_listen)"),
                    )
                })?;
            turn_control.push(addr);
        }
        if turn_control.len() > 8 {
            return Err(ConfigError::key(
                "turn_control_urls",
                "at most 8 turn-servers (each early-offer call asks every one)",
            ));
        }
        let turn_control_secret = cli
            .turn_control_secret
            .or(file.turn_control_secret)
            .filter(|s| !s.is_empty());
        if early_offer && (turn_control.is_empty() || turn_control_secret.is_none()) {
            return Err(ConfigError::key(
                "early_offer",
                "early_offer = true needs turn_control_urls and turn_control_secret (the turn-server's metrics_listen and control_secret)",
            ));
        }
        let state_dir = pick(
            cli.state_dir,
            file.state_dir,
            PathBuf::from(DEFAULT_STATE_DIR),
        );
        let session_timeout = in_range(
            "session_timeout",
            pick(cli.session_timeout, file.session_timeout, 60),
            0..=365 * 86400,
            " seconds (0 = never)",
        )?;
        let reclaim = in_range(
            "reclaim_session_timeout",
            pick(cli.reclaim_session_timeout, file.reclaim_session_timeout, 0),
            0..=86400,
            " seconds",
        )?;
        let candidate_wait_ms = in_range(
            "candidate_wait_ms",
            pick(cli.candidate_wait_ms, file.candidate_wait_ms, 1000),
            0..=10_000,
            " ms (a longer wait stalls call set-up)",
        )?;
        let candidate_grace_ms = in_range(
            "candidate_grace_ms",
            pick(cli.candidate_grace_ms, file.candidate_grace_ms, 100),
            0..=10_000,
            " ms (capped by candidate_wait_ms anyway)",
        )?;
        let token_max_idle = in_range(
            "token_max_idle",
            pick(cli.token_max_idle, file.token_max_idle, 7 * 86400),
            0..=10 * 365 * 86400,
            " seconds (0 = never)",
        )?;
        let max_sessions = in_range(
            "max_sessions",
            pick(cli.max_sessions, file.max_sessions, 100_000),
            1..=10_000_000,
            "",
        )?;
        let max_sessions_per_token = in_range(
            "max_sessions_per_token",
            pick(cli.max_sessions_per_token, file.max_sessions_per_token, 64),
            0..=10_000_000,
            " (0 = no limit)",
        )?;
        let max_sessions_per_connection = in_range(
            "max_sessions_per_connection",
            pick(
                cli.max_sessions_per_connection,
                file.max_sessions_per_connection,
                16,
            ),
            0..=10_000_000,
            " (0 = no limit)",
        )?;
        let longpoll = in_range(
            "longpoll_timeout",
            pick(cli.longpoll_timeout, file.longpoll_timeout, 30),
            1..=300,
            " seconds",
        )?;
        let max_message_bytes = in_range(
            "max_message_bytes",
            pick(cli.max_message_bytes, file.max_message_bytes, 256 * 1024),
            4096..=16 * 1024 * 1024,
            "",
        )?;
        let ws_queue = in_range(
            "ws_queue",
            pick(cli.ws_queue, file.ws_queue, 1024),
            16..=65536,
            "",
        )?;
        let ws_queue_bytes = in_range(
            "ws_queue_bytes",
            pick(cli.ws_queue_bytes, file.ws_queue_bytes, 1024 * 1024),
            64 * 1024..=64 * 1024 * 1024,
            " bytes",
        )?;
        let http_queue_bytes = in_range(
            "http_queue_bytes",
            pick(cli.http_queue_bytes, file.http_queue_bytes, 1024 * 1024),
            64 * 1024..=64 * 1024 * 1024,
            " bytes",
        )?;
        let max_username_bytes = in_range(
            "max_username_bytes",
            pick(cli.max_username_bytes, file.max_username_bytes, 128),
            16..=256,
            " bytes",
        )?;
        let ws_idle_timeout = in_range(
            "ws_idle_timeout",
            pick(cli.ws_idle_timeout, file.ws_idle_timeout, 30),
            2..=3600,
            " seconds",
        )?;
        let http_body_timeout = in_range(
            "http_body_timeout",
            pick(cli.http_body_timeout, file.http_body_timeout, 10),
            1..=300,
            " seconds",
        )?;
        let max_connections = in_range(
            "max_connections",
            pick(cli.max_connections, file.max_connections, 10_000),
            16..=1_000_000,
            "",
        )?;
        let max_connections_per_ip = in_range(
            "max_connections_per_ip",
            pick(
                cli.max_connections_per_ip,
                file.max_connections_per_ip,
                1000,
            ),
            1..=1_000_000,
            "",
        )?;
        let trusted_proxies = match cli.trusted_proxies.or(file.trusted_proxies) {
            Some(list) => cidrs("trusted_proxies", &list)?,
            None => cidrs("trusted_proxies", &DEFAULT_TRUSTED_PROXIES)?,
        };
        let max_admin_connections = in_range(
            "max_admin_connections",
            pick(cli.max_admin_connections, file.max_admin_connections, 64),
            4..=10_000,
            "",
        )?;
        let max_candidate_bytes = in_range(
            "max_candidate_bytes",
            pick(cli.max_candidate_bytes, file.max_candidate_bytes, 1024),
            512..=65536,
            " bytes",
        )?;
        let max_candidate_bytes_per_handle = in_range(
            "max_candidate_bytes_per_handle",
            pick(
                cli.max_candidate_bytes_per_handle,
                file.max_candidate_bytes_per_handle,
                32 * 1024,
            ),
            4096..=1024 * 1024,
            " bytes",
        )?;
        let cors_allow_origin = pick(
            cli.cors_allow_origin,
            file.cors_allow_origin,
            "*".to_owned(),
        );
        if !admin_listen.ip().is_loopback() && admin_secret.is_none() {
            return Err(ConfigError::key(
                "admin_secret",
                format!(
                    "the Admin API listens on {admin_listen} (not loopback) without a secret; set --admin-secret"
                ),
            ));
        }
        Ok(Self {
            listen,
            http_listen,
            admin_listen,
            admin_secret,
            token_auth,
            api_secret,
            tls,
            tls_on,
            test_page_ws_url,
            stun_uri,
            turn_uris,
            turn_secret,
            turn_ttl: Duration::from_secs(turn_ttl),
            early_offer,
            early_offer_timeout: Duration::from_millis(early_offer_timeout_ms),
            turn_control,
            turn_control_secret,
            state_dir,
            session_timeout: Duration::from_secs(session_timeout),
            reclaim_timeout: Duration::from_secs(reclaim),
            candidate_wait: Duration::from_millis(candidate_wait_ms),
            candidate_grace: Duration::from_millis(candidate_grace_ms),
            token_max_idle: Duration::from_secs(token_max_idle),
            max_sessions,
            max_sessions_per_token,
            max_sessions_per_connection,
            longpoll_timeout: Duration::from_secs(longpoll),
            max_message_bytes,
            ws_queue,
            ws_queue_bytes,
            http_queue_bytes,
            max_username_bytes,
            ws_idle_timeout: Duration::from_secs(ws_idle_timeout),
            http_body_timeout: Duration::from_secs(http_body_timeout),
            max_connections,
            max_connections_per_ip,
            trusted_proxies,
            max_admin_connections,
            max_candidate_bytes,
            max_candidate_bytes_per_handle,
            cors_allow_origin,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests;
