//! The kernel fast path for UDP ChannelData (docs/offload.md), end to end in three network
//! namespaces joined by veth pairs — never the machine's own interfaces:
//!
//! ```text
//!  client ns            server ns                     peer ns
//!  c0 10.0.1.2 ─── s0 10.0.1.1 (listen)  s1 10.0.2.1 (relay) ─── p0 10.0.2.2 turnutils_peer
//! ```
//!
//! coturn's `turnutils_uclient` relays through the server both ways; with `offload = "tc"`
//! and with `offload = "xdp"` (the same run, one test each) the offload counters prove the
//! kernel relayed every packet, the relayed totals in
//! `/metrics` equal the packets sent, and Refresh to a short lifetime (expiry) or to 0, or
//! a SIGHUP that denies the peer, stops the relaying at once. With `offload = "off"` the same run passes in userspace.
//!
//! Needs root, `ip` (iproute2), `ethtool` and coturn's tools: elsewhere the tests print why
//! they skip — except under CI (`CI` set), where a missing piece fails them. The body runs
//! in the client namespace: the outer test re-executes this test binary there (`ip netns
//! exec`) with the namespace names in the environment, and removes every namespace when it
//! ends, whatever happened.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{self, Namespaces, must};
use common::raw::RawClient;
use common::{REALM, SECRET, Server, metric_value, rest_credentials, unix_now};

const SERVER: &str = "10.0.1.1:3478";
const METRICS: &str = "10.0.1.1:9641";
const PEER: &str = "10.0.2.2:3480";
const SERVER6: &str = "[2001:db8:1::1]:3478";
const PEER6: &str = "[2001:db8:2::2]:3480";
const ENV_NS: &str = "OFFLOAD_TEST_NS";
const ENV_MODE: &str = "OFFLOAD_TEST_MODE";
const DONE: &str = "offload inner test: all checks passed";
/// The servers' `bandwidth` (bytes/s per allocation, both directions): uclient's 20 kB
/// per allocation fit its 1-second burst; the blast below does not.
const BANDWIDTH: &str = "100000";

/// What the namespace tests need besides root (iproute2, ethtool, util-linux, coturn).
const TOOLS: &[&str] = &[
    "ip",
    "ethtool",
    "setpriv",
    "turnutils_uclient",
    "turnutils_peer",
];

/// The three namespaces of [`netns::Namespaces`]; with `xdp` also the veth peers prepared
/// to receive XDP frames, a veth that cannot (v0), and two bridges (no native XDP).
fn namespaces(tag: &str, xdp: bool) -> Namespaces {
    let ns = Namespaces::new(tag);
    let (c, s, p) = (ns.name('c'), ns.name('s'), ns.name('p'));
    if xdp {
        // A frame XDP redirects out of s0 (s1) arrives at its veth peer c0 (p0) as an
        // XDP frame, which veth takes only into a NAPI ring: one exists where the peer
        // has an XDP program or GRO on (docs/offload.md). Without it the frames are
        // dropped. GRO does not merge these datagrams (no UDP GRO socket option).
        must(&[
            "ip", "netns", "exec", &c, "ethtool", "-K", "c0", "gro", "on",
        ]);
        must(&[
            "ip", "netns", "exec", &p, "ethtool", "-K", "p0", "gro", "on",
        ]);
        // A veth whose peer (v1, peer namespace) keeps GRO off, as veth does by
        // default: native XDP, but frames redirected to it would be dropped, so even
        // `xdp` must refuse it.
        must(&[
            "ip", "-n", &p, "link", "add", "v1", "type", "veth", "peer", "name", "v0", "netns", &s,
        ]);
        must(&["ip", "-n", &p, "link", "set", "v1", "up"]);
        must(&["ip", "-n", &s, "link", "set", "v0", "up"]);
        // An interface whose driver has no native XDP (a bridge), for `auto` to choose TC on.
        must(&["ip", "-n", &s, "link", "add", "d0", "type", "bridge"]);
        must(&["ip", "-n", &s, "link", "set", "d0", "up"]);
        // d1: forwarding off, which `auto` must report and not relay through.
        must(&["ip", "-n", &s, "link", "add", "d1", "type", "bridge"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &s,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/d0/forwarding && echo 1 > /proc/sys/net/ipv4/conf/v0/forwarding && echo 0 > /proc/sys/net/ipv4/conf/d1/forwarding",
        ]);
    }
    ns
}

