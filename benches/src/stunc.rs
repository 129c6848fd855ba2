//! A minimal TURN client for the load generator: REST credentials, Allocate with the
//! 401 round trip, CreatePermission, ChannelBind, Refresh. Messages are built and
//! parsed with shared-ice's codec.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use shared_ice::auth::{RestSecret, long_term_key, mint_with_ttl};
use shared_ice::channel::ChannelNumber;
use shared_ice::stun::{Class, Message, MessageBuilder, Method, PROTOCOL_UDP, TransactionId};

use crate::udp::BatchSocket;

/// Credentials and server coordinates shared by every allocation of a run.
#[derive(Clone)]
pub(crate) struct TurnAuth {
    pub(crate) server: SocketAddr,
    pub(crate) secret: String,
}

/// One TURN allocation held by the load generator.
pub(crate) struct Allocation {
    pub(crate) sock: BatchSocket,
    pub(crate) server: SocketAddr,
    pub(crate) relay: SocketAddr,
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

const RTO: Duration = Duration::from_millis(250);
const TRIES: u32 = 6;

fn tid() -> TransactionId {
    TransactionId(rand::random())
}

/// Sends `req` and waits for the response with the same transaction id,
/// retransmitting on timeout.
async fn transact(sock: &BatchSocket, server: SocketAddr, req: &[u8]) -> Result<Vec<u8>> {
    let want = Message::parse(req)
        .context("parse own request")?
        .transaction_id();
    let mut buf = vec![0u8; 2048];
    for _ in 0..TRIES {
        sock.sock.send_to(req, server).await?;
        let deadline = tokio::time::Instant::now() + RTO;
        loop {
            match tokio::time::timeout_at(deadline, sock.sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(r) => {
                    let (n, _) = r?;
                    if let Ok(m) = Message::parse(&buf[..n])
                        && m.transaction_id() == want
                    {
                        return Ok(buf[..n].to_vec());
                    }
                }
            }
        }
    }
    bail!("no response from {server} after {TRIES} tries")
}

fn error_of(m: &Message<'_>) -> String {
    match m.error_code() {
        Ok(Some(e)) => format!("{} {}", e.code, e.reason),
        _ => "error without ERROR-CODE".into(),
    }
}

impl Allocation {
    /// Allocate (UDP relay) with REST credentials: unauthenticated request, 401 with
    /// realm and nonce, then the authenticated request.
    pub(crate) async fn allocate(auth: &TurnAuth, user: &str) -> Result<Self> {
        let sock = BatchSocket::bind("127.0.0.1:0".parse()?)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let creds = mint_with_ttl(&RestSecret::new(auth.secret.as_bytes()), user, now, 86_400);
        let mut out = Vec::with_capacity(256);
        let req = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, tid())
            .requested_transport(PROTOCOL_UDP)
            .finish_with_fingerprint()?
            .to_vec();
        let resp = transact(&sock, auth.server, &req).await?;
        let m = Message::parse(&resp)?;
        if m.class() != Class::Error {
            bail!("unauthenticated Allocate was not challenged");
        }
        let Some(realm) = m.realm()? else {
            bail!("unauthenticated Allocate: {} without REALM", error_of(&m));
        };
        let realm = realm.to_owned();
        let mut nonce = m.nonce()?.context("401 without NONCE")?.to_owned();
        let key = long_term_key(&creds.username, &realm, &creds.password);
        for _ in 0..2 {
            out.clear();
            let req = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, tid())
                .requested_transport(PROTOCOL_UDP)
                .username(&creds.username)
                .realm(&realm)
                .nonce(&nonce)
                .finish_with_integrity_and_fingerprint(&key)?
                .to_vec();
            let resp = transact(&sock, auth.server, &req).await?;
            let m = Message::parse(&resp)?;
            if m.class() == Class::Success {
                let relay = m.xor_relayed_address()?.context("no XOR-RELAYED-ADDRESS")?;
                return Ok(Self {
                    sock,
                    server: auth.server,
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
            let resp = transact(&self.sock, self.server, &req).await?;
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

    pub(crate) async fn create_permission(&mut self, peer: SocketAddr) -> Result<()> {
        self.request(Method::CREATE_PERMISSION, |b| b.xor_peer_address(peer))
            .await
    }

    pub(crate) async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<()> {
        let ch = ChannelNumber::new(channel).context("channel number out of range")?;
        self.request(Method::CHANNEL_BIND, |b| {
            b.channel_number(ch).xor_peer_address(peer)
        })
        .await
    }

    /// Refresh with LIFETIME 0: deletes the allocation.
    pub(crate) async fn release(&mut self) -> Result<()> {
        self.request(Method::REFRESH, |b| b.lifetime(0)).await
    }
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
