//! The kernel fast path for UDP ChannelData (docs/offload.md) with an independent client:
//! webrtc-rs' `turn` crate, in the three namespaces of `common::netns` (client, server,
//! peer; never the machine's own interfaces):
//!
//! ```text
//!  client ns: webrtc-rs Client ── server ns: turn-server ── peer ns: echo peer (this binary)
//! ```
//!
//! For IPv4 and IPv6 the client allocates, sends N datagrams to the peer through its
//! `RelayConn` (the first `send_to` creates the permission and starts a ChannelBind; the
//! datagrams sent meanwhile go as Send indications, then as ChannelData) and gets every
//! one back, byte for byte, from the echo peer. Asserted: zero loss and intact payloads;
//! the relayed totals in `/metrics` equal the datagrams sent each way; with `offload =
//! "tc"` `callrelay_turn_offload_packets_total{direction}` grew by at least 95 % of them
//! each way (the kernel carried them; the few before the binding took userspace). Then
//! the allocation is closed (webrtc-rs sends Refresh 0) and from the moment its answer is
//! in nothing is relayed either way: ChannelData on the old channel does not reach the
//! peer, the peer's datagrams to the old relayed address do not reach the client, and no
//! counter moves. With `offload = "off"` the same run passes in userspace.
//!
//! webrtc-rs 0.17 cannot ask for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY, RFC
//! 6156): its socket here is a thin [`Conn`] that adds that attribute to the Allocate
//! requests of the IPv6 run and signs them again. Everything else on the wire is
//! webrtc-rs' own.
//!
//! The outer tests build the namespaces and re-execute this test binary inside the client
//! namespace (`ip netns exec`, the test's name and an environment variable select the
//! role); the client role starts the server in the server namespace and the echo peer
//! (this binary again, `inner_echo_peer`) in the peer namespace. Needs root, `ip` and
//! `ethtool`: elsewhere the tests print why they skip, except under CI (`CI` set), where
//! that fails them.
mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::netns::{self, Namespaces};
use common::raw;
use common::{REALM, SECRET, Server, metric_value, rest_credentials, unix_now};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const METRICS: &str = "10.0.1.1:9641";
const ENV_NS: &str = "OFFLOAD_WEBRTC_NS";
const ENV_MODE: &str = "OFFLOAD_WEBRTC_MODE";
const ENV_PEER: &str = "OFFLOAD_WEBRTC_PEER";
const DONE: &str = "offload webrtc-rs inner test: all checks passed";
/// Datagrams each way per family, sent in windows of `WINDOW` (all echoes of a window
/// are waited for before the next).
const N: u16 = 200;
const WINDOW: u16 = 10;

/// One address family's addresses in the namespaces.
struct Family {
    name: &'static str,
    client: IpAddr,
    server: SocketAddr,
    relay: IpAddr,
    peer: SocketAddr,
    /// Ask for an IPv6 relayed address (webrtc-rs asks for none, which means IPv4).
    v6: bool,
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "IPv4",
            client: "10.0.1.2".parse().unwrap(),
            server: "10.0.1.1:3478".parse().unwrap(),
            relay: "10.0.2.1".parse().unwrap(),
            peer: "10.0.2.2:3480".parse().unwrap(),
            v6: false,
        },
        Family {
            name: "IPv6",
            client: "2001:db8:1::2".parse().unwrap(),
            server: "[2001:db8:1::1]:3478".parse().unwrap(),
            relay: "2001:db8:2::1".parse().unwrap(),
            peer: "[2001:db8:2::2]:3480".parse().unwrap(),
            v6: true,
        },
    ]
}

/// Builds the namespaces and runs the client role inside the client namespace (bounded).
fn outer(mode: &str) {
    if !netns::can_run("offload webrtc-rs test", mode, &["ip", "ethtool"]) {
        return;
    }
    let ns = Namespaces::new(&format!("w{}", &mode[..1]));
    let env = [(ENV_NS, ns.0.as_str()), (ENV_MODE, mode)];
    netns::run_inner(
        &ns,
        "inner_webrtc_client",
        &env,
        Duration::from_secs(60),
        DONE,
    );
}

