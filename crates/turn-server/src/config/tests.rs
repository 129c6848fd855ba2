use std::path::Path;

use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut v = vec!["turn-server"];
    v.extend_from_slice(args);
    Cli::parse_from(v)
}

fn err_key(c: &Cli) -> &'static str {
    match Config::load(c) {
        Err(ConfigError::Key { key, .. }) => key,
        other => panic!("expected key error, got {other:?}"),
    }
}

#[test]
fn typical_test_invocation() {
    let c = Config::load(&cli(&[
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        "40000-40999",
        "--auth-secret",
        "S",
        "--realm",
        "test",
        "--allow-peer",
        "127.0.0.1/32",
        "--metrics-listen",
        "127.0.0.1:0",
    ]))
    .unwrap();
    assert_eq!(c.relay_ports, (40000, 40999));
    assert_eq!(c.realm, "test");
    assert!(c.policy.check("127.0.0.1".parse().unwrap()).is_ok());
    assert_eq!(c.default_lifetime, 600);
    assert_eq!(c.max_lifetime, 3600);
    assert_eq!(c.metrics_max_connections, 64);
    assert_eq!(c.metrics_header_timeout, Duration::from_secs(10));
    assert_eq!(c.metrics_shutdown_grace, Duration::from_secs(1));
    assert_eq!(c.worker_stop_timeout, Duration::from_secs(3));
    assert!(!format!("{c:?}").contains("\"S\""));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.workers, default_workers(cpus));
    // The kernel fast path is off until it enforces everything userspace does.
    assert_eq!(c.offload, OffloadMode::Auto);
    assert!(c.offload_interfaces.is_empty());
}

#[test]
fn offload_mode_and_interfaces_are_checked() {
    let base = ["--listen", "127.0.0.1:0", "--auth-secret", "S"];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        cli(&v)
    };
    for (s, m) in [
        ("auto", OffloadMode::Auto),
        ("xdp", OffloadMode::Xdp),
        ("tc", OffloadMode::Tc),
        ("off", OffloadMode::Off),
    ] {
        assert_eq!(Config::load(&with(&["--offload", s])).unwrap().offload, m);
    }
    assert_eq!(err_key(&with(&["--offload", "on"])), "offload");
    let c = Config::load(&with(&[
        "--offload-interface",
        "eth0",
        "--offload-interface",
        "veth1",
    ]))
    .unwrap();
    assert_eq!(c.offload_interfaces, ["eth0", "veth1"]);
    assert_eq!(
        err_key(&with(&["--offload-interface", "a-name-far-too-long"])),
        "offload_interface"
    );
}

#[test]
fn default_workers_leave_half_the_cpus_to_the_kernel() {
    let got: Vec<usize> = [1, 2, 3, 4, 8, 31, 32, 64]
        .into_iter()
        .map(default_workers)
        .collect();
    assert_eq!(got, [1, 1, 1, 2, 4, 15, 16, 16]);
}

#[test]
fn errors_name_the_key() {
    assert_eq!(err_key(&cli(&["--listen", "127.0.0.1:0"])), "auth_secret");
    assert_eq!(err_key(&cli(&["--auth-secret", "s"])), "relay_ip");
    assert_eq!(
        err_key(&cli(&["--auth-secret", "s", "--listen", "nope"])),
        "listen"
    );
    assert_eq!(
        err_key(&cli(&[
            "--auth-secret",
            "s",
            "--relay-ip",
            "127.0.0.1",
            "--relay-ports",
            "9-1"
        ])),
        "relay_ports"
    );
    assert_eq!(
        err_key(&cli(&[
            "--auth-secret",
            "s",
            "--relay-ip",
            "127.0.0.1",
            "--allow-peer",
            "x"
        ])),
        "allow_peer"
    );
    assert_eq!(
        err_key(&cli(&[
            "--auth-secret",
            "s",
            "--relay-ip",
            "127.0.0.1",
            "--cert",
            "c.pem"
        ])),
        "key"
    );
    assert_eq!(
        err_key(&cli(&[
            "--auth-secret",
            "s",
            "--relay-ip",
            "127.0.0.1",
            "--tls-listen",
            "127.0.0.1:5349"
        ])),
        "tls_listen"
    );
    assert_eq!(
        err_key(&cli(&["--user", "nopassword", "--relay-ip", "127.0.0.1"])),
        "user"
    );
    assert_eq!(
        err_key(&cli(&[
            "--auth-secret",
            "s",
            "--relay-ip",
            "127.0.0.1",
            "--max-lifetime",
            "100"
        ])),
        "max_lifetime"
    );
    for (flag, v) in [
        ("--metrics-max-connections", "3"),
        ("--metrics-header-timeout", "0"),
        ("--metrics-shutdown-grace", "31"),
        ("--worker-stop-timeout", "0"),
        ("--rate-limit-sources", "8"),
        ("--rate-limit-ipv6-prefix", "8"),
        ("--rate-limit-ipv6-prefix", "129"),
    ] {
        let key = flag.trim_start_matches("--").replace('-', "_");
        assert_eq!(
            err_key(&cli(&[
                "--auth-secret",
                "s",
                "--relay-ip",
                "127.0.0.1",
                flag,
                v
            ])),
            key
        );
    }
}