/// Sets up the namespaces and runs the inner test in the client namespace (bounded).
/// `tag` keeps the namespace names of concurrent tests apart.
fn outer(tag: &str, mode: &str, inner: &str) {
    if !netns::can_run("offload namespace test", mode, TOOLS) {
        return;
    }
    let ns = namespaces(tag, mode == "xdp");
    let env = [
        (ENV_NS, ns.0.as_str()),
        (ENV_MODE, mode),
        // the servers log each allocation's kernel account at debug (read below)
        ("TURN_TEST_LOG", "info,turn_server::runtime=debug"),
    ];
    netns::run_inner(&ns, inner, &env, Duration::from_secs(120), DONE);
}

#[test]
fn kernel_relays_channel_data_both_ways_and_stops_with_the_binding() {
    outer("t", "tc", "inner_relay_through_the_server_namespace");
}

#[test]
fn kernel_relays_at_xdp_the_same_as_at_tc() {
    outer("x", "xdp", "inner_relay_through_the_server_namespace");
}

#[test]
fn offload_off_relays_the_same_in_userspace() {
    outer("o", "off", "inner_relay_through_the_server_namespace");
}

/// How `auto` and the default pick interfaces and hooks, and how they fall back (in the
/// XDP lab, beside the three relay runs rather than after one of them).
#[test]
fn auto_picks_a_hook_per_interface_and_says_why_it_falls_back() {
    outer("a", "xdp", "inner_auto_picks");
}

#[test]
#[ignore = "runs inside the client namespace, started by the test above"]
fn inner_auto_picks() {
    let Ok(prefix) = std::env::var(ENV_NS) else {
        eprintln!("nothing to do: run by the offload tests inside their namespaces");
        return;
    };
    auto_picks_a_hook_per_interface(&format!("{prefix}s"));
    eprintln!("{DONE}");
}

/// turnutils_peer in the peer namespace (an echo server); killed on drop.
struct Peer(Child);

impl Peer {
    /// Listens on `ip`:3480; `proc` is that address as /proc/net/udp (`udp6`) writes it.
    fn start(ns: &str, ip: &str, table: &str, proc: &str) -> Self {
        // Owned by `Peer` at once, so a failed wait below kills it (Drop).
        let peer = Self(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "turnutils_peer",
                    "-L",
                    ip,
                    "-p",
                    "3480",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = Command::new("ip")
                .args(["netns", "exec", ns, "cat", table])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&t.stdout).contains(&format!("{proc}:0D98")) {
                return peer;
            }
            assert!(Instant::now() < deadline, "turnutils_peer did not bind");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs uclient (bounded to 40 s); returns (success, output).
fn uclient(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("40")
        .arg("turnutils_uclient")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn totals(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="))
        .unwrap_or("");
    let num = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("tot_send_msgs="), num("tot_recv_msgs="))
}

/// The relayed and offloaded packet counters, per direction, once both workers' and the
/// kernel's counts have reached /metrics (they are flushed twice a second).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    to_peer: f64,
    to_client: f64,
    off_to_peer: f64,
    off_to_client: f64,
}

fn counts(server: &Server) -> Counts {
    // Two scrapes 1.2 s apart that agree: every periodic flush has happened.
    let read = || {
        let t = server.metrics_text();
        Counts {
            to_peer: metric_value(
                &t,
                "callrelay_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"}",
            ),
            to_client: metric_value(
                &t,
                "callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"}",
            ),
            off_to_peer: metric_value(
                &t,
                "callrelay_turn_offload_packets_total{direction=\"to_peer\"}",
            ),
            off_to_client: metric_value(
                &t,
                "callrelay_turn_offload_packets_total{direction=\"to_client\"}",
            ),
        }
    };
    let mut prev = read();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1200));
        let now = read();
        if now == prev {
            return now;
        }
        prev = now;
    }
    panic!("counters still moving: {prev:?}");
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Sends `payload` on channel `ch`; returns the echo's payload if one came back in time.
fn echo(sock: &UdpSocket, server: SocketAddr, ch: u16, payload: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(&channel_data(ch, payload), server).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let b = &buf[..n];
        if b.len() >= 4 && u16::from_be_bytes([b[0], b[1]]) == ch {
            let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
            return b.get(4..4 + len).map(<[u8]>::to_vec);
        }
    }
}

