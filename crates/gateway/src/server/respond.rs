//! Response helpers shared by the handlers: JSON bodies, CORS, Janus errors, bodies, query strings.
// Query strings and bodies are remote input: no indexing that could panic on them.
#![deny(clippy::indexing_slicing)]

use super::state::{App, Shared};
use crate::core::{JanusError, error_reply};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::collections::HashMap;

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response {
    json_text(status, v.to_string())
}

/// A response with an already serialised JSON body.
pub(super) fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn cors(app: &Shared, mut resp: Response, req_headers: &HeaderMap) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&app.cfg().cors_allow_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let allow_headers = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(
                "Origin, X-Requested-With, Content-Type, Accept, Authorization",
            )
        });
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    if req_headers.contains_key("access-control-request-private-network") {
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    resp
}

pub(super) fn random_transaction() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}

pub(super) fn query_params(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(percent_decode(k), percent_decode(v));
    }
    m
}

fn percent_decode(s: &str) -> String {
    let mut rest = s.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let Some((&c, tail)) = rest.split_first() {
        let escaped = match (c, tail) {
            (b'%', [h, l, after @ ..]) => std::str::from_utf8(&[*h, *l])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|x| (x, after)),
            _ => None,
        };
        match escaped {
            Some((x, after)) => {
                out.push(x);
                rest = after;
            }
            None => {
                out.push(if c == b'+' { b' ' } else { c });
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Janus error reply; Janus answers errors with HTTP 200 and the error in the body.
fn janus_error(code: JanusError, reason: &str) -> Response {
    json_response(StatusCode::OK, &error_reply(0, None, code.code(), reason))
}

/// A Janus error reply counted in `callrelay_gateway_errors_total`.
pub(super) fn counted_error(app: &App, code: JanusError, reason: &str) -> Response {
    app.metrics.error(code.code());
    janus_error(code, reason)
}

/// A request body parsed as a JSON object, or the 454/455 error Janus answers.
pub(super) fn json_object(body: &[u8]) -> Result<Map<String, Value>, (JanusError, String)> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err((
            JanusError::InvalidJsonObject,
            "JSON error: not an object".to_string(),
        )),
        Err(e) => Err((
            JanusError::InvalidJson,
            format!("JSON error: on line {}: {}", e.line(), e),
        )),
    }
}

/// The request body, at most `max_message_bytes`, arriving within `http_body_timeout`;
/// otherwise the response to send (a body that trickles in gets 408 and the
/// connection is closed).
pub(super) async fn read_body(app: &App, body: Body) -> Result<Vec<u8>, Box<Response>> {
    let cfg = app.cfg();
    let read = axum::body::to_bytes(body, cfg.max_message_bytes);
    match tokio::time::timeout(cfg.http_body_timeout, read).await {
        Ok(Ok(b)) => Ok(b.to_vec()),
        Ok(Err(_)) => Err(Box::new(counted_error(
            app,
            JanusError::InvalidJson,
            "JSON error: request body too large",
        ))),
        Err(_) => {
            app.metrics
                .connections_rejected
                .with_label_values(&["body_timeout"])
                .inc();
            let mut r = empty(StatusCode::REQUEST_TIMEOUT);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(Box::new(r))
        }
    }
}

pub(super) fn empty(status: StatusCode) -> Response {
    status.into_response()
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, query_params};

    #[test]
    fn percent_decoding_takes_whole_escapes_only() {
        assert_eq!(percent_decode("a%3Db+c"), "a=b c");
        assert_eq!(percent_decode("%e2%82%AC"), "€");
        // an escape cut short or not hex stays as it was
        for kept in ["%", "%4", "100%", "%zz1", "%4g"] {
            assert_eq!(percent_decode(kept), kept);
        }
        assert_eq!(percent_decode("%%41%"), "%A%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(percent_decode(""), "");
    }

    #[test]
    fn query_params_decode_keys_and_values() {
        let q = query_params(Some("token=abc%3D%3D&transaction=x+y&flag"));
        assert_eq!(q.get("token").map(String::as_str), Some("abc=="));
        assert_eq!(q.get("transaction").map(String::as_str), Some("x y"));
    }
}
