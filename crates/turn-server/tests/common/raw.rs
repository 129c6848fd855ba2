//! A minimal hand-written STUN/TURN client for tests that need exact control of the bytes
//! (forbidden peers, IPv6 spellings, malformed input). Independent of the server's codec.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of this helper module"
)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

pub const COOKIE: u32 = 0x2112_A442;

pub fn msg_type(method: u16, class: u16) -> u16 {
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((class & 1) << 4)
        | ((class & 2) << 7)
}

pub fn xor_addr(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (COOKIE >> 16) as u16;
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&(u32::from(ip) ^ COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            let mut key = COOKIE.to_be_bytes().to_vec();
            key.extend_from_slice(tid);
            for (o, k) in ip.octets().iter().zip(key) {
                v.push(o ^ k);
            }
        }
    }
    v
}

/// Encodes a request; `key` adds MESSAGE-INTEGRITY.
pub fn encode(
    method: u16,
    class: u16,
    tid: &[u8; 12],
    attrs: &[(u16, Vec<u8>)],
    key: Option<&[u8]>,
) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&msg_type(method, class).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&COOKIE.to_be_bytes());
    m.extend_from_slice(tid);
    for (t, v) in attrs {
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&(v.len() as u16).to_be_bytes());
        m.extend_from_slice(v);
        while m.len() % 4 != 0 {
            m.push(0);
        }
    }
    if let Some(key) = key {
        let len = (m.len() - 20 + 24) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
        mac.update(&m);
        let tag = mac.finalize().into_bytes();
        m.extend_from_slice(&0x0008u16.to_be_bytes());
        m.extend_from_slice(&20u16.to_be_bytes());
        m.extend_from_slice(&tag);
    }
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

/// Parsed answer: class, error code, attributes.
#[derive(Debug)]
pub struct Answer {
    pub class: u16,
    pub code: Option<u16>,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Answer {
    pub fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| v.as_slice())
    }
}

pub fn decode(b: &[u8]) -> Answer {
    let ty = u16::from_be_bytes([b[0], b[1]]);
    let class = ((ty >> 4) & 1) | ((ty >> 7) & 2);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let mut attrs = Vec::new();
    let mut at = 20;
    while at + 4 <= 20 + len {
        let t = u16::from_be_bytes([b[at], b[at + 1]]);
        let l = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        attrs.push((t, b[at + 4..at + 4 + l].to_vec()));
        at += 4 + l.div_ceil(4) * 4;
    }
    let code = attrs
        .iter()
        .find(|(t, _)| *t == 0x0009)
        .map(|(_, v)| u16::from(v[2]) * 100 + u16::from(v[3]));
    Answer { class, code, attrs }
}

pub fn long_term_key(user: &str, realm: &str, pass: &str) -> Vec<u8> {
    let mut h = Md5::new();
    h.update(format!("{user}:{realm}:{pass}").as_bytes());
    h.finalize().to_vec()
}

/// An authenticated UDP TURN client.
pub struct RawClient {
    pub sock: UdpSocket,
    /// TURN over TCP instead of UDP (`new_tcp`): requests and ChannelData go on the stream.
    tcp: Option<std::net::TcpStream>,
    pub server: SocketAddr,
    user: String,
    realm: String,
    key: Vec<u8>,
    nonce: Vec<u8>,
    n: u8,
    /// UDP: retransmit requests like a real client (RFC 8489 §6.2.1) instead of failing
    /// on the first lost datagram.
    retransmit: bool,
}

impl RawClient {
    pub fn new(server: SocketAddr, user: &str, pass: &str, realm: &str) -> Self {
        Self::new_from("127.0.0.1".parse().unwrap(), server, user, pass, realm)
    }

