//! Three network namespaces joined by veth pairs for the kernel fast-path tests
//! (docs/offload.md), never the machine's own interfaces; deleted on drop:
//!
//! ```text
//!  client ns            server ns                            peer ns
//!  c0 10.0.1.2 ─── s0 10.0.1.1 (listen)   s1 10.0.2.1 (relay) ─── p0 10.0.2.2
//!     2001:db8:1::2    2001:db8:1::1        2001:db8:2::1          2001:db8:2::2
//! ```
//!
//! Fixed MAC addresses and permanent neighbours (the first packet already finds its next
//! hop: the program passes packets with an unresolved neighbour to userspace), forwarding
//! on in the server namespace (`bpf_fib_lookup` needs it) and transmit checksum offload off
//! on the senders' veths (veth would leave UDP checksums to the device, and the program
//! passes such packets to userspace). GRO and threaded NAPI on the server's interfaces, as
//! a NIC has them, so back-to-back datagrams arrive in batches GRO could merge.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of this helper module"
)]

use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `cmd` and says whether it succeeded.
pub fn sh(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn must(cmd: &[&str]) {
    assert!(sh(cmd), "failed: {}", cmd.join(" "));
}

/// Why this machine cannot build the namespaces (not root, or one of `tools` missing).
pub fn missing(tools: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces and BPF need it)".into());
    }
    for tool in tools {
        if !sh(&["sh", "-c", &format!("command -v {tool} >/dev/null")]) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The three namespaces `{prefix}c`, `{prefix}s`, `{prefix}p`; deleted on drop.
pub struct Namespaces(pub String);

impl Namespaces {
    /// `tag` keeps the names of concurrent tests of one binary apart.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("cro{}{tag}", std::process::id());
        let ns = Self(prefix);
        let (c, s, p) = (ns.name('c'), ns.name('s'), ns.name('p'));
        for n in [&c, &s, &p] {
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let (mc, ms0, ms1, mp) = (
            "02:00:0a:00:01:02",
            "02:00:0a:00:01:01",
            "02:00:0a:00:02:01",
            "02:00:0a:00:02:02",
        );
        must(&[
            "ip", "-n", &c, "link", "add", "c0", "address", mc, "type", "veth", "peer", "name",
            "s0", "address", ms0, "netns", &s,
        ]);
        must(&[
            "ip", "-n", &p, "link", "add", "p0", "address", mp, "type", "veth", "peer", "name",
            "s1", "address", ms1, "netns", &s,
        ]);
        for (n, dev, addr) in [
            (&c, "c0", "10.0.1.2/24"),
            (&s, "s0", "10.0.1.1/24"),
            (&s, "s1", "10.0.2.1/24"),
            (&p, "p0", "10.0.2.2/24"),
        ] {
            must(&["ip", "-n", n, "addr", "add", addr, "dev", dev]);
            must(&["ip", "-n", n, "link", "set", dev, "up"]);
        }
        for (n, dev, addr) in [
            (&c, "c0", "2001:db8:1::2/64"),
            (&s, "s0", "2001:db8:1::1/64"),
            (&s, "s1", "2001:db8:2::1/64"),
            (&p, "p0", "2001:db8:2::2/64"),
        ] {
            must(&["ip", "-n", n, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        for (n, family, via) in [
            (&c, "-4", "10.0.1.1"),
            (&p, "-4", "10.0.2.1"),
            (&c, "-6", "2001:db8:1::1"),
            (&p, "-6", "2001:db8:2::1"),
        ] {
            must(&["ip", "-n", n, family, "route", "add", "default", "via", via]);
        }
        for (n, dev, ip, mac) in [
            (&s, "s0", "10.0.1.2", mc),
            (&s, "s1", "10.0.2.2", mp),
            (&s, "s0", "2001:db8:1::2", mc),
            (&s, "s1", "2001:db8:2::2", mp),
            (&c, "c0", "10.0.1.1", ms0),
            (&c, "c0", "2001:db8:1::1", ms0),
            (&p, "p0", "10.0.2.1", ms1),
            (&p, "p0", "2001:db8:2::1", ms1),
        ] {
            must(&[
                "ip",
                "-n",
                n,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        must(&[
            "ip",
            "netns",
            "exec",
            &s,
            "sh",
            "-c",
            "for f in ipv4/conf/s0 ipv4/conf/s1 ipv6/conf/s0 ipv6/conf/s1; do echo 1 > /proc/sys/net/$f/forwarding || exit 1; done",
        ]);
        must(&[
            "ip", "netns", "exec", &c, "ethtool", "-K", "c0", "tx", "off",
        ]);
        must(&[
            "ip", "netns", "exec", &p, "ethtool", "-K", "p0", "tx", "off",
        ]);
        // GRO on the server's interfaces, as real NICs have it by default: the kernel then
        // merges back-to-back datagrams for a socket with UDP_GRO before TC sees them, so
        // the turn-server must not ask for UDP_GRO while the kernel path runs.
        // Threaded NAPI makes the receive side take the datagrams in batches, as a NIC's
        // interrupt moderation does, so back-to-back ones do get merged.
        for dev in ["s0", "s1"] {
            must(&["ip", "netns", "exec", &s, "ethtool", "-K", dev, "gro", "on"]);
            must(&[
                "ip",
                "netns",
                "exec",
                &s,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{dev}/threaded"),
            ]);
        }
        ns
    }

    /// The namespace of `role`: `'c'` client, `'s'` server, `'p'` peer.
    pub fn name(&self, role: char) -> String {
        format!("{}{role}", self.0)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for r in ['c', 's', 'p'] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(r)])
                .status();
        }
    }
}

/// Whether the namespace test `what` can run here in offload `mode`; when it cannot, says
/// why and skips — except under CI, which must run it (root, the tools, clang for the
/// BPF program).
pub fn can_run(what: &str, mode: &str, tools: &[&str]) -> bool {
    if let Some(why) = missing(tools) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the {what}: {why}"
        );
        eprintln!("SKIP {what} ({mode}): {why}");
        return false;
    }
    if mode != "off"
        && let Err(e) = turn_offload::built()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build the BPF program (clang, llvm, libbpf-dev): {e}"
        );
        eprintln!("SKIP {what} ({mode}): {e}");
        return false;
    }
    true
}

/// Runs this test binary's ignored test `inner` inside the client namespace of `ns` with
/// `env`, for at most `limit`, prints its output and checks that it passed and printed
/// `done`.
pub fn run_inner(ns: &Namespaces, inner: &str, env: &[(&str, &str)], limit: Duration, done: &str) {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name('c')])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            inner,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, text) = super::output_within(child, limit);
    eprintln!("{text}");
    assert!(status.is_some(), "inner test timed out after {limit:?}");
    assert!(
        status.is_some_and(|s| s.success()) && text.contains(done),
        "inner test failed"
    );
}
