//! Cluster mode: an HTTP REST or long-poll request for a session of another node is
//! forwarded to that node over NATS request/reply, so a plain round-robin load balancer
//! works in front of the nodes (docs/scale-out.md).
//!
//! A node's session ids carry its tag ([`crate::core::session_tag_of`], drawn at start
//! and announced in its heartbeat); the node serves `<cluster>.http.<tag>`. A request
//! whose session is not here and whose tag is another's goes there as an [`HttpCall`]
//! and comes back as the owner's status and body. No node serving the tag (it is gone):
//! the request is answered here, as for any unknown session.

use super::http::{HttpCall, serve};
use super::respond::{empty, json_text};
use super::state::App;
use crate::metrics::ClusterMetrics;
use async_nats::{Client, RequestErrorKind};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Forwarded requests this node serves for the others at once (long polls hold one
/// each for up to `longpoll_timeout`); more are answered 503 at once.
pub(super) const FORWARD_INFLIGHT: usize = 10_000;
/// Longest wait for the owner's answer to a forwarded POST (a long poll waits
/// `longpoll_timeout` and this much more).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The owner's answer: the HTTP status and body its own client would have got.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpAnswer {
    status: u16,
    body: String,
}

/// The sending side, set once the node is connected to NATS.
pub(super) struct Forwarder {
    client: Client,
    cluster: String,
    tag: u16,
    metrics: ClusterMetrics,
}

impl Forwarder {
    pub(super) fn new(client: Client, cluster: String, tag: u16, metrics: ClusterMetrics) -> Self {
        Self {
            client,
            cluster,
            tag,
            metrics,
        }
    }

    /// This node's session tag.
    pub(super) fn tag(&self) -> u16 {
        self.tag
    }

    /// Forwards `call` to the node whose session tag is `tag`; None when no node serves
    /// it (answer here), otherwise the owner's answer (or 504 when it gave none in time).
    pub(super) async fn forward(&self, app: &App, call: &HttpCall, tag: u16) -> Option<Response> {
        let timeout = if call.get {
            app.cfg().longpoll_timeout + ANSWER_TIMEOUT
        } else {
            ANSWER_TIMEOUT
        };
        let payload = serde_json::to_vec(call).unwrap_or_default();
        let req = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let subject = format!("{}.http.{tag}", self.cluster);
        let count = |r: &str| self.metrics.http_forwarded.with_label_values(&[r]).inc();
        match self.client.send_request(subject, req).await {
            Ok(msg) => match serde_json::from_slice::<HttpAnswer>(&msg.payload) {
                Ok(a) => {
                    count("ok");
                    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    Some(if a.body.is_empty() {
                        empty(status)
                    } else {
                        json_text(status, a.body)
                    })
                }
                Err(_) => {
                    count("error");
                    Some(empty(StatusCode::BAD_GATEWAY))
                }
            },
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                count("no_node");
                None
            }
            Err(e) if e.kind() == RequestErrorKind::TimedOut => {
                count("timeout");
                Some(empty(StatusCode::GATEWAY_TIMEOUT))
            }
            Err(e) => {
                count("error");
                tracing::debug!(error = %e, tag, "HTTP request not forwarded");
                None
            }
        }
    }
}

/// Serves the requests other nodes forward for this node's sessions (`tag`), until
/// `shutdown`.
pub(super) async fn forward_loop(
    app: App,
    client: Client,
    cluster: String,
    tag: u16,
    metrics: ClusterMetrics,
    shutdown: CancellationToken,
) {
    let subject = format!("{cluster}.http.{tag}");
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, subject, "cannot subscribe for forwarded HTTP requests; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    let slots = Arc::new(Semaphore::new(FORWARD_INFLIGHT));
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let count = |r: &str| metrics.http_served.with_label_values(&[r]).inc();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            count("busy");
            let a = HttpAnswer {
                status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                body: String::new(),
            };
            let _ = client
                .publish(reply, serde_json::to_vec(&a).unwrap_or_default().into())
                .await;
            continue;
        };
        let call = match serde_json::from_slice::<HttpCall>(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                count("error");
                tracing::debug!(error = %e, "forwarded HTTP request not understood; ignored");
                continue;
            }
        };
        count("ok");
        let (app, client) = (app.clone(), client.clone());
        tokio::spawn(async move {
            let resp = serve(&app, call).await;
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let a = HttpAnswer { status, body };
            let _ = client
                .publish(reply, serde_json::to_vec(&a).unwrap_or_default().into())
                .await;
            drop(permit);
        });
    }
}
