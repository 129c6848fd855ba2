use super::cluster::is_name;
use super::*;
use std::net::IpAddr;
use std::path::Path;

/// The gateway's file schema from TOML text, as `--config` reads it.
fn parse_toml(text: &str) -> Result<FileConfig, ConfigError> {
    callrelay_service::config::parse_toml(Path::new("gateway.toml"), text)
}

#[test]
fn huge_timeouts_are_rejected_not_overflowed() {
    for (f, key) in [
        (
            FileConfig {
                session_timeout: Some(u64::MAX),
                ..FileConfig::default()
            },
            "config key `session_timeout`:",
        ),
        (
            FileConfig {
                reclaim_session_timeout: Some(u64::MAX),
                ..FileConfig::default()
            },
            "config key `reclaim_session_timeout`:",
        ),
        (
            FileConfig {
                token_max_idle: Some(u64::MAX),
                ..FileConfig::default()
            },
            "config key `token_max_idle`:",
        ),
        (
            FileConfig {
                max_sessions: Some(0),
                ..FileConfig::default()
            },
            "config key `max_sessions`:",
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
            "config key `turn_ttl`: 59 is out of range; use 60..=604800 seconds",
        ),
        (
            FileConfig {
                session_timeout: Some(31_536_001),
                ..d()
            },
            "config key `session_timeout`: 31536001 is out of range; use 0..=31536000 seconds (0 = never)",
        ),
        (
            FileConfig {
                reclaim_session_timeout: Some(86_401),
                ..d()
            },
            "config key `reclaim_session_timeout`: 86401 is out of range; use 0..=86400 seconds",
        ),
        (
            FileConfig {
                token_max_idle: Some(315_360_001),
                ..d()
            },
            "config key `token_max_idle`: 315360001 is out of range; use 0..=315360000 seconds (0 = never)",
        ),
        (
            FileConfig {
                max_sessions: Some(10_000_001),
                ..d()
            },
            "config key `max_sessions`: 10000001 is out of range; use 1..=10000000",
        ),
        (
            FileConfig {
                longpoll_timeout: Some(0),
                ..d()
            },
            "config key `longpoll_timeout`: 0 is out of range; use 1..=300 seconds",
        ),
        (
            FileConfig {
                max_message_bytes: Some(4095),
                ..d()
            },
            "config key `max_message_bytes`: 4095 is out of range; use 4096..=16777216",
        ),
        (
            FileConfig {
                ws_queue: Some(65_537),
                ..d()
            },
            "config key `ws_queue`: 65537 is out of range; use 16..=65536",
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
            "config key `max_username_bytes`: 257 is out of range; use 16..=256 bytes",
        ),
        (
            FileConfig {
                ws_queue_bytes: Some(1000),
                ..d()
            },
            "config key `ws_queue_bytes`: 1000 is out of range; use 65536..=67108864 bytes",
        ),
        (
            FileConfig {
                http_queue_bytes: Some(0),
                ..d()
            },
            "config key `http_queue_bytes`: 0 is out of range; use 65536..=67108864 bytes",
        ),
        (
            FileConfig {
                max_candidate_bytes: Some(100),
                ..d()
            },
            "config key `max_candidate_bytes`: 100 is out of range; use 512..=65536 bytes",
        ),
        (
            FileConfig {
                ws_idle_timeout: Some(1),
                ..d()
            },
            "config key `ws_idle_timeout`: 1 is out of range; use 2..=3600 seconds",
        ),
        (
            FileConfig {
                http_body_timeout: Some(0),
                ..d()
            },
            "config key `http_body_timeout`: 0 is out of range; use 1..=300 seconds",
        ),
        (
            FileConfig {
                max_connections_per_ip: Some(0),
                ..d()
            },
            "config key `max_connections_per_ip`: 0 is out of range; use 1..=1000000",
        ),
        (
            FileConfig {
                max_admin_connections: Some(3),
                ..d()
            },
            "config key `max_admin_connections`: 3 is out of range; use 4..=10000",
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
    let file = parse_toml("cert = \"c.pem\"\nkey = \"k.pem\"\nadmin_tls = false\n").unwrap();
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
    assert!(e.to_string().starts_with("config key `ws_tls`:"), "{e}");
    let e = Config::resolve(
        FileConfig {
            test_page_ws_url: Some("http://x".into()),
            ..FileConfig::default()
        },
        FileConfig::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("config key `test_page_ws_url`:"),
        "{e}"
    );
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
    let file =
        parse_toml("trusted_proxies = [\"10.1.0.0/16\", \"2001:db8::/32\", \"192.0.2.7\"]\n")
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
    let none = parse_toml("trusted_proxies = []\n").unwrap();
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
        assert!(
            e.starts_with("config key `trusted_proxies`:") && e.contains(want),
            "{e}"
        );
    }
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let e = parse_toml("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
    assert!(e.to_string().contains("listen_port"), "{e}");
}

#[test]
fn flags_override_file_and_validation_names_keys() {
    let file = parse_toml("session_timeout = 5\ntoken_auth = true\n").unwrap();
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
    assert!(
        e.to_string().starts_with("config key `turn_secret`:"),
        "{e}"
    );
    let bad = FileConfig {
        cert: Some("c.pem".into()),
        ..FileConfig::default()
    };
    assert!(
        Config::resolve(bad, FileConfig::default())
            .unwrap_err()
            .to_string()
            .starts_with("config key `key`:")
    );
    let bad = FileConfig {
        admin_listen: Some("0.0.0.0:7088".parse().unwrap()),
        ..FileConfig::default()
    };
    assert!(
        Config::resolve(bad, FileConfig::default())
            .unwrap_err()
            .to_string()
            .starts_with("config key `admin_secret`:")
    );
}

#[test]
fn cluster_keys_resolve_validate_and_redact() {
    let d = FileConfig::default;
    assert!(
        Config::default().cluster.is_none(),
        "no nats_url: a node alone"
    );
    let toml = r#"
        nats_url = ["nats://127.0.0.1:4222, tls://10.0.0.2:4222", "nats://10.0.0.3:4222"]
        node_id = "gw-1"
        nats_user = "gateway"
        nats_password = "hunter2-secret"
    "#;
    let c = Config::resolve(d(), parse_toml(toml).unwrap()).unwrap();
    let cl = c.cluster.clone().unwrap();
    assert_eq!(
        cl.urls,
        [
            "nats://127.0.0.1:4222",
            "tls://10.0.0.2:4222",
            "nats://10.0.0.3:4222"
        ]
    );
    assert_eq!(
        (cl.node_id.as_str(), cl.name.as_str()),
        ("gw-1", "callrelay")
    );
    assert!(cl.tls, "a tls:// URL requires TLS");
    assert_eq!(cl.token_bucket(), "callrelay_tokens");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    // flags win over the file, the default node id is a valid name
    let cli = FileConfig {
        nats_url: Some(vec!["nats://127.0.0.1:4333".into()]),
        nats_user: Some(String::new()),
        nats_password: Some(String::new()),
        nats_token: Some("tok-secret".into()),
        ..d()
    };
    let file = FileConfig {
        nats_url: Some(vec!["nats://127.0.0.1:4222".into()]),
        ..d()
    };
    let cl = Config::resolve(cli, file).unwrap().cluster.unwrap();
    assert_eq!(cl.urls, ["nats://127.0.0.1:4333"]);
    assert!(is_name(&cl.node_id), "{:?}", cl.node_id);
    assert!(!format!("{cl:?}").contains("tok-secret"));
    assert!(!cl.tls);
    // every error names its key
    let url = || Some(vec!["nats://127.0.0.1:4222".to_string()]);
    for (f, key) in [
        (
            FileConfig {
                nats_user: Some("u".into()),
                ..d()
            },
            "config key `nats_user`:",
        ),
        (
            FileConfig {
                cluster: Some("c".into()),
                ..d()
            },
            "config key `cluster`:",
        ),
        (
            FileConfig {
                nats_url: Some(vec!["http://x:1".into()]),
                ..d()
            },
            "config key `nats_url`:",
        ),
        (
            FileConfig {
                nats_url: url(),
                node_id: Some("a.b".into()),
                ..d()
            },
            "config key `node_id`:",
        ),
        (
            FileConfig {
                nats_url: url(),
                cluster: Some("a b".into()),
                ..d()
            },
            "config key `cluster`:",
        ),
        (
            FileConfig {
                nats_url: url(),
                nats_user: Some("u".into()),
                ..d()
            },
            "config key `nats_password`:",
        ),
        (
            FileConfig {
                nats_url: url(),
                nats_password: Some("p".into()),
                ..d()
            },
            "config key `nats_user`:",
        ),
        (
            FileConfig {
                nats_url: url(),
                nats_token: Some("t".into()),
                nats_nkey_seed_file: Some("seed".into()),
                ..d()
            },
            "config key `nats_token`:",
        ),
    ] {
        let e = Config::resolve(f, d()).unwrap_err().to_string();
        assert!(e.starts_with(key), "{e}");
    }
    assert!(
        parse_toml("nats_urls = []").is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn early_offer_needs_the_turn_servers_control_endpoint() {
    let key_of = |f: FileConfig| match Config::resolve(FileConfig::default(), f) {
        Err(e) => e.to_string(),
        Ok(_) => "ok".into(),
    };
    let c = Config::default();
    assert!(
        !c.early_offer,
        "off unless the deployment promises relay-only"
    );
    assert_eq!(c.early_offer_timeout, Duration::from_millis(50));
    assert!(
        key_of(parse_toml("early_offer = true").unwrap()).starts_with("config key `early_offer`:")
    );
    assert!(
        key_of(parse_toml("turn_control_urls = [\"127.0.0.1:9641\"]").unwrap())
            .starts_with("config key `turn_control_urls`:"),
        "the scheme is required"
    );
    assert!(
        key_of(parse_toml("early_offer_timeout_ms = 0").unwrap())
            .starts_with("config key `early_offer_timeout_ms`:")
    );
    let f = parse_toml(
        "early_offer = true\nturn_control_urls = [\"http://127.0.0.1:9641/\"]\nturn_control_secret = \"s3cret-control-0123\"\n",
    )
    .unwrap();
    let c = Config::resolve(FileConfig::default(), f).unwrap();
    assert!(c.early_offer);
    assert_eq!(c.turn_control, ["127.0.0.1:9641".parse().unwrap()]);
    assert!(!format!("{c:?}").contains("s3cret-control-0123"));
}
