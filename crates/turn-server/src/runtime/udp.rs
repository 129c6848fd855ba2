//! The UDP paths: receive batches (`recvmmsg`, GRO) on the listeners and relay sockets,
//! what the core decided for each datagram ([`relay_input`]), and the send batching (GSO)
//! that carries relayed datagrams out.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::mesh::{hand_off, wake_workers};
use super::stream::queued;
use super::{MAX_DATAGRAM, UdpSocket, Worker, flush, unix_now};
use crate::core::{FiveTuple, Proto, Relay, RelayToken};

/// Which of our sockets a batched datagram leaves from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Via {
    /// The allocation's relay socket (toward a peer).
    Relay(RelayToken),
    /// The UDP listener bound to this address (toward a client).
    Listener(SocketAddr),
}

/// Consecutive datagrams from one socket to one destination, packed back to back for one
/// `sendmsg` with `UDP_SEGMENT` (GSO): the kernel splits them into separate datagrams of
/// `seg` bytes (the last may be shorter). A video frame arrives as a burst of equal-sized
/// RTP packets (libwebrtc packetizes frames that way), so one receive batch usually holds
/// several datagrams of one flow: one syscall for all of them instead of one each.
#[derive(Debug)]
pub(super) struct SendBatch {
    via: Option<Via>,
    to: SocketAddr,
    seg: usize,
    n: usize,
    /// A shorter datagram closes the batch (GSO allows only the last one shorter).
    closed: bool,
    /// Segments per send the kernel accepts (1 = no GSO: plain `sendto` each).
    max: usize,
    buf: Vec<u8>,
}

/// Largest GSO send (the kernel's limit is 64 KiB including headers).
const GSO_BYTES: usize = 60_000;

impl SendBatch {
    pub(super) fn new(max_segments: usize) -> Self {
        Self {
            via: None,
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            seg: 0,
            n: 0,
            closed: false,
            max: max_segments.clamp(1, 64),
            buf: Vec::with_capacity(GSO_BYTES),
        }
    }
}

/// Queues one relayed datagram: appended to the pending batch when it continues it (same
/// socket and destination, not longer than the first), else the batch leaves first.
fn send_batched(w: &Worker, via: Via, to: SocketAddr, bytes: &[u8]) {
    let mut b = w.gso.borrow_mut();
    if b.max <= 1 || bytes.len() > GSO_BYTES {
        drop(b);
        send_via(w, via, to, bytes, None);
        return;
    }
    let fits = b.via == Some(via)
        && b.to == to
        && !b.closed
        && bytes.len() <= b.seg
        && b.n < b.max
        && b.buf.len() + bytes.len() <= GSO_BYTES;
    if !fits {
        flush_batch(w, &mut b);
        b.via = Some(via);
        b.to = to;
        b.seg = bytes.len();
    } else if bytes.len() < b.seg {
        b.closed = true;
    }
    b.buf.extend_from_slice(bytes);
    b.n += 1;
}

/// Sends what [`send_batched`] holds; call before every await.
pub(super) fn flush_sends(w: &Worker) {
    flush_batch(w, &mut w.gso.borrow_mut());
    let mut dirty = w.dirty_streams.borrow_mut();
    for out in dirty.drain(..) {
        out.dirty.set(false);
        out.write_now();
    }
}

fn flush_batch(w: &Worker, b: &mut SendBatch) {
    if let Some(via) = b.via.take() {
        let seg = (b.n > 1).then_some(b.seg);
        send_via(w, via, b.to, &b.buf, seg);
    }
    b.buf.clear();
    b.n = 0;
    b.closed = false;
}

/// One `sendto` (single datagram) or one GSO `sendmsg` (several of `seg` bytes).
fn send_via(w: &Worker, via: Via, to: SocketAddr, bytes: &[u8], seg: Option<usize>) {
    let relays;
    let sock = match via {
        Via::Relay(t) => {
            relays = w.relays.borrow();
            relays.get(&t).map(|(s, _)| s)
        }
        Via::Listener(local) => w.udp.get(&local),
    };
    let Some(sock) = sock else { return };
    match seg {
        None => {
            let _ = send_now(sock, bytes, to);
        }
        Some(seg) => {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: bytes,
                segment_size: Some(seg),
                src_ip: None,
            };
            if let Err(e) = w.recv_state.try_send(sock.get_ref().into(), &t) {
                tracing::trace!(target: "wire", error = %e, %to, "GSO send failed");
            }
        }
    }
}

