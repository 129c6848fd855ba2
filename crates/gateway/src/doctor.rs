//! `gateway doctor`: checks a Mattermost WebRTC deployment end to end, from where it runs,
//! with the eight Mattermost settings (flags or Mattermost's `config.json`).
//!
//! Every check is an independent client: HTTP/1.1 + rustls for the Admin URL,
//! tokio-tungstenite for the WebSocket, the webrtc-rs `stun` codec for STUN and the
//! webrtc-rs `turn` client for TURN — none of it is callrelay's server code, so a bug
//! there cannot hide a bug here. Every network step is bounded by `--timeout`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha1::Sha1;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use webrtc_util::Conn as _;

/// `gateway doctor` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct DoctorArgs {
    /// Mattermost config.json: reads WebrtcSettings (flags given as well override it).
    #[arg(long, value_name = "PATH")]
    pub(crate) mattermost_config: Option<PathBuf>,
    /// Gateway WebSocket URL (ws:// or wss://), Mattermost GatewayWebsocketUrl.
    #[arg(long, value_name = "URL")]
    pub(crate) ws_url: Option<String>,
    /// Gateway Admin URL (http(s)://host:port/admin), Mattermost GatewayAdminUrl.
    #[arg(long, value_name = "URL")]
    pub(crate) admin_url: Option<String>,
    /// Gateway Admin Secret, Mattermost GatewayAdminSecret.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_DOCTOR_ADMIN_SECRET",
        hide_env_values = true
    )]
    pub(crate) admin_secret: Option<String>,
    /// STUN URI (stun:host:port), Mattermost StunURI.
    #[arg(long, value_name = "URI")]
    pub(crate) stun_uri: Option<String>,
    /// TURN URI(s), Mattermost TurnURI: repeatable, and each value is split on spaces.
    #[arg(long = "turn-uri", value_name = "URI")]
    pub(crate) turn_uri: Vec<String>,
    /// TURN Username, Mattermost TurnUsername.
    #[arg(long, value_name = "NAME")]
    pub(crate) turn_username: Option<String>,
    /// TURN Shared Key, Mattermost TurnSharedKey.
    #[arg(
        long,
        value_name = "KEY",
        env = "CALLRELAY_DOCTOR_TURN_SHARED_KEY",
        hide_env_values = true
    )]
    pub(crate) turn_shared_key: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Time limit of each network step, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub(crate) timeout: u64,
    /// Also trust the CA certificates in this PEM file (besides the system's
    /// /etc/ssl/certs/ca-certificates.crt or $SSL_CERT_FILE).
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// UTC offset of the Mattermost server's time zone in seconds, for the TURN username
    /// expiry (23:59:59 tomorrow local time) [default: this host's, from `date +%z`].
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub(crate) utc_offset: Option<i32>,
    /// Check a Mattermost Calls plugin deployment (ICE servers and TURN static auth
    /// secret) instead of the WebRTC (Beta) settings. Implied by --ice-servers and
    /// --turn-static-auth-secret, and chosen when --mattermost-config has the Calls
    /// plugin's settings but no WebrtcSettings.
    #[arg(long)]
    pub(crate) calls: bool,
    /// Calls: ICE Servers Configurations, the JSON array of {"urls": [...],
    /// "username"?, "credential"?} (flags given as well override config.json).
    #[arg(long, value_name = "JSON")]
    pub(crate) ice_servers: Option<String>,
    /// Calls: TURN Static Auth Secret.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_DOCTOR_TURN_STATIC_AUTH_SECRET",
        hide_env_values = true
    )]
    pub(crate) turn_static_auth_secret: Option<String>,
    /// Calls: TURN Credentials Expiration in minutes [default: config.json's, else 1440].
    #[arg(long, value_name = "MINUTES", allow_hyphen_values = true)]
    pub(crate) turn_credentials_expiration: Option<i64>,
    /// Calls: the Mattermost username the TURN credentials are minted for
    /// [default: callrelay-doctor].
    #[arg(long, value_name = "NAME")]
    pub(crate) mattermost_username: Option<String>,
}

/// The Calls plugin's TURN settings (`PluginSettings.Plugins["com.mattermost.calls"]`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct CallsSettings {
    /// ICE Servers Configurations: a JSON array, or a string holding one (as stored).
    pub(crate) ice_servers: Option<Value>,
    /// TURN Static Auth Secret
    pub(crate) secret: Option<String>,
    /// TURN Credentials Expiration (minutes)
    pub(crate) expiration_minutes: Option<i64>,
    /// Server Side TURN (informational)
    pub(crate) server_side_turn: Option<bool>,
}

/// What `gateway doctor` checks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Mattermost 4.0-5.5 WebRTC (Beta): gateway and TURN.
    Webrtc(Settings),
    /// The Calls plugin: STUN and TURN of its ICE servers.
    Calls(CallsSettings),
}

/// The plugin id whose settings hold the Calls TURN configuration.
const CALLS_PLUGIN: &str = "com.mattermost.calls";

/// Reads the Calls plugin's settings from the text of a Mattermost `config.json`:
/// `Ok(None)` when there are none. Plugin setting keys are stored lowercased; they are
/// matched case-insensitively.
pub(crate) fn parse_calls_config(text: &str) -> Result<Option<CallsSettings>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(p) = v
        .get("PluginSettings")
        .and_then(|p| p.get("Plugins"))
        .and_then(|p| p.get(CALLS_PLUGIN))
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let get = |k: &str| {
        p.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    };
    let expiration_minutes = match get("TURNCredentialsExpirationMinutes") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
            format!("{CALLS_PLUGIN}: turncredentialsexpirationminutes {n} is not a whole number")
        })?),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().parse().map_err(|_| {
            format!("{CALLS_PLUGIN}: turncredentialsexpirationminutes {s:?} is not a number")
        })?),
        Some(other) => {
            return Err(format!(
                "{CALLS_PLUGIN}: turncredentialsexpirationminutes {other} is not a number"
            ));
        }
    };
    Ok(Some(CallsSettings {
        ice_servers: get("ICEServersConfigs").cloned(),
        secret: nonempty(get("TURNStaticAuthSecret").and_then(Value::as_str)),
        expiration_minutes,
        server_side_turn: get("ServerSideTURN").and_then(Value::as_bool),
    }))
}

/// One entry of ICE Servers Configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IceEntry {
    urls: Vec<String>,
    username: String,
    credential: String,
}

/// How the Calls plugin treats an entry (rtcd `ICEServerConfig.IsTURN`/`IsSTUN`: every
/// URL of the entry must have the scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Stun,
    /// Without username and credential: the plugin mints credentials for it.
    TurnMinted,
    /// With a fixed username or credential: handed out unchanged.
    TurnStatic,
    /// stun: and turn: URLs mixed: the plugin mints nothing for it.
    Mixed,
}

fn entry_kind(e: &IceEntry) -> EntryKind {
    let all = |p: &[&str]| e.urls.iter().all(|u| p.iter().any(|p| u.starts_with(p)));
    if all(&["turn:", "turns:"]) {
        if e.username.is_empty() && e.credential.is_empty() {
            EntryKind::TurnMinted
        } else {
            EntryKind::TurnStatic
        }
    } else if all(&["stun:", "stuns:"]) {
        EntryKind::Stun
    } else {
        EntryKind::Mixed
    }
}

/// Parses ICE Servers Configurations: a JSON array, or a JSON string that holds one (the
/// System Console stores it as a string).
fn parse_ice_servers(v: &Value) -> Result<Vec<IceEntry>, String> {
    let parsed;
    let v = match v {
        Value::String(s) if s.trim().is_empty() => return Ok(Vec::new()),
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| format!("not JSON: {e}"))?;
            &parsed
        }
        v => v,
    };
    let arr = v
        .as_array()
        .ok_or("not a JSON array: it must look like [{\"urls\": [\"turn:host:3478\"]}]")?;
    let mut out = Vec::new();
    for (i, e) in arr.iter().enumerate() {
        let n = i + 1;
        let o = e
            .as_object()
            .ok_or_else(|| format!("entry {n} is not an object"))?;
        let urls = match o.get("urls") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|u| {
                    u.as_str()
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| format!("entry {n}: every URL must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::String(_)) => {
                return Err(format!(
                    "entry {n}: \"urls\" must be an array [\"...\"], not a string (the plugin rejects a string)"
                ));
            }
            _ => return Err(format!("entry {n} has no \"urls\" array")),
        };
        if urls.is_empty() || urls.iter().any(String::is_empty) {
            return Err(format!("entry {n}: empty URL list or empty URL"));
        }
        if let Some(bad) = urls.iter().find(|u| {
            !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|p| u.starts_with(p))
        }) {
            return Err(format!(
                "entry {n}: {bad:?} is not a stun:, stuns:, turn: or turns: URL"
            ));
        }
        let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        out.push(IceEntry {
            urls,
            username: s("username"),
            credential: s("credential"),
        });
    }
    Ok(out)
}