    /// A UDP client whose socket is bound to `local` (any 127/8 address on loopback: many
    /// distinct source addresses from one machine).
    pub fn new_from(
        local: IpAddr,
        server: SocketAddr,
        user: &str,
        pass: &str,
        realm: &str,
    ) -> Self {
        let sock = UdpSocket::bind((local, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Self {
            sock,
            tcp: None,
            server,
            user: user.into(),
            realm: realm.into(),
            key: long_term_key(user, realm, pass),
            nonce: Vec::new(),
            n: 0,
            retransmit: false,
        }
    }

    pub fn tid(&mut self) -> [u8; 12] {
        self.n += 1;
        let mut t = [0x5a; 12];
        t[0] = self.n;
        t
    }

    /// A client that speaks TURN over one TCP connection to `server`.
    pub fn new_tcp(server: SocketAddr, user: &str, pass: &str, realm: &str) -> Self {
        let s = std::net::TcpStream::connect(server).unwrap();
        Self::over_stream(s, server, user, pass, realm)
    }

    /// Like `new_tcp`, with a tiny receive window (4 KiB buffer, 536-byte MSS): the
    /// server's socket toward this client fills after a few KiB while it does not read.
    pub fn new_tcp_small_window(server: SocketAddr, user: &str, pass: &str, realm: &str) -> Self {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.set_tcp_mss(536).unwrap();
        s.connect(&server.into()).unwrap();
        Self::over_stream(s.into(), server, user, pass, realm)
    }

    /// A client over an already connected TCP stream (e.g. bound to a chosen source).
    pub fn from_tcp_stream(
        s: std::net::TcpStream,
        server: SocketAddr,
        user: &str,
        pass: &str,
        realm: &str,
    ) -> Self {
        Self::over_stream(s, server, user, pass, realm)
    }

    fn over_stream(
        s: std::net::TcpStream,
        server: SocketAddr,
        user: &str,
        pass: &str,
        realm: &str,
    ) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Self::new(server, user, pass, realm);
        c.tcp = Some(s);
        c
    }

    pub fn send_raw(&self, b: &[u8]) {
        match self.tcp.as_ref() {
            Some(mut s) => std::io::Write::write_all(&mut s, b).unwrap(),
            None => {
                self.sock.send_to(b, self.server).unwrap();
            }
        }
    }

    /// The next datagram, or over TCP the next frame (ChannelData without its padding).
    pub fn recv(&self) -> Option<Vec<u8>> {
        if let Some(mut s) = self.tcp.as_ref() {
            use std::io::Read;
            let mut head = [0u8; 4];
            s.read_exact(&mut head).ok()?;
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let (body, keep) = if head[0] & 0xC0 == 0 {
                (16 + len, 16 + len)
            } else {
                ((len + 3) & !3, len)
            };
            let mut rest = vec![0u8; body];
            s.read_exact(&mut rest).ok()?;
            let mut v = head.to_vec();
            v.extend_from_slice(&rest[..keep]);
            return Some(v);
        }
        let mut buf = [0u8; 2048];
        self.sock
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    }

    /// Sends an authenticated request (fetching a nonce first if needed); `build` gets the tid.
    pub fn request(
        &mut self,
        method: u16,
        build: impl Fn(&[u8; 12]) -> Vec<(u16, Vec<u8>)>,
    ) -> Answer {
        for _ in 0..3 {
            let tid = self.tid();
            let mut attrs = build(&tid);
            let key = if self.nonce.is_empty() {
                None
            } else {
                attrs.push((0x0006, self.user.as_bytes().to_vec()));
                attrs.push((0x0014, self.realm.as_bytes().to_vec()));
                attrs.push((0x0015, self.nonce.clone()));
                Some(self.key.clone())
            };
            self.send_raw(&encode(method, 0, &tid, &attrs, key.as_deref()));
            let a = if self.retransmit && self.tcp.is_none() {
                let msg = encode(method, 0, &tid, &attrs, key.as_deref());
                self.exchange_retransmitting(&msg, &tid)
            } else {
                decode(&self.recv().expect("answer"))
            };
            if matches!(a.code, Some(401) | Some(438))
                && a.get(0x0015).is_some()
                && (self.nonce.is_empty() || a.code == Some(438))
            {
                self.nonce = a.get(0x0015).unwrap().to_vec();
                continue;
            }
            return a;
        }
        panic!("no answer after nonce retries");
    }

    /// Retransmit requests over UDP (RTO 500 ms doubling, 7 tries: RFC 8489 §6.2.1), as
    /// real clients do: for tests where the kernel may drop a datagram under load.
    pub fn retransmitting(mut self) -> Self {
        self.retransmit = true;
        self
    }

    /// Sends `msg` (already sent once by the caller) again until an answer with `tid`
    /// arrives; answers to other transactions are skipped.
    fn exchange_retransmitting(&self, msg: &[u8], tid: &[u8; 12]) -> Answer {
        let mut rto = Duration::from_millis(500);
        for _ in 0..7 {
            let until = std::time::Instant::now() + rto;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                self.sock
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut buf = [0u8; 2048];
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                if buf.get(8..20) == Some(&tid[..]) {
                    self.sock
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    return decode(&buf[..n]);
                }
            }
            self.send_raw(msg);
            rto *= 2;
        }
        panic!("no answer after 7 transmissions");
    }

    /// Allocate a UDP relay; `family` 1 = IPv4, 2 = IPv6.
    pub fn allocate(&mut self, family: u8) -> Answer {
        self.request(0x003, |_| {
            vec![(0x0019, vec![17, 0, 0, 0]), (0x0017, vec![family, 0, 0, 0])]
        })
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Answer {
        self.request(0x008, |tid| vec![(0x0012, xor_addr(peer, tid))])
    }

    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Answer {
        self.request(0x009, |tid| {
            vec![
                (0x000C, vec![(number >> 8) as u8, number as u8, 0, 0]),
                (0x0012, xor_addr(peer, tid)),
            ]
        })
    }
}
