//! Accepting connections: caps, TLS handshake, hyper connection serving.

use super::admin::speaks_plain;
use super::limits::{ConnLimiter, ConnSlot};
use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use callrelay_service::tls::SharedTls;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A listener's caps and metrics.
pub(super) struct Accounting {
    pub(super) limiter: Arc<ConnLimiter>,
    pub(super) rejected: Metrics,
    pub(super) open: prometheus::IntGauge,
    /// On a TLS listener, also serve plain HTTP to loopback peers (see [`speaks_plain`]).
    pub(super) plain_from_loopback: bool,
}

impl Accounting {
    pub(super) fn new(limiter: Arc<ConnLimiter>, listener: &str, metrics: &Metrics) -> Self {
        Self {
            limiter,
            rejected: metrics.clone(),
            open: metrics.tcp_connections.with_label_values(&[listener]),
            plain_from_loopback: false,
        }
    }

    pub(super) fn plain_from_loopback(mut self) -> Self {
        self.plain_from_loopback = true;
        self
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<SharedTls>,
    shutdown: CancellationToken,
    acct: Accounting,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match acct.limiter.acquire(peer.ip()) {
            Ok(s) => s,
            Err(reason) => {
                // closed at once: the fd goes back before the next accept
                tracing::debug!(reason, "connection refused by a cap");
                acct.rejected
                    .connections_rejected
                    .with_label_values(&[reason])
                    .inc();
                drop(stream);
                continue;
            }
        };
        let open = acct.open.clone();
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.as_ref().and_then(SharedTls::current);
        let shutdown = shutdown.clone();
        let plain_ok = acct.plain_from_loopback && peer.ip().to_canonical().is_loopback();
        tokio::spawn(async move {
            let tls = match tls {
                Some(acceptor) if plain_ok => {
                    let mut b = [0u8; 1];
                    match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut b)).await {
                        Ok(Ok(1)) if speaks_plain(peer.ip(), b[0]) => None,
                        Ok(Ok(1)) => Some(acceptor),
                        _ => return,
                    }
                }
                t => t,
            };
            open.inc();
            // the stream carries its slot: an upgraded WebSocket outlives this task
            let stream = Counted {
                io: stream,
                ahead: Vec::new(),
                ahead_at: 0,
                _slot: slot,
                _open: GaugeGuard(open),
            };
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => serve_conn(s, router, shutdown, peer).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => serve_conn(stream, router, shutdown, peer).await,
            }
        });
    }
}

/// Reads asking for less than this are served from one read of this size (see
/// [`Counted`]).
const READ_AHEAD: usize = 16 * 1024;

/// A connection's stream together with its slot under the caps: both go when the
/// stream is dropped (by hyper, or by the WebSocket it was upgraded to).
///
/// It also reads ahead for small reads: tungstenite reads at most its
/// `read_buffer_size` at a time, which is kept small so that an idle WebSocket holds
/// little (server/ws.rs `WS_READ_BUFFER`). Such a read gets one `read` of up to
/// [`READ_AHEAD`] bytes into a buffer on the stack; what the caller had no room for is
/// kept in `ahead` and handed out by the next reads (from `ahead_at` on, so a large
/// message read in small steps is not moved for each), and `ahead` is freed once empty.
/// A message of several kilobytes thus costs one system call, and an idle connection
/// no buffer.
pub(super) struct Counted<S> {
    pub(super) io: S,
    /// Bytes read from `io` and not yet handed to the caller (empty: no allocation).
    pub(super) ahead: Vec<u8>,
    /// How many bytes of `ahead` were handed out already.
    pub(super) ahead_at: usize,
    pub(super) _slot: ConnSlot,
    pub(super) _open: GaugeGuard,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(rest) = this.ahead.get(this.ahead_at..)
            && !rest.is_empty()
        {
            let n = buf.remaining().min(rest.len());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD / 2 {
            return std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut rb = tokio::io::ReadBuf::uninit(&mut chunk);
        match std::pin::Pin::new(&mut this.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let got = rb.filled();
        let n = buf.remaining().min(got.len());
        let (now, later) = got.split_at(n);
        buf.put_slice(now);
        if !later.is_empty() {
            this.ahead = later.to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Decrements the gauge when dropped.
pub(super) struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The TCP peer of a request (request extension), e.g. for loopback-only rules.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

async fn serve_conn<S>(
    io: S,
    router: Router,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(PeerAddr(peer));
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // slow-loris: the request head must arrive within 10 s
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(1024 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => { if let Err(e) = r { tracing::debug!(error = %e, "http connection ended"); } }
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counted<S>(io: S) -> Counted<S> {
        let limiter = Arc::new(ConnLimiter::new(10, 10, "max_connections"));
        let slot = limiter
            .acquire(std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap_or_else(|e| panic!("slot: {e}"));
        let open = prometheus::IntGauge::new("open", "open").unwrap_or_else(|e| panic!("{e}"));
        open.inc();
        Counted {
            io,
            ahead: Vec::new(),
            ahead_at: 0,
            _slot: slot,
            _open: GaugeGuard(open),
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_ahead_and_nothing_stays_buffered() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut c = counted(server);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client
            .write_all(&sent)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client);
        let mut got = Vec::new();
        let mut small = [0u8; 300];
        // a small read takes up to READ_AHEAD bytes from the stream at once
        let n = c.read(&mut small).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 300);
        assert_eq!(c.ahead.len() - c.ahead_at, READ_AHEAD - 300);
        got.extend_from_slice(&small[..n]);
        // then alternating small and large reads see every byte once, in order
        let mut large = vec![0u8; READ_AHEAD];
        for i in 0.. {
            let n = if i % 2 == 0 {
                c.read(&mut small).await
            } else {
                c.read(&mut large).await
            }
            .unwrap_or_else(|e| panic!("{e}"));
            if n == 0 {
                break;
            }
            got.extend_from_slice(if i % 2 == 0 { &small[..n] } else { &large[..n] });
        }
        assert_eq!(got, sent);
        assert_eq!(
            c.ahead.capacity(),
            0,
            "the read-ahead buffer is freed once drained"
        );
    }
}
