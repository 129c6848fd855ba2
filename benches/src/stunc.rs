//! A minimal TURN client for the load generator: REST credentials, Allocate with the
//! 401 round trip, CreatePermission, ChannelBind, Refresh. Messages are built and
//! parsed with shared-ice's codec.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use shared_ice::auth::{RestSecret, long_term_key, mint_with_ttl};
use shared_ice::channel::ChannelNumber;
use shared_ice::stun::{Class, Message, MessageBuilder, Method, PROTOCOL_UDP, TransactionId};

use tokio::net::UdpSocket;

use crate::udp::BatchSocket;

/// Credentials and server coordinates shared by every allocation of a run.
#[derive(Clone)]
pub(crate) struct TurnAuth {
    pub(crate) server: SocketAddr,
    pub(crate) secret: String,
}

/// REST credentials for one username, with the long-term key cached for the realm
/// the server announced, so cycles that share a username (`--alloc-same-user`) pay
/// for HMAC-SHA1 + MD5 once instead of on every Allocate.
pub(crate) struct Creds {
    username: String,
    password: String,
    key: std::cell::RefCell<Option<(String, [u8; 16])>>,
}

impl Creds {
    /// Mints REST credentials for `user`, valid for a day.
    pub(crate) fn mint(auth: &TurnAuth, user: &str) -> Result<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut c = mint_with_ttl(&RestSecret::new(auth.secret.as_bytes()), user, now, 86_400);
        Ok(Self {
            username: std::mem::take(&mut c.username),
            password: std::mem::take(&mut c.password),
            key: std::cell::RefCell::new(None),
        })
    }

    fn key_for(&self, realm: &str) -> [u8; 16] {
        let mut cached = self.key.borrow_mut();
        match &*cached {
            Some((r, k)) if r == realm => *k,
            _ => {
                let k = long_term_key(&self.username, realm, &self.password);
                *cached = Some((realm.to_owned(), k));
                k
            }
        }
    }
}

/// The authenticated state of one allocation, independent of the transport.
pub(crate) struct Session {
    relay: SocketAddr,
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

/// One TURN allocation held by the load generator.
pub(crate) struct Allocation {
    pub(crate) sock: BatchSocket,
    pub(crate) relay: SocketAddr,
    server: SocketAddr,
    session: Session,
}

/// What carries a client's STUN transactions: one request in, its response out.
pub(crate) trait Transport {
    async fn transact(&mut self, req: &[u8]) -> Result<Vec<u8>>;
}

/// A UDP socket and the server it talks to (retransmits every RTO).
pub(crate) struct UdpPath<'a> {
    pub(crate) sock: &'a UdpSocket,
    pub(crate) server: SocketAddr,
}

impl Transport for UdpPath<'_> {
    async fn transact(&mut self, req: &[u8]) -> Result<Vec<u8>> {
        transact(self.sock, self.server, req).await
    }
}

const RTO: Duration = Duration::from_millis(250);
const TRIES: u32 = 6;

pub(crate) fn tid() -> TransactionId {
    TransactionId(rand::random())
}

/// Sends `req` and waits for the response with the same transaction id,
/// retransmitting on timeout.
async fn transact(sock: &UdpSocket, server: SocketAddr, req: &[u8]) -> Result<Vec<u8>> {
    let want = Message::parse(req)
        .context("parse own request")?
        .transaction_id();
    let mut buf = vec![0u8; 2048];
    for _ in 0..TRIES {
        sock.send_to(req, server).await?;
        let deadline = tokio::time::Instant::now() + RTO;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(r) => {
                    let (n, _) = r?;
                    if let Ok(m) = Message::parse(&buf[..n])
                        && m.transaction_id() == want
                    {
                        buf.truncate(n);
                        return Ok(buf);
                    }
                }
            }
        }
    }
    bail!("no response from {server} after {TRIES} tries")
}

pub(crate) fn error_of(m: &Message<'_>) -> String {
    match m.error_code() {
        Ok(Some(e)) => format!("{} {}", e.code, e.reason),
        _ => "error without ERROR-CODE".into(),
    }
}

