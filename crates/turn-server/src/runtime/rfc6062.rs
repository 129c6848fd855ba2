//! RFC 6062 (TURN TCP allocations): relay listeners for peers, outgoing Connects, peer
//! connections waiting for their ConnectionBind, and the splice of a bound data connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::bind::tcp_listener;
use super::{Worker, flush};
use crate::core::{Proto, RelayToken};

/// A peer connection waiting for its ConnectionBind: the stream, when it was stored, and
/// its allocation's token (cancelled when the allocation is deleted or expires).
type PeerStream = (std::net::TcpStream, Instant, CancellationToken);

/// RFC 6062 peer connections waiting for their ConnectionBind, shared by all workers
/// (the client's data connection may reach another worker than its control connection).
pub type PeerStreams = Arc<Mutex<HashMap<u32, PeerStream>>>;

pub(super) fn peer_streams_lock(
    p: &PeerStreams,
) -> std::sync::MutexGuard<'_, HashMap<u32, PeerStream>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// RFC 6062 relay listener; reuse-address/port so outgoing Connects can bind the same
/// relayed address.
pub(super) fn tcp_relay_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    tcp_listener(addr)
}

pub(super) async fn tcp_relay_loop(
    w: Rc<Worker>,
    relay: RelayToken,
    l: TcpListener,
    conns: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        let id = w.core.borrow_mut().tcp_peer_incoming(now, relay, peer);
        if let (Some(id), Ok(std)) = (id, stream.into_std()) {
            peer_streams_lock(&w.peer_streams).insert(id, (std, now, conns.clone()));
        }
        flush(&w, now);
    }
}

pub(super) async fn connect_peer(
    w: Rc<Worker>,
    conn_id: u32,
    bind: SocketAddr,
    peer: SocketAddr,
    conns: CancellationToken,
) {
    let attempt = async {
        let sock = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(bind)?;
        sock.connect(peer).await
    };
    let res = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    let now = Instant::now();
    let ok = match res {
        Ok(Ok(stream)) => match stream.into_std() {
            Ok(std) => {
                peer_streams_lock(&w.peer_streams).insert(conn_id, (std, now, conns));
                true
            }
            Err(_) => false,
        },
        _ => false,
    };
    w.core.borrow_mut().tcp_peer_connected(now, conn_id, ok);
    flush(&w, now);
}

/// Drops peer connections nobody bound within 30 s (RFC 6062 §5.3) and those whose
/// allocation is gone.
pub(super) fn expire_peer_streams(p: &PeerStreams, now: Instant) {
    peer_streams_lock(p).retain(|_, (_, at, conns)| {
        !conns.is_cancelled()
            && now.saturating_duration_since(*at) < crate::core::CONNECTION_BIND_TIMEOUT
    });
}

/// Pipes a client data connection and a peer TCP connection (RFC 6062) until either side
/// closes, the allocation goes (`conns` cancelled: both connections are closed, RFC 6062
/// §5) or the server shuts down. Relayed bytes are counted per chunk, so the metrics
/// follow long-lived connections while they run.
pub(super) async fn splice_data<S: AsyncRead + AsyncWrite + Unpin>(
    w: &Worker,
    proto: Proto,
    client: S,
    peer: std::net::TcpStream,
    leftover: &[u8],
    conns: &CancellationToken,
) {
    if conns.is_cancelled() {
        return;
    }
    let Ok(mut peer) = TcpStream::from_std(peer) else {
        return;
    };
    if peer.write_all(leftover).await.is_err() {
        return;
    }
    w.core
        .borrow_mut()
        .count_stream_relay(proto, leftover.len() as u64, 0);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut peer_rd, mut peer_wr) = peer.split();
    let up = pipe(w, proto, &mut client_rd, &mut peer_wr, true);
    let down = pipe(w, proto, &mut peer_rd, &mut client_wr, false);
    tokio::select! {
        _ = w.shutdown.cancelled() => {}
        _ = conns.cancelled() => {
            tracing::debug!("allocation gone, closing its TCP relay connection");
        }
        (up, down) = async { tokio::join!(up, down) } => {
            tracing::debug!(up, down, "TCP relay connection closed");
        }
    }
}

/// Copies one direction of a spliced connection until EOF or error, counting each chunk;
/// on EOF the write side is shut down (half-close passes through). Returns the bytes copied.
async fn pipe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    w: &Worker,
    proto: Proto,
    rd: &mut R,
    wr: &mut W,
    to_peer: bool,
) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get(..n) else { break };
        if wr.write_all(chunk).await.is_err() {
            break;
        }
        total += n as u64;
        let (p, c) = if to_peer {
            (n as u64, 0)
        } else {
            (0, n as u64)
        };
        w.core.borrow_mut().count_stream_relay(proto, p, c);
    }
    let _ = wr.shutdown().await;
    total
}