/// Eight bytes of ChannelData payload such that the datagram `from` sends to `to` on
/// channel `ch` gets a UDP checksum equal to the folded pseudo-header sum (IPv4), which is
/// what the checksum field of a CHECKSUM_PARTIAL packet holds.
fn colliding_data(from: SocketAddr, to: SocketAddr, ch: u16) -> Vec<u8> {
    fn fold(mut s: u32) -> u32 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }
    fn words(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
            .sum()
    }
    let ip = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v) => v.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 only"),
    };
    let ulen = 8 + 4 + 8u32;
    let pseudo = words(&ip(from)) + words(&ip(to)) + 17 + ulen;
    let partial = fold(pseudo);
    for w in 0..=0xffffu16 {
        let mut data = b"csum\0\0".to_vec();
        data.extend_from_slice(&w.to_be_bytes());
        let mut udp_payload = ch.to_be_bytes().to_vec();
        udp_payload.extend_from_slice(&8u16.to_be_bytes());
        udp_payload.extend_from_slice(&data);
        let sum =
            pseudo + u32::from(from.port()) + u32::from(to.port()) + ulen + words(&udp_payload);
        let check = match !fold(sum) & 0xffff {
            0 => 0xffff,
            c => c,
        };
        if check == partial {
            return data;
        }
    }
    panic!("no colliding payload")
}

fn client(server: SocketAddr, user: &str) -> RawClient {
    let (u, p) = rest_credentials(SECRET.as_bytes(), unix_now() + 3600, user);
    let mut c =
        RawClient::new_from("10.0.1.2".parse().unwrap(), server, &u, &p, REALM).retransmitting();
    let a = c.allocate(1);
    assert_eq!(a.code, None, "allocate");
    c
}

