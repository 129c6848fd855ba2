//! The Prometheus `/metrics` endpoint (and, with `control_secret`, the control endpoint
//! on the same listener, [`super::control`]): HTTP/1 on its own listener, each resource bounded —
//! open connections (`metrics_max_connections`, over it closed at accept), the time to send
//! a request head (`metrics_header_timeout`) and the time answers in flight get at shutdown
//! (`metrics_shutdown_grace`) — and both refusals counted in
//! `callrelay_turn_metrics_rejections_total{reason}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::control::{ControlApi, control_routes};
use crate::config::Config;
use crate::metrics::{Metrics, MetricsReject};

/// The bounds of the metrics endpoint (config keys `metrics_*`).
#[derive(Clone, Copy, Debug)]
pub struct MetricsBounds {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after accept (or
    /// after its last answer, when kept alive) is closed.
    pub header_timeout: Duration,
    /// How long answers in flight may still run after shutdown.
    pub shutdown_grace: Duration,
}

impl MetricsBounds {
    /// The bounds `cfg` sets.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            max_connections: cfg.metrics_max_connections as usize,
            header_timeout: cfg.metrics_header_timeout,
            shutdown_grace: cfg.metrics_shutdown_grace,
        }
    }
}

/// The router: `GET /metrics` answers the Prometheus text exposition of `metrics`; with
/// `control`, `POST /control/permission` is the control endpoint ([`ControlApi`]).
pub fn metrics_app(metrics: Metrics, control: Option<Arc<ControlApi>>) -> axum::Router {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    match control {
        Some(api) => app.merge(control_routes(api)),
        None => app,
    }
}

/// Serves `/metrics` on `listener` until `shutdown`, then gives answers in flight
/// `bounds.shutdown_grace` and closes every connection: the exit never waits for a client
/// (a half-sent request kept `axum::serve`'s graceful shutdown, and with it SIGTERM,
/// waiting forever).
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    bounds: MetricsBounds,
    control: Option<Arc<ControlApi>>,
    shutdown: CancellationToken,
) {
    let app = metrics_app(metrics.clone(), control);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    // Connections that ended give their place back before the count.
                    while conns.try_join_next().is_some() {}
                    if conns.len() >= bounds.max_connections {
                        // Closed at once (the client sees the connection end), counted.
                        metrics.metrics_rejected(MetricsReject::MaxConnections);
                        tracing::debug!(%peer, "metrics connection over metrics_max_connections, closed");
                        drop(stream);
                        continue;
                    }
                    conns.spawn(serve_connection(stream, app.clone(), metrics.clone(), bounds.header_timeout));
                    metrics.set_metrics_connections(conns.len());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                metrics.set_metrics_connections(conns.len());
            }
        }
    }
    let _ = tokio::time::timeout(bounds.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    metrics.set_metrics_connections(0);
}

/// One HTTP/1 connection. A connection closed by the head timeout before it completed any
/// request is counted (`header_timeout`); a kept-alive one that answered and then stayed
/// idle past it is not (Prometheus reconnects for its next scrape).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    metrics: Metrics,
    header_timeout: Duration,
) {
    let served = Arc::new(AtomicBool::new(false));
    let seen = served.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        if e.is_timeout() && !served.load(Ordering::Relaxed) {
            metrics.metrics_rejected(MetricsReject::HeaderTimeout);
        }
        tracing::debug!(error = %e, "metrics connection ended");
    }
}