#[test]
fn webrtc_rs_client_relays_through_the_kernel_both_families_and_stops_on_close() {
    outer("tc");
}

/// The shipped example's configuration: wildcard listeners, `offload` left at `auto`. The
/// bindings get the address the kernel answers the client from, and the kernel relays.
#[test]
fn webrtc_rs_client_relays_through_the_kernel_with_wildcard_listeners_and_the_default() {
    outer("default");
}

#[test]
fn webrtc_rs_client_relays_the_same_in_userspace_with_offload_off() {
    outer("off");
}

/// The echo peer, inside the peer namespace: echoes every datagram on 10.0.2.2:3480 and
/// [2001:db8:2::2]:3480 and counts them. Commands on stdin, one a line: `count` answers
/// `peer: <IPv4 count> <IPv6 count>`; `send ADDR N` sends N datagrams to ADDR from the
/// socket of ADDR's family and answers `peer: sent`. Ends with stdin.
#[test]
#[ignore = "the echo peer, started inside the peer namespace by the client role"]
fn inner_echo_peer() {
    if std::env::var_os(ENV_PEER).is_none() {
        eprintln!("nothing to do: started by the offload webrtc-rs tests");
        return;
    }
    let socks = [
        Arc::new(std::net::UdpSocket::bind("10.0.2.2:3480").unwrap()),
        Arc::new(std::net::UdpSocket::bind("[2001:db8:2::2]:3480").unwrap()),
    ];
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    for (s, c) in socks.iter().zip(&counts) {
        let (s, c) = (s.clone(), c.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    println!("peer: ready");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["count"] => println!(
                "peer: {} {}",
                counts[0].load(Ordering::SeqCst),
                counts[1].load(Ordering::SeqCst)
            ),
            ["send", to, n] => {
                let to: SocketAddr = to.parse().unwrap();
                let s = &socks[usize::from(to.is_ipv6())];
                for i in 0..n.parse::<u32>().unwrap() {
                    s.send_to(format!("from the peer {i}").as_bytes(), to)
                        .unwrap();
                }
                println!("peer: sent");
            }
            _ => panic!("peer: unknown command {line:?}"),
        }
    }
}

