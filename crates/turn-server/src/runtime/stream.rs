//! TURN over TCP and TLS: the accept loops, one task per client connection that frames
//! what it reads and feeds the core, and the per-connection output queue ([`StreamOut`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

use super::limits::{StreamSlot, out_of_fds};
use super::mesh::wake_workers;
use super::rfc6062::{peer_streams_lock, splice_data};
use super::udp::{flush_sends, relay_input};
use super::{SharedTls, Worker, flush, spawn, unix_now};
use crate::core::{FiveTuple, Proto};
use crate::metrics::{Metrics, StreamReject};

/// Bytes queued per TCP/TLS client before frames are dropped (a slow reader must not
/// grow memory): 512 full-size video packets.
const STREAM_QUEUE_BYTES: usize = 512 * 1500;

/// Frames waiting for one TCP/TLS client. The relay path appends a frame in place
/// (header, payload, padding): no allocation and no channel message per frame.
///
/// Plain TCP: the worker writes the queue itself at the end of the batch that filled it
/// ([`flush_sends`]: one `try_write`, no task wake-up); the connection's writer task takes
/// over only while the socket is full. TLS: the writer task takes everything queued in one
/// swap and writes one record per frame.
#[derive(Default)]
pub(super) struct StreamOut {
    buf: RefCell<Vec<u8>>,
    /// TLS: end offset in `buf` of every queued frame (one record per frame).
    ends: RefCell<Vec<usize>>,
    ready: tokio::sync::Notify,
    closed: Cell<bool>,
    /// Plain TCP: the write half, written from the relay path.
    direct: Option<OwnedWriteHalf>,
    /// Listed in the worker's `dirty_streams` for the end of the current batch.
    pub(super) dirty: Cell<bool>,
}

impl StreamOut {
    /// Queues one frame made of `parts` plus `padding` zero bytes; false (dropped) when
    /// the client is that far behind or the connection is closing. Does not write: see
    /// [`queued`] and [`StreamOut::kick`].
    pub(super) fn push(&self, parts: &[&[u8]], padding: usize) -> bool {
        let len = parts.iter().map(|p| p.len()).sum::<usize>() + padding;
        let mut buf = self.buf.borrow_mut();
        if self.closed.get() || buf.len() + len > STREAM_QUEUE_BYTES {
            return false;
        }
        for p in parts {
            buf.extend_from_slice(p);
        }
        let end = buf.len() + padding;
        buf.resize(end, 0);
        if self.direct.is_none() {
            self.ends.borrow_mut().push(end);
        }
        true
    }

    /// Writer tasks: waits until frames are queued; false once the queue is empty and
    /// the connection closing.
    async fn wait_queued(&self) -> bool {
        loop {
            if !self.buf.borrow().is_empty() {
                return true;
            }
            if self.closed.get() {
                return false;
            }
            self.ready.notified().await;
        }
    }

    /// Wakes the writer task.
    pub(super) fn kick(&self) {
        self.ready.notify_one();
    }

