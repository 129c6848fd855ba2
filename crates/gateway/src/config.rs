//! Gateway configuration: TOML file + command-line flags (flags win), validated at start.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A configuration error: names the key and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, …).
    #[error("config: {0}")]
    Parse(String),
    /// A key has an unusable value.
    #[error("{key}: {message}")]
    Invalid {
        /// The key (as in the TOML file; the flag is `--key-with-dashes`).
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `value` when it lies in `range`, else the error naming `key` and the allowed range
/// (`unit` follows the range in the message, e.g. " seconds").
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!(
                "{value} is out of range; use {}..={}{unit}",
                range.start(),
                range.end()
            ),
        ))
    }
}

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
    /// Directory for tokens.json.
    pub state_dir: Option<PathBuf>,
    /// Session idle timeout, seconds (0 = never).
    pub session_timeout: Option<u64>,
    /// Seconds a session of a closed WebSocket waits for `claim` (0 = destroy at once).
    pub reclaim_session_timeout: Option<u64>,
    /// Milliseconds an offer/answer waits for trickled candidates.
    pub candidate_wait_ms: Option<u64>,
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
    /// State directory.
    pub state_dir: PathBuf,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Reclaim timeout.
    pub reclaim_timeout: Duration,
    /// Candidate wait.
    pub candidate_wait: Duration,
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
            .field("state_dir", &self.state_dir)
            .field("session_timeout", &self.session_timeout)
            .field("reclaim_timeout", &self.reclaim_timeout)
            .field("candidate_wait", &self.candidate_wait)
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