#[test]
fn file_and_flag_override() {
    let dir = std::env::temp_dir().join(format!("turn-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("t.toml");
    std::fs::write(&p, "realm = \"file\"\nauth_secret = [\"a\", \"b\"]\nrelay_ip = [\"127.0.0.1\"]\nuser_quota = 3\n").unwrap();
    let c = Config::load(&cli(&["--config", p.to_str().unwrap(), "--realm", "flag"])).unwrap();
    assert_eq!(c.realm, "flag");
    assert_eq!(c.auth_secrets.len(), 2);
    assert_eq!(c.user_quota, 3);
    std::fs::write(&p, "realmm = \"x\"\n").unwrap();
    let e = Config::load(&cli(&["--config", p.to_str().unwrap()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("realmm"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_configs_load() {
    // The annotated deploy example must parse (unknown keys are rejected) and, once it
    // has a secret, validate.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/turn-server.toml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let f: FileConfig = callrelay_service::config::parse_toml(&p, &text)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let c = cli(&["--auth-secret", "s"]);
    Config::merge(&c, f).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

#[test]
fn control_secret_is_checked_redacted_and_off_by_default() {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--auth-secret",
        "S",
    ];
    let c = Config::load(&cli(&base)).unwrap();
    assert!(c.control_secret.is_none(), "no endpoint unless asked for");
    assert_eq!(c.control_rate, 200);
    let mut args = base.to_vec();
    args.extend_from_slice(&["--control-secret", "short"]);
    assert_eq!(err_key(&cli(&args)), "control_secret");
    let secret = "a-control-secret-long-enough";
    let mut args = base.to_vec();
    args.extend_from_slice(&["--control-secret", secret, "--control-rate", "0"]);
    assert_eq!(err_key(&cli(&args)), "control_rate");
    args.pop();
    args.push("50");
    let c = Config::load(&cli(&args)).unwrap();
    let s = c.control_secret.as_ref().unwrap();
    assert!(s.matches(secret.as_bytes()));
    assert!(!s.matches(b"a-control-secret-long-enougH"));
    assert!(!s.matches(b""));
    assert!(!format!("{c:?}").contains(secret));
    assert_eq!(c.control_rate, 50);
}

#[test]
fn permission_and_channel_lifetimes_may_only_be_shortened() {
    let base = ["--auth-secret", "s", "--relay-ip", "127.0.0.1"];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        cli(&v)
    };
    let c = Config::load(&with(&[])).unwrap();
    assert_eq!((c.permission_lifetime, c.channel_lifetime), (300, 600));
    let c = Config::load(&with(&[
        "--permission-lifetime",
        "2",
        "--channel-lifetime",
        "3",
    ]))
    .unwrap();
    assert_eq!((c.permission_lifetime, c.channel_lifetime), (2, 3));
    for (flag, v, key) in [
        ("--permission-lifetime", "0", "permission_lifetime"),
        ("--permission-lifetime", "301", "permission_lifetime"),
        ("--channel-lifetime", "0", "channel_lifetime"),
        ("--channel-lifetime", "601", "channel_lifetime"),
    ] {
        assert_eq!(err_key(&with(&[flag, v])), key, "{flag} {v}");
    }
}
