//! The Mattermost Calls plugin: its settings, its ICE servers, and the run of its checks.

use super::check_stun::check_stun;
use super::check_turn::{CredSource, check_turn_with, rest_credentials, unix_now};
use super::cli::{DoctorArgs, nonempty};
use super::net::parse_ice_uri;
use super::report::Check;
use serde_json::Value;
use std::time::Duration;

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

/// The plugin id whose settings hold the Calls TURN configuration.
pub(super) const CALLS_PLUGIN: &str = "com.mattermost.calls";

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
pub(super) struct IceEntry {
    pub(super) urls: Vec<String>,
    pub(super) username: String,
    pub(super) credential: String,
}

/// How the Calls plugin treats an entry (rtcd `ICEServerConfig.IsTURN`/`IsSTUN`: every
/// URL of the entry must have the scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    Stun,
    /// Without username and credential: the plugin mints credentials for it.
    TurnMinted,
    /// With a fixed username or credential: handed out unchanged.
    TurnStatic,
    /// stun: and turn: URLs mixed: the plugin mints nothing for it.
    Mixed,
}

pub(super) fn entry_kind(e: &IceEntry) -> EntryKind {
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
pub(super) fn parse_ice_servers(v: &Value) -> Result<Vec<IceEntry>, String> {
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
pub(super) fn calls_turn_credentials(
    mattermost_username: &str,
    secret: &str,
    now_unix: u64,
    minutes: u64,
) -> (String, String) {
    let expiry = now_unix.saturating_add(minutes.saturating_mul(60));
    rest_credentials(expiry, mattermost_username, secret)
}

/// Runs the checks of a Calls plugin deployment: the ICE servers setting itself, then
/// STUN and TURN against every URL with credentials minted as the plugin mints them.
pub(crate) async fn run_calls(args: &DoctorArgs, cs: &CallsSettings) -> Vec<Check> {
    let (t, tls) = match super::start(args) {
        Ok(x) => x,
        Err(checks) => return checks,
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
                    out.push(c.unparsable(e, "turn:rtc.example.com:3478, turn:rtc.example.com:3478?transport=tcp or turns:rtc.example.com:443?transport=tcp"));
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