/// TURN REST credentials exactly as the Calls plugin mints them (rtcd `GenTURNConfigs`):
/// `<now + expiration minutes>:<Mattermost username>`, base64(HMAC-SHA1(secret, username)).
fn calls_turn_credentials(
    mattermost_username: &str,
    secret: &str,
    now_unix: u64,
    minutes: u64,
) -> (String, String) {
    let username = format!(
        "{}:{mattermost_username}",
        now_unix.saturating_add(minutes.saturating_mul(60))
    );
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

/// The eight Mattermost WebRTC settings (Enable aside).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// GatewayWebsocketUrl
    pub(crate) ws_url: Option<String>,
    /// GatewayAdminUrl
    pub(crate) admin_url: Option<String>,
    /// GatewayAdminSecret
    pub(crate) admin_secret: Option<String>,
    /// StunURI
    pub(crate) stun_uri: Option<String>,
    /// TurnURI, split on whitespace
    pub(crate) turn_uris: Vec<String>,
    /// TurnUsername
    pub(crate) turn_username: Option<String>,
    /// TurnSharedKey
    pub(crate) turn_shared_key: Option<String>,
    /// Enable (informational)
    pub(crate) enable: Option<bool>,
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Reads `WebrtcSettings` from the text of a Mattermost `config.json`.
pub(crate) fn parse_mattermost_config(text: &str) -> Result<Settings, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let w = v
        .get("WebrtcSettings")
        .ok_or("no WebrtcSettings section (Mattermost 4.0-5.5 have it)")?;
    let s = |k: &str| nonempty(w.get(k).and_then(Value::as_str));
    Ok(Settings {
        ws_url: s("GatewayWebsocketUrl"),
        admin_url: s("GatewayAdminUrl"),
        admin_secret: s("GatewayAdminSecret"),
        stun_uri: s("StunURI"),
        turn_uris: s("TurnURI")
            .map(|t| t.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        turn_username: s("TurnUsername"),
        turn_shared_key: s("TurnSharedKey"),
        enable: w.get("Enable").and_then(Value::as_bool),
    })
}

impl DoctorArgs {
    fn wants_calls(&self) -> bool {
        self.calls
            || self.ice_servers.is_some()
            || self.turn_static_auth_secret.is_some()
            || self.turn_credentials_expiration.is_some()
            || self.mattermost_username.is_some()
    }

    /// What to check: the Calls plugin when asked for (or when the config file has only
    /// its settings), else the WebRTC (Beta) settings.
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        let mut calls = None;
        let mut webrtc_section = false;
        if let Some(p) = &self.mattermost_config {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            calls = parse_calls_config(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            webrtc_section = parse_mattermost_config(&text).is_ok();
            if calls.is_none() && !webrtc_section && !self.wants_calls() {
                return Err(format!(
                    "{}: neither WebrtcSettings (Mattermost 4.0-5.5) nor the Calls plugin's settings (PluginSettings.Plugins[\"{CALLS_PLUGIN}\"])",
                    p.display()
                ));
            }
        }
        if !self.wants_calls() && (webrtc_section || calls.is_none()) {
            return self.settings().map(Plan::Webrtc);
        }
        if self.wants_calls()
            && self.mattermost_config.is_some()
            && calls.is_none()
            && self.ice_servers.is_none()
        {
            return Err(format!(
                "{}: no Calls plugin settings (PluginSettings.Plugins[\"{CALLS_PLUGIN}\"]); give --ice-servers",
                self.mattermost_config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
        let mut c = calls.unwrap_or_default();
        if let Some(j) = &self.ice_servers {
            c.ice_servers = Some(Value::String(j.clone()));
        }
        if let Some(s) = nonempty(self.turn_static_auth_secret.as_deref()) {
            c.secret = Some(s);
        }
        if let Some(m) = self.turn_credentials_expiration {
            c.expiration_minutes = Some(m);
        }
        Ok(Plan::Calls(c))
    }

    /// Settings from the config file (if any) with the flags on top.
    pub(crate) fn settings(&self) -> Result<Settings, String> {
        let mut s = match &self.mattermost_config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                parse_mattermost_config(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Settings::default(),
        };
        let over = |dst: &mut Option<String>, src: &Option<String>| {
            if let Some(v) = nonempty(src.as_deref()) {
                *dst = Some(v);
            }
        };
        over(&mut s.ws_url, &self.ws_url);
        over(&mut s.admin_url, &self.admin_url);
        over(&mut s.admin_secret, &self.admin_secret);
        over(&mut s.stun_uri, &self.stun_uri);
        over(&mut s.turn_username, &self.turn_username);
        over(&mut s.turn_shared_key, &self.turn_shared_key);
        if !self.turn_uri.is_empty() {
            s.turn_uris = self
                .turn_uri
                .iter()
                .flat_map(|t| t.split_whitespace().map(str::to_string))
                .collect();
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------- report

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// "Admin URL", "Gateway WebSocket URL", "STUN URI", "TURN URI".
    pub(crate) check: String,
    /// The URL/URI checked.
    pub(crate) target: String,
    /// Passed?
    pub(crate) ok: bool,
    /// What was measured (or where it failed).
    pub(crate) detail: String,
    /// Warnings (the check passed but something will bite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fix: Option<String>,
    /// Measured values (milliseconds, addresses).
    pub(crate) measured: serde_json::Map<String, Value>,
}

impl Check {
    fn new(check: &str, target: &str) -> Self {
        Self {
            check: check.into(),
            target: target.into(),
            ok: false,
            detail: String::new(),
            warnings: Vec::new(),
            fix: None,
            measured: serde_json::Map::new(),
        }
    }
    fn fail(mut self, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        self.ok = false;
        self.detail = detail.into();
        self.fix = Some(fix.into());
        self
    }
    fn pass(mut self, detail: impl Into<String>) -> Self {
        self.ok = true;
        self.detail = detail.into();
        self
    }
    fn m(&mut self, k: &str, v: impl Into<Value>) {
        self.measured.insert(k.into(), v.into());
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Renders the checks as text, one line per check (+ warning and fix lines).
pub(crate) fn render_text(checks: &[Check]) -> String {
    let mut out = String::new();
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    for c in checks {
        out.push_str(&format!(
            "{} {:width$}  {}: {}\n",
            if c.ok { "✓" } else { "✗" },
            c.check,
            c.target,
            c.detail,
        ));
        for w in &c.warnings {
            out.push_str(&format!("    ! {w}\n"));
        }
        if let Some(f) = &c.fix {
            out.push_str(&format!("    fix: {f}\n"));
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        out.push_str(&format!("all {} checks passed\n", checks.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", checks.len()));
    }
    out
}

// ---------------------------------------------------------------------------- URLs

#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

/// Parses `scheme://host[:port][/path]` for http/https/ws/wss.
fn parse_url(u: &str) -> Result<Url, String> {
    let (scheme, rest) = u.split_once("://").ok_or("no scheme")?;
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => (false, 80),
        "https" | "wss" => (true, 443),
        other => return Err(format!("unsupported scheme {other}:")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    let (host, port) = split_host_port(authority, default_port)?;
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(r) = authority.strip_prefix('[') {
        let (h, rest) = r.split_once(']').ok_or("unclosed [ in host")?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default_port,
        };
        return Ok((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port {p:?}"))?,
        )),
        None if authority.is_empty() => Err("no host".into()),
        None => Ok((authority.to_string(), default_port)),
    }
}

/// `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`,
/// `turns:host[:port][?transport=tcp]` (RFC 7064/7065).
#[derive(Debug, Clone, PartialEq, Eq)]
struct IceUri {
    host: String,
    port: u16,
    tcp: bool,
    /// `turns:`: TLS over TCP.
    tls: bool,
}

impl IceUri {
    fn transport(&self) -> &'static str {
        match (self.tls, self.tcp) {
            (true, _) => "TLS",
            (false, true) => "TCP",
            (false, false) => "UDP",
        }
    }
}

fn parse_ice_uri(u: &str, scheme: &str) -> Result<IceUri, String> {
    let rest = u
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| format!("must start with {scheme}:"))?;
    let tls = scheme == "turns";
    let (hp, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = match query {
        "" => tls,
        "transport=udp" if tls => {
            return Err("turns: over UDP (DTLS) is not supported: use ?transport=tcp".into());
        }
        "transport=udp" => false,
        "transport=tcp" => true,
        q => return Err(format!("unknown parameter ?{q} (only transport=udp|tcp)")),
    };
    let (host, port) = split_host_port(hp, if tls { 5349 } else { 3478 })?;
    Ok(IceUri {
        host,
        port,
        tcp,
        tls,
    })
}

async fn resolve(host: &str, port: u16, t: Duration) -> Result<SocketAddr, String> {
    let fut = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("DNS lookup of {host} timed out")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Ok(Ok(mut it)) => it.next().ok_or_else(|| format!("{host} has no address")),
    }
}

// ---------------------------------------------------------------------------- TLS

fn tls_connector(ca_file: Option<&PathBuf>) -> Result<(TlsConnector, usize), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut files = vec![system];
    if let Some(f) = ca_file {
        files.push(f.clone());
    }
    for (i, f) in files.iter().enumerate() {
        match CertificateDer::pem_file_iter(f) {
            Ok(it) => {
                for c in it.flatten() {
                    let _ = roots.add(c);
                }
            }
            // the system bundle may be absent (ca-certificates not installed): report
            // certificates as untrusted rather than failing; an explicit --ca-file must exist
            Err(e) if i > 0 => return Err(format!("--ca-file {}: {e}", f.display())),
            Err(_) => {}
        }
    }
    let n = roots.len();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((TlsConnector::from(Arc::new(cfg)), n))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a connection attempt failed.
enum ConnErr {
    Tcp(String),
    Tls(String),
}

struct Connected {
    io: Box<dyn Io>,
    addr: SocketAddr,
    tcp: Duration,
    tls: Option<(Duration, String)>,
}

async fn connect(url: &Url, tls: &TlsConnector, t: Duration) -> Result<Connected, ConnErr> {
    let addr = resolve(&url.host, url.port, t)
        .await
        .map_err(ConnErr::Tcp)?;
    let t0 = Instant::now();
    let tcp = match tokio::time::timeout(t, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(ConnErr::Tcp(format!(
                "TCP connect to {addr} timed out after {} s",
                t.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(ConnErr::Tcp(format!("TCP connect to {addr}: {e}"))),
        Ok(Ok(s)) => s,
    };
    let tcp_time = t0.elapsed();
    if !url.tls {
        return Ok(Connected {
            io: Box::new(tcp),
            addr,
            tcp: tcp_time,
            tls: None,
        });
    }
    let name = rustls_pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| ConnErr::Tls(format!("bad host name {}: {e}", url.host)))?;
    let t1 = Instant::now();
    match tokio::time::timeout(t, tls.connect(name, tcp)).await {
        Err(_) => Err(ConnErr::Tls(format!(
            "TLS handshake with {addr} timed out after {} s",
            t.as_secs()
        ))),
        Ok(Err(e)) => Err(ConnErr::Tls(format!("TLS handshake with {addr}: {e}"))),
        Ok(Ok(s)) => {
            let v = s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}").replace("TLSv1_", "TLS 1."))
                .unwrap_or_default();
            Ok(Connected {
                io: Box::new(s),
                addr,
                tcp: tcp_time,
                tls: Some((t1.elapsed(), v)),
            })
        }
    }
}

fn tls_fix(err: &str, host: &str, for_browsers: bool) -> String {
    let who = if for_browsers {
        "Browsers refuse wss:// to an untrusted certificate without any message to the user."
    } else {
        "Mattermost verifies this certificate and rejects self-signed ones unless \"Enable Insecure Outgoing Connections\" is on (which disables checks for all its outgoing connections: don't)."
    };
    if err.contains("corrupt message") || err.contains("InvalidContentType") {
        return "the listener does not speak TLS: use http:// / ws:// in the URL, or enable TLS on that listener (admin_tls / ws_tls = true with cert and key)".into();
    }
    format!(
        "the certificate is not valid for {host} ({err}). {who} Use a certificate from a public CA for this host name (docs/mattermost.md §3){}",
        if for_browsers {
            ""
        } else {
            ", or plain http:// to the admin port on loopback or a private network"
        }
    )
}

// ---------------------------------------------------------------------------- HTTP

async fn http_post(
    io: &mut Box<dyn Io>,
    url: &Url,
    body: &str,
    t: Duration,
) -> Result<(u16, String), String> {
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: callrelay-gateway-doctor\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        body.len()
    );
    let exchange = async {
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(n) => n,
                // a TLS peer that closes without close_notify: keep what arrived
                Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                break;
            }
            if let Some(done) = complete_response(&buf) {
                buf.truncate(done);
                break;
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(t, exchange).await {
        Err(_) => return Err(format!("no HTTP answer within {} s", t.as_secs())),
        Ok(Err(e)) => return Err(format!("HTTP exchange failed: {e}")),
        Ok(Ok(b)) => b,
    };
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response ({} bytes)", buf.len()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or("not an HTTP response")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Length of a complete response in `buf` (Content-Length or chunked), if complete.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let head_len = head.len() + 4;
    for l in head.lines() {
        let l = l.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            let n: usize = v.trim().parse().ok()?;
            return (body.len() >= n).then_some(head_len + n);
        }
    }
    body.ends_with("0\r\n\r\n").then_some(buf.len())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

// ---------------------------------------------------------------------------- ids

/// A Mattermost id: 26 characters of its base32 alphabet (model.NewId).
fn mattermost_id() -> String {
    const A: &[u8] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut r = rand::rng();
    (0..26)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect()
}

// ---------------------------------------------------------------------------- Admin URL

struct AdminState {
    url: Url,
    secret: String,
    token: String,
}

async fn admin_call(
    st: &AdminState,
    tls: &TlsConnector,
    verb: &str,
    t: Duration,
) -> Result<(u16, String, Duration), String> {
    let body = json!({
        "admin_secret": st.secret,
        "janus": verb,
        "token": st.token,
        "transaction": mattermost_id(),
    })
    .to_string();
    let mut c = connect(&st.url, tls, t).await.map_err(|e| match e {
        ConnErr::Tcp(m) | ConnErr::Tls(m) => m,
    })?;
    let t0 = Instant::now();
    let (status, body) = http_post(&mut c.io, &st.url, &body, t).await?;
    Ok((status, body, t0.elapsed()))
}

async fn check_admin(s: &Settings, tls: &TlsConnector, t: Duration) -> (Check, Option<AdminState>) {
    let target = s.admin_url.clone().unwrap_or_default();
    let c = Check::new("Admin URL", &target);
    let Some(raw) = &s.admin_url else {
        return (
            c.fail(
                "not set",
                "set Gateway Admin URL (GatewayAdminUrl), e.g. https://rtc.example.com:7089/admin",
            ),
            None,
        );
    };
    let url = match parse_url(raw) {
        Ok(u) if raw.starts_with("http://") || raw.starts_with("https://") => u,
        Ok(_) => {
            return (
                c.fail(
                    "not an http(s) URL",
                    "Mattermost requires http:// or https:// here, e.g. https://rtc.example.com:7089/admin",
                ),
                None,
            );
        }
        Err(e) => {
            return (
                c.fail(
                    format!("cannot parse: {e}"),
                    "use the form https://host:7089/admin",
                ),
                None,
            );
        }
    };
    let Some(secret) = s.admin_secret.clone() else {
        return (
            c.fail(
                "Gateway Admin Secret not set",
                "set Gateway Admin Secret (GatewayAdminSecret) = the gateway's admin_secret",
            ),
            None,
        );
    };
    let mut c = c;
    if url.path != "/admin" && !url.path.starts_with("/admin/") {
        c.warnings.push(format!(
            "the path is {:?}: Mattermost POSTs to the URL verbatim and the Admin API is at /admin",
            url.path
        ));
    }
    // TCP + TLS on their own, to tell the two apart
    let conn = match connect(&url, tls, t).await {
        Ok(x) => x,
        Err(ConnErr::Tcp(m)) => {
            let fix = if m.contains("refused") {
                format!(
                    "nothing listens on {}:{}: check the port, that the gateway runs, and that admin_listen binds an address the Mattermost server reaches (the default 127.0.0.1:7088 is loopback only)",
                    url.host, url.port
                )
            } else if m.contains("timed out") {
                format!(
                    "no answer from {}:{}: a firewall drops the connection; allow TCP {} from the Mattermost server's address (docs/mattermost.md §6)",
                    url.host, url.port, url.port
                )
            } else {
                "check the host name in Gateway Admin URL".to_string()
            };
            return (c.fail(m, fix), None);
        }
        Err(ConnErr::Tls(m)) => {
            let fix = tls_fix(&m, &url.host, false);
            return (c.fail(m, fix), None);
        }
    };
    c.m("address", conn.addr.to_string());
    c.m("tcp_ms", ms(conn.tcp));
    let mut parts = vec![format!("TCP {} {} ms", conn.addr, ms(conn.tcp))];
    if let Some((d, v)) = &conn.tls {
        c.m("tls_ms", ms(*d));
        parts.push(format!(
            "{v} certificate valid for {} ({} ms)",
            url.host,
            ms(*d)
        ));
    } else if !is_private_host(&url.host) {
        c.warnings.push(
            "plain http:// to a public address: the admin secret crosses the network in clear text; use https:// or keep the admin port on loopback/a private network".into(),
        );
    }
    drop(conn);
    let st = AdminState {
        url,
        secret,
        token: STANDARD.encode(mattermost_id()),
    };
    match admin_call(&st, tls, "add_token", t).await {
        Err(m) => {
            let fix = if m.contains("not an HTTP response") {
                "the port does not speak HTTP: if the gateway's admin listener uses TLS (admin_tls), the URL must be https://".to_string()
            } else {
                "the gateway accepted the connection but did not answer the request: check that this port is the gateway's admin_listen".to_string()
            };
            (
                c.fail(format!("{}; add_token: {m}", parts.join(", ")), fix),
                None,
            )
        }
        Ok((status, body, d)) => {
            let v: Option<Value> = serde_json::from_str(&body).ok();
            let janus = v.as_ref().and_then(|v| v["janus"].as_str()).unwrap_or("");
            if status < 300 && janus == "success" {
                c.m("add_token_ms", ms(d));
                parts.push(format!("add_token → success ({} ms)", ms(d)));
                (c.pass(parts.join(", ")), Some(st))
            } else {
                let code = v
                    .as_ref()
                    .and_then(|v| v["error"]["code"].as_u64())
                    .unwrap_or(0);
                let reason = v
                    .as_ref()
                    .and_then(|v| v["error"]["reason"].as_str())
                    .unwrap_or("")
                    .to_string();
                let detail = format!(
                    "{}; add_token → HTTP {status}{}",
                    parts.join(", "),
                    if code > 0 {
                        format!(", Janus error {code} {reason}")
                    } else if v.is_none() {
                        format!(", not JSON: {:.80}", body.trim())
                    } else {
                        format!(", reply {janus:?}")
                    }
                );
                let fix = if code == 403 {
                    "the Gateway Admin Secret is wrong: it must equal the gateway's admin_secret (then `systemctl restart callrelay-gateway` if you changed the gateway side)".to_string()
                } else if status == 404 {
                    "wrong path: Mattermost POSTs to the URL verbatim; it must end in /admin"
                        .to_string()
                } else if v.is_none() {
                    "the URL answers but not as a Janus Admin API (not JSON): is another web server on this port, or a proxy in between? Mattermost fails on a non-JSON reply".to_string()
                } else {
                    "the gateway refused add_token; see its log (journalctl -u callrelay-gateway)"
                        .to_string()
                };
                (c.fail(detail, fix), None)
            }
        }
    }
}

fn is_private_host(h: &str) -> bool {
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback() || a.is_private() || a.is_link_local(),
        Ok(std::net::IpAddr::V6(a)) => a.is_loopback(),
        Err(_) => h == "localhost",
    }
}

// ---------------------------------------------------------------------------- WebSocket

async fn check_ws(
    s: &Settings,
    tls: &TlsConnector,
    token: Option<&str>,
    admin_ok: bool,
    t: Duration,
) -> Check {
    let target = s.ws_url.clone().unwrap_or_default();
    let c = Check::new("Gateway WebSocket URL", &target);
    let Some(raw) = &s.ws_url else {
        return c.fail(
            "not set",
            "set Gateway WebSocket URL (GatewayWebsocketUrl), e.g. wss://rtc.example.com:8189",
        );
    };
    let url = match parse_url(raw) {
        Ok(u) if raw.starts_with("ws://") || raw.starts_with("wss://") => u,
        _ => {
            return c.fail(
                "not a ws:// or wss:// URL",
                "Mattermost requires ws:// or wss://, e.g. wss://rtc.example.com:8189 (browsers on an https:// Mattermost only allow wss://)",
            );
        }
    };
    let mut c = c;
    if !url.tls {
        c.warnings.push(
            "ws:// is plain text: browsers refuse it from a Mattermost served over https://; use wss://".into(),
        );
    }
    let conn = match connect(&url, tls, t).await {
        Ok(x) => x,
        Err(ConnErr::Tcp(m)) => {
            let fix = format!(
                "nothing reachable at {}:{}: check the port (the gateway's listen), that the gateway runs, and the firewall (TCP {} must be open to every user)",
                url.host, url.port, url.port
            );
            return c.fail(m, fix);
        }
        Err(ConnErr::Tls(m)) => {
            let fix = tls_fix(&m, &url.host, true);
            return c.fail(m, fix);
        }
    };
    let t0 = Instant::now();
    c.m("address", conn.addr.to_string());
    let mut req = match raw.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return c.fail(format!("bad URL: {e}"), "fix the URL"),
    };
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", http_value("janus-protocol"));
    let hs = tokio::time::timeout(t, tokio_tungstenite::client_async(req, conn.io)).await;
    let (mut ws, resp) = match hs {
        Err(_) => {
            return c.fail(
                format!("WebSocket handshake timed out after {} s", t.as_secs()),
                "the port accepts TCP but does not answer the WebSocket upgrade: is it the gateway's WebSocket listener? (if it speaks TLS, the URL must be wss://)",
            );
        }
        Ok(Err(e)) => {
            return c.fail(
                format!("WebSocket handshake failed: {e}"),
                "the URL does not serve a Janus WebSocket: check the port; a reverse proxy must pass the Upgrade and Sec-WebSocket-Protocol headers",
            );
        }
        Ok(Ok(x)) => x,
    };
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if proto != "janus-protocol" {
        return c.fail(
            format!("handshake answered without subprotocol janus-protocol (got {proto:?})"),
            "janus.js closes such a socket: a proxy in front strips Sec-WebSocket-Protocol, or this is not a Janus gateway",
        );
    }
    let hs_ms = ms(t0.elapsed());
    c.m("handshake_ms", hs_ms);
    let token_v = token.map(|t| Value::String(t.to_string()));
    async fn send_json(
        ws: &mut tokio_tungstenite::WebSocketStream<Box<dyn Io>>,
        token: &Option<Value>,
        mut v: Value,
    ) -> Result<(), String> {
        if let Some(tk) = token {
            v["token"] = tk.clone();
        }
        ws.send(WsMessage::Text(v.to_string().into()))
            .await
            .map_err(|e| e.to_string())
    }
    async fn wait_for(
        ws: &mut tokio_tungstenite::WebSocketStream<Box<dyn Io>>,
        t: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(format!("no reply within {} s", t.as_secs())),
                Ok(None) => return Err("the gateway closed the WebSocket".into()),
                Ok(Some(Err(e))) => return Err(format!("WebSocket error: {e}")),
                Ok(Some(Ok(WsMessage::Text(txt)))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&txt)
                        && pred(&v)
                    {
                        return Ok(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
    let tx = |n: &str| format!("doctor-{n}-{}", mattermost_id());
    // create
    let txc = tx("create");
    let r = match send_json(
        &mut ws,
        &token_v,
        json!({"janus": "create", "transaction": txc}),
    )
    .await
    {
        Err(e) => Err(e),
        Ok(()) => wait_for(&mut ws, t, |v| v["transaction"] == txc.as_str()).await,
    };
    let sid = match r {
        Ok(v) if v["janus"] == "success" => v["data"]["id"].as_u64().unwrap_or(0),
        Ok(v) => {
            let code = v["error"]["code"].as_u64().unwrap_or(0);
            let reason = v["error"]["reason"].as_str().unwrap_or("").to_string();
            let fix = if code == 403 && token.is_none() {
                "the gateway requires a token (token_auth) and doctor could not add one because the Admin URL check failed: fix that first".to_string()
            } else if code == 403 && admin_ok {
                "the token added through the Admin URL is not accepted here: the Admin URL and the WebSocket URL reach different gateways (or a different state_dir); point both at the same gateway".to_string()
            } else {
                "see the gateway's log".to_string()
            };
            return c.fail(format!("create → error {code} {reason}"), fix);
        }
        Err(e) => {
            return c.fail(
                format!("create: {e}"),
                "the WebSocket opened but the Janus API did not answer: is this a Janus/callrelay gateway?",
            );
        }
    };
    c.m("session_id", sid);
    // attach
    let txa = tx("attach");
    let r = match send_json(
        &mut ws,
        &token_v,
        json!({"janus": "attach", "plugin": "janus.plugin.videocall", "session_id": sid, "transaction": txa}),
    )
    .await
    {
        Err(e) => Err(e),
        Ok(()) => wait_for(&mut ws, t, |v| v["transaction"] == txa.as_str()).await,
    };
    let hid = match r {
        Ok(v) if v["janus"] == "success" => v["data"]["id"].as_u64().unwrap_or(0),
        Ok(v) => {
            return c.fail(
                format!(
                    "attach janus.plugin.videocall → error {} {}",
                    v["error"]["code"], v["error"]["reason"]
                ),
                "the gateway has no janus.plugin.videocall (Mattermost needs it), or the token may not use it",
            );
        }
        Err(e) => return c.fail(format!("attach: {e}"), "see the gateway's log"),
    };
    // register
    let user = format!("doctor-{}", mattermost_id());
    let txr = tx("register");
    let r = match send_json(
        &mut ws,
        &token_v,
        json!({"janus": "message", "session_id": sid, "handle_id": hid, "transaction": txr,
               "body": {"request": "register", "username": user}}),
    )
    .await
    {
        Err(e) => Err(e),
        Ok(()) => {
            wait_for(&mut ws, t, |v| {
                v["transaction"] == txr.as_str() && (v["janus"] == "event" || v["janus"] == "error")
            })
            .await
        }
    };
    match r {
        Ok(v) if v["plugindata"]["data"]["result"]["event"] == "registered" => {}
        Ok(v) => {
            return c.fail(
                format!("register → {}", v),
                "janus.plugin.videocall refused the registration; see the gateway's log",
            );
        }
        Err(e) => return c.fail(format!("register: {e}"), "see the gateway's log"),
    }
    // destroy
    let txd = tx("destroy");
    let r = match send_json(
        &mut ws,
        &token_v,
        json!({"janus": "destroy", "session_id": sid, "transaction": txd}),
    )
    .await
    {
        Err(e) => Err(e),
        Ok(()) => wait_for(&mut ws, t, |v| v["transaction"] == txd.as_str()).await,
    };
    if !matches!(&r, Ok(v) if v["janus"] == "success") {
        return c.fail(
            format!("destroy → {r:?}"),
            "the session could not be destroyed; see the gateway's log",
        );
    }
    let _ = ws.close(None).await;
    let total = ms(t0.elapsed());
    c.m("total_ms", total);
    c.pass(format!(
        "{}handshake janus-protocol {hs_ms} ms, create/attach videocall/register/destroy ok ({total} ms total)",
        if url.tls { "TLS certificate valid, " } else { "" }
    ))
}

fn http_value(s: &'static str) -> tokio_tungstenite::tungstenite::http::HeaderValue {
    tokio_tungstenite::tungstenite::http::HeaderValue::from_static(s)
}

// ---------------------------------------------------------------------------- STUN

/// One Binding transaction with retransmissions (RFC 8489 §6.2.1: 500 ms doubling) within `t`.
async fn stun_binding(
    sock: &UdpSocket,
    server: SocketAddr,
    t: Duration,
) -> Result<(SocketAddr, Duration), String> {
    use stun::agent::TransactionId;
    use stun::message::{BINDING_REQUEST, Getter as _, Message};
    use stun::xoraddr::XorMappedAddress;
    let mut req = Message::new();
    req.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + t;
    let mut rto = Duration::from_millis(500);
    let t0 = Instant::now();
    let mut buf = [0u8; 1500];
    let mut last_err = String::from("no answer");
    while Instant::now() < deadline {
        sock.send_to(&req.raw, server)
            .await
            .map_err(|e| format!("send to {server}: {e}"))?;
        let wait = rto.min(deadline.saturating_duration_since(Instant::now()));
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    // ICMP port unreachable shows up as ECONNREFUSED on Linux
                    last_err = format!("{e}");
                    break;
                }
                Ok(Ok((n, from))) => {
                    let mut m = Message::new();
                    if from != server || m.unmarshal_binary(&buf[..n]).is_err() {
                        continue;
                    }
                    if m.transaction_id != req.transaction_id {
                        continue;
                    }
                    let mut x = XorMappedAddress::default();
                    x.get_from(&m).map_err(|e| {
                        format!("answer without XOR-MAPPED-ADDRESS ({} {e})", m.typ)
                    })?;
                    return Ok((SocketAddr::new(x.ip, x.port), t0.elapsed()));
                }
            }
        }
        rto *= 2;
    }
    Err(format!("{last_err} within {} s", t.as_secs()))
}

async fn udp_socket_for(server: SocketAddr) -> std::io::Result<UdpSocket> {
    if server.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0").await
    } else {
        UdpSocket::bind("[::]:0").await
    }
}

async fn check_stun(uri: &str, t: Duration) -> Check {
    let c = Check::new("STUN URI", uri);
    let u = match parse_ice_uri(uri, "stun") {
        Ok(u) => u,
        Err(e) => {
            return c.fail(
                format!("cannot parse: {e}"),
                "use the form stun:rtc.example.com:3478",
            );
        }
    };
    let server = match resolve(&u.host, u.port, t).await {
        Ok(a) => a,
        Err(e) => return c.fail(e, "check the host name in STUN URI"),
    };
    let sock = match udp_socket_for(server).await {
        Ok(s) => s,
        Err(e) => {
            return c.fail(
                format!("UDP socket: {e}"),
                "doctor could not open a UDP socket",
            );
        }
    };
    let mut c = c;
    match stun_binding(&sock, server, t).await {
        Ok((mapped, d)) => {
            c.m("server", server.to_string());
            c.m("mapped_address", mapped.to_string());
            c.m("rtt_ms", ms(d));
            c.pass(format!(
                "Binding to {server} over UDP answered in {} ms, XOR-MAPPED-ADDRESS {mapped} (this host as the server sees it)",
                ms(d)
            ))
        }
        Err(e) => c.fail(
            format!("Binding to {server} over UDP: {e}"),
            format!(
                "no STUN answer: check that the turn-server runs and listens on UDP {} (listen), and that UDP {} is open in the firewall and the cloud security group",
                u.port, u.port
            ),
        ),
    }
}

// ---------------------------------------------------------------------------- TURN

/// TURN REST credentials exactly as Mattermost mints them (model/webrtc.go):
/// `<expiry>:<TurnUsername>`, base64(HMAC-SHA1(TurnSharedKey bytes, username)).
pub(crate) fn mattermost_turn_credentials(
    turn_username: &str,
    shared_key: &str,
    now_unix: u64,
    utc_offset: i32,
) -> (String, String) {
    let expiry = shared_ice::auth::mattermost_expiry(now_unix, utc_offset);
    let username = format!("{expiry}:{turn_username}");
    let mut mac =
        Hmac::<Sha1>::new_from_slice(shared_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

fn local_utc_offset() -> i32 {
    // `date +%z` → "+0100"; no time-zone database in the binary for this one value
    let out = std::process::Command::new("date").arg("+%z").output();
    let Ok(out) = out else { return 0 };
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.len() != 5 {
        return 0;
    }
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let h: i32 = s[1..3].parse().unwrap_or(0);
    let m: i32 = s[3..5].parse().unwrap_or(0);
    sign * (h * 3600 + m * 60)
}

/// Who minted the credentials of a TURN check (the fix texts differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredSource {
    /// Mattermost 4.0-5.5: TurnUsername + TurnSharedKey.
    Webrtc,
    /// The Calls plugin: TURN Static Auth Secret + the Mattermost username.
    Calls,
    /// Fixed username/credential of a Calls ICE servers entry.
    Static,
}

fn turn_error_fix(e: &str, u: &IceUri, username: &str, src: CredSource) -> String {
    if e.contains("401") || e.contains("441") {
        match src {
            CredSource::Webrtc => format!(
                "the turn-server rejected the credentials Mattermost would hand out (user {username}): TURN Shared Key must equal one of the turn-server's auth_secret values (and the gateway's turn_secret); if they match, the clocks differ by more than a day (timedatectl)"
            ),
            CredSource::Calls => format!(
                "the turn-server rejected the credentials the Calls plugin would mint (user {username}): TURN Static Auth Secret must equal one of the turn-server's auth_secret values; if they match, the clocks of the Mattermost server and the turn-server differ by more than TURN Credentials Expiration (timedatectl)"
            ),
            CredSource::Static => format!(
                "the turn-server rejected this entry's fixed username {username} and credential: remove both from the entry so the plugin mints them from TURN Static Auth Secret, or give the turn-server that user"
            ),
        }
    } else if e.contains("437") || e.contains("486") || e.contains("508") {
        match src {
            CredSource::Webrtc => "the turn-server refused the allocation (quota or capacity): see callrelay_turn_quota_rejections_total; set user_quota = 0 for Mattermost (all users share one TURN username)".to_string(),
            _ => "the turn-server refused the allocation (quota or capacity): see callrelay_turn_quota_rejections_total; user_quota counts per Mattermost user (not below 30), total_quota and relay_ports bound the server".to_string(),
        }
    } else {
        let proto = if u.tcp { "TCP" } else { "UDP" };
        format!(
            "no TURN answer from {}:{} over {}: check that the turn-server runs and listens there ({}), and that {proto} {} is open in the firewall and the cloud security group",
            u.host,
            u.port,
            u.transport(),
            if u.tls { "tls_listen" } else { "listen" },
            u.port
        )
    }
}

async fn check_turn(uri: &str, s: &Settings, utc_offset: i32, t: Duration) -> Check {
    let c = Check::new("TURN URI", uri);
    if uri.starts_with("turns:") {
        return c.fail(
            "turns: URI",
            "Mattermost rejects turns: URIs; use turn:host:3478 (and turn:host:3478?transport=tcp)",
        );
    }
    let u = match parse_ice_uri(uri, "turn") {
        Ok(u) => u,
        Err(e) => {
            return c.fail(
                format!("cannot parse: {e}"),
                "use the form turn:rtc.example.com:3478 or turn:rtc.example.com:3478?transport=tcp",
            );
        }
    };
    let (Some(user), Some(key)) = (&s.turn_username, &s.turn_shared_key) else {
        return c.fail(
            "TURN Username or TURN Shared Key not set",
            "Mattermost requires both with a TURN URI: TURN Username (any label) and TURN Shared Key = the turn-server's auth_secret",
        );
    };
    let now = unix_now();
    let (username, password) = mattermost_turn_credentials(user, key, now, utc_offset);
    check_turn_with(c, &u, username, password, CredSource::Webrtc, None, t).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Allocates on the TURN server of `u` with `username`/`password` and relays data both
/// ways. `tls` is needed for `turns:` URIs.
async fn check_turn_with(
    c: Check,
    u: &IceUri,
    username: String,
    password: String,
    src: CredSource,
    tls: Option<&TlsConnector>,
    t: Duration,
) -> Check {
    let server = match resolve(&u.host, u.port, t).await {
        Ok(a) => a,
        Err(e) => return c.fail(e, "check the host name in the TURN URI"),
    };
    let mut c = c;
    c.m("username", username.clone());
    let conn: Arc<dyn webrtc_util::Conn + Send + Sync> = if u.tcp {
        let t0 = Instant::now();
        let s = match tokio::time::timeout(t, TcpStream::connect(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return c.fail(
                    format!("TCP connect to {server}: {e}"),
                    turn_error_fix(&e.to_string(), u, &username, src),
                );
            }
            Err(_) => {
                return c.fail(
                    format!("TCP connect to {server} timed out"),
                    turn_error_fix("timeout", u, &username, src),
                );
            }
        };
        c.m("tcp_connect_ms", ms(t0.elapsed()));
        let local = s.local_addr().unwrap_or(server);
        let stream: Box<dyn crate::doctor_tcp::Stream> = if u.tls {
            let Some(tls) = tls else {
                return c.fail("turns: URI", "internal error: no TLS configuration");
            };
            let name = match rustls_pki_types::ServerName::try_from(u.host.clone()) {
                Ok(n) => n,
                Err(e) => {
                    return c.fail(
                        format!("bad host name {}: {e}", u.host),
                        "fix the host name in the TURN URI",
                    );
                }
            };
            let t1 = Instant::now();
            match tokio::time::timeout(t, tls.connect(name, s)).await {
                Ok(Ok(s)) => {
                    c.m("tls_handshake_ms", ms(t1.elapsed()));
                    Box::new(s)
                }
                Ok(Err(e)) => {
                    let e = e.to_string();
                    let fix = if e.contains("corrupt message") || e.contains("InvalidContentType") {
                        format!(
                            "the port {} does not speak TLS: it must be one of the turn-server's tls_listen addresses (with cert and key), or use turn: instead of turns:",
                            u.port
                        )
                    } else {
                        format!(
                            "the turn-server's certificate is not valid for {} ({e}); browsers give up on that TURN URL without a word: set the turn-server's cert/key to a certificate from a public CA for this name (docs/mattermost.md §3)",
                            u.host
                        )
                    };
                    return c.fail(format!("TLS handshake with {server}: {e}"), fix);
                }
                Err(_) => {
                    return c.fail(
                        format!("TLS handshake with {server} timed out after {} s", t.as_secs()),
                        format!("the port {} does not speak TLS: it must be one of the turn-server's tls_listen addresses (with cert and key)", u.port),
                    );
                }
            }
        } else {
            Box::new(s)
        };
        Arc::new(crate::doctor_tcp::TcpConn::new(stream, local, server))
    } else {
        match udp_socket_for(server).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                return c.fail(
                    format!("UDP socket: {e}"),
                    "doctor could not open a UDP socket",
                );
            }
        }
    };
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.clone(),
        password,
        realm: String::new(),
        software: "callrelay-gateway-doctor".into(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    };
    let client = match turn::client::Client::new(cfg).await {
        Ok(c) => c,
        Err(e) => return c.fail(format!("TURN client: {e}"), "internal error"),
    };
    let result = turn_allocate_and_echo(&client, u, server, src, t, &mut c).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    match result {
        Ok(detail) => c.pass(detail),
        Err((detail, fix)) => c.fail(detail, fix),
    }
}

async fn turn_allocate_and_echo(
    client: &turn::client::Client,
    u: &IceUri,
    server: SocketAddr,
    src: CredSource,
    t: Duration,
    c: &mut Check,
) -> Result<String, (String, String)> {
    let username = c.measured["username"].as_str().unwrap_or("").to_string();
    let transport = u.transport();
    client
        .listen()
        .await
        .map_err(|e| (format!("TURN client: {e}"), "internal error".to_string()))?;
    let t0 = Instant::now();
    let relay = match tokio::time::timeout(t, client.allocate()).await {
        Err(_) => {
            let d = format!(
                "Allocate over {transport} to {server}: no answer within {} s",
                t.as_secs()
            );
            return Err((d, turn_error_fix("timeout", u, &username, src)));
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            let d = format!("Allocate over {transport} to {server}: {e}");
            return Err((d, turn_error_fix(&e, u, &username, src)));
        }
        Ok(Ok(r)) => r,
    };
    let alloc_ms = ms(t0.elapsed());
    let relay_addr = relay
        .local_addr()
        .map_err(|e| (e.to_string(), "internal error".into()))?;
    c.m("allocate_ms", alloc_ms);
    c.m("relay_address", relay_addr.to_string());
    let mut note = String::new();
    if let std::net::IpAddr::V4(a) = relay_addr.ip()
        && (a.is_private() || a.is_loopback())
        && !server.ip().is_loopback()
        && !is_private_ip(server.ip())
    {
        c.warnings.push(format!(
            "the relay address {relay_addr} is private while the server is public: browsers elsewhere cannot reach it; set relay_ip (and external_ip on 1:1-NAT clouds)"
        ));
    }
    let alloc_text =
        format!("Allocate over {transport} ({username}) ok in {alloc_ms} ms, relay {relay_addr}");
    // Echo through the relay: a UDP socket of our own plays the peer.
    let peer = udp_socket_for(relay_addr).await.map_err(|e| {
        (
            format!("{alloc_text}; peer socket: {e}"),
            "internal error".to_string(),
        )
    })?;
    // The peer's address as the TURN server sees it (through NAT, if any): a Binding
    // request from the peer socket to the same host and port over UDP.
    let peer_addr = match stun_binding(&peer, server, t).await {
        Ok((a, _)) => a,
        Err(_) => {
            // no STUN over UDP there (TCP-only path): use the local address
            let mut a = peer
                .local_addr()
                .map_err(|e| (e.to_string(), String::new()))?;
            if a.ip().is_unspecified() {
                a.set_ip(if server.ip().is_loopback() {
                    server.ip()
                } else {
                    a.ip()
                });
            }
            a
        }
    };
    c.m("peer_address", peer_addr.to_string());
    let mut rtts = Vec::new();
    let mut buf = [0u8; 1500];
    for i in 0..3u8 {
        let payload = format!("callrelay-doctor {i} {}", mattermost_id());
        let t1 = Instant::now();
        let sent = tokio::time::timeout(t, relay.send_to(payload.as_bytes(), peer_addr)).await;
        match sent {
            Err(_) => {
                return Err((
                    format!("{alloc_text}; CreatePermission/Send for {peer_addr}: no answer within {} s", t.as_secs()),
                    "the allocation works but the turn-server did not answer CreatePermission; see its log".into(),
                ));
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                let fix = if e.contains("403") {
                    format!(
                        "the turn-server refused a permission for doctor's own address {peer_addr} (403 Forbidden): its peer policy denies that address class (loopback/private/link-local). That is the safe default; the relay itself works. To test the data path, run doctor from a host with a public address, or (test setups only) allow the address with --allow-peer {}/32",
                        peer_addr.ip()
                    )
                } else {
                    "see the turn-server's log".to_string()
                };
                return Err((
                    format!("{alloc_text}; CreatePermission for {peer_addr}: {e}"),
                    fix,
                ));
            }
            Ok(Ok(_)) => {}
        }
        // peer → wait for the relayed packet (from the relay address), answer it
        let got = tokio::time::timeout(t, async {
            loop {
                let (n, from) = peer.recv_from(&mut buf).await?;
                if &buf[..n] == payload.as_bytes() {
                    return Ok::<_, std::io::Error>(from);
                }
            }
        })
        .await;
        let Ok(Ok(from)) = got else {
            return Err((
                format!("{alloc_text}; data sent through the relay to {peer_addr} never arrived"),
                format!(
                    "the relay did not deliver to {peer_addr}: the turn-server's outgoing UDP from the relay ports is blocked, or its peer policy drops {} silently; check callrelay_turn_denied_peers_total and the firewall",
                    peer_addr.ip()
                ),
            ));
        };
        let echo = format!("{payload} echo");
        let _ = peer.send_to(echo.as_bytes(), from).await;
        let back = tokio::time::timeout(t, async {
            loop {
                let (n, _) = relay.recv_from(&mut buf).await?;
                if &buf[..n] == echo.as_bytes() {
                    return Ok::<_, webrtc_util::Error>(());
                }
            }
        })
        .await;
        if !matches!(back, Ok(Ok(()))) {
            return Err((
                format!(
                    "{alloc_text}; data reached the peer from {from} but the reply never came back through the relay"
                ),
                format!(
                    "inbound UDP to the relay port {} is blocked: open the relay port range (relay_ports, default 49152-65535) in the firewall and the cloud security group",
                    relay_addr.port()
                ),
            ));
        }
        rtts.push(t1.elapsed());
        if i == 0 {
            note = format!(
                " (first round trip incl. CreatePermission {} ms)",
                ms(t1.elapsed())
            );
        }
    }
    let _ = relay.close().await;
    let best = rtts.iter().skip(1).min().copied().unwrap_or_default();
    c.m("rtt_ms", ms(best));
    Ok(format!(
        "{alloc_text}; data relayed both ways to peer {peer_addr}, RTT {} ms{note}",
        ms(best)
    ))
}

fn is_private_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local(),
        std::net::IpAddr::V6(a) => a.is_loopback(),
    }
}

// ---------------------------------------------------------------------------- run

/// Runs every check; returns them in display order.
pub(crate) async fn run(args: &DoctorArgs, s: &Settings) -> Vec<Check> {
    let t = Duration::from_secs(args.timeout.clamp(1, 60));
    let (tls, _roots) = match tls_connector(args.ca_file.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            return vec![
                Check::new("TLS roots", "").fail(e, "give a readable PEM file to --ca-file"),
            ];
        }
    };
    let offset = args.utc_offset.unwrap_or_else(local_utc_offset);
    let bound = |d: Duration| d * 6;
    let (mut admin, state) = match tokio::time::timeout(bound(t), check_admin(s, &tls, t)).await {
        Ok(x) => x,
        Err(_) => (
            Check::new("Admin URL", s.admin_url.as_deref().unwrap_or(""))
                .fail("timed out", "see above"),
            None,
        ),
    };
    let ws = match tokio::time::timeout(
        bound(t),
        check_ws(
            s,
            &tls,
            state.as_ref().map(|st| st.token.as_str()),
            state.is_some(),
            t,
        ),
    )
    .await
    {
        Ok(c) => c,
        Err(_) => Check::new("Gateway WebSocket URL", s.ws_url.as_deref().unwrap_or("")).fail(
            "timed out",
            "the gateway stopped answering in the middle of the check",
        ),
    };
    if let Some(st) = &state {
        match admin_call(st, &tls, "remove_token", t).await {
            Ok((status, body, d)) if status < 300 && body.contains("\"success\"") => {
                admin.m("remove_token_ms", ms(d));
                admin
                    .detail
                    .push_str(&format!(", remove_token → success ({} ms)", ms(d)));
            }
            Ok((status, body, _)) => {
                admin.ok = false;
                admin.detail.push_str(&format!(
                    ", remove_token → HTTP {status} {:.100}",
                    body.trim()
                ));
                admin.fix = Some("the gateway refused remove_token; see its log".into());
            }
            Err(e) => {
                admin.ok = false;
                admin.detail.push_str(&format!(", remove_token: {e}"));
                admin.fix = Some("the gateway stopped answering; see its log".into());
            }
        }
    }
    let mut out = vec![admin, ws];
    match &s.stun_uri {
        Some(u) => out.push(check_stun(u, t).await),
        None => {
            let mut c = Check::new("STUN URI", "");
            c.warnings
                .push("not set: browsers will use only host candidates and TURN".into());
            out.push(c.pass("not set (optional)"));
        }
    }
    if s.turn_uris.is_empty() {
        out.push(Check::new("TURN URI", "").fail(
            "not set",
            "without TURN, calls between users behind NAT connect but carry no audio or video: set TURN URI, TURN Username and TURN Shared Key",
        ));
    }
    for u in &s.turn_uris {
        let c = match tokio::time::timeout(bound(t), check_turn(u, s, offset, t)).await {
            Ok(c) => c,
            Err(_) => {
                Check::new("TURN URI", u).fail("timed out", "the TURN server stopped answering")
            }
        };
        out.push(c);
    }
    out
}

/// Runs the checks of a Calls plugin deployment: the ICE servers setting itself, then
/// STUN and TURN against every URL with credentials minted as the plugin mints them.
pub(crate) async fn run_calls(args: &DoctorArgs, cs: &CallsSettings) -> Vec<Check> {
    let t = Duration::from_secs(args.timeout.clamp(1, 60));
    let (tls, _roots) = match tls_connector(args.ca_file.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            return vec![
                Check::new("TLS roots", "").fail(e, "give a readable PEM file to --ca-file"),
            ];
        }
    };
    let example = "paste a JSON array such as [{\"urls\":[\"stun:rtc.example.com:3478\"]},{\"urls\":[\"turn:rtc.example.com:3478\",\"turn:rtc.example.com:3478?transport=tcp\"]}] (docs/mattermost-calls.md §3)";
    let cfg = Check::new("ICE servers", "ICE Servers Configurations");
    let entries = match cs.ice_servers.as_ref().map(parse_ice_servers) {
        None => {
            return vec![cfg.fail("not set (the plugin's default has no TURN server)", example)];
        }
        Some(Err(e)) => return vec![cfg.fail(format!("not valid: {e}"), example)],
        Some(Ok(v)) => v,
    };
    let mut cfg = cfg;
    let minutes = cs.expiration_minutes.unwrap_or(1440);
    let user = args
        .mattermost_username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or("callrelay-doctor");
    let secret = cs.secret.as_deref();
    let kinds: Vec<EntryKind> = entries.iter().map(entry_kind).collect();
    let count = |k: EntryKind| kinds.iter().filter(|x| **x == k).count();
    let turn_urls = entries
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| matches!(k, EntryKind::TurnMinted | EntryKind::TurnStatic))
        .map(|(e, _)| e.urls.len())
        .sum::<usize>();
    let minted = count(EntryKind::TurnMinted);
    cfg.m("entries", entries.len());
    cfg.m("turn_urls", turn_urls);
    cfg.m("expiration_minutes", minutes);
    if let Some(sst) = cs.server_side_turn {
        cfg.m("server_side_turn", sst);
    }
    let mut problems: Vec<(String, String)> = Vec::new();
    if turn_urls == 0 {
        problems.push((
            "no TURN entry".into(),
            "add an entry {\"urls\":[\"turn:rtc.example.com:3478\",\"turn:rtc.example.com:3478?transport=tcp\"]} without username and credential: users whose networks block the Calls server's UDP port get no audio otherwise".into(),
        ));
    }
    if count(EntryKind::Mixed) > 0 {
        problems.push((
            "an entry mixes stun: and turn: URLs".into(),
            "put stun: URLs in an entry of their own: the plugin mints credentials only for an entry whose every URL is turn: or turns:, and browsers refuse a turn: URL without credentials".into(),
        ));
    }
    if minted > 0 && secret.is_none() {
        problems.push((
            "TURN Static Auth Secret not set".into(),
            "set TURN Static Auth Secret to the turn-server's auth_secret: without it the plugin mints no TURN credentials".into(),
        ));
    }
    if minutes <= 0 || minutes > 10080 {
        problems.push((
            format!("TURN Credentials Expiration {minutes} minutes"),
            "set 1 to 10080 minutes (rtcd refuses more than a week); 1440 is the plugin's default"
                .into(),
        ));
    }
    if count(EntryKind::TurnStatic) > 0 {
        cfg.warnings.push("a TURN entry has a fixed username/credential: every user gets the same one and it never expires; leave both out so the plugin mints them".into());
    }
    let now = unix_now();
    let minutes_u = u64::try_from(minutes.clamp(1, 10080)).unwrap_or(1440);
    let minted_creds = secret.map(|k| calls_turn_credentials(user, k, now, minutes_u));
    let summary = format!(
        "{} entries, {turn_urls} TURN URL(s){}, {} STUN entr{}",
        entries.len(),
        match &minted_creds {
            Some((u, _)) if minted > 0 =>
                format!(", credentials minted as the plugin does: {u} (valid {minutes} min)"),
            _ => String::new(),
        },
        count(EntryKind::Stun),
        if count(EntryKind::Stun) == 1 {
            "y"
        } else {
            "ies"
        }
    );
    let cfg = if problems.is_empty() {
        cfg.pass(summary)
    } else {
        let (d, f): (Vec<_>, Vec<_>) = problems.into_iter().unzip();
        cfg.fail(format!("{summary}; {}", d.join("; ")), f.join("; "))
    };
    let mut out = vec![cfg];
    let bound = |d: Duration| d * 6;
    for (e, kind) in entries.iter().zip(&kinds) {
        for url in &e.urls {
            if url.starts_with("stuns:") {
                let mut c = Check::new("STUN URI", url);
                c.warnings
                    .push("stuns: is not checked by doctor (and most browsers ignore it)".into());
                out.push(c.pass("not checked"));
                continue;
            }
            if url.starts_with("stun:") {
                out.push(check_stun(url, t).await);
                continue;
            }
            let c = Check::new("TURN URI", url);
            let scheme = if url.starts_with("turns:") {
                "turns"
            } else {
                "turn"
            };
            let u = match parse_ice_uri(url, scheme) {
                Ok(u) => u,
                Err(e) => {
                    out.push(c.fail(
                        format!("cannot parse: {e}"),
                        "use the form turn:rtc.example.com:3478, turn:rtc.example.com:3478?transport=tcp or turns:rtc.example.com:443?transport=tcp",
                    ));
                    continue;
                }
            };
            let (username, password, src) = match kind {
                EntryKind::TurnStatic => {
                    (e.username.clone(), e.credential.clone(), CredSource::Static)
                }
                EntryKind::TurnMinted => match &minted_creds {
                    Some((u, p)) => (u.clone(), p.clone(), CredSource::Calls),
                    None => {
                        out.push(c.fail(
                            "no credentials: TURN Static Auth Secret is not set",
                            "set TURN Static Auth Secret to the turn-server's auth_secret",
                        ));
                        continue;
                    }
                },
                EntryKind::Mixed | EntryKind::Stun => {
                    out.push(c.fail(
                        "no credentials: the plugin mints none for an entry that mixes stun: and turn: URLs",
                        "put the stun: URLs in an entry of their own",
                    ));
                    continue;
                }
            };
            let check = check_turn_with(c, &u, username, password, src, Some(&tls), t);
            out.push(match tokio::time::timeout(bound(t), check).await {
                Ok(c) => c,
                Err(_) => Check::new("TURN URI", url)
                    .fail("timed out", "the TURN server stopped answering"),
            });
        }
    }
    out
}

/// JSON form of the report.
pub(crate) fn render_json(checks: &[Check]) -> Value {
    json!({
        "ok": checks.iter().all(|c| c.ok),
        "checks": checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mattermost_config_json() {
        // shape of a Mattermost 5.x config.json (abridged), TurnURI with two URIs
        let text = r#"{
            "ServiceSettings": {"SiteURL": "https://chat.example.com", "EnableInsecureOutgoingConnections": false},
            "WebrtcSettings": {
                "Enable": true,
                "GatewayWebsocketUrl": "wss://rtc.example.com:8189",
                "GatewayAdminUrl": "https://rtc.example.com:7089/admin",
                "GatewayAdminSecret": "janusoverlord",
                "StunURI": "stun:rtc.example.com:3478",
                "TurnURI": "turn:rtc.example.com:3478  turn:rtc.example.com:3478?transport=tcp",
                "TurnUsername": "mattermost",
                "TurnSharedKey": "s3cret"
            }
        }"#;
        let s = parse_mattermost_config(text).unwrap();
        assert_eq!(s.ws_url.as_deref(), Some("wss://rtc.example.com:8189"));
        assert_eq!(
            s.admin_url.as_deref(),
            Some("https://rtc.example.com:7089/admin")
        );
        assert_eq!(s.admin_secret.as_deref(), Some("janusoverlord"));
        assert_eq!(s.stun_uri.as_deref(), Some("stun:rtc.example.com:3478"));
        assert_eq!(
            s.turn_uris,
            vec![
                "turn:rtc.example.com:3478".to_string(),
                "turn:rtc.example.com:3478?transport=tcp".to_string()
            ]
        );
        assert_eq!(s.turn_username.as_deref(), Some("mattermost"));
        assert_eq!(s.turn_shared_key.as_deref(), Some("s3cret"));
        assert_eq!(s.enable, Some(true));
        // empty strings count as unset; no section is an error naming it
        let s =
            parse_mattermost_config(r#"{"WebrtcSettings":{"StunURI":"","TurnURI":""}}"#).unwrap();
        assert_eq!(s.stun_uri, None);
        assert!(s.turn_uris.is_empty());
        assert!(
            parse_mattermost_config("{}")
                .unwrap_err()
                .contains("WebrtcSettings")
        );
        // flags override the file
        let dir = std::env::temp_dir().join(format!("doctor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(&p, text).unwrap();
        let a = DoctorArgs {
            mattermost_config: Some(p),
            turn_uri: vec!["turn:127.0.0.1:1 turn:127.0.0.1:2".into()],
            admin_secret: Some("other".into()),
            ..DoctorArgs::default()
        };
        let s = a.settings().unwrap();
        assert_eq!(s.turn_uris, vec!["turn:127.0.0.1:1", "turn:127.0.0.1:2"]);
        assert_eq!(s.admin_secret.as_deref(), Some("other"));
        assert_eq!(s.ws_url.as_deref(), Some("wss://rtc.example.com:8189"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn urls_and_ice_uris() {
        let u = parse_url("https://rtc.example.com:7089/admin").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "rtc.example.com", 7089, "/admin")
        );
        let u = parse_url("ws://[::1]:8188").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "::1", 8188, "/")
        );
        assert!(parse_url("ftp://x").is_err());
        let i = parse_ice_uri("turn:h:3479?transport=tcp", "turn").unwrap();
        assert_eq!(
            i,
            IceUri {
                host: "h".into(),
                port: 3479,
                tcp: true,
                tls: false,
            }
        );
        let i = parse_ice_uri("stun:h", "stun").unwrap();
        assert_eq!(i.port, 3478);
        assert!(parse_ice_uri("turn:h?transport=sctp", "turn").is_err());
        // turns: is TLS over TCP, default port 5349; DTLS (transport=udp) is refused
        let i = parse_ice_uri("turns:h", "turns").unwrap();
        assert_eq!(
            (i.port, i.tcp, i.tls, i.transport()),
            (5349, true, true, "TLS")
        );
        let i = parse_ice_uri("turns:h:443?transport=tcp", "turns").unwrap();
        assert_eq!((i.port, i.tcp, i.tls), (443, true, true));
        assert!(parse_ice_uri("turns:h?transport=udp", "turns").is_err());
    }

    #[test]
    fn turn_credentials_as_mattermost_mints_them() {
        // `printf %s 1795737599:mattermost | openssl dgst -sha1 -hmac s3cret -binary | base64`
        let (u, p) = mattermost_turn_credentials("mattermost", "s3cret", 1_795_618_800, 0);
        assert_eq!(u, "1795737599:mattermost");
        let mut mac = Hmac::<Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(u.as_bytes());
        assert_eq!(p, STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(p.len(), 28);
    }

    #[test]
    fn turn_credentials_as_the_calls_plugin_mints_them() {
        // `printf %s 1700086400:alice | openssl dgst -sha1 -hmac s3cret -binary | base64`
        let (u, p) = calls_turn_credentials("alice", "s3cret", 1_700_000_000, 1440);
        assert_eq!(u, "1700086400:alice");
        assert_eq!(p, "HJX0XIkrCiQCuU88Z0oeXj+QW60=");
    }

    #[test]
    fn calls_plugin_settings_from_config_json() {
        // keys as Mattermost stores plugin settings: lowercased; the ICE servers as a
        // JSON string; the expiration as a number
        let text = r#"{
            "ServiceSettings": {"SiteURL": "https://chat.example.com"},
            "PluginSettings": {"Plugins": {"com.mattermost.calls": {
                "iceserversconfigs": "[{\"urls\":[\"stun:rtc.example.com:3478\"]},{\"urls\":[\"turn:rtc.example.com:3478\",\"turns:rtc.example.com:443?transport=tcp\"]}]",
                "turnstaticauthsecret": "s3cret",
                "turncredentialsexpirationminutes": 240,
                "serversideturn": true
            }}}
        }"#;
        let c = parse_calls_config(text).unwrap().unwrap();
        assert_eq!(c.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.expiration_minutes, Some(240));
        assert_eq!(c.server_side_turn, Some(true));
        let e = parse_ice_servers(c.ice_servers.as_ref().unwrap()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(entry_kind(&e[0]), EntryKind::Stun);
        assert_eq!(entry_kind(&e[1]), EntryKind::TurnMinted);
        assert_eq!(e[1].urls[1], "turns:rtc.example.com:443?transport=tcp");
        // mixed case keys and an expiration given as a string are read too
        let c = parse_calls_config(
            r#"{"PluginSettings":{"Plugins":{"com.mattermost.calls":{"TURNStaticAuthSecret":"x","TURNCredentialsExpirationMinutes":"60"}}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.secret.as_deref(), c.expiration_minutes),
            (Some("x"), Some(60))
        );
        assert_eq!(
            parse_calls_config(r#"{"PluginSettings":{}}"#).unwrap(),
            None
        );
        assert!(parse_calls_config("{").is_err());
    }

    #[test]
    fn ice_servers_entries_as_the_plugin_classifies_them() {
        let v = json!([
            {"urls": ["turn:h:3478"], "username": "u", "credential": "c"},
            {"urls": ["stun:h:3478", "turn:h:3478"]},
            {"urls": ["turns:h:443?transport=tcp", "turn:h:3478?transport=tcp"]}
        ]);
        let e = parse_ice_servers(&v).unwrap();
        let k: Vec<_> = e.iter().map(entry_kind).collect();
        assert_eq!(
            k,
            vec![
                EntryKind::TurnStatic,
                EntryKind::Mixed,
                EntryKind::TurnMinted
            ]
        );
        // the array or the string that holds it; an empty string is no entries
        assert_eq!(parse_ice_servers(&Value::String(v.to_string())).unwrap(), e);
        assert!(parse_ice_servers(&json!("")).unwrap().is_empty());
        // what the plugin rejects
        for (bad, says) in [
            (json!({"urls": ["turn:h"]}), "not a JSON array"),
            (json!([{"urls": "turn:h"}]), "must be an array"),
            (json!([{"url": ["turn:h"]}]), "no \"urls\""),
            (json!([{"urls": ["http://h"]}]), "not a stun:"),
            (json!([{"urls": []}]), "empty"),
            (json!("[{"), "not JSON"),
        ] {
            let err = parse_ice_servers(&bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn calls_mode_is_chosen_by_flags_or_by_a_config_with_only_the_plugin() {
        let dir = std::env::temp_dir().join(format!("doctor-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let calls_only = dir.join("calls.json");
        std::fs::write(
            &calls_only,
            r#"{"PluginSettings":{"Plugins":{"com.mattermost.calls":{"turnstaticauthsecret":"a"}}}}"#,
        )
        .unwrap();
        let both = dir.join("both.json");
        std::fs::write(
            &both,
            r#"{"WebrtcSettings":{"StunURI":"stun:h"},"PluginSettings":{"Plugins":{"com.mattermost.calls":{"turnstaticauthsecret":"a"}}}}"#,
        )
        .unwrap();
        let neither = dir.join("neither.json");
        std::fs::write(&neither, "{}").unwrap();
        let a = |p: &std::path::Path, calls: bool| DoctorArgs {
            mattermost_config: Some(p.to_path_buf()),
            calls,
            ..DoctorArgs::default()
        };
        assert!(
            matches!(a(&calls_only, false).plan(), Ok(Plan::Calls(c)) if c.secret.as_deref() == Some("a"))
        );
        assert!(matches!(a(&both, false).plan(), Ok(Plan::Webrtc(_))));
        assert!(matches!(a(&both, true).plan(), Ok(Plan::Calls(_))));
        let e = a(&neither, false).plan().unwrap_err();
        assert!(
            e.contains("WebrtcSettings") && e.contains("com.mattermost.calls"),
            "{e}"
        );
        // flags alone; a flag overrides the file
        let f = DoctorArgs {
            ice_servers: Some(r#"[{"urls":["turn:h"]}]"#.into()),
            turn_static_auth_secret: Some("b".into()),
            ..DoctorArgs::default()
        };
        assert!(matches!(f.plan(), Ok(Plan::Calls(c)) if c.secret.as_deref() == Some("b")));
        let f = DoctorArgs {
            turn_static_auth_secret: Some("b".into()),
            ..a(&calls_only, false)
        };
        assert!(matches!(f.plan(), Ok(Plan::Calls(c)) if c.secret.as_deref() == Some("b")));
        assert!(matches!(DoctorArgs::default().plan(), Ok(Plan::Webrtc(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn token_is_base64_of_a_26_char_id() {
        let id = mattermost_id();
        assert_eq!(id.len(), 26);
        let tok = STANDARD.encode(&id);
        assert_eq!(tok.len(), 36);
        assert_eq!(tok.matches('=').count(), 1);
    }
}
