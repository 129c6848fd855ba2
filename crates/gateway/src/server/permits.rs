//! `early_offer` (docs/gateway.md, "Early offer"): the core's permission requests
//! ([`PermitRequest`]) go to every configured turn-server's control endpoint
//! (`POST /control/permission`, docs/turn-server.md), and the combined answer goes back
//! into the core ([`Core::permit_result`](crate::core::Core::permit_result)).
//!
//! Bounded: at most [`QUEUE`] requests wait for this task (a full queue answers `Error`
//! at once, see `Inner::deliver`), at most [`IN_FLIGHT`] are sent at a time, and each
//! HTTP exchange has [`HTTP_TIMEOUT`] (the core stops waiting after
//! `early_offer_timeout` anyway). A connection per request: the endpoint is on the same
//! host or network, where that costs well under a millisecond.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::App;
use crate::core::{PermitRequest, PermitResult};

/// Requests waiting to be sent.
pub(super) const QUEUE: usize = 256;
/// Requests in flight at once.
const IN_FLIGHT: usize = 64;
/// One HTTP exchange with a turn-server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest answer head read.
const MAX_ANSWER: usize = 1024;

/// Where the requests go and with which secret.
pub(super) struct Targets {
    /// Each turn-server's metrics listener.
    pub(super) addrs: Vec<SocketAddr>,
    /// Their `control_secret`.
    pub(super) secret: String,
}

/// Sends the queued requests until `shutdown`.
pub(super) async fn permit_loop(
    app: App,
    mut rx: mpsc::Receiver<PermitRequest>,
    targets: Targets,
    shutdown: CancellationToken,
) {
    let targets = Arc::new(targets);
    let mut flight = tokio::task::JoinSet::new();
    loop {
        // room for one more before taking it off the queue
        while flight.len() >= IN_FLIGHT {
            let _ = flight.join_next().await;
        }
        let req = tokio::select! {
            () = shutdown.cancelled() => break,
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
            Some(_) = flight.join_next(), if !flight.is_empty() => continue,
        };
        let (app, targets) = (app.clone(), targets.clone());
        flight.spawn(async move {
            let result = ask_all(&targets, &req).await;
            tracing::debug!(relay = %req.relay, peer = %req.peer, ?result, "early offer: turn-server answered");
            let mut inner = app.lock();
            inner.core.permit_result(Instant::now(), req.id, result);
            inner.deliver();
        });
    }
    flight.abort_all();
}

/// Asks every turn-server; the one that holds the allocation decides (the others
/// answer 404).
async fn ask_all(targets: &Targets, req: &PermitRequest) -> PermitResult {
    let mut asks = tokio::task::JoinSet::new();
    for &addr in &targets.addrs {
        let body = format!(r#"{{"relay":"{}","peer":"{}"}}"#, req.relay, req.peer);
        let secret = targets.secret.clone();
        asks.spawn(async move {
            tokio::time::timeout(HTTP_TIMEOUT, ask(addr, &secret, &body))
                .await
                .unwrap_or(PermitResult::Error)
        });
    }
    let mut result = PermitResult::NotOurRelay;
    while let Some(r) = asks.join_next().await {
        match r.unwrap_or(PermitResult::Error) {
            PermitResult::Installed => return PermitResult::Installed,
            PermitResult::NotOurRelay => {}
            other => result = other,
        }
    }
    result
}

/// One `POST /control/permission` over HTTP/1.0.
async fn ask(addr: SocketAddr, secret: &str, body: &str) -> PermitResult {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return PermitResult::Error;
    };
    let _ = s.set_nodelay(true);
    let head = format!(
        "POST /control/permission HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body.as_bytes()).await.is_err() {
        return PermitResult::Error;
    }
    // the whole (short) answer: HTTP/1.0, so it ends when the turn-server closes
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while buf.len() < MAX_ANSWER {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    let status = std::str::from_utf8(&buf)
        .ok()
        .and_then(|t| t.split_ascii_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200) => PermitResult::Installed,
        // the endpoint's own 404 names the result; any other 404 means no endpoint
        Some(404) if buf.windows(15).any(|w| w == b"\"no_allocation\"") => {
            PermitResult::NotOurRelay
        }
        Some(404) => {
            tracing::warn!(%addr, "no control endpoint at this turn-server address: set control_secret on the turn-server (docs/turn-server.md, Control endpoint)");
            PermitResult::Error
        }
        Some(403) => PermitResult::Denied,
        Some(507) => PermitResult::Full,
        Some(code) => {
            tracing::warn!(%addr, code, "turn-server control endpoint refused a permission (check turn_control_secret and the turn-server's control_rate)");
            PermitResult::Error
        }
        None => PermitResult::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ask` makes of one canned answer (the status line and body a turn-server, or
    /// something else on that address, sends).
    async fn answer_of(answer: &'static [u8]) -> PermitResult {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(answer).await.unwrap();
        });
        let r = ask(addr, "0123456789abcdef0123", "{}").await;
        server.await.unwrap();
        r
    }

    #[tokio::test]
    async fn a_404_is_not_our_relay_only_when_the_endpoint_says_so() {
        let no_allocation: &[u8] =
            b"HTTP/1.0 404 Not Found\r\ncontent-length: 27\r\n\r\n{\"result\":\"no_allocation\"}\n";
        assert_eq!(answer_of(no_allocation).await, PermitResult::NotOurRelay);
        // a turn-server without control_secret (no such route), or another server
        let no_route: &[u8] = b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answer_of(no_route).await, PermitResult::Error);
        let installed: &[u8] = b"HTTP/1.0 200 OK\r\n\r\n{\"result\":\"installed\"}\n";
        assert_eq!(answer_of(installed).await, PermitResult::Installed);
    }
}