/// Sends a relayed payload to a client as ChannelData: `buf` holds 4 spare bytes followed by
/// the payload; the header is written in place (no copy for UDP clients).
pub(super) fn deliver_channel_data(
    w: &Worker,
    client: FiveTuple,
    header: [u8; 4],
    padding: usize,
    buf: &mut [u8],
) {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let Some(h) = buf.get_mut(..4) else { return };
    h.copy_from_slice(&header);
    let Some(frame) = buf.get(..4 + len) else {
        return;
    };
    match client.proto {
        Proto::Udp => send_batched(w, Via::Listener(client.local), client.remote, frame),
        Proto::Tcp | Proto::Tls => {
            if let Some(out) = w.streams.borrow().get(&client)
                && out.push(&[frame], padding)
            {
                queued(w, out);
            }
        }
    }
}

pub(super) fn send_to_client(w: &Worker, client: FiveTuple, data: Vec<u8>) {
    match client.proto {
        Proto::Udp => {
            if let Some(s) = w.udp.get(&client.local) {
                let _ = send_now(s, &data, client.remote);
            }
        }
        Proto::Tcp | Proto::Tls => {
            if let Some(out) = w.streams.borrow().get(&client)
                && out.push(&[&data], 0)
            {
                out.kick();
            }
        }
    }
}

/// One non-blocking `sendto`, straight to the kernel. tokio's `try_send_to` first consults
/// its cached readiness, which a freshly registered relay socket does not have yet, and
/// then refuses with `WouldBlock` without trying: the first packet of every allocation was
/// lost that way. A full socket buffer still drops the datagram, as a router would.
fn send_now(sock: &UdpSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock.get_ref()).send_to(buf, &to.into())
}

pub(super) fn relay_to_peer(w: &Worker, relay: RelayToken, peer: SocketAddr, bytes: &[u8]) {
    if let Some((s, _)) = w.relays.borrow().get(&relay) {
        let _ = send_now(s, bytes, peer);
    }
}

/// Carries out what the core decided for one client datagram or TCP/TLS frame `data`:
/// relay toward a peer (batched), deliver in process to another allocation of this
/// worker (header rewritten in place), or hand off to the owning worker (woken by
/// [`wake_workers`] after the batch). Shared by the UDP and the stream paths.
pub(super) fn relay_input(w: &Worker, relay: Option<Relay>, data: &mut [u8]) {
    match relay {
        Some(Relay::ToPeer {
            relay,
            peer,
            payload,
        }) => {
            if let Some(bytes) = data.get(payload) {
                send_batched(w, Via::Relay(relay), peer, bytes);
            }
        }
        Some(Relay::ToClient {
            client,
            header,
            padding,
        }) => deliver_channel_data(w, client, header, padding, data),
        Some(Relay::ToWorker {
            worker,
            relay,
            peer,
            src,
            payload,
        }) => {
            if let Some(bytes) = data.get(payload) {
                hand_off(w, worker, relay, peer, src, bytes);
            }
        }
        None => {}
    }
}

/// Datagrams read per `recvmmsg` on a listener socket.
const RECV_BATCH: usize = if quinn_udp::BATCH_SIZE < 16 {
    quinn_udp::BATCH_SIZE
} else {
    16
};

pub(super) async fn udp_loop(w: Rc<Worker>, sock: Rc<UdpSocket>) {
    let Ok(local) = sock.get_ref().local_addr() else {
        return;
    };
    // quinn-udp gives recvmmsg (up to RECV_BATCH datagrams per syscall) and GRO (several
    // datagrams of one flow in one buffer, split at `stride`), without unsafe code here.
    let state = match quinn_udp::UdpSocketState::new(sock.get_ref().into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %local, "UDP listener setup failed");
            return;
        }
    };
    // The kernel fast path relays only what reaches its hook datagram by datagram: GRO
    // for this socket would merge client bursts ahead of TC (docs/offload.md).
    if w.offload.is_some() {
        use std::os::fd::AsFd;
        if let Err(e) = turn_offload::udp_gro_off(sock.get_ref().as_fd()) {
            tracing::warn!(error = %e, %local, "could not turn UDP_GRO off: client bursts may take userspace");
        }
    }
    let mut storage = vec![0u8; MAX_DATAGRAM * RECV_BATCH];
    let mut metas = [quinn_udp::RecvMeta::default(); RECV_BATCH];
    loop {
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = sock.readable() => if r.is_err() { return },
        }
        // Drain the socket: one recvmmsg per batch until it would block, but yield to the
        // worker's other tasks (timers, metrics, SIGHUP, TCP connections) every
        // `UDP_BATCHES_PER_TURN` batches: a flood faster than the worker must not starve them.
        let mut batches = 0usize;
        loop {
            batches += 1;
            if batches > UDP_BATCHES_PER_TURN {
                tokio::task::yield_now().await;
                batches = 1;
            }
            let res = {
                let mut chunks = storage.chunks_mut(MAX_DATAGRAM);
                let mut iovs: [io::IoSliceMut<'_>; RECV_BATCH] =
                    std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or_default()));
                recv_batch(&sock, &state, &mut iovs, &mut metas)
            };
            let (n, more) = match res {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface as ECONNREFUSED etc. on Linux: not fatal.
                    tracing::debug!(error = %e, "udp recv");
                    break;
                }
            };
            let now = Instant::now();
            let unix = unix_now();
            let mut pending = false;
            for (meta, chunk) in metas.iter().zip(storage.chunks_mut(MAX_DATAGRAM)).take(n) {
                let Some(filled) = chunk.get_mut(..meta.len) else {
                    continue;
                };
                let from = FiveTuple {
                    proto: Proto::Udp,
                    local,
                    remote: meta.addr,
                };
                for data in filled.chunks_mut(meta.stride.max(1)) {
                    let relay = {
                        let mut core = w.core.borrow_mut();
                        let r = core.handle_input(now, unix, from, data);
                        pending |= core.has_pending();
                        r
                    };
                    relay_input(&w, relay, data);
                }
            }
            flush_sends(&w);
            wake_workers(&w);
            if pending {
                flush(&w, now);
            }
            if !more {
                break;
            }
        }
    }
}