impl Session {
    /// Allocate (UDP relay) with REST credentials: unauthenticated request, 401 with
    /// realm and nonce, then the authenticated request.
    pub(crate) async fn allocate(t: &mut impl Transport, creds: &Creds) -> Result<Self> {
        let mut out = Vec::with_capacity(256);
        let req = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, tid())
            .requested_transport(PROTOCOL_UDP)
            .finish_with_fingerprint()?
            .to_vec();
        let resp = t.transact(&req).await?;
        let m = Message::parse(&resp)?;
        if m.class() != Class::Error {
            bail!("unauthenticated Allocate was not challenged");
        }
        let Some(realm) = m.realm()? else {
            bail!("unauthenticated Allocate: {} without REALM", error_of(&m));
        };
        let realm = realm.to_owned();
        let mut nonce = m.nonce()?.context("401 without NONCE")?.to_owned();
        let key = creds.key_for(&realm);
        for _ in 0..2 {
            out.clear();
            let req = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, tid())
                .requested_transport(PROTOCOL_UDP)
                .username(&creds.username)
                .realm(&realm)
                .nonce(&nonce)
                .finish_with_integrity_and_fingerprint(&key)?
                .to_vec();
            let resp = t.transact(&req).await?;
            let m = Message::parse(&resp)?;
            if m.class() == Class::Success {
                let relay = m.xor_relayed_address()?.context("no XOR-RELAYED-ADDRESS")?;
                return Ok(Self {
                    relay,
                    username: creds.username.clone(),
                    realm,
                    nonce,
                    key,
                });
            }
            if let Ok(Some(e)) = m.error_code()
                && e.code == 438
                && let Ok(Some(n)) = m.nonce()
            {
                nonce = n.to_owned();
                continue;
            }
            bail!("Allocate failed: {}", error_of(&m));
        }
        bail!("Allocate: nonce kept going stale")
    }

    async fn request(
        &mut self,
        t: &mut impl Transport,
        method: Method,
        build: impl Fn(MessageBuilder<'_>) -> MessageBuilder<'_>,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(256);
        for _ in 0..2 {
            out.clear();
            let b = MessageBuilder::new(&mut out, Class::Request, method, tid());
            let req = build(b)
                .username(&self.username)
                .realm(&self.realm)
                .nonce(&self.nonce)
                .finish_with_integrity_and_fingerprint(&self.key)?
                .to_vec();
            let resp = t.transact(&req).await?;
            let m = Message::parse(&resp)?;
            if m.class() == Class::Success {
                return Ok(());
            }
            if let Ok(Some(e)) = m.error_code()
                && e.code == 438
                && let Ok(Some(n)) = m.nonce()
            {
                self.nonce = n.to_owned();
                continue;
            }
            bail!("{:?} failed: {}", method.name(), error_of(&m));
        }
        bail!("nonce kept going stale")
    }

    pub(crate) async fn create_permission(
        &mut self,
        t: &mut impl Transport,
        peer: SocketAddr,
    ) -> Result<()> {
        self.request(t, Method::CREATE_PERMISSION, |b| b.xor_peer_address(peer))
            .await
    }

    pub(crate) async fn channel_bind(
        &mut self,
        t: &mut impl Transport,
        channel: u16,
        peer: SocketAddr,
    ) -> Result<()> {
        let ch = ChannelNumber::new(channel).context("channel number out of range")?;
        self.request(t, Method::CHANNEL_BIND, |b| {
            b.channel_number(ch).xor_peer_address(peer)
        })
        .await
    }

    /// Refresh with LIFETIME `secs` (0 deletes the allocation).
    pub(crate) async fn refresh(&mut self, t: &mut impl Transport, secs: u32) -> Result<()> {
        self.request(t, Method::REFRESH, |b| b.lifetime(secs)).await
    }

    /// Refresh with LIFETIME 0: deletes the allocation.
    pub(crate) async fn release(&mut self, t: &mut impl Transport) -> Result<()> {
        self.request(t, Method::REFRESH, |b| b.lifetime(0)).await
    }
}

