//! The `gateway doctor` flags, the Mattermost WebRTC settings and which plan they choose.

use super::Plan;
use super::calls::{CALLS_PLUGIN, parse_calls_config};
use serde_json::Value;
use std::path::PathBuf;

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

pub(super) fn nonempty(s: Option<&str>) -> Option<String> {
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
