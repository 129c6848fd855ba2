//! The control endpoint (docs/turn-server.md, "Control endpoint"): on the metrics
//! listener, `POST /control/permission` with `Authorization: Bearer <control_secret>` and
//! the body `{"relay":"IP:PORT","peer":"IP"}` installs, on the allocation whose relayed
//! address is `relay`, a permission for `peer` — through the core of the worker that owns
//! that relay port ([`Core::install_permission`](crate::core::Core::install_permission)),
//! so it is an ordinary permission (lifetime, cap, policy, expiry, metrics, offload).
//! The gateway's `early_offer` is its one user.
//!
//! Bounded: bodies up to [`MAX_BODY`] bytes, `control_rate` requests per second for all
//! callers together (a token bucket; over it 429), [`CONTROL_QUEUE`] requests waiting per
//! worker (over it 503), [`REPLY_TIMEOUT`] for the worker's answer (then 503). Every
//! answer is counted in `callrelay_turn_control_requests_total{result}`. The secret is
//! never logged; without one the route does not exist (404).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use crate::config::ControlSecret;
use crate::core::{InstallResult, QuotaLedger};
use crate::metrics::{ControlResult, Metrics};

/// Largest request body accepted (bytes); larger ones get 413.
pub(super) const MAX_BODY: usize = 512;
/// Requests waiting for one worker; more get 503 at once.
pub const CONTROL_QUEUE: usize = 64;
/// How long the endpoint waits for the owning worker's answer.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// One "install a permission" request on its way to the worker that owns `relay`.
#[derive(Debug)]
pub struct PermitRequest {
    /// The allocation's advertised relayed address.
    pub relay: SocketAddr,
    /// The IP to permit.
    pub peer: IpAddr,
    /// Where the core's answer goes.
    pub reply: oneshot::Sender<InstallResult>,
}

/// A worker's end of its control queue.
pub type PermitRx = mpsc::Receiver<PermitRequest>;

/// The endpoint's state: the secret, the workers' queues, the relay-port owners, the
/// rate bucket.
pub struct ControlApi {
    secret: ControlSecret,
    workers: Vec<mpsc::Sender<PermitRequest>>,
    owners: Arc<dyn QuotaLedger>,
    rate: f64,
    /// (tokens, last refill)
    bucket: Mutex<(f64, Instant)>,
    metrics: Metrics,
}

impl std::fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlApi")
            .field("workers", &self.workers.len())
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl ControlApi {
    /// The endpoint for `n` workers, and each worker's receiving end (the i-th for
    /// worker i). `owners` answers which worker owns a relay port.
    pub fn new(
        secret: ControlSecret,
        n: usize,
        owners: Arc<dyn QuotaLedger>,
        rate: u32,
        metrics: Metrics,
    ) -> (Arc<Self>, Vec<PermitRx>) {
        let (workers, rxs) = (0..n).map(|_| mpsc::channel(CONTROL_QUEUE)).unzip();
        let rate = f64::from(rate.max(1));
        let api = Self {
            secret,
            workers,
            owners,
            rate,
            bucket: Mutex::new((rate, Instant::now())),
            metrics,
        };
        (Arc::new(api), rxs)
    }

    /// Takes one token from the rate bucket (burst = one second's worth).
    fn take_token(&self) -> bool {
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let dt = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + dt * self.rate).min(self.rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| self.secret.matches(given))
    }
}

/// The router of the endpoint (merged into the metrics listener's).
pub(super) fn control_routes(api: Arc<ControlApi>) -> axum::Router {
    axum::Router::new()
        .route(
            "/control/permission",
            axum::routing::post(install_permission),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

#[derive(serde::Deserialize)]
struct Body {
    relay: SocketAddr,
    peer: IpAddr,
}

fn answer(api: &ControlApi, result: ControlResult, status: StatusCode) -> Response {
    api.metrics.control_request(result);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"result\":\"{}\"}}\n", result.label()),
    )
        .into_response()
}

async fn install_permission(
    State(api): State<Arc<ControlApi>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // authentication first: nothing else about the server is told to a wrong secret
    if !api.authorized(&headers) {
        return answer(&api, ControlResult::Unauthorized, StatusCode::UNAUTHORIZED);
    }
    if !api.take_token() {
        return answer(
            &api,
            ControlResult::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let Ok(body) = body else {
        return answer(&api, ControlResult::TooLarge, StatusCode::PAYLOAD_TOO_LARGE);
    };
    let Ok(req) = serde_json::from_slice::<Body>(&body) else {
        return answer(&api, ControlResult::BadRequest, StatusCode::BAD_REQUEST);
    };
    // the worker that owns the relay port holds the allocation (if any)
    let Some(tx) = api
        .owners
        .owner(req.relay.port())
        .and_then(|w| api.workers.get(w))
    else {
        return answer(&api, ControlResult::NoAllocation, StatusCode::NOT_FOUND);
    };
    let (reply, rx) = oneshot::channel();
    let sent = tx.try_send(PermitRequest {
        relay: req.relay,
        peer: req.peer,
        reply,
    });
    if sent.is_err() {
        return answer(
            &api,
            ControlResult::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    let Ok(Ok(result)) = tokio::time::timeout(REPLY_TIMEOUT, rx).await else {
        return answer(
            &api,
            ControlResult::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let (result, status) = match result {
        InstallResult::Installed => (ControlResult::Installed, StatusCode::OK),
        InstallResult::NoSuchAllocation => (ControlResult::NoAllocation, StatusCode::NOT_FOUND),
        InstallResult::WrongFamily => (ControlResult::BadRequest, StatusCode::BAD_REQUEST),
        InstallResult::Denied(class) => {
            tracing::debug!(class = class.label(), "control: peer denied by policy");
            (ControlResult::Denied, StatusCode::FORBIDDEN)
        }
        InstallResult::Full => (ControlResult::Full, StatusCode::INSUFFICIENT_STORAGE),
    };
    answer(&api, result, status)
}