impl Allocation {
    /// Allocate (UDP relay) for `user` on a batch socket that then carries data.
    pub(crate) async fn allocate(auth: &TurnAuth, user: &str) -> Result<Self> {
        let sock = BatchSocket::bind("127.0.0.1:0".parse()?)?;
        Self::allocate_on(auth, user, sock).await
    }

    /// [`Self::allocate`] from a socket bound to `local` without GRO (an address of a
    /// network namespace's interface, for the offload bench).
    pub(crate) async fn allocate_from(
        auth: &TurnAuth,
        user: &str,
        local: std::net::IpAddr,
    ) -> Result<Self> {
        let sock = BatchSocket::bind_with(SocketAddr::new(local, 0), false)?;
        Self::allocate_on(auth, user, sock).await
    }

    async fn allocate_on(auth: &TurnAuth, user: &str, sock: BatchSocket) -> Result<Self> {
        let creds = Creds::mint(auth, user)?;
        let mut path = UdpPath {
            sock: &sock.sock,
            server: auth.server,
        };
        let session = Session::allocate(&mut path, &creds).await?;
        Ok(Self {
            relay: session.relay,
            server: auth.server,
            sock,
            session,
        })
    }

    pub(crate) async fn create_permission(&mut self, peer: SocketAddr) -> Result<()> {
        let mut path = UdpPath {
            sock: &self.sock.sock,
            server: self.server,
        };
        self.session.create_permission(&mut path, peer).await
    }

    pub(crate) async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<()> {
        let mut path = UdpPath {
            sock: &self.sock.sock,
            server: self.server,
        };
        self.session.channel_bind(&mut path, channel, peer).await
    }
}

/// One full allocation cycle on a fresh plain UDP socket bound to `source`: Allocate
/// with the 401 round trip, CreatePermission and ChannelBind to `peer`, Refresh with
/// LIFETIME 0.
///
/// The socket is a plain one on purpose: a [`BatchSocket`] turns UDP GRO on, and on
/// this kernel (6.18) perf showed that setsockopt and the socket's close each
/// flipping a static key (`udp_lib_setsockopt` / `udpv6_destroy_sock` →
/// `smp_text_poke_batch_finish`), which re-patches kernel text with an IPI to every
/// CPU. Per short-lived socket that was about half of the load generator's CPU, and
/// the IPIs also interrupted (and were billed to) the server under test.
pub(crate) async fn alloc_cycle(
    auth: &TurnAuth,
    creds: &Creds,
    source: std::net::Ipv4Addr,
    peer: SocketAddr,
    channel: u16,
) -> Result<()> {
    // Every 127/8 address is local on Linux; fall back to 127.0.0.1 where it is not.
    let sock = match UdpSocket::bind(SocketAddr::from((source, 0))).await {
        Ok(s) => s,
        Err(_) => UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    let mut path = UdpPath {
        sock: &sock,
        server: auth.server,
    };
    let mut s = Session::allocate(&mut path, creds).await?;
    s.create_permission(&mut path, peer).await?;
    s.channel_bind(&mut path, channel, peer).await?;
    s.release(&mut path).await
}

/// Waits until a STUN Binding request to `server` gets any answer.
pub(crate) async fn wait_stun(server: SocketAddr, timeout: Duration) -> Result<()> {
    let sock = BatchSocket::bind("127.0.0.1:0".parse()?)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let req = MessageBuilder::new(&mut out, Class::Request, Method::BINDING, tid())
        .finish_with_fingerprint()?
        .to_vec();
    let mut buf = vec![0u8; 2048];
    while tokio::time::Instant::now() < deadline {
        let _ = sock.sock.send_to(&req, server).await;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), sock.sock.recv_from(&mut buf)).await
            && Message::parse(&buf[..n]).is_ok()
        {
            return Ok(());
        }
    }
    bail!("no STUN answer from {server} within {timeout:?}")
}