    /// Plain TCP: one non-blocking write of what is queued, dropping what left; a full
    /// socket is not an error.
    fn try_flush(&self) -> io::Result<()> {
        let Some(wr) = &self.direct else {
            return Ok(());
        };
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return Ok(());
        }
        match wr.try_write(&buf) {
            Ok(n) => {
                buf.drain(..n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Plain TCP, from the relay path: writes what is queued without waiting; what the
    /// socket does not take (full, or an error the writer task then sees) is left to the
    /// writer task.
    pub(super) fn write_now(&self) {
        if self.try_flush().is_err() || !self.buf.borrow().is_empty() {
            self.kick();
        }
    }

    /// The writer sends what is queued, then returns.
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.kick();
    }
}

/// After a frame was queued on the relay path: plain TCP streams are written once at the
/// end of the batch ([`flush_sends`]), TLS streams by their writer task.
pub(super) fn queued(w: &Worker, out: &Rc<StreamOut>) {
    if out.direct.is_none() {
        out.kick();
    } else if !out.dirty.replace(true) {
        w.dirty_streams.borrow_mut().push(out.clone());
    }
}

/// Bytes a stream connection reads per syscall (at least; the buffer grows for a frame
/// that does not fit).
const STREAM_READ: usize = 16 * 1024;
/// A TCP/TLS connection with nothing read for this long is closed.
const STREAM_IDLE: Duration = Duration::from_secs(3600);

pub(super) async fn accept_loop(w: Rc<Worker>, l: TcpListener, proto: Proto, tls: SharedTls) {
    let Ok(local) = l.local_addr() else { return };
    loop {
        let (stream, remote) = tokio::select! {
            _ = w.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) if out_of_fds(&e) => {
                    // The connection stays in the backlog: accepting again at once would
                    // spin. Pause until one of ours closes (or 1 s: fds held elsewhere).
                    w.metrics.stream_rejected(StreamReject::FdLimit);
                    tracing::warn!(error = %e, "out of file descriptors: accept paused");
                    tokio::select! {
                        _ = w.shutdown.cancelled() => return,
                        () = w.stream_limits.freed.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slot = match w.stream_limits.admit(remote.ip()) {
            Ok(s) => s,
            Err(reason) => {
                // Closed at once (the client sees the connection end), counted.
                w.metrics.stream_rejected(reason);
                tracing::debug!(client = ?remote, ?reason, "stream connection over its cap, closed");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let five = FiveTuple {
            proto,
            local,
            remote,
        };
        match proto {
            Proto::Tls => {
                let acceptor = tls.current();
                let Some(acceptor) = acceptor else { continue };
                let ws = w.clone();
                spawn(&w.tasks, async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            serve_stream(ws, ClientConn::Tls(Box::new(s)), five, slot).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
            _ => {
                spawn(
                    &w.tasks,
                    serve_stream(w.clone(), ClientConn::Tcp(stream), five, slot),
                );
            }
        }
    }
}

/// A client's TURN-over-TCP or TURN-over-TLS connection.
enum ClientConn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a [`ClientConn`].
enum StreamRead {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl StreamRead {
    /// Reads into `buf`'s spare capacity. A short read clears the socket's readiness
    /// (tokio's `AsyncRead` does), so a burst costs one `read`, not one more for `EAGAIN`.
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Self::Tcp(r) => r.read_buf(buf).await,
            Self::Tls(r) => r.read_buf(buf).await,
        }
    }
}

/// The writer task of a connection, which returns the write half for RFC 6062 splicing
/// (plain TCP keeps its write half in the [`StreamOut`]).
enum StreamWriter {
    Tcp(JoinHandle<()>),
    Tls(JoinHandle<WriteHalf<TlsStream<TcpStream>>>),
}

/// Plain TCP: writes the queue while the relay path could not (socket full), and what
/// is left when the connection closes.
async fn tcp_writer(out: Rc<StreamOut>) {
    let Some(wr) = &out.direct else { return };
    while out.wait_queued().await {
        if wr.writable().await.is_err() {
            break;
        }
        if out.try_flush().is_err() {
            // Nothing more will leave: stop queueing for this client.
            out.closed.set(true);
            break;
        }
    }
}

/// TLS: one record per frame, because some clients (coturn's uclient) handle only one
/// TURN frame per SSL_read; the records still leave in as few TCP segments as the kernel
/// likes. Returns the write half (closed by the caller, or spliced: RFC 6062).
async fn tls_writer(
    out: Rc<StreamOut>,
    mut wr: WriteHalf<TlsStream<TcpStream>>,
) -> WriteHalf<TlsStream<TcpStream>> {
    let (mut batch, mut ends) = (Vec::new(), Vec::new());
    while out.wait_queued().await {
        std::mem::swap(&mut *out.buf.borrow_mut(), &mut batch);
        std::mem::swap(&mut *out.ends.borrow_mut(), &mut ends);
        let mut start = 0;
        let mut sent = Ok(());
        for &end in &ends {
            sent = wr
                .write_all(batch.get(start..end).unwrap_or_default())
                .await;
            if sent.is_err() {
                break;
            }
            start = end;
        }
        batch.clear();
        ends.clear();
        if sent.is_err() {
            out.closed.set(true);
            break;
        }
    }
    wr
}

async fn serve_stream(w: Rc<Worker>, conn: ClientConn, five: FiveTuple, slot: StreamSlot) {
    w.metrics.stream_opened();
    // Held (and the active gauge kept) until the connection, spliced or not, ends.
    struct Open {
        _slot: StreamSlot,
        metrics: Metrics,
    }
    impl Drop for Open {
        fn drop(&mut self) {
            self.metrics.stream_closed();
        }
    }
    let _open = Open {
        _slot: slot,
        metrics: w.metrics.clone(),
    };
    let (mut rd, out, writer) = match conn {
        ClientConn::Tcp(s) => {
            let (rd, wr) = s.into_split();
            let out = Rc::new(StreamOut {
                direct: Some(wr),
                ..StreamOut::default()
            });
            let writer = spawn(&w.tasks, tcp_writer(out.clone()));
            (StreamRead::Tcp(rd), out, StreamWriter::Tcp(writer))
        }
        ClientConn::Tls(s) => {
            let (rd, wr) = tokio::io::split(*s);
            let out = Rc::new(StreamOut::default());
            let writer = spawn(&w.tasks, tls_writer(out.clone(), wr));
            (StreamRead::Tls(rd), out, StreamWriter::Tls(writer))
        }
    };
    w.streams.borrow_mut().insert(five, out.clone());
    let mut splice: Option<(u32, Vec<u8>)> = None;
    // Frames are parsed where they are read: no copy from a read chunk. The buffer holds
    // at most one partial frame between reads, so `drain` moves little.
    let mut buf: Vec<u8> = Vec::with_capacity(STREAM_READ);
    // One shutdown future and one idle timer for the connection's life, re-armed only when
    // it fires: a timer per read (insert + remove in the wheel) was measurable per burst.
    let shutdown = w.shutdown.cancelled();
    tokio::pin!(shutdown);
    let idle = tokio::time::sleep(STREAM_IDLE);
    tokio::pin!(idle);
    // A connection without an allocation (not authenticated, or its allocation gone) is
    // closed when this fires; with one, it is checked again a period later.
    let auth = tokio::time::sleep(w.auth_timeout);
    tokio::pin!(auth);
    let mut last_read = tokio::time::Instant::now();
    'conn: loop {
        if buf.capacity() - buf.len() < STREAM_READ / 2 {
            buf.reserve(STREAM_READ);
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            () = &mut idle => {
                let due = last_read + STREAM_IDLE;
                if tokio::time::Instant::now() >= due {
                    tracing::debug!(client = ?five.remote, "idle stream, closing");
                    break;
                }
                idle.as_mut().reset(due);
                continue;
            }
            () = &mut auth => {
                if !w.core.borrow().has_allocation(five) {
                    w.metrics.stream_rejected(StreamReject::AuthTimeout);
                    tracing::debug!(client = ?five.remote, "stream without allocation, closing");
                    break;
                }
                auth.as_mut().reset(tokio::time::Instant::now() + w.auth_timeout);
                continue;
            }
        }
        // All frames of one read arrived at the same moment: one clock read per read.
        let now = Instant::now();
        last_read = now.into();
        let unix = unix_now();
        let mut off = 0;
        loop {
            let rest = buf.get(off..).unwrap_or_default();
            // The fuzzed shared-ice framer (fuzz/fuzz_targets/turn_tcp_framing.rs): not
            // STUN/ChannelData, a bad STUN header or a frame over `max_frame` closes the
            // connection (counted), it is never skipped silently.
            let len = match w.framer.next_frame(rest) {
                Ok(Some(f)) => f.len,
                Ok(None) => break,
                Err(e) => {
                    w.metrics.stream_rejected(StreamReject::BadFrame);
                    tracing::debug!(client = ?five.remote, error = %e, "unframeable stream, closing");
                    break 'conn;
                }
            };
            let Some(frame) = buf.get_mut(off..off + len) else {
                break;
            };
            let (relay, pending) = {
                let mut core = w.core.borrow_mut();
                let r = core.handle_input(now, unix, five, frame);
                (r, core.has_pending())
            };
            // A burst of frames from one read toward one peer leaves in one GSO send,
            // flushed after the read's frames (before any await).
            relay_input(&w, relay, frame);
            if pending {
                flush(&w, now);
            }
            // The core closed this connection (`Command::CloseConnection`, e.g. over its
            // source's request rate) or its writer failed: stop reading, so the socket
            // closes and the client sees it at once.
            if out.closed.get() {
                break 'conn;
            }
            off += len;
            // RFC 6062: after a successful ConnectionBind the rest of the stream is raw
            // data. (The map is empty except during a bind: no hashing per frame.)
            let bound = {
                let mut splices = w.splices.borrow_mut();
                if splices.is_empty() {
                    None
                } else {
                    splices.remove(&five)
                }
            };
            if let Some(id) = bound {
                splice = Some((id, buf.get(off..).unwrap_or_default().to_vec()));
                break 'conn;
            }
        }
        flush_sends(&w);
        wake_workers(&w);
        buf.drain(..off);
    }
    flush_sends(&w);
    wake_workers(&w);
    // Closing lets the writer send what is queued and return.
    if let Some(out) = w.streams.borrow_mut().remove(&five) {
        out.close();
    }
    if let Some((id, leftover)) = splice {
        let peer = peer_streams_lock(&w.peer_streams)
            .remove(&id)
            .map(|(s, _, conns)| (s, conns));
        match (rd, writer) {
            (StreamRead::Tcp(rd), StreamWriter::Tcp(h)) => {
                let _ = h.await;
                // The writer and the worker's maps have let go of the queue by now.
                let Some(wr) = Rc::try_unwrap(out).ok().and_then(|o| o.direct) else {
                    return;
                };
                if let (Ok(client), Some((peer, conns))) = (rd.reunite(wr), peer) {
                    splice_data(&w, five.proto, client, peer, &leftover, &conns).await;
                }
            }
            (StreamRead::Tls(rd), StreamWriter::Tls(h)) => {
                if let (Ok(wr), Some((peer, conns))) = (h.await, peer) {
                    splice_data(&w, five.proto, rd.unsplit(wr), peer, &leftover, &conns).await;
                }
            }
            _ => {}
        }
        return;
    }
    w.core.borrow_mut().connection_closed(five);
    flush(&w, Instant::now());
    match writer {
        // Dropping the write half (with the queue) shuts the write side down.
        StreamWriter::Tcp(h) => {
            let _ = h.await;
        }
        StreamWriter::Tls(h) => {
            if let Ok(mut wr) = h.await {
                let _ = wr.shutdown().await;
            }
        }
    }
}