/// The echo peer process (see `inner_echo_peer`); killed on drop.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn start(ns: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "inner_echo_peer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_PEER, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                // (the harness's "test inner_echo_peer ... " may precede the first)
                if let Some((_, l)) = l.split_once("peer: ") {
                    let _ = tx.send(l.to_owned());
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let peer = Self {
            child,
            stdin,
            lines,
        };
        assert_eq!(peer.answer(), "ready");
        peer
    }

    fn answer(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("echo peer answers")
    }

    /// Datagrams the peer received so far on its (IPv4, IPv6) socket.
    fn received(&mut self) -> (u64, u64) {
        writeln!(self.stdin, "count").unwrap();
        let a = self.answer();
        let (v4, v6) = a.split_once(' ').unwrap();
        (v4.parse().unwrap(), v6.parse().unwrap())
    }

    fn send(&mut self, to: SocketAddr, n: u32) {
        writeln!(self.stdin, "send {to} {n}").unwrap();
        assert_eq!(self.answer(), "sent");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// webrtc-rs' socket: a UDP socket that watches what webrtc-rs sends and receives, and for
/// an IPv6 relay adds REQUESTED-ADDRESS-FAMILY to its Allocate requests.
struct Tap {
    sock: Arc<UdpSocket>,
    /// The long-term key to sign a rewritten Allocate with; `None`: no rewriting.
    v6_key: Option<Vec<u8>>,
    /// The channel number of the last ChannelBind request sent.
    channel: AtomicU16,
    /// Refresh success responses received.
    refreshed: AtomicU64,
    /// ChannelBind success responses received.
    bound: AtomicU64,
    /// Send indications sent (datagrams the kernel cannot relay).
    indications: AtomicU64,
}

const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const ATTR_FINGERPRINT: u16 = 0x8028;

/// The STUN message type of `b`, if it is a STUN message.
fn stun_type(b: &[u8]) -> Option<u16> {
    (b.len() >= 20 && b[0] & 0xC0 == 0 && b[4..8] == raw::COOKIE.to_be_bytes())
        .then(|| u16::from_be_bytes([b[0], b[1]]))
}

impl Tap {
    /// `buf` as it goes on the wire.
    fn outgoing(&self, buf: &[u8]) -> Vec<u8> {
        match stun_type(buf) {
            Some(0x0016) => {
                self.indications.fetch_add(1, Ordering::SeqCst);
                buf.to_vec()
            }
            // ChannelBind request
            Some(0x0009) => {
                if let Some(v) = raw::decode(buf).get(ATTR_CHANNEL_NUMBER) {
                    self.channel
                        .store(u16::from_be_bytes([v[0], v[1]]), Ordering::SeqCst);
                }
                buf.to_vec()
            }
            // Allocate request: add REQUESTED-ADDRESS-FAMILY IPv6, sign again (without
            // FINGERPRINT, which is optional).
            Some(0x0003) if self.v6_key.is_some() => {
                let msg = raw::decode(buf);
                let signed = msg.get(ATTR_MESSAGE_INTEGRITY).is_some();
                let mut attrs: Vec<(u16, Vec<u8>)> = msg
                    .attrs
                    .into_iter()
                    .filter(|(t, _)| ![ATTR_MESSAGE_INTEGRITY, ATTR_FINGERPRINT].contains(t))
                    .collect();
                attrs.push((ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]));
                let tid: [u8; 12] = buf[8..20].try_into().unwrap();
                let key = self.v6_key.as_deref().filter(|_| signed);
                raw::encode(0x003, 0, &tid, &attrs, key)
            }
            _ => buf.to_vec(),
        }
    }
}

#[async_trait::async_trait]
impl Conn for Tap {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.sock.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf).await?;
        match stun_type(&buf[..n]) {
            // Refresh, ChannelBind success responses
            Some(0x0104) => self.refreshed.fetch_add(1, Ordering::SeqCst),
            Some(0x0109) => self.bound.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.send(&self.outgoing(buf)).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.sock.send_to(&self.outgoing(buf), target).await?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The relayed and offloaded packet counters, per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    to_peer: f64,
    to_client: f64,
    off_to_peer: f64,
    off_to_client: f64,
}

/// The counters once every worker's and the kernel's counts reached /metrics (flushed
/// twice a second): two scrapes 1.2 s apart that agree.
async fn counts(server: &Server) -> Counts {
    let read = || {
        let t = server.metrics_text();
        let v = |s: &str| metric_value(&t, s);
        Counts {
            to_peer: v(
                "callrelay_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"}",
            ),
            to_client: v(
                "callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"}",
            ),
            off_to_peer: v("callrelay_turn_offload_packets_total{direction=\"to_peer\"}"),
            off_to_client: v("callrelay_turn_offload_packets_total{direction=\"to_client\"}"),
        }
    };
    let mut prev = read();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = read();
        if now == prev {
            return now;
        }
        prev = now;
    }
    panic!("counters still moving: {prev:?}");
}

/// Datagram `i` of a run: its number, the family's tag and a pattern, 160 bytes.
fn payload(tag: u8, i: u16) -> Vec<u8> {
    let mut p = vec![tag];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..157u16).map(|k| (k.wrapping_mul(31) ^ i) as u8));
    p
}