/// `recvmmsg` batches a UDP listener handles before it lets the worker's other tasks run.
const UDP_BATCHES_PER_TURN: usize = 64;

/// Datagrams read per `recvmmsg` on a relay socket, and the size of one slot of the
/// worker's relay buffer (4 bytes of headroom for the ChannelData header + a datagram).
/// A burst that fills every slot costs one more `recvmmsg` just to see `EAGAIN`; 16
/// slots cover a video frame's burst in one call (8 cost a second call per 8-packet
/// burst). The buffer is per worker (16 × 64 KiB), not per allocation.
pub(super) const RELAY_BATCH: usize = 16;
pub(super) const RELAY_SLOT: usize = MAX_DATAGRAM + 4;

/// One non-blocking `recvmmsg` inside tokio's readiness protocol. When it returns fewer
/// datagrams than buffers the queue was empty at that instant, so readiness is cleared
/// right away (reported as `WouldBlock` to `try_io`, the count kept aside) instead of
/// paying one more syscall just to see `EAGAIN`. Safe: a datagram arriving afterwards
/// raises a new readiness event that this clear does not erase.
fn recv_batch(
    sock: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    bufs: &mut [io::IoSliceMut<'_>],
    metas: &mut [quinn_udp::RecvMeta],
) -> io::Result<(usize, bool)> {
    let mut got = 0;
    let res = sock.try_io(tokio::io::Interest::READABLE, |s| {
        got = state.recv(s.into(), bufs, metas)?;
        if got < bufs.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match res {
        Ok(()) => Ok((got, true)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((got, false)),
        Err(e) => Err(e),
    }
}

pub(super) async fn relay_loop(w: Rc<Worker>, token: RelayToken, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        loop {
            let mut buf = w.relay_buf.borrow_mut();
            let mut metas = w.relay_metas.borrow_mut();
            let res = {
                let mut slots = buf.chunks_mut(RELAY_SLOT);
                let mut iovs: [io::IoSliceMut<'_>; RELAY_BATCH] = std::array::from_fn(|_| {
                    io::IoSliceMut::new(
                        slots
                            .next()
                            .and_then(|s| s.get_mut(4..))
                            .unwrap_or_default(),
                    )
                });
                recv_batch(&sock, &w.recv_state, &mut iovs, &mut *metas)
            };
            let Ok((n, more)) = res else { break };
            let now = Instant::now();
            let mut pending = false;
            for (meta, slot) in metas.iter().zip(buf.chunks_mut(RELAY_SLOT)).take(n) {
                let len = meta.len;
                let r = {
                    let mut core = w.core.borrow_mut();
                    let r = slot
                        .get(4..4 + len)
                        .and_then(|p| core.handle_peer_data(now, token, meta.addr, p));
                    pending |= core.has_pending();
                    r
                };
                let Some(Relay::ToClient {
                    client,
                    header,
                    padding,
                }) = r
                else {
                    continue;
                };
                deliver_channel_data(&w, client, header, padding, slot);
            }
            flush_sends(&w);
            drop(metas);
            drop(buf);
            if pending {
                flush(&w, now);
            }
            if !more {
                break;
            }
        }
    }
}
