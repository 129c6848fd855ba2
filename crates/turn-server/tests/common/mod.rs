//! Helpers for tests that start the real `turn-server` binary on loopback.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of this helper module"
)]

pub mod netns;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "test-secret";
pub const REALM: &str = "test";

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A free range of `n` consecutive UDP ports (checked now; relay ports of one test).
pub fn free_range(n: u16) -> (u16, u16) {
    // Ranges already handed to servers of this test binary: tests run in parallel, and a
    // range is checked free before its server binds any of it, so two concurrent picks
    // could overlap. Then one server's relay sockets took the other's ports and its
    // Allocates ran out of bind retries (508, flaky when both tests started together).
    static TAKEN: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    'outer: for _ in 0..200 {
        let base = 20000 + (rand_u16() % 30000);
        let last = base + n - 1;
        if taken.iter().any(|&(a, b)| base <= b && a <= last) {
            continue;
        }
        for p in base..=last {
            if UdpSocket::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        taken.push((base, last));
        return (base, last);
    }
    panic!("no free range");
}

fn rand_u16() -> u16 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (n ^ (std::process::id() << 7)) as u16
}

/// TURN REST credentials `(username, password)` for `user` under `secret`, minted with
/// shared-ice the way Mattermost and the gateway mint them.
pub fn rest_credentials(secret: &[u8], expiry_unix: u64, user: &str) -> (String, String) {
    let c = shared_ice::auth::mint(
        &shared_ice::auth::RestSecret::new(secret),
        user,
        expiry_unix,
    );
    (c.username.clone(), c.password.clone())
}

/// The TURN REST password of `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    shared_ice::auth::RestSecret::new(secret)
        .password(username)
        .as_str()
        .to_owned()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A running `turn-server`; killed with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub metrics: SocketAddr,
    pub relay: (u16, u16),
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts with the typical test flags plus `extra`; waits for "turn-server ready".
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_relay_ports(40, extra)
    }

    /// Like [`Server::start`] with a relay range of `n` ports (load tests).
    pub fn start_with_relay_ports(n: u16, extra: &[&str]) -> Self {
        Self::start_wrapped(&[], n, extra)
    }

    /// Like [`Server::start`], run through `wrapper` (e.g. `env VAR=value`).
    pub fn start_wrapped(wrapper: &[&str], n: u16, extra: &[&str]) -> Self {
        let port = free_port();
        let mport = free_port();
        let relay = free_range(n);
        let listen = format!("127.0.0.1:{port}");
        let metrics = format!("127.0.0.1:{mport}");
        let ports = format!("{}-{}", relay.0, relay.1);
        let mut args = vec![
            "--listen",
            &listen,
            "--relay-ports",
            &ports,
            "--realm",
            REALM,
            "--metrics-listen",
            &metrics,
        ];
        if !extra.contains(&"--drain-timeout") {
            args.extend_from_slice(&["--drain-timeout", "2"]);
        }
        if !extra.contains(&"--relay-ip") {
            args.extend_from_slice(&["--relay-ip", "127.0.0.1"]);
        }
        let has_auth = extra
            .iter()
            .any(|a| *a == "--auth-secret" || *a == "--user" || *a == "--config");
        if !has_auth {
            args.extend_from_slice(&["--auth-secret", SECRET]);
        }
        args.extend_from_slice(extra);
        Self::spawn_wrapped(wrapper, &args, port, mport, relay)
    }

    pub fn spawn(args: &[&str], port: u16, mport: u16, relay: (u16, u16)) -> Self {
        Self::spawn_wrapped(&[], args, port, mport, relay)
    }

    /// Like `start`, with the server's `RLIMIT_NOFILE` set to `nofile` (util-linux `prlimit`).
    pub fn start_with_nofile(nofile: u32, extra: &[&str]) -> Self {
        let port = free_port();
        let mport = free_port();
        // More relay ports than descriptors: the fd limit, not the range, is what runs out.
        let relay = free_range(200);
        let listen = format!("127.0.0.1:{port}");
        let metrics = format!("127.0.0.1:{mport}");
        let ports = format!("{}-{}", relay.0, relay.1);
        let mut args = vec![
            "--listen",
            &listen,
            "--relay-ports",
            &ports,
            "--realm",
            REALM,
            "--metrics-listen",
            &metrics,
            "--relay-ip",
            "127.0.0.1",
            "--auth-secret",
            SECRET,
            "--drain-timeout",
            "2",
        ];
        args.extend_from_slice(extra);
        let limit = format!("--nofile={nofile}");
        Self::spawn_wrapped(&["prlimit", &limit, "--"], &args, port, mport, relay)
    }

    /// Runs the server through `wrapper` (a command that execs its arguments), if any.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        args: &[&str],
        port: u16,
        mport: u16,
        relay: (u16, u16),
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_turn-server");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TURN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start turn-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let echo = std::env::var("TURN_TEST_LOG").is_ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("server: {line}");
                }
                if line.contains("turn-server ready") {
                    let _ = tx.send(());
                }
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
            }
        });
        let s = Self {
            child,
            port,
            metrics: SocketAddr::from(([127, 0, 0, 1], mport)),
            relay,
            log,
        };
        if rx.recv_timeout(Duration::from_secs(15)).is_err() {
            panic!(
                "turn-server did not become ready:\n{}",
                s.log.lock().unwrap()
            );
        }
        s
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Prometheus text from /metrics.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Value of one sample line (`name{labels}`, matched whole); panics when the series is
    /// not exported: a misspelt or removed series must not read as 0.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text(), series)
    }

    /// Same as [`Server::metric`] (kept for the tests that spelled strictness out).
    pub fn metric_strict(&self, series: &str) -> f64 {
        self.metric(series)
    }

    /// Waits (bounded) until `series` satisfies `pred` (metrics are flushed twice a second).
    /// The series must exist.
    pub fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if pred(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("turn-server did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the sample line whose series is exactly `series`, if there is one.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The value of the sample line whose series is exactly `series`; panics when there is
/// none (0 for a series that does not exist would let a check pass vacuously).
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// A UDP echo peer on loopback (bounded lifetime: stops when dropped).
pub struct EchoPeer {
    pub addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EchoPeer {
    pub fn start() -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "turn-test-{tag}-{}-{}",
            std::process::id(),
            rand_u16()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` (its stdout and stderr piped) at most `limit`, killing it then;
/// returns its exit status (None: killed at the limit) and all it printed, stdout first.
pub fn output_within(mut child: Child, limit: Duration) -> (Option<ExitStatus>, String) {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    (status, text)
}