/// Sends N datagrams to the echo peer through `relay` and checks every echo (any order
/// within a window, each exactly once, byte for byte). The first goes alone and the rest
/// wait for webrtc-rs' ChannelBind to be answered, so all but that one go as ChannelData:
/// what the kernel can relay.
async fn exchange(relay: &impl Conn, tap: &Tap, peer: SocketAddr, tag: u8) {
    let mut buf = vec![0u8; 2048];
    let mut seen = HashSet::new();
    let mut next = 0;
    while next < N {
        let window = if next == 0 { 1 } else { WINDOW.min(N - next) };
        let sent = next..next + window;
        for i in sent.clone() {
            relay.send_to(&payload(tag, i), peer).await.unwrap();
        }
        for _ in sent {
            let got = tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await;
            let (len, from) = got
                .unwrap_or_else(|_| panic!("echo missing: {} of {N} back", seen.len()))
                .unwrap();
            assert_eq!(from, peer);
            let b = &buf[..len];
            assert!(len >= 3 && b[0] == tag, "foreign datagram {b:?}");
            let i = u16::from_be_bytes([b[1], b[2]]);
            assert_eq!(b, payload(tag, i), "payload {i} changed on the way");
            assert!(seen.insert(i), "datagram {i} twice");
        }
        if next == 0 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tap.bound.load(Ordering::SeqCst) == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no ChannelBind answer"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        next += window;
    }
    assert_eq!(seen.len(), usize::from(N));
}

/// One family's run against the server; `peer_count` picks the family's count.
async fn run(family: &Family, server: &Server, peer: &mut Peer, offloaded: bool, tag: u8) {
    let pick = |c: (u64, u64)| if family.v6 { c.1 } else { c.0 };
    let at_start = counts(server).await;
    let peer_start = pick(peer.received());
    let (user, pass) = rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "webrtc-rs");
    let tap = Arc::new(Tap {
        sock: Arc::new(UdpSocket::bind((family.client, 0)).await.unwrap()),
        v6_key: family.v6.then(|| raw::long_term_key(&user, REALM, &pass)),
        channel: AtomicU16::new(0),
        refreshed: AtomicU64::new(0),
        bound: AtomicU64::new(0),
        indications: AtomicU64::new(0),
    });
    let client = Client::new(ClientConfig {
        stun_serv_addr: family.server.to_string(),
        turn_serv_addr: family.server.to_string(),
        username: user,
        password: pass,
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: tap.clone(),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relay = client
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log.lock().unwrap()));
    let relayed = relay.local_addr().unwrap();
    assert_eq!(
        relayed.ip(),
        family.relay,
        "{} relayed address",
        family.name
    );

    exchange(&relay, &tap, family.peer, tag).await;
    let c = counts(server).await;
    let n = f64::from(N);
    eprintln!(
        "{}: {N} each way ({} as Send indications); relayed {} to the peer, {} to the client; by the kernel {} / {}",
        family.name,
        tap.indications.load(Ordering::SeqCst),
        c.to_peer - at_start.to_peer,
        c.to_client - at_start.to_client,
        c.off_to_peer - at_start.off_to_peer,
        c.off_to_client - at_start.off_to_client
    );
    // Every datagram counted once, whichever path took it.
    assert_eq!(c.to_peer - at_start.to_peer, n, "{c:?}");
    assert_eq!(c.to_client - at_start.to_client, n, "{c:?}");
    assert_eq!(pick(peer.received()) - peer_start, u64::from(N));
    if offloaded {
        // Every datagram webrtc-rs sent as ChannelData but the few that might race the
        // ChannelBind's kernel entry. Which ones go as Send indications is webrtc-rs'
        // choice: the first, and on a loaded machine a few more while its own task takes
        // in the ChannelBind answer the tap already saw; most must be ChannelData, or
        // the kernel path was hardly exercised.
        let indications = f64::from(u32::try_from(tap.indications.load(Ordering::SeqCst)).unwrap());
        assert!(
            indications <= n / 4.0,
            "{indications} of {n} as Send indications"
        );
        let channel_data = n - indications;
        assert!(
            c.off_to_peer - at_start.off_to_peer >= 0.95 * channel_data,
            "{c:?}"
        );
        assert!(
            c.off_to_client - at_start.off_to_client >= 0.95 * channel_data,
            "{c:?}"
        );
    } else {
        assert_eq!(
            (c.off_to_peer, c.off_to_client),
            (at_start.off_to_peer, at_start.off_to_client),
            "{c:?}"
        );
    }

    // Close: webrtc-rs sends Refresh 0 (without waiting for the answer). Once the answer
    // is in, the allocation is gone: nothing on its channel reaches the peer, nothing from
    // the peer to its relayed address reaches the client, in either path.
    let channel = tap.channel.load(Ordering::SeqCst);
    assert!((0x4000..0x8000).contains(&channel), "no ChannelBind seen");
    let refreshed = tap.refreshed.load(Ordering::SeqCst);
    relay.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tap.refreshed.load(Ordering::SeqCst) == refreshed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to Refresh 0"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stop webrtc-rs reading, then use its socket directly.
    client.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let peer_before = pick(peer.received());
    for i in 0..20u16 {
        let p = payload(tag, N + i);
        let mut cd = channel.to_be_bytes().to_vec();
        cd.extend_from_slice(&(p.len() as u16).to_be_bytes());
        cd.extend_from_slice(&p);
        tap.sock.send_to(&cd, family.server).await.unwrap();
    }
    peer.send(relayed, 20);
    let mut buf = [0u8; 2048];
    let late = tokio::time::timeout(Duration::from_millis(500), tap.sock.recv_from(&mut buf)).await;
    assert!(
        late.is_err(),
        "{}: the client received {late:?} after its allocation was deleted",
        family.name
    );
    let end = counts(server).await;
    assert_eq!(
        pick(peer.received()),
        peer_before,
        "{}: the peer received ChannelData sent after Refresh 0",
        family.name
    );
    assert_eq!(end, c, "{}: relayed after Refresh 0", family.name);
}

