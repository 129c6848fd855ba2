use super::calls::*;
use super::check_turn::*;
use super::cli::*;
use super::net::*;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

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
    let s = parse_mattermost_config(r#"{"WebrtcSettings":{"StunURI":"","TurnURI":""}}"#).unwrap();
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

#[test]
fn an_unparsable_target_fails_with_the_form_to_use() {
    let e = parse_ice_uri("stun.example.com", "stun").unwrap_err();
    let c = Check::new("STUN URI", "stun.example.com").unparsable(e, "stun:rtc.example.com:3478");
    assert!(!c.ok);
    assert_eq!(c.detail, "cannot parse: must start with stun:");
    assert_eq!(
        c.fix.as_deref(),
        Some("use the form stun:rtc.example.com:3478")
    );
}
