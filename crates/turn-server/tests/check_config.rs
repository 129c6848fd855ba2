//! `turn-server --check-config` through the real binary: exit 0 for a valid
//! configuration without binding anything (it runs next to the running service under
//! systemd's ExecReload), exit 2 with the key named for an invalid one, including TLS
//! files that do not load.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

static N: AtomicU64 = AtomicU64::new(0);

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "callrelay-turn-check-config-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Test-only certificate and key for 127.0.0.1 (the gateway's TLS test fixtures).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures")
        .join(name)
}

/// Runs `turn-server --config FILE --check-config`: (exit code, stderr).
fn check(toml: &str) -> (i32, String) {
    let dir = temp_dir();
    let p = dir.join("turn-server.toml");
    std::fs::write(&p, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_turn-server"))
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_config_passes_without_binding_its_ports() {
    // The ports are held by this test, as a running turn-server holds them when systemd
    // runs the check before a reload: the check must not try to bind them.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let _udp = UdpSocket::bind(("127.0.0.1", port)).ok();
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = check(&format!(
        "listen = [\"127.0.0.1:{port}\"]\nmetrics_listen = \"{}\"\nrelay_ip = [\"127.0.0.1\"]\nauth_secret = [\"s3cret\"]\n",
        metrics.local_addr().unwrap()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("configuration OK"), "{err}");
    assert!(err.contains("TLS off"), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the secret is never printed: {err}"
    );
    // and with a TLS pair that loads
    let (code, err) = check(&format!(
        "relay_ip = [\"127.0.0.1\"]\nauth_secret = [\"s3cret\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        fixture("cert1.pem").display(),
        fixture("key1.pem").display()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("TLS loaded"), "{err}");
}

#[test]
fn invalid_configs_exit_2_naming_the_key() {
    for (toml, key) in [
        // a typo: unknown keys are rejected
        (
            "relay_ip = [\"127.0.0.1\"]\nauth_secrets = [\"x\"]\n",
            "auth_secrets",
        ),
        // a value out of range
        (
            "relay_ip = [\"127.0.0.1\"]\nauth_secret = [\"x\"]\nrelay_ports = \"70000-80000\"\n",
            "relay_ports",
        ),
        // no credentials at all (the shipped example before the admin edits it)
        ("relay_ip = [\"127.0.0.1\"]\n", "auth_secret"),
        // not TOML
        ("relay_ip = [\n", "turn-server.toml"),
    ] {
        let (code, err) = check(toml);
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(
            err.contains(key),
            "{toml}: error does not name {key}: {err}"
        );
    }
}

#[test]
fn tls_files_that_do_not_load_exit_2_naming_cert_and_key() {
    let dir = temp_dir();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").unwrap();
    for (cert, key) in [
        // key of another certificate
        (fixture("cert1.pem"), fixture("key2.pem")),
        // no PEM at all
        (fixture("cert1.pem"), garbage.clone()),
        // a missing file
        (dir.join("missing.pem"), fixture("key1.pem")),
    ] {
        let (code, err) = check(&format!(
            "relay_ip = [\"127.0.0.1\"]\nauth_secret = [\"x\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
        assert_eq!(code, 2, "{}/{}: {err}", cert.display(), key.display());
        assert!(err.contains("`cert`/`key`"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_turn-server"))
        .args([
            "--config",
            "/nonexistent/turn-server.toml",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/turn-server.toml"));
}
