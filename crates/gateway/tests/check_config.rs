//! `gateway --check-config` through the real binary: exit 0 for a valid configuration
//! without binding anything (it runs next to the running service under systemd's
//! ExecReload), exit 2 with the key named for an invalid one, including TLS files that
//! do not load.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
mod scratch;

fn temp_dir() -> PathBuf {
    scratch::scratch_dir("callrelay-gw-check-config-")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `gateway --config FILE --check-config` with a fresh state directory: (exit
/// code, stderr).
fn check(toml: &str) -> (i32, String) {
    let dir = temp_dir();
    let p = dir.join("gateway.toml");
    std::fs::write(&p, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&p)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--check-config")
        .env_remove("CALLRELAY_GATEWAY_ADMIN_SECRET")
        .env_remove("CALLRELAY_GATEWAY_API_SECRET")
        .env_remove("CALLRELAY_GATEWAY_TURN_SECRET")
        .output()
        .unwrap();
    let state_created = dir.join("state").exists();
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        !state_created,
        "--check-config must not create the state directory"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_config_passes_without_binding_its_ports() {
    // ports held by this test, as the running gateway holds them during a reload
    let held: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let a: Vec<_> = held.iter().map(|l| l.local_addr().unwrap()).collect();
    let (code, err) = check(&format!(
        "listen = \"{}\"\nhttp_listen = \"{}\"\nadmin_listen = \"{}\"\nadmin_secret = \"adm1n\"\ntoken_auth = true\nturn_uris = [\"turn:127.0.0.1:3478\"]\nturn_secret = \"s3cret\"\n",
        a[0], a[1], a[2]
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("configuration OK"), "{err}");
    assert!(err.contains("TLS off"), "{err}");
    assert!(
        !err.contains("adm1n") && !err.contains("s3cret"),
        "secrets are never printed: {err}"
    );
    let (code, err) = check(&format!(
        "admin_secret = \"adm1n\"\ncert = \"{}\"\nkey = \"{}\"\n",
        fixture("cert1.pem").display(),
        fixture("key1.pem").display()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("TLS loaded"), "{err}");
}

#[test]
fn invalid_configs_exit_2_naming_the_key() {
    for (toml, key) in [
        ("admin_secrt = \"x\"\n", "admin_secrt"),
        ("max_sessions = 0\n", "max_sessions"),
        ("turn_uris = [\"turn:h:3478\"]\n", "turn_secret"),
        ("listen = \"not an address\"\n", "listen"),
        ("listen = [\n", "gateway.toml"),
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
        (fixture("cert1.pem"), fixture("key2.pem")),
        (fixture("cert1.pem"), garbage.clone()),
        (garbage.clone(), fixture("key1.pem")),
        (dir.join("missing.pem"), fixture("key1.pem")),
    ] {
        let (code, err) = check(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
        assert_eq!(code, 2, "{}/{}: {err}", cert.display(), key.display());
        assert!(err.contains("`cert`/`key`"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The cluster keys (docs/scale-out.md): a valid set passes without reaching NATS
/// (none listens at the URL) and prints no NATS secret; an invalid one exits 2 naming
/// its key, as does a cluster key without `nats_url` and a missing NKey seed file.
#[test]
fn cluster_keys_are_checked_without_connecting() {
    let (code, err) = check(
        "nats_url = [\"nats://127.0.0.1:9\"]\nnode_id = \"gw-1\"\nnats_user = \"gateway\"\nnats_password = \"n4ts-pw\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("n4ts-pw"), "secrets are never printed: {err}");
    for (toml, key) in [
        ("nats_token = \"t\"\n", "`nats_token`"),
        ("nats_url = [\"http://h:4222\"]\n", "`nats_url`"),
        (
            "nats_url = [\"nats://h:4222\"]\nnode_id = \"gw.example.com\"\n",
            "`node_id`",
        ),
        (
            "nats_url = [\"nats://h:4222\"]\nnats_nkey_seed_file = \"/nonexistent/seed.nk\"\n",
            "`nats_nkey_seed_file`",
        ),
        (
            "nats_url = [\"nats://h:4222\"]\nnats_ca_file = \"/nonexistent/ca.pem\"\n",
            "`nats_ca_file`",
        ),
    ] {
        let (code, err) = check(toml);
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(
            err.contains(key),
            "{toml}: error does not name {key}: {err}"
        );
    }
}
