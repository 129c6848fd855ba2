//! The Janus HTTP transport: REST requests and the long poll.

use super::respond::{
    cors, counted_error, empty, json_object, json_response, json_text, query_params,
    random_transaction, read_body,
};
use super::state::{App, unix_now};
use crate::core::{JanusError, LongPollError, Source, session_tag_of};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

pub(super) async fn http_entry(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    let resp = http_inner(&app, req).await;
    cors(&app, resp, &headers)
}

async fn http_inner(app: &App, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let Some(rest) = path.strip_prefix("/janus") else {
        return empty(StatusCode::NOT_FOUND);
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return empty(StatusCode::NOT_FOUND);
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::OPTIONS {
        return empty(StatusCode::OK);
    }
    if segs.len() > 2 {
        return empty(StatusCode::NOT_FOUND);
    }
    if segs.first() == Some(&"info") {
        if method == Method::GET {
            let v = app.lock().core.handle_value(
                Instant::now(),
                unix_now(),
                Source::Http,
                json!({"janus": "info", "transaction": query_params(query.as_deref()).get("transaction").cloned().unwrap_or_else(random_transaction)}),
            );
            return json_response(StatusCode::OK, &v);
        }
        return empty(StatusCode::BAD_REQUEST);
    }
    // like Janus (strtoull): a non-numeric path component counts as "no id"
    let session = segs
        .first()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|x| *x > 0);
    let handle = segs
        .get(1)
        .and_then(|h| h.parse::<u64>().ok())
        .filter(|x| *x > 0);
    let get = method == Method::GET;
    if get {
        let Some(sid) = session else {
            return counted_error(
                app,
                JanusError::TransportSpecific,
                "GET on the root path is not supported (use POST)",
            );
        };
        if handle.is_some() {
            let mut r = empty(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&format!("/janus/{sid}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
    } else if method != Method::POST {
        return counted_error(
            app,
            JanusError::TransportSpecific,
            "Transport specific error (unsupported method)",
        );
    }
    let body = if get {
        String::new()
    } else {
        let bytes = match read_body(app, req.into_body()).await {
            Ok(b) => b,
            Err(r) => return *r,
        };
        match String::from_utf8(bytes) {
            Ok(b) => b,
            Err(_) => {
                return counted_error(app, JanusError::InvalidJson, "JSON error: not UTF-8");
            }
        }
    };
    let call = HttpCall {
        get,
        session,
        handle,
        query,
        body,
    };
    // another node's session: its node answers (cluster mode, forward.rs)
    if let (Some(sid), Some(fwd)) = (session, app.forward.get()) {
        let tag = session_tag_of(sid);
        let here = tag == 0 || tag == fwd.tag() || {
            let inner = app.lock();
            inner.core.session_owner(sid).is_some() || inner.http.contains_key(&sid)
        };
        if !here && let Some(r) = fwd.forward(app, &call, tag).await {
            return r;
        }
    }
    serve(app, call).await
}

/// One Janus HTTP request as parsed from its path, query and body: what a node serves,
/// for its own client or for another node's (forward.rs).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpCall {
    /// A long poll (GET `/janus/<session>`); otherwise a POST.
    pub(super) get: bool,
    pub(super) session: Option<u64>,
    pub(super) handle: Option<u64>,
    pub(super) query: Option<String>,
    /// The POST body (checked to be UTF-8 when it arrived).
    pub(super) body: String,
}

/// Answers `call` on this node.
pub(super) async fn serve(app: &App, call: HttpCall) -> Response {
    let HttpCall {
        get,
        session,
        handle,
        query,
        body,
    } = call;
    if get {
        let Some(sid) = session else {
            return empty(StatusCode::NOT_FOUND);
        };
        return long_poll(app, sid, query.as_deref()).await;
    }
    let mut obj = match json_object(body.as_bytes()) {
        Ok(obj) => obj,
        Err((code, reason)) => return counted_error(app, code, &reason),
    };
    for (key, from_path, what) in [
        ("session_id", session, "session"),
        ("handle_id", handle, "handle"),
    ] {
        let Some(p) = from_path else { continue };
        match obj.get(key) {
            None | Some(Value::Null) => {
                obj.insert(key.to_string(), p.into());
            }
            Some(b) if b.as_u64() == Some(p) => {}
            Some(_) => {
                return counted_error(
                    app,
                    JanusError::InvalidRequestPath,
                    &format!("Conflicting {what} ID (payload and path)"),
                );
            }
        }
    }
    let reply = {
        let mut inner = app.lock();
        let v = Value::Object(obj);
        let r = inner
            .core
            .handle_value(Instant::now(), unix_now(), Source::Http, v);
        inner.deliver();
        r
    };
    json_response(StatusCode::OK, &reply)
}

async fn long_poll(app: &App, sid: u64, query: Option<&str>) -> Response {
    let q = query_params(query);
    let maxev = q
        .get("maxev")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 1000);
    let deadline = tokio::time::Instant::now() + app.cfg().longpoll_timeout;
    {
        let mut inner = app.lock();
        if let Err(e) = inner.core.longpoll(
            Instant::now(),
            unix_now(),
            sid,
            q.get("token").map(String::as_str),
            q.get("apisecret").map(String::as_str),
        ) {
            let leftover = e == LongPollError::NoSession
                && inner
                    .http
                    .get(&sid)
                    .is_some_and(|q| q.closed_at.is_some() && !q.events.is_empty());
            if !leftover {
                return match e {
                    LongPollError::Unauthorized => empty(StatusCode::FORBIDDEN),
                    LongPollError::NoSession => empty(StatusCode::NOT_FOUND),
                };
            }
            // the session just ended: hand out its last events (e.g. `timeout`) first
        }
    }
    loop {
        let (events, notify, alive) = {
            let mut inner = app.lock();
            let alive = inner.core.session_owner(sid).is_some();
            if !alive && !inner.http.contains_key(&sid) {
                return empty(StatusCode::NOT_FOUND);
            }
            let q = inner.http.entry(sid).or_default();
            let ev = q.take(maxev);
            let notify = q.notify.clone();
            if !alive && q.events.is_empty() {
                inner.http.remove(&sid);
            }
            (ev, notify, alive)
        };
        if !events.is_empty() {
            let body = if maxev > 1 {
                format!("[{}]", events.join(","))
            } else {
                events.into_iter().next().unwrap_or_default()
            };
            return json_text(StatusCode::OK, body);
        }
        if !alive {
            return empty(StatusCode::NOT_FOUND);
        }
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // re-check after registering interest so no event slips between check and wait
        let has = app
            .lock()
            .http
            .get(&sid)
            .is_some_and(|q| !q.events.is_empty());
        if has {
            continue;
        }
        tokio::select! {
            () = notified => continue,
            () = tokio::time::sleep_until(deadline) => {
                let ka = json!({"janus": "keepalive"});
                let body = if maxev > 1 { json!([ka]) } else { ka };
                return json_response(StatusCode::OK, &body);
            }
        }
    }
}
