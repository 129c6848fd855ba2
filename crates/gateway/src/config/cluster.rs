//! The cluster keys (`nats_url`, `node_id`, `cluster`, NATS credentials and TLS):
//! [`ClusterConfig`], validated by [`resolve_cluster`] (docs/scale-out.md).

use super::{ConfigError, FileConfig};
use std::path::PathBuf;

/// How a gateway node reaches NATS and names itself (`nats_url` & co.). `Debug` redacts
/// the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs, in the order given.
    pub urls: Vec<String>,
    /// This node's name (letters, digits, `-`, `_`).
    pub node_id: String,
    /// Prefix of subjects and buckets (letters, digits, `-`, `_`).
    pub name: String,
    /// How the node authenticates to NATS.
    pub auth: NatsAuth,
    /// CA certificate (PEM) for the NATS server's certificate.
    pub ca_file: Option<PathBuf>,
    /// TLS to NATS is required (a `tls://` URL or `nats_ca_file`).
    pub tls: bool,
}

impl ClusterConfig {
    /// The JetStream key-value bucket holding the shared tokens.
    pub fn token_bucket(&self) -> String {
        format!("{}_tokens", self.name)
    }

    /// The key-value bucket of videocall presence: `<cluster>_users`.
    pub fn user_bucket(&self) -> String {
        format!("{}_users", self.name)
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("urls", &self.urls)
            .field("node_id", &self.node_id)
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("ca_file", &self.ca_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// NATS credentials: at most one kind.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// None (a server without authorization).
    None,
    /// `nats_user` + `nats_password`.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `nats_token`.
    Token(String),
    /// `nats_nkey_seed_file`: the seed is read at connect time, never kept in the config.
    NkeySeedFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::NkeySeedFile(p) => f.debug_tuple("NkeySeedFile").field(p).finish(),
        }
    }
}

/// Letters, digits, `-` and `_`, 1–64 bytes: safe in a NATS subject token and a bucket
/// name.
pub(super) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host name with everything but letters, digits, `-` and `_` turned into `-`
/// (`gw1.example.com` → `gw1-example-com`), at most 64 bytes; `gateway` when unknown.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "gateway".to_string()
    } else {
        id
    }
}

/// The cluster keys, validated: None without `nats_url` (then no other NATS key may be
/// set, so a typo does not silently leave a node alone).
pub(super) fn resolve_cluster(
    cli: &FileConfig,
    file: &FileConfig,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let urls: Vec<String> = cli
        .nats_url
        .clone()
        .or_else(|| file.nats_url.clone())
        .unwrap_or_default()
        .iter()
        .flat_map(|u| u.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    let node_id = cli
        .node_id
        .clone()
        .or_else(|| file.node_id.clone())
        .filter(|s| !s.is_empty());
    let name = cli
        .cluster
        .clone()
        .or_else(|| file.cluster.clone())
        .filter(|s| !s.is_empty());
    let user = cli
        .nats_user
        .clone()
        .or_else(|| file.nats_user.clone())
        .filter(|s| !s.is_empty());
    let password = cli
        .nats_password
        .clone()
        .or_else(|| file.nats_password.clone())
        .filter(|s| !s.is_empty());
    let token = cli
        .nats_token
        .clone()
        .or_else(|| file.nats_token.clone())
        .filter(|s| !s.is_empty());
    let seed = cli
        .nats_nkey_seed_file
        .clone()
        .or_else(|| file.nats_nkey_seed_file.clone());
    let ca_file = cli
        .nats_ca_file
        .clone()
        .or_else(|| file.nats_ca_file.clone());
    if urls.is_empty() {
        let set = [
            ("node_id", node_id.is_some()),
            ("cluster", name.is_some()),
            ("nats_user", user.is_some()),
            ("nats_password", password.is_some()),
            ("nats_token", token.is_some()),
            ("nats_nkey_seed_file", seed.is_some()),
            ("nats_ca_file", ca_file.is_some()),
        ];
        if let Some((key, _)) = set.into_iter().find(|(_, on)| *on) {
            return Err(ConfigError::key(
                key,
                "is a cluster setting but nats_url is not set; set --nats-url (docs/scale-out.md) or remove it",
            ));
        }
        return Ok(None);
    }
    let mut tls = ca_file.is_some();
    for u in &urls {
        let scheme = u.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("nats") | None => {}
            Some("tls") => tls = true,
            Some(other) => {
                return Err(ConfigError::key(
                    "nats_url",
                    format!(
                        "{u:?}: scheme {other}:// is not supported; use nats://HOST:PORT or tls://HOST:PORT"
                    ),
                ));
            }
        }
        if let Err(e) = u.parse::<async_nats::ServerAddr>() {
            return Err(ConfigError::key(
                "nats_url",
                format!(
                    "{u:?} is not a NATS server URL ({e}); use nats://HOST:PORT or tls://HOST:PORT"
                ),
            ));
        }
    }
    let node_id = node_id.unwrap_or_else(default_node_id);
    if !is_name(&node_id) {
        return Err(ConfigError::key(
            "node_id",
            format!(
                "{node_id:?} must be 1-64 letters, digits, '-' or '_' (it names this node in NATS subjects)"
            ),
        ));
    }
    let name = name.unwrap_or_else(|| "callrelay".to_string());
    if !is_name(&name) {
        return Err(ConfigError::key(
            "cluster",
            format!(
                "{name:?} must be 1-64 letters, digits, '-' or '_' (it prefixes NATS subjects and bucket names)"
            ),
        ));
    }
    let auth = match (user, password, token, seed) {
        (None, None, None, None) => NatsAuth::None,
        (Some(user), Some(password), None, None) => NatsAuth::UserPassword { user, password },
        (Some(_), None, None, None) => {
            return Err(ConfigError::key(
                "nats_password",
                "nats_user is set without a password; set --nats-password (or CALLRELAY_GATEWAY_NATS_PASSWORD)",
            ));
        }
        (None, Some(_), None, None) => {
            return Err(ConfigError::key(
                "nats_user",
                "nats_password is set without a user; set --nats-user",
            ));
        }
        (None, None, Some(t), None) => NatsAuth::Token(t),
        (None, None, None, Some(p)) => NatsAuth::NkeySeedFile(p),
        _ => {
            return Err(ConfigError::key(
                "nats_token",
                "choose one kind of NATS credentials: nats_user + nats_password, nats_token, or nats_nkey_seed_file",
            ));
        }
    };
    Ok(Some(ClusterConfig {
        urls,
        node_id,
        name,
        auth,
        ca_file,
        tls,
    }))
}
