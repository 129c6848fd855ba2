//! What docs/turn-server.md and docs/configuration.md promise about reloads and exit
//! codes, against the real binary (issue 11, "Promises without a test").
mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::raw::RawClient;
use common::{REALM, Server, TempDir, free_port, free_range, unix_now};

fn rest(secret: &str, user: &str) -> (String, String) {
    common::rest_credentials(secret.as_bytes(), unix_now() + 3600, user)
}

/// Waits (bounded) until the server log holds `needle` `n` times.
fn wait_log(server: &Server, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = server.log.lock().unwrap().matches(needle).count();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {n}x {needle:?} in the log:\n{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until `f` holds: reloads reach the workers asynchronously after the
/// log line, so the test waits on the behaviour itself, not on a sleep.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn allocates(server: &Server, user: &str, pass: &str) -> bool {
    RawClient::new(server.addr(), user, pass, REALM)
        .retransmitting()
        .allocate(1)
        .class
        == 2
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_settings() {
    let dir = TempDir::new("broken-reload");
    let cfg = dir.0.join("turn.toml");
    std::fs::write(&cfg, "auth_secret = [\"one\"]\nuser = [\"sam:pw\"]\n").unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let server = Server::start(&["--config", &cfg_s]);
    let (u1, p1) = rest("one", "a");
    let (u2, p2) = rest("two", "b");
    assert!(allocates(&server, &u1, &p1));
    assert!(allocates(&server, "sam", "pw"));
    assert!(!allocates(&server, &u2, &p2));
    // Each broken file would change the secret if any of it were applied.
    let broken = [
        "auth_secret = [\"two\"]\nunknown_key = 1\n",
        "auth_secret = [\"two\"]\nnonce_lifetime = 1\n",
        "auth_secret = [\"two\"\n",
        "auth_secret = [\"\"]\n",
    ];
    for (i, text) in broken.iter().enumerate() {
        std::fs::write(&cfg, text).unwrap();
        server.signal("-HUP");
        wait_log(
            &server,
            "reload failed, keeping the running configuration",
            i + 1,
        );
        assert!(
            allocates(&server, &u1, &p1),
            "{text}: old secret must still work"
        );
        assert!(
            allocates(&server, "sam", "pw"),
            "{text}: static user must stay"
        );
        assert!(
            !allocates(&server, &u2, &p2),
            "{text}: nothing may be applied"
        );
    }
    assert!(
        !server
            .log
            .lock()
            .unwrap()
            .contains("configuration reloaded")
    );
    // A good file afterwards is applied.
    std::fs::write(&cfg, "auth_secret = [\"two\"]\n").unwrap();
    server.signal("-HUP");
    wait_log(&server, "configuration reloaded", 1);
    eventually("the new secret works", || allocates(&server, &u2, &p2));
    assert!(!allocates(&server, &u1, &p1));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn sighup_reloads_deny_peer_and_static_users() {
    let dir = TempDir::new("users-reload");
    let cfg = dir.0.join("turn.toml");
    std::fs::write(
        &cfg,
        "user = [\"alice:pw1\"]\nallow_peer = [\"127.0.0.1/32\"]\n",
    )
    .unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let server = Server::start(&["--config", &cfg_s]);
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // UDP may lose a datagram (a loaded machine did once): the clients retransmit as
    // real ones do (RFC 8489 §6.2.1)
    let mut alice = RawClient::new(server.addr(), "alice", "pw1", REALM).retransmitting();
    assert_eq!(alice.allocate(1).class, 2);
    assert_eq!(alice.create_permission(peer).class, 2, "allowed before");
    assert!(!allocates(&server, "bob", "pw2"), "bob unknown before");
    let denied = "callrelay_turn_denied_peers_total{class=\"deny_list\"}";
    assert_eq!(server.metric(denied), 0.0);
    // Reload: alice goes, bob comes, 127.0.0.1 is denied by deny_peer (which wins over
    // allow_peer).
    std::fs::write(
        &cfg,
        "user = [\"bob:pw2\"]\nallow_peer = [\"127.0.0.1/32\"]\ndeny_peer = [\"127.0.0.1/32\"]\n",
    )
    .unwrap();
    server.signal("-HUP");
    wait_log(&server, "configuration reloaded", 1);
    eventually("bob allocates", || allocates(&server, "bob", "pw2"));
    assert!(!allocates(&server, "alice", "pw1"), "alice removed");
    // alice's running allocation keeps its key (the call outlives the user) but new
    // permissions follow the new policy.
    eventually("127.0.0.1 denied", || {
        alice.create_permission(peer).code == Some(403)
    });
    let mut bob = RawClient::new(server.addr(), "bob", "pw2", REALM).retransmitting();
    assert_eq!(bob.allocate(1).class, 2);
    assert_eq!(bob.create_permission(peer).code, Some(403));
    let n = server.wait_metric(denied, |v| v >= 2.0);
    assert!(n >= 2.0, "{n}");
    assert_eq!(server.stop(), Some(0));
}

/// Runs the binary with `args` and returns its exit code (bounded wait) and stderr.
fn exit_code(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turn-server"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("turn-server {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn exit_code_2_for_config_errors_1_for_a_port_in_use() {
    let port = free_port();
    let mport = free_port();
    let relay = free_range(10);
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{mport}");
    let ports = format!("{}-{}", relay.0, relay.1);
    let base = [
        "--listen",
        &listen,
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        &ports,
        "--metrics-listen",
        &metrics,
        "--auth-secret",
        "s",
    ];
    // Config errors: exit 2, the message names the key.
    for (extra, key) in [
        (&["--relay-ports", "9-1"][..], "relay_ports"),
        (&["--rate-limit-sources", "1"][..], "rate_limit_sources"),
        (
            &["--config", "/nonexistent/turn.toml"][..],
            "/nonexistent/turn.toml",
        ),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        // A repeated single-value flag is a clap error: drop the base one.
        if extra[0] == "--relay-ports" {
            args.retain(|a| *a != "--relay-ports" && *a != ports);
        }
        args.extend_from_slice(extra);
        let (code, err) = exit_code(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(key), "{extra:?}: {err}");
    }
    let dir = TempDir::new("exit2");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "listen = 3478\n").unwrap();
    let (code, err) = exit_code(&["--config", bad.to_str().unwrap(), "--auth-secret", "s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen"), "{err}");
    // The TURN port taken (UDP and TCP): exit 1.
    let _udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let _tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, err) = exit_code(&base);
    assert_eq!(code, Some(1), "{err}");
    // The metrics port taken: exit 1 too.
    drop((_udp, _tcp));
    let _m = TcpListener::bind(("127.0.0.1", mport)).unwrap();
    let (code, err) = exit_code(&base);
    assert_eq!(code, Some(1), "{err}");
}