/// The log line with what the kernel relayed for `client`'s allocation, written when the
/// allocation's last binding left the kernel (waits up to 5 s for it).
fn kernel_account(server: &Server, client: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.log.lock().unwrap().clone();
        let line = log.lines().find(|l| {
            l.contains("allocation left the kernel fast path")
                && l.contains(&format!("client={client} "))
        });
        if let Some(l) = line {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no kernel account for {client}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refresh(c: &mut RawClient, lifetime: u32) {
    let a = c.request(0x004, |_| vec![(0x000D, lifetime.to_be_bytes().to_vec())]);
    assert_eq!(a.code, None, "refresh {lifetime}");
}

/// The body, inside the client namespace (see `outer`); without the environment the
/// outer test sets it has nothing to run against and says so.
#[test]
#[ignore = "runs inside the client namespace, started by the three tests above"]
fn inner_relay_through_the_server_namespace() {
    let (Ok(prefix), Ok(mode)) = (std::env::var(ENV_NS), std::env::var(ENV_MODE)) else {
        eprintln!("nothing to do: run by the offload tests inside their namespaces");
        return;
    };
    let offloaded = mode != "off";
    let (srv, peer_ns) = (format!("{prefix}s"), format!("{prefix}p"));
    let _peer = Peer::start(&peer_ns, "10.0.2.2", "/proc/net/udp", "0202000A");
    // 2001:db8:2::2, four native-endian words
    let _peer6 = Peer::start(
        &peer_ns,
        "2001:db8:2::2",
        "/proc/net/udp6",
        "B80D0120000002000000000002000000",
    );
    // A config file for the SIGHUP step at the end (flags win over it; it adds deny_peer).
    let conf = std::env::temp_dir().join(format!("callrelay-offload-{}.toml", std::process::id()));
    std::fs::write(&conf, "").unwrap();
    let conf_s = conf.to_string_lossy().into_owned();
    let args = [
        "--config",
        &conf_s,
        "--listen",
        SERVER,
        "--listen",
        SERVER6,
        "--relay-ip",
        "10.0.2.1",
        "--relay-ip",
        "2001:db8:2::1",
        "--relay-ports",
        "50000-50099",
        "--allow-peer",
        "10.0.2.0/24",
        "--allow-peer",
        "2001:db8:2::/64",
        "--auth-secret",
        SECRET,
        "--realm",
        REALM,
        "--bandwidth",
        BANDWIDTH,
        "--offload",
        &mode,
        "--offload-interface",
        "s0",
        "--offload-interface",
        "s1",
        "--metrics-listen",
        METRICS,
        "--workers",
        "1",
        "--drain-timeout",
        "1",
    ];
    let mut server = Server::spawn_wrapped(
        &["ip", "netns", "exec", &srv],
        &args,
        3478,
        9641,
        (50000, 50099),
    );
    server.metrics = METRICS.parse().unwrap();
    let text = server.metrics_text();
    assert_eq!(
        metric_value(&text, "callrelay_turn_offload_active"),
        if offloaded { 1.0 } else { 0.0 },
        "{}",
        server.log.lock().unwrap()
    );
    // Each interface shows the hook it runs at: the one asked for, and no other.
    for dev in ["s0", "s1"] {
        for hook in ["xdp", "tc"] {
            let series =
                format!("callrelay_turn_offload_interface{{hook=\"{hook}\",interface=\"{dev}\"}}");
            if hook == mode {
                assert_eq!(metric_value(&text, &series), 1.0, "{series}");
            } else {
                assert!(!text.contains(&series), "{series}\n{text}");
            }
        }
    }

    // coturn's client: 2 allocations (RTP + RTCP) x 100 messages over channels, echoed.
    let (ok, out) = uclient(&[
        "-e", "10.0.2.2", "-r", "3480", "-p", "3478", "-n", "100", "-m", "1", "-z", "5", "-W",
        SECRET, "-u", "alice", "10.0.1.1",
    ]);
    let (sent, recv) = totals(&out);
    assert!(ok, "uclient failed:\n{out}");
    assert_eq!((sent, recv), (200, 200), "{out}");
    assert!(out.contains("Total lost packets 0 (0.000000%)"), "{out}");
    let c = counts(&server);
    // Every packet counted once, whichever path took it.
    assert_eq!((c.to_peer, c.to_client), (200.0, 200.0), "{c:?}");
    if offloaded {
        // The kernel relays all but what raced a ChannelBind: ChannelData that reaches
        // the worker in the same receive batch as its ChannelBind is relayed there, before
        // the batch's end installs the binding in the kernel (at most a few per channel).
        assert!(c.off_to_peer >= 190.0 && c.off_to_client >= 190.0, "{c:?}");
    } else {
        assert_eq!((c.off_to_peer, c.off_to_client), (0.0, 0.0), "{c:?}");
    }

    // Over the allocation's bandwidth the excess is dropped and counted, on either path:
    // 300 datagrams of 1000 bytes back to back (and their echoes) against a 100 kB burst.
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let peer: SocketAddr = PEER.parse().unwrap();
    let bw_series = "callrelay_turn_quota_rejections_total{kind=\"bandwidth\"}";
    let bytes = |t: &str| {
        metric_value(
            t,
            "callrelay_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"}",
        ) + metric_value(
            t,
            "callrelay_turn_relayed_bytes_total{direction=\"to_client\",transport=\"udp\"}",
        )
    };
    let t0 = server.metrics_text();
    let mut blast = client(server_addr, "erin");
    assert_eq!(blast.channel_bind(0x4002, peer).code, None, "channel bind");
    let started = Instant::now();
    let big = channel_data(0x4002, &[7u8; 1000]);
    for _ in 0..300 {
        blast.sock.send_to(&big, server_addr).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let c2 = counts(&server);
    let t1 = server.metrics_text();
    let relayed = bytes(&t1) - bytes(&t0);
    let dropped = metric_value(&t1, bw_series) - metric_value(&t0, bw_series);
    eprintln!(
        "bandwidth ({mode}): {relayed} bytes relayed, {dropped} datagrams dropped, sends took {elapsed:.3} s"
    );
    assert!(
        dropped > 0.0,
        "nothing dropped over the bandwidth: {relayed} bytes relayed"
    );
    // the bucket: 100 kB at once, then 100 kB/s (sends took `elapsed`)
    assert!(
        relayed <= 100_000.0 + 100_000.0 * elapsed + 1000.0,
        "{relayed} bytes relayed in {elapsed} s"
    );
    assert!(relayed >= 50_000.0, "{relayed}");
    if offloaded {
        assert_eq!(
            c2.off_to_peer - c.off_to_peer,
            c2.to_peer - c.to_peer,
            "{c2:?}"
        );
    }
    let c = c2;

    // IPv6 end to end: client, listener, relayed address and peer all IPv6.
    let server6: SocketAddr = SERVER6.parse().unwrap();
    let (u, p) = rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "frank");
    let mut v6 = RawClient::new_from("2001:db8:1::2".parse().unwrap(), server6, &u, &p, REALM)
        .retransmitting();
    assert_eq!(v6.allocate(2).code, None, "IPv6 allocate");
    assert_eq!(v6.channel_bind(0x4003, PEER6.parse().unwrap()).code, None);
    for i in 0..5u8 {
        let p = [b'6', i, 9, 8, 7, 6, 5, 4, 3];
        assert_eq!(echo(&v6.sock, server6, 0x4003, &p).as_deref(), Some(&p[..]));
    }
    let c6 = counts(&server);
    let step = if offloaded { 5.0 } else { 0.0 };
    assert_eq!(c6.off_to_peer, c.off_to_peer + step, "{c6:?}");
    assert_eq!(c6.off_to_client, c.off_to_client + step, "{c6:?}");
    assert_eq!(
        (c6.to_peer, c6.to_client),
        (c.to_peer + 5.0, c.to_client + 5.0)
    );
    let c = c6;

    // A datagram whose real checksum happens to equal the pseudo-header sum that a
    // checksum-offloaded (CHECKSUM_PARTIAL) one carries: the program sums it in full and
    // relays it, instead of passing it up as unusable (1 in 65536 datagrams looks so).
    let mut g = client(server_addr, "gina");
    assert_eq!(g.channel_bind(0x4000, peer).code, None, "channel bind");
    let data = colliding_data(g.sock.local_addr().unwrap(), server_addr, 0x4000);
    assert_eq!(
        echo(&g.sock, server_addr, 0x4000, &data).as_deref(),
        Some(&data[..])
    );
    let cg = counts(&server);
    let step = if offloaded { 1.0 } else { 0.0 };
    assert_eq!(cg.off_to_peer, c.off_to_peer + step, "{cg:?}");
    assert_eq!(
        (cg.to_peer, cg.to_client),
        (c.to_peer + 1.0, c.to_client + 1.0)
    );
    let c = cg;

    // One bandwidth for both paths: 90 kB relayed in userspace (Send indications) leave
    // the allocation's kernel bucket at most what refilled since (the worker charges it
    // twice a second), so a ChannelData blast right after gets far less than the 100 kB
    // a full bucket would pass. The peer port has no listener: nothing is echoed back.
    let sink: SocketAddr = "10.0.2.2:9".parse().unwrap();
    let mut h = client(server_addr, "hank");
    assert_eq!(h.channel_bind(0x4000, sink).code, None, "channel bind");
    let ch0 = counts(&server);
    for _ in 0..90 {
        let tid = h.tid();
        let send = common::raw::encode(
            0x006,
            1,
            &tid,
            &[
                (0x0012, common::raw::xor_addr(sink, &tid)),
                (0x0013, vec![5u8; 1000]),
            ],
            None,
        );
        h.sock.send_to(&send, server_addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    let big = channel_data(0x4000, &[6u8; 1000]);
    for _ in 0..300 {
        h.sock.send_to(&big, server_addr).unwrap();
    }
    let ch1 = counts(&server);
    // the 90 indications fit the bucket and went to the peer, then the blast
    let blasted = ch1.to_peer - ch0.to_peer - 90.0;
    eprintln!(
        "shared bandwidth ({mode}): after 90 kB in userspace, {blasted} of 300 kB blasted relayed ({} by the kernel)",
        ch1.off_to_peer - ch0.off_to_peer
    );
    // a full bucket: 100; charged with the 90 kB at most 600 ms + one tick ago: <= 80
    assert!(
        (1.0..=85.0).contains(&blasted),
        "{blasted} relayed: {ch0:?} {ch1:?}"
    );
    assert_eq!(ch1.to_client, ch0.to_client, "nothing echoed");
    let _ = c;
    let c = ch1;

    // Our own client: the binding's lifetime ends with the allocation's.
    let mut a = client(server_addr, "bob");
    assert_eq!(a.channel_bind(0x4000, peer).code, None, "channel bind");
    for i in 0..5u8 {
        let p = [b'p', i, 1, 2, 3, 4, 5, 6];
        assert_eq!(
            echo(&a.sock, server_addr, 0x4000, &p).as_deref(),
            Some(&p[..])
        );
    }
    // Refresh to 2 s: still relayed now, never after the lifetime ends.
    refresh(&mut a, 2);
    let expires = Instant::now() + Duration::from_secs(2);
    assert!(echo(&a.sock, server_addr, 0x4000, b"before expiry").is_some());
    let before = counts(&server);
    let step = if offloaded { 6.0 } else { 0.0 };
    assert_eq!(before.off_to_peer, c.off_to_peer + step, "{before:?}");
    assert_eq!(before.off_to_client, c.off_to_client + step, "{before:?}");
    std::thread::sleep(
        (expires + Duration::from_millis(50)).saturating_duration_since(Instant::now()),
    );
    for _ in 0..3 {
        assert_eq!(echo(&a.sock, server_addr, 0x4000, b"after expiry"), None);
    }
    let after = counts(&server);
    assert_eq!(after, before, "relayed after the allocation expired");
    // The allocation's own account, read back from the kernel's per-allocation counters:
    // 5 echoes of 8 bytes and one of 13, each way, all relayed by the kernel.
    if offloaded {
        let line = kernel_account(&server, a.sock.local_addr().unwrap());
        assert!(
            line.ends_with(
                "to_peer_packets=6 to_peer_bytes=53 to_client_packets=6 to_client_bytes=53"
            ),
            "{line}"
        );
    }

    // Refresh 0: deleted, so nothing is relayed from the next packet on.
    let mut b = client(server_addr, "carol");
    assert_eq!(b.channel_bind(0x4001, peer).code, None, "channel bind");
    assert!(echo(&b.sock, server_addr, 0x4001, b"bound").is_some());
    refresh(&mut b, 0);
    for _ in 0..3 {
        assert_eq!(echo(&b.sock, server_addr, 0x4001, b"after refresh 0"), None);
    }
    let end = counts(&server);
    if offloaded {
        let line = kernel_account(&server, b.sock.local_addr().unwrap());
        assert!(
            line.ends_with(
                "to_peer_packets=1 to_peer_bytes=5 to_client_packets=1 to_client_bytes=5"
            ),
            "{line}"
        );
    } else {
        let log = server.log.lock().unwrap().clone();
        assert!(
            !log.contains("allocation left the kernel fast path"),
            "{log}"
        );
    }
    let step = if offloaded { 1.0 } else { 0.0 };
    assert_eq!(end.off_to_peer, after.off_to_peer + step, "{end:?}");
    assert_eq!(end.to_peer, after.to_peer + 1.0, "{end:?}");
    assert_eq!(end.to_client, after.to_client + 1.0, "{end:?}");

    // SIGHUP with a policy that denies the peer: the binding's relaying stops at once, in
    // the kernel as in userspace.
    let mut d = client(server_addr, "dave");
    assert_eq!(d.channel_bind(0x4002, peer).code, None, "channel bind");
    assert!(echo(&d.sock, server_addr, 0x4002, b"bound").is_some());
    let bound = counts(&server);
    assert_eq!(bound.off_to_peer, end.off_to_peer + step, "{bound:?}");
    std::fs::write(&conf, "deny_peer = [\"10.0.2.2/32\"]\n").unwrap();
    let seen = server
        .log
        .lock()
        .unwrap()
        .matches("permissions of peers the new policy denies ended")
        .count();
    server.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .log
        .lock()
        .unwrap()
        .matches("permissions of peers the new policy denies ended")
        .count()
        == seen
    {
        assert!(
            Instant::now() < deadline,
            "no revocation logged after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        assert_eq!(echo(&d.sock, server_addr, 0x4002, b"after deny"), None);
    }
    let denied = counts(&server);
    assert_eq!(denied, bound, "relayed after the policy denied the peer");
    // The policy ended erin's permission too: her allocation's own kernel account holds
    // every byte of the blast the server relayed (all by the kernel, checked above).
    if offloaded {
        let line = kernel_account(&server, blast.sock.local_addr().unwrap());
        let field = |k: &str| -> f64 {
            line.split(&format!("{k}="))
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1.0)
        };
        assert_eq!(
            field("to_peer_bytes") + field("to_client_bytes"),
            relayed,
            "{line}"
        );
    }
    let _ = std::fs::remove_file(&conf);
    let t = server.metrics_text();
    for l in t
        .lines()
        .filter(|l| l.starts_with("callrelay_turn_offload_passed_total"))
    {
        eprintln!("{mode}: {l}");
    }
    // Routes, neighbours and checksums are all in place here: the kernel never had to
    // pass a bound packet up for them (an expired binding may be, depending on whether
    // the sweep removed its entry before the packet came).
    for reason in ["no_route", "checksum", "room"] {
        let series = format!("callrelay_turn_offload_passed_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&t, &series), 0.0, "{series}");
    }
    assert_eq!(server.stop(), Some(0));
    lifetimes_end_relaying_at_once(&srv, &mode);
    eprintln!("{DONE}");
}

/// A permission's expiry and a channel binding's expiry each stop the relaying at once,
/// in the kernel as in userspace: with `permission_lifetime` 3 s and `channel_lifetime`
/// 6 s, one client's permission runs out under its live channel, another's channel runs
/// out while CreatePermission keeps its permission alive.
fn lifetimes_end_relaying_at_once(srv: &str, mode: &str) {
    let args = [
        "--listen",
        SERVER,
        "--relay-ip",
        "10.0.2.1",
        "--relay-ports",
        "50200-50299",
        "--allow-peer",
        "10.0.2.0/24",
        "--auth-secret",
        SECRET,
        "--realm",
        REALM,
        "--offload",
        mode,
        "--offload-interface",
        "s0",
        "--offload-interface",
        "s1",
        "--permission-lifetime",
        "3",
        "--channel-lifetime",
        "6",
        "--metrics-listen",
        METRICS,
        "--workers",
        "1",
        "--drain-timeout",
        "1",
    ];
    let mut server = Server::spawn_wrapped(
        &["ip", "netns", "exec", srv],
        &args,
        3478,
        9641,
        (50200, 50299),
    );
    server.metrics = METRICS.parse().unwrap();
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let peer: SocketAddr = PEER.parse().unwrap();
    let offloaded = mode != "off";
    let c0 = counts(&server);
    let mut p = client(server_addr, "perm");
    let mut c = client(server_addr, "chan");
    assert_eq!(p.channel_bind(0x4000, peer).code, None, "channel bind");
    let t_p = Instant::now();
    assert_eq!(c.channel_bind(0x4001, peer).code, None, "channel bind");
    let t_c = Instant::now();
    for i in 0..3u8 {
        let m = [b'l', i, 1, 2];
        assert_eq!(
            echo(&p.sock, server_addr, 0x4000, &m).as_deref(),
            Some(&m[..])
        );
        assert_eq!(
            echo(&c.sock, server_addr, 0x4001, &m).as_deref(),
            Some(&m[..])
        );
    }
    let until = |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));
    // chan keeps its permission: 3 s from each CreatePermission, past its channel's end
    until(t_c + Duration::from_secs(2));
    assert_eq!(c.create_permission(peer).code, None, "create permission");
    // perm: the permission ends at 3 s, its channel would live to 6 s
    until(t_p + Duration::from_millis(3100));
    assert_eq!(echo(&p.sock, server_addr, 0x4000, b"permission gone"), None);
    until(t_c + Duration::from_secs(4));
    assert_eq!(c.create_permission(peer).code, None, "create permission");
    // chan: the channel ends at 6 s, its permission lives to 7 s
    until(t_c + Duration::from_millis(6100));
    assert_eq!(echo(&c.sock, server_addr, 0x4001, b"channel gone"), None);
    let c1 = counts(&server);
    let step = if offloaded { 6.0 } else { 0.0 };
    assert_eq!(
        (c1.to_peer, c1.to_client),
        (c0.to_peer + 6.0, c0.to_client + 6.0),
        "relayed after a permission or a channel expired: {c1:?}"
    );
    assert_eq!(
        (c1.off_to_peer, c1.off_to_client),
        (c0.off_to_peer + step, c0.off_to_client + step),
        "{c1:?}"
    );
    assert_eq!(server.stop(), Some(0));
}

/// `auto` attaches TC to virtual interfaces (veth, bridge: XDP is for NIC drivers);
/// without `offload_interface` (and without `offload`: `auto` is the default) only to the
/// interfaces carrying the listen and relay addresses; `xdp` on an interface without native
/// XDP or that cannot transmit redirected XDP frames (a veth whose peer has GRO off), and
/// `auto` on one with forwarding off, fall back to userspace and say why.
fn auto_picks_a_hook_per_interface(srv: &str) {
    let base = [
        "--listen",
        SERVER,
        "--relay-ip",
        "10.0.2.1",
        "--relay-ports",
        "50100-50199",
        "--allow-peer",
        "10.0.2.0/24",
        "--auth-secret",
        SECRET,
        "--realm",
        REALM,
        "--metrics-listen",
        METRICS,
        "--workers",
        "1",
        "--drain-timeout",
        "1",
    ];
    // `caps`: run as nobody with exactly these capabilities (setpriv's syntax), as the
    // systemd drop-in deploy/systemd/examples/offload.conf does.
    let start_as = |caps: Option<&str>, extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let mut wrapper = vec!["ip", "netns", "exec", srv];
        let flags: Vec<String> = caps
            .map(|c| {
                vec![
                    "--reuid=65534".to_string(),
                    "--regid=65534".into(),
                    "--clear-groups".into(),
                    format!("--inh-caps=-all{c}"),
                    format!("--ambient-caps=-all{c}"),
                    format!("--bounding-set=-all{c}"),
                ]
            })
            .unwrap_or_default();
        if caps.is_some() {
            wrapper.push("setpriv");
            wrapper.extend(flags.iter().map(String::as_str));
        }
        let mut s = Server::spawn_wrapped(&wrapper, &args, 3478, 9641, (50100, 50199));
        s.metrics = METRICS.parse().unwrap();
        s
    };
    let start = |extra: &[&str]| start_as(None, extra);
    let server = start(&[
        "--offload",
        "auto",
        "--offload-interface",
        "s0",
        "--offload-interface",
        "s1",
        "--offload-interface",
        "d0",
    ]);
    let t = server.metrics_text();
    // veths are virtual: a frame XDP redirected out of one is lost unless its far end
    // runs XDP or GRO, which a container's host side does not promise, so `auto` puts
    // them on TC (explicit `xdp` is tested above, with GRO on the far ends).
    for (dev, hook) in [("s0", "tc"), ("s1", "tc"), ("d0", "tc")] {
        let series =
            format!("callrelay_turn_offload_interface{{hook=\"{hook}\",interface=\"{dev}\"}}");
        assert_eq!(metric_value(&t, &series), 1.0, "{series}\n{t}");
    }
    assert_eq!(metric_value(&t, "callrelay_turn_offload_active"), 1.0);
    assert_eq!(server.stop(), Some(0));
    // The default: s0 carries the listen address, s1 the relay address; d0 neither.
    let server = start(&[]);
    let t = server.metrics_text();
    for dev in ["s0", "s1"] {
        let series = format!("callrelay_turn_offload_interface{{hook=\"tc\",interface=\"{dev}\"}}");
        assert_eq!(metric_value(&t, &series), 1.0, "{series}\n{t}");
    }
    assert!(!t.contains("interface=\"d0\""), "{t}");
    assert!(!t.contains("interface=\"lo\""), "{t}");
    assert_eq!(server.stop(), Some(0));
    // Not root, exactly CAP_BPF + CAP_NET_ADMIN (no CAP_PERFMON, no CAP_SYS_ADMIN): the
    // default attaches all the same.
    let server = start_as(Some(",+bpf,+net_admin"), &[]);
    let t = server.metrics_text();
    assert_eq!(
        metric_value(&t, "callrelay_turn_offload_active"),
        1.0,
        "{}",
        server.log.lock().unwrap()
    );
    assert_eq!(server.stop(), Some(0));
    // Without CAP_BPF it says which capability is missing, and relays in userspace.
    let server = start_as(Some(",+net_admin"), &[]);
    let t = server.metrics_text();
    let series = "callrelay_turn_offload_fallback_total{reason=\"no_permission\"}";
    assert_eq!(metric_value(&t, series), 1.0, "{t}");
    assert!(
        server.log.lock().unwrap().contains("missing CAP_BPF:"),
        "{}",
        server.log.lock().unwrap()
    );
    assert_eq!(server.stop(), Some(0));
    for (flags, reason) in [
        (
            ["--offload", "xdp", "--offload-interface", "d0"],
            "xdp_unsupported",
        ),
        (
            ["--offload", "xdp", "--offload-interface", "v0"],
            "xdp_unsupported",
        ),
        (
            ["--offload", "auto", "--offload-interface", "d1"],
            "forwarding_disabled",
        ),
    ] {
        let server = start(&flags);
        let t = server.metrics_text();
        let series = format!("callrelay_turn_offload_fallback_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&t, &series), 1.0, "{t}");
        assert_eq!(metric_value(&t, "callrelay_turn_offload_active"), 0.0);
        assert_eq!(server.stop(), Some(0));
    }
}

/// Where the kernel path cannot run as configured the server still serves, in userspace,
/// and says why in its log and in `callrelay_turn_offload_fallback_total{reason}`. Runs
/// anywhere (loopback; the last two reasons depend on what the machine allows). The
/// default (`auto`, no `offload_interface`) on loopback attaches to nothing: never to the
/// machine's own interfaces.
#[test]
fn fallback_is_logged_counted_and_the_relay_keeps_serving() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // An interface that does not exist: found only when attaching, after the load, so
    // the reason shows how far this machine gets.
    let missing_if = match turn_offload::built() {
        Err(_) => "not_built",
        Ok(()) if root => "interface",
        Ok(()) => "no_permission",
    };
    for (flags, reason) in [
        // the default (`auto`, no `offload_interface`): loopback only, nothing to attach to
        (&[][..], missing_if),
        (
            &["--offload", "xdp", "--offload-interface", "nosuchif0"][..],
            missing_if,
        ),
        (
            &["--offload", "tc", "--offload-interface", "nosuchif0"][..],
            missing_if,
        ),
    ] {
        let mut args = vec!["--allow-peer", "127.0.0.1/32"];
        args.extend_from_slice(flags);
        let server = Server::start(&args);
        let t = server.metrics_text();
        let series = format!("callrelay_turn_offload_fallback_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&t, &series), 1.0, "{t}");
        assert_eq!(metric_value(&t, "callrelay_turn_offload_active"), 0.0);
        assert!(!t.contains("callrelay_turn_offload_interface{"), "{t}");
        let log = server.log.lock().unwrap().clone();
        assert!(
            log.contains("kernel offload unavailable: relaying in userspace")
                && log.contains(reason),
            "{log}"
        );
        // and it relays: ChannelData to an echo peer and back
        let peer = common::EchoPeer::start();
        let (u, p) = rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "dave");
        let mut c = RawClient::new(server.addr(), &u, &p, REALM).retransmitting();
        assert_eq!(c.allocate(1).code, None);
        assert_eq!(c.channel_bind(0x4000, peer.addr).code, None);
        assert_eq!(
            echo(&c.sock, server.addr(), 0x4000, b"userspace").as_deref(),
            Some(&b"userspace"[..])
        );
        assert_eq!(server.stop(), Some(0));
    }
}
