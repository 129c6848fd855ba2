//! RFC 6062 TCP relay through the real binary with a hand-written TCP client: Allocate
//! (REQUESTED-TRANSPORT TCP), Connect to a loopback TCP peer, ConnectionBind on a second
//! connection, bytes both ways, then Refresh lifetime 0. The allocation's connections must
//! close with it (RFC 6062 §5): the peer sees EOF within a bounded time, and the relayed
//! bytes show in the metrics while the connection is still open.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::raw::{Answer, decode, encode, long_term_key, xor_addr};
use common::{REALM, SECRET, Server, unix_now};

/// An authenticated TURN client over one TCP connection.
struct TcpClient {
    s: TcpStream,
    user: String,
    key: Vec<u8>,
    nonce: Vec<u8>,
    n: u8,
}

impl TcpClient {
    fn new(server: SocketAddr, user: &str, pass: &str) -> Self {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self {
            s,
            user: user.into(),
            key: long_term_key(user, REALM, pass),
            nonce: Vec::new(),
            n: 0,
        }
    }

    fn read_msg(&mut self) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        self.s.read_exact(&mut m).expect("STUN header");
        let len = usize::from(u16::from_be_bytes([m[2], m[3]]));
        m.resize(20 + len, 0);
        self.s.read_exact(&mut m[20..]).expect("STUN body");
        m
    }

    fn request(&mut self, method: u16, attrs: impl Fn(&[u8; 12]) -> Vec<(u16, Vec<u8>)>) -> Answer {
        for _ in 0..3 {
            self.n += 1;
            let mut tid = [0x6c; 12];
            tid[0] = self.n;
            let mut a = attrs(&tid);
            let key = if self.nonce.is_empty() {
                None
            } else {
                a.push((0x0006, self.user.as_bytes().to_vec()));
                a.push((0x0014, REALM.as_bytes().to_vec()));
                a.push((0x0015, self.nonce.clone()));
                Some(self.key.clone())
            };
            self.s
                .write_all(&encode(method, 0, &tid, &a, key.as_deref()))
                .unwrap();
            let ans = decode(&self.read_msg());
            if matches!(ans.code, Some(401) | Some(438)) && ans.get(0x0015).is_some() {
                self.nonce = ans.get(0x0015).unwrap().to_vec();
                continue;
            }
            return ans;
        }
        panic!("no answer after nonce retries");
    }
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).expect("relayed bytes");
    b
}

/// Waits (bounded by the read timeout) for EOF or reset on `s`; true if it came.
fn sees_close(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let start = Instant::now();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return true;
            }
            Err(_) => return false,
        }
        if start.elapsed() > within {
            return false;
        }
    }
}

#[test]
fn deleting_the_allocation_closes_its_tcp_connections() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let (user, pass) = common::rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "alice");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap();

    let mut ctrl = TcpClient::new(server.addr(), &user, &pass);
    let a = ctrl.request(0x003, |_| vec![(0x0019, vec![6, 0, 0, 0])]);
    assert_eq!(a.class, 2, "TCP Allocate failed: {:?}", a.code);
    let c = ctrl.request(0x00A, |tid| vec![(0x0012, xor_addr(peer_addr, tid))]);
    assert_eq!(c.class, 2, "Connect failed: {:?}", c.code);
    let id = c.get(0x002A).expect("CONNECTION-ID").to_vec();
    // Connect succeeded, so the server's connection is already queued on the listener.
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    let mut data = TcpClient::new(server.addr(), &user, &pass);
    let b = data.request(0x00B, |_| vec![(0x002A, id.clone())]);
    assert_eq!(b.class, 2, "ConnectionBind failed: {:?}", b.code);

    // Raw bytes both ways through the splice.
    data.s.write_all(b"hello peer").unwrap();
    assert_eq!(read_exactly(&mut peer, 10), b"hello peer");
    peer.write_all(b"hello client!").unwrap();
    assert_eq!(read_exactly(&mut data.s, 13), b"hello client!");

    // Counted while the connection is still open, not only when it closes.
    let up = server.wait_metric(
        "callrelay_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"tcp\"}",
        |v| v >= 10.0,
    );
    assert!(
        up >= 10.0,
        "to_peer bytes of an open TCP relay connection: {up}"
    );
    let down = server.wait_metric(
        "callrelay_turn_relayed_bytes_total{direction=\"to_client\",transport=\"tcp\"}",
        |v| v >= 13.0,
    );
    assert!(
        down >= 13.0,
        "to_client bytes of an open TCP relay connection: {down}"
    );

    let r = ctrl.request(0x004, |_| vec![(0x000D, vec![0, 0, 0, 0])]);
    assert_eq!(r.class, 2, "Refresh 0 failed: {:?}", r.code);
    let start = Instant::now();
    assert!(
        sees_close(&mut peer, Duration::from_secs(3)),
        "peer connection still open {:?} after the allocation was deleted",
        start.elapsed()
    );
    assert!(
        sees_close(&mut data.s, Duration::from_secs(3)),
        "data connection still open after the allocation was deleted"
    );
}
