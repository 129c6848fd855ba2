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
    // the status line is all we need: read until it is complete
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_ANSWER {
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
        Some(404) => PermitResult::NotOurRelay,
        Some(403) => PermitResult::Denied,
        Some(507) => PermitResult::Full,
        Some(code) => {
            tracing::warn!(%addr, code, "turn-server control endpoint refused a permission (check turn_control_secret and the turn-server's control_rate)");
            PermitResult::Error
        }
        None => PermitResult::Error,
    }
}