/// The client role, inside the client namespace (see `outer`); without the environment
/// the outer tests set it has nothing to run against and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside the client namespace, started by the two tests above"]
async fn inner_webrtc_client() {
    let (Ok(prefix), Ok(mode)) = (std::env::var(ENV_NS), std::env::var(ENV_MODE)) else {
        eprintln!("nothing to do: run by the offload webrtc-rs tests inside their namespaces");
        return;
    };
    let offloaded = mode != "off";
    let mut peer = Peer::start(&format!("{prefix}p"));
    // `default`: the shipped example's wildcard listeners and no `offload` at all (auto);
    // the others: the listen addresses and both interfaces named.
    let wildcard = mode == "default";
    let mut args = if wildcard {
        vec!["--listen", "0.0.0.0:3478", "--listen", "[::]:3478"]
    } else {
        vec![
            "--listen",
            "10.0.1.1:3478",
            "--listen",
            "[2001:db8:1::1]:3478",
            "--offload",
            &mode,
            "--offload-interface",
            "s0",
            "--offload-interface",
            "s1",
        ]
    };
    args.extend([
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
        "--metrics-listen",
        METRICS,
        "--workers",
        "1",
        "--drain-timeout",
        "1",
    ]);
    let srv = format!("{prefix}s");
    let mut server = Server::spawn_wrapped(
        &["ip", "netns", "exec", &srv],
        &args,
        3478,
        9641,
        (50000, 50099),
    );
    server.metrics = METRICS.parse().unwrap();
    assert_eq!(
        metric_value(&server.metrics_text(), "callrelay_turn_offload_active"),
        if offloaded { 1.0 } else { 0.0 },
        "{}",
        server.log.lock().unwrap()
    );
    for (family, tag) in families().iter().zip([4u8, 6]) {
        run(family, &server, &mut peer, offloaded, tag).await;
    }
    // Routes, neighbours and checksums are all in place: the kernel never passed a bound
    // packet up for them.
    let t = server.metrics_text();
    for reason in ["no_route", "checksum", "room"] {
        let series = format!("callrelay_turn_offload_passed_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&t, &series), 0.0, "{series}");
    }
    assert_eq!(server.stop(), Some(0));
    eprintln!("{DONE}");
}