/// An address block (`10.0.0.0/8`, `::1/128`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address; the host bits must be zero.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block (e.g. 10.0.0.0/8, ::1)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        let c = Self { addr, prefix };
        if c.network() != addr {
            return Err(format!(
                "{s:?} has host bits set; write {}/{prefix}",
                c.network()
            ));
        }
        Ok(c)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        Self {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
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

macro_rules! pick {
    ($cli:expr, $file:expr, $field:ident) => {
        $cli.$field.clone().or_else(|| $file.$field.clone())
    };
}

impl Config {
    /// Reads the TOML file (if any) and overlays the flags.
    pub fn load(cli: CliConfig) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::parse_toml(&text)?
            }
            None => FileConfig::default(),
        };
        Self::resolve(cli.values, file)
    }

    /// Parses the TOML text.
    pub fn parse_toml(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim().to_string()))
    }

    /// Merges flags over file values over defaults and validates.
    pub fn resolve(cli: FileConfig, file: FileConfig) -> Result<Self, ConfigError> {
        let listen =
            pick!(cli, file, listen).unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8188)));
        let http_listen = pick!(cli, file, http_listen)
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8088)));
        let admin_listen =
            pick!(cli, file, admin_listen).unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 7088)));
        let admin_secret = pick!(cli, file, admin_secret).filter(|s| !s.is_empty());
        let api_secret = pick!(cli, file, api_secret).filter(|s| !s.is_empty());
        let token_auth = cli.token_auth.or(file.token_auth).unwrap_or(false);
        let tls = match (pick!(cli, file, cert), pick!(cli, file, key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "key",
                    "cert is set but key is not; give both --cert and --key (PEM files)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "cert",
                    "key is set but cert is not; give both --cert and --key (PEM files)",
                ));
            }
        };
        let tls_on = {
            let mut on = TlsListeners::default();
            for (key, v, slot) in [
                ("ws_tls", pick!(cli, file, ws_tls), &mut on.ws),
                ("http_tls", pick!(cli, file, http_tls), &mut on.http),
                ("admin_tls", pick!(cli, file, admin_tls), &mut on.admin),
            ] {
                *slot = v.unwrap_or(tls.is_some());
                if *slot && tls.is_none() {
                    return Err(invalid(
                        key,
                        format!(
                            "{key} = true needs a certificate; set cert and key (PEM files) or {key} = false"
                        ),
                    ));
                }
            }
            on
        };
        let test_page_ws_url = pick!(cli, file, test_page_ws_url).filter(|s| !s.is_empty());
        if let Some(u) = &test_page_ws_url
            && !(u.starts_with("ws://") || u.starts_with("wss://"))
        {
            return Err(invalid(
                "test_page_ws_url",
                format!("{u:?} must start with ws:// or wss:// (the URL browsers open)"),
            ));
        }
        let stun_uri = pick!(cli, file, stun_uri).filter(|s| !s.is_empty());
        if let Some(s) = &stun_uri
            && !(s.starts_with("stun:") || s.starts_with("stuns:"))
        {
            return Err(invalid(
                "stun_uri",
                format!("{s:?} must start with stun: or stuns:"),
            ));
        }
        let turn_uris = pick!(cli, file, turn_uris).unwrap_or_default();
        for u in &turn_uris {
            if !(u.starts_with("turn:") || u.starts_with("turns:")) {
                return Err(invalid(
                    "turn_uris",
                    format!("{u:?} must start with turn: or turns:"),
                ));
            }
        }
        let turn_secret = pick!(cli, file, turn_secret).filter(|s| !s.is_empty());
        if !turn_uris.is_empty() && turn_secret.is_none() {
            return Err(invalid(
                "turn_secret",
                "turn URIs are configured but no TURN shared secret; set --turn-secret (the turn-server's --auth-secret)",
            ));
        }
        let turn_ttl = in_range(
            "turn_ttl",
            pick!(cli, file, turn_ttl).unwrap_or(86400),
            60..=7 * 86400,
            " seconds",
        )?;
        let state_dir =
            pick!(cli, file, state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let session_timeout = in_range(
            "session_timeout",
            pick!(cli, file, session_timeout).unwrap_or(60),
            0..=365 * 86400,
            " seconds (0 = never)",
        )?;
        let reclaim = in_range(
            "reclaim_session_timeout",
            pick!(cli, file, reclaim_session_timeout).unwrap_or(0),
            0..=86400,
            " seconds",
        )?;
        let candidate_wait_ms = pick!(cli, file, candidate_wait_ms).unwrap_or(1000);
        if candidate_wait_ms > 10_000 {
            return Err(invalid(
                "candidate_wait_ms",
                format!("{candidate_wait_ms} ms would stall call set-up; use 0..=10000"),
            ));
        }
        let token_max_idle = in_range(
            "token_max_idle",
            pick!(cli, file, token_max_idle).unwrap_or(7 * 86400),
            0..=10 * 365 * 86400,
            " seconds (0 = never)",
        )?;
        let max_sessions = in_range(
            "max_sessions",
            pick!(cli, file, max_sessions).unwrap_or(100_000),
            1..=10_000_000,
            "",
        )?;
        let max_sessions_per_token = in_range(
            "max_sessions_per_token",
            pick!(cli, file, max_sessions_per_token).unwrap_or(64),
            0..=10_000_000,
            " (0 = no limit)",
        )?;
        let max_sessions_per_connection = in_range(
            "max_sessions_per_connection",
            pick!(cli, file, max_sessions_per_connection).unwrap_or(16),
            0..=10_000_000,
            " (0 = no limit)",
        )?;
        let longpoll = in_range(
            "longpoll_timeout",
            pick!(cli, file, longpoll_timeout).unwrap_or(30),
            1..=300,
            " seconds",
        )?;
        let max_message_bytes = in_range(
            "max_message_bytes",
            pick!(cli, file, max_message_bytes).unwrap_or(256 * 1024),
            4096..=16 * 1024 * 1024,
            "",
        )?;
        let ws_queue = in_range(
            "ws_queue",
            pick!(cli, file, ws_queue).unwrap_or(1024),
            16..=65536,
            "",
        )?;
        let ws_queue_bytes = in_range(
            "ws_queue_bytes",
            pick!(cli, file, ws_queue_bytes).unwrap_or(1024 * 1024),
            64 * 1024..=64 * 1024 * 1024,
            " bytes",
        )?;
        let http_queue_bytes = in_range(
            "http_queue_bytes",
            pick!(cli, file, http_queue_bytes).unwrap_or(1024 * 1024),
            64 * 1024..=64 * 1024 * 1024,
            " bytes",
        )?;
        let max_username_bytes = in_range(
            "max_username_bytes",
            pick!(cli, file, max_username_bytes).unwrap_or(128),
            16..=256,
            " bytes",
        )?;
        let ws_idle_timeout = in_range(
            "ws_idle_timeout",
            pick!(cli, file, ws_idle_timeout).unwrap_or(30),
            2..=3600,
            " seconds",
        )?;
        let http_body_timeout = in_range(
            "http_body_timeout",
            pick!(cli, file, http_body_timeout).unwrap_or(10),
            1..=300,
            " seconds",
        )?;
        let max_connections = in_range(
            "max_connections",
            pick!(cli, file, max_connections).unwrap_or(10_000),
            16..=1_000_000,
            "",
        )?;
        let max_connections_per_ip = in_range(
            "max_connections_per_ip",
            pick!(cli, file, max_connections_per_ip).unwrap_or(1000),
            1..=1_000_000,
            "",
        )?;
        let trusted_proxies = match pick!(cli, file, trusted_proxies) {
            Some(list) => list
                .iter()
                .map(|s| Cidr::parse(s).map_err(|m| invalid("trusted_proxies", m)))
                .collect::<Result<Vec<_>, _>>()?,
            None => DEFAULT_TRUSTED_PROXIES
                .iter()
                .map(|s| Cidr::parse(s).map_err(|m| invalid("trusted_proxies", m)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let max_admin_connections = in_range(
            "max_admin_connections",
            pick!(cli, file, max_admin_connections).unwrap_or(64),
            4..=10_000,
            "",
        )?;
        let max_candidate_bytes = in_range(
            "max_candidate_bytes",
            pick!(cli, file, max_candidate_bytes).unwrap_or(1024),
            512..=65536,
            " bytes",
        )?;
        let max_candidate_bytes_per_handle = in_range(
            "max_candidate_bytes_per_handle",
            pick!(cli, file, max_candidate_bytes_per_handle).unwrap_or(32 * 1024),
            4096..=1024 * 1024,
            " bytes",
        )?;
        let cors_allow_origin =
            pick!(cli, file, cors_allow_origin).unwrap_or_else(|| "*".to_string());
        if !admin_listen.ip().is_loopback() && admin_secret.is_none() {
            return Err(invalid(
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
            state_dir,
            session_timeout: Duration::from_secs(session_timeout),
            reclaim_timeout: Duration::from_secs(reclaim),
            candidate_wait: Duration::from_millis(candidate_wait_ms),
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_are_rejected_not_overflowed() {
        for (f, key) in [
            (
                FileConfig {
                    session_timeout: Some(u64::MAX),
                    ..FileConfig::default()
                },
                "session_timeout:",
            ),
            (
                FileConfig {
                    reclaim_session_timeout: Some(u64::MAX),
                    ..FileConfig::default()
                },
                "reclaim_session_timeout:",
            ),
            (
                FileConfig {
                    token_max_idle: Some(u64::MAX),
                    ..FileConfig::default()
                },
                "token_max_idle:",
            ),
            (
                FileConfig {
                    max_sessions: Some(0),
                    ..FileConfig::default()
                },
                "max_sessions:",
            ),
        ] {
            let e = Config::resolve(f, FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn out_of_range_messages_name_the_key_and_the_range() {
        let d = FileConfig::default;
        let cases = [
            (
                FileConfig {
                    turn_ttl: Some(59),
                    ..d()
                },
                "turn_ttl: 59 is out of range; use 60..=604800 seconds",
            ),
            (
                FileConfig {
                    session_timeout: Some(31_536_001),
                    ..d()
                },
                "session_timeout: 31536001 is out of range; use 0..=31536000 seconds (0 = never)",
            ),
            (
                FileConfig {
                    reclaim_session_timeout: Some(86_401),
                    ..d()
                },
                "reclaim_session_timeout: 86401 is out of range; use 0..=86400 seconds",
            ),
            (
                FileConfig {
                    token_max_idle: Some(315_360_001),
                    ..d()
                },
                "token_max_idle: 315360001 is out of range; use 0..=315360000 seconds (0 = never)",
            ),
            (
                FileConfig {
                    max_sessions: Some(10_000_001),
                    ..d()
                },
                "max_sessions: 10000001 is out of range; use 1..=10000000",
            ),
            (
                FileConfig {
                    longpoll_timeout: Some(0),
                    ..d()
                },
                "longpoll_timeout: 0 is out of range; use 1..=300 seconds",
            ),
            (
                FileConfig {
                    max_message_bytes: Some(4095),
                    ..d()
                },
                "max_message_bytes: 4095 is out of range; use 4096..=16777216",
            ),
            (
                FileConfig {
                    ws_queue: Some(65_537),
                    ..d()
                },
                "ws_queue: 65537 is out of range; use 16..=65536",
            ),
        ];
        for (f, want) in cases {
            let e = Config::resolve(f, d()).unwrap_err().to_string();
            assert_eq!(e, want);
        }
        // the bounds themselves are accepted
        let edges = FileConfig {
            turn_ttl: Some(60),
            session_timeout: Some(0),
            reclaim_session_timeout: Some(86_400),
            token_max_idle: Some(315_360_000),
            max_sessions: Some(10_000_000),
            longpoll_timeout: Some(300),
            max_message_bytes: Some(16_777_216),
            ws_queue: Some(16),
            ..d()
        };
        Config::resolve(edges, d()).unwrap();
    }

    #[test]
    fn hardening_keys_have_defaults_and_ranges_that_name_the_key() {
        let c = Config::default();
        assert_eq!(c.max_username_bytes, 128);
        assert_eq!(c.ws_queue_bytes, 1024 * 1024);
        assert_eq!(c.http_queue_bytes, 1024 * 1024);
        assert_eq!(c.max_sessions_per_token, 64);
        assert_eq!(c.max_sessions_per_connection, 16);
        assert_eq!(c.max_candidate_bytes, 1024);
        assert_eq!(c.max_candidate_bytes_per_handle, 32 * 1024);
        assert_eq!(c.ws_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.http_body_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 1000);
        assert_eq!(c.max_admin_connections, 64);
        let d = FileConfig::default;
        let cases = [
            (
                FileConfig {
                    max_username_bytes: Some(257),
                    ..d()
                },
                "max_username_bytes: 257 is out of range; use 16..=256 bytes",
            ),
            (
                FileConfig {
                    ws_queue_bytes: Some(1000),
                    ..d()
                },
                "ws_queue_bytes: 1000 is out of range; use 65536..=67108864 bytes",
            ),
            (
                FileConfig {
                    http_queue_bytes: Some(0),
                    ..d()
                },
                "http_queue_bytes: 0 is out of range; use 65536..=67108864 bytes",
            ),
            (
                FileConfig {
                    max_candidate_bytes: Some(100),
                    ..d()
                },
                "max_candidate_bytes: 100 is out of range; use 512..=65536 bytes",
            ),
            (
                FileConfig {
                    ws_idle_timeout: Some(1),
                    ..d()
                },
                "ws_idle_timeout: 1 is out of range; use 2..=3600 seconds",
            ),
            (
                FileConfig {
                    http_body_timeout: Some(0),
                    ..d()
                },
                "http_body_timeout: 0 is out of range; use 1..=300 seconds",
            ),
            (
                FileConfig {
                    max_connections_per_ip: Some(0),
                    ..d()
                },
                "max_connections_per_ip: 0 is out of range; use 1..=1000000",
            ),
            (
                FileConfig {
                    max_admin_connections: Some(3),
                    ..d()
                },
                "max_admin_connections: 3 is out of range; use 4..=10000",
            ),
        ];
        for (f, want) in cases {
            let e = Config::resolve(f, d()).unwrap_err().to_string();
            assert_eq!(e, want);
        }
        // 0 = no limit for the session caps
        let c = Config::resolve(
            FileConfig {
                max_sessions_per_token: Some(0),
                max_sessions_per_connection: Some(0),
                ..d()
            },
            d(),
        )
        .unwrap();
        assert_eq!(
            (c.max_sessions_per_token, c.max_sessions_per_connection),
            (0, 0)
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cli = FileConfig {
            admin_secret: Some("adm1nS3cret".into()),
            turn_secret: Some("turnS3cret".into()),
            turn_uris: Some(vec!["turn:x:3478".into()]),
            api_secret: Some("ap1S3cret".into()),
            ..FileConfig::default()
        };
        let dbg = format!(
            "{cli:?} {:?}",
            Config::resolve(cli.clone(), FileConfig::default()).unwrap()
        );
        for secret in ["adm1nS3cret", "turnS3cret", "ap1S3cret"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }

    #[test]
    fn defaults_match_janus_ports() {
        let c = Config::default();
        assert_eq!(c.listen.port(), 8188);
        assert_eq!(c.http_listen.port(), 8088);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7088");
        assert_eq!(c.session_timeout, Duration::from_secs(60));
        assert_eq!(c.turn_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn tls_per_listener() {
        let file =
            Config::parse_toml("cert = \"c.pem\"\nkey = \"k.pem\"\nadmin_tls = false\n").unwrap();
        let c = Config::resolve(FileConfig::default(), file).unwrap();
        assert_eq!(
            c.tls_on,
            TlsListeners {
                ws: true,
                http: true,
                admin: false
            }
        );
        let c = Config::default();
        assert_eq!(c.tls_on, TlsListeners::default());
        let e = Config::resolve(
            FileConfig {
                ws_tls: Some(true),
                ..FileConfig::default()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("ws_tls:"), "{e}");
        let e = Config::resolve(
            FileConfig {
                test_page_ws_url: Some("http://x".into()),
                ..FileConfig::default()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("test_page_ws_url:"), "{e}");
    }

    #[test]
    fn trusted_proxies_default_to_loopback_and_parse_cidr() {
        let c = Config::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = |c: &Config, a: &str| c.trusted_proxies.iter().any(|n| n.contains(ip(a)));
        for a in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(trusted(&c, a), "{a}");
        }
        for a in ["10.0.0.1", "192.0.2.1", "::2", "fe80::1"] {
            assert!(!trusted(&c, a), "{a}");
        }
        let file = Config::parse_toml(
            "trusted_proxies = [\"10.1.0.0/16\", \"2001:db8::/32\", \"192.0.2.7\"]\n",
        )
        .unwrap();
        let c = Config::resolve(FileConfig::default(), file).unwrap();
        for a in [
            "10.1.255.3",
            "2001:db8:1::9",
            "192.0.2.7",
            "::ffff:10.1.0.1",
        ] {
            assert!(trusted(&c, a), "{a}");
        }
        for a in ["10.2.0.1", "127.0.0.1", "192.0.2.8", "2001:db9::1"] {
            assert!(!trusted(&c, a), "{a}");
        }
        let none = Config::parse_toml("trusted_proxies = []\n").unwrap();
        let c = Config::resolve(FileConfig::default(), none).unwrap();
        assert!(c.trusted_proxies.is_empty());
        for (bad, want) in [
            ("10.0.0.1/8", "host bits set; write 10.0.0.0/8"),
            ("10.0.0.0/33", "0..=32"),
            ("proxy.example", "not an address"),
        ] {
            let f = FileConfig {
                trusted_proxies: Some(vec![bad.into()]),
                ..FileConfig::default()
            };
            let e = Config::resolve(f, FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("trusted_proxies:") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let e = Config::parse_toml("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
    }

    #[test]
    fn flags_override_file_and_validation_names_keys() {
        let file = Config::parse_toml("session_timeout = 5\ntoken_auth = true\n").unwrap();
        let cli = FileConfig {
            session_timeout: Some(7),
            ..FileConfig::default()
        };
        let c = Config::resolve(cli, file).unwrap();
        assert_eq!(c.session_timeout, Duration::from_secs(7));
        assert!(c.token_auth);
        let bad = FileConfig {
            turn_uris: Some(vec!["turn:x:3478".into()]),
            ..FileConfig::default()
        };
        let e = Config::resolve(bad, FileConfig::default()).unwrap_err();
        assert!(e.to_string().starts_with("turn_secret:"), "{e}");
        let bad = FileConfig {
            cert: Some("c.pem".into()),
            ..FileConfig::default()
        };
        assert!(
            Config::resolve(bad, FileConfig::default())
                .unwrap_err()
                .to_string()
                .starts_with("key:")
        );
        let bad = FileConfig {
            admin_listen: Some("0.0.0.0:7088".parse().unwrap()),
            ..FileConfig::default()
        };
        assert!(
            Config::resolve(bad, FileConfig::default())
                .unwrap_err()
                .to_string()
                .starts_with("admin_secret:")
        );
    }
}
