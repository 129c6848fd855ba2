//! The Janus WebSocket transport (and the Admin API over WebSocket).

use super::respond::json_response;
use super::state::{App, ConnHandle, ConnShared, unix_now};
use super::tokens::{persist_tokens, unsaved_reply};
use crate::core::Source;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Bytes tungstenite reads per `read`, and the capacity its read buffer starts with
/// (it grows to the largest frame received and stays). Its default, 128 KiB, is
/// zero-filled before every read (13 % of the gateway's CPU under load); 8 KiB was
/// two thirds of an idle WebSocket's memory (docs/performance.md). A client's first
/// requests fit together (at 256 bytes the buffer soon doubled, leaving a hole in the
/// heap per connection: more RSS, not less); larger messages arrive whole in several
/// reads, which the listener's read-ahead (server/listener.rs `Counted`) serves from
/// one system call.
pub(super) const WS_READ_BUFFER: usize = 512;

pub(super) fn wants_protocol(headers: &HeaderMap, proto: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(proto))
}

pub(super) async fn ws_entry(State(app): State<App>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let headers = parts.headers.clone();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "this port speaks WebSocket (subprotocol janus-protocol); /turn-credentials is also served here"}),
        );
    };
    accept(app, upgrade, &headers, false)
}

/// Accepts a WebSocket with the message limits, echoing the subprotocol
/// (`janus-protocol`, or `janus-admin-protocol` for the Admin API) when the client asked
/// for it, and runs the connection's [`ws_session`].
pub(super) fn accept(
    app: App,
    upgrade: WebSocketUpgrade,
    headers: &HeaderMap,
    admin: bool,
) -> Response {
    let max = app.cfg().max_message_bytes;
    let mut upgrade = upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER);
    let proto = if admin {
        "janus-admin-protocol"
    } else {
        "janus-protocol"
    };
    if wants_protocol(headers, proto) {
        upgrade = upgrade.protocols([proto]);
    }
    upgrade.on_upgrade(move |socket| ws_session(app, socket, admin))
}

/// One task per WebSocket connection reads requests and writes everything addressed to
/// it. Replies and the events a request produces for its own connection never pass
/// through the connection's queue: they are collected under the core's lock (after
/// whatever the queue already held, so the order is the order the core produced them)
/// and written by this task right away — no wake-up of another task or thread per
/// request. Events caused by other connections arrive through the connection's
/// [`ConnShared`] queue. Writing never stops reading: a client that does not read sees
/// its messages pile up in `out`; more than `ws_queue` messages or `ws_queue_bytes`
/// bytes queued for it (here and in its shared queue together) disconnect it.
///
/// Idle, a connection costs its socket, this task and one small allocation: the
/// WebSocket is not split (that would move it into a shared allocation), `out` is
/// freed once drained, rare paths (saving tokens.json, the closing handshake) are boxed
/// so they do not grow every connection's task, and tungstenite's read buffer starts at
/// [`WS_READ_BUFFER`].
pub(super) fn ws_session(
    app: App,
    socket: WebSocket,
    admin: bool,
) -> impl Future<Output = ()> + Send {
    // not an `async fn` taking the WebSocket: that would keep its arguments apart from
    // its locals, the WebSocket twice in every connection's task
    // (rust-lang/rust#62958); held by this block and lent to `run`, it is stored once
    let mut socket = socket;
    async move { run(app, &mut socket, admin).await }
}

/// The body of [`ws_session`].
async fn run(app: App, socket: &mut WebSocket, admin: bool) {
    let shared = Arc::new(ConnShared::default());
    let conn = {
        let mut inner = app.lock();
        let id = inner.next_conn;
        inner.next_conn += 1;
        inner.conns.insert(
            id,
            ConnHandle {
                shared: shared.clone(),
            },
        );
        id
    };
    app.metrics.websocket_connections.inc();
    let mut out: VecDeque<String> = VecDeque::new();
    let mut unflushed = false;
    // Idle timeout: a Janus WebSocket that owned no session (at a check, or after any
    // of its requests in between) for ws_idle_timeout, or an Admin API WebSocket that
    // sent no request, is closed (checked at most twice per period, so it closes within
    // 1–2 periods).
    let idle = app.cfg().ws_idle_timeout;
    let mut idle_since = Instant::now();
    let mut idle_known = true;
    let mut last_request = Instant::now();
    // owned a session after one of its requests since the last idle check
    let mut had_session = false;
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    loop {
        let msg = tokio::select! {
            biased;
            () = &mut idle_check => {
                let now = Instant::now();
                let busy = if admin {
                    now.saturating_duration_since(last_request) < idle
                } else {
                    std::mem::take(&mut had_session) || app.lock().core.conn_sessions(conn) > 0
                };
                let since = if admin { Some(last_request) } else if busy {
                    idle_known = false;
                    None
                } else if idle_known {
                    Some(idle_since)
                } else {
                    idle_known = true;
                    idle_since = now;
                    Some(now)
                };
                match since {
                    Some(t) if now.saturating_duration_since(t) >= idle => {
                        tracing::debug!(conn, "WebSocket idle (no session); closing");
                        app.metrics
                            .connections_rejected
                            .with_label_values(&["ws_idle"])
                            .inc();
                        break;
                    }
                    Some(t) => idle_check.as_mut().reset((t + idle).into()),
                    None => idle_check.as_mut().reset((now + idle).into()),
                }
                continue;
            }
            io = std::future::poll_fn(|cx| poll_io(cx, socket, &mut out, &mut unflushed, &shared)) => match io {
                Io::Woken => {
                    if shared.killed() {
                        break;
                    }
                    shared.take_into(&mut out);
                    continue;
                }
                Io::Read(m) => m,
                Io::WriteFailed => break,
            },
        };
        let bytes;
        let text: &str = match &msg {
            Some(Ok(Message::Text(t))) => t.as_str(),
            Some(Ok(Message::Binary(b))) => {
                bytes = String::from_utf8_lossy(b);
                &bytes
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
        };
        last_request = Instant::now();
        // parsed before taking the lock; a parse error is answered by the core
        let parsed = serde_json::from_str::<Value>(text).ok();
        let (local, persist) = {
            let mut inner = app.lock();
            // what other connections queued for us before this request goes out first
            shared.take_into(&mut out);
            inner.local = Some((conn, Vec::new()));
            let now = Instant::now();
            let unix = unix_now();
            let (reply, persist) = match (admin, parsed) {
                (true, Some(v)) => {
                    let r = inner.core.admin_value(now, unix, v, None);
                    (r.reply, r.tokens_changed)
                }
                (true, None) => {
                    let r = inner.core.admin_text(now, unix, text);
                    (r.reply, r.tokens_changed)
                }
                (false, Some(v)) => (
                    inner.core.handle_value(now, unix, Source::Ws(conn), v),
                    false,
                ),
                (false, None) => (
                    inner.core.handle_text(now, unix, Source::Ws(conn), text),
                    false,
                ),
            };
            inner.send_conn(conn, reply);
            inner.deliver();
            // a client that churns sessions (create … destroy, create …) is live even
            // when the idle check happens to fall between two of them
            had_session |= !admin && inner.core.conn_sessions(conn) > 0;
            (
                inner.local.take().map(|(_, l)| l).unwrap_or_default(),
                persist,
            )
        };
        for v in &local {
            let text = v.to_string();
            shared.queued.fetch_add(text.len(), Ordering::Relaxed);
            out.push_back(text);
        }
        let bytes = shared.queued.load(Ordering::Relaxed);
        let cfg = app.cfg();
        if out.len() > cfg.ws_queue || bytes > cfg.ws_queue_bytes {
            tracing::warn!(
                conn,
                messages = out.len(),
                bytes,
                "WebSocket client too slow (queue full); disconnecting"
            );
            app.metrics
                .slow_clients
                .with_label_values(&["websocket"])
                .inc();
            break;
        }
        if persist && let Err(e) = Box::pin(persist_tokens(&app)).await {
            // the reply is still queued: an admin WebSocket only gets its own replies
            if let Some(reply) = out.pop_back() {
                shared.queued.fetch_sub(reply.len(), Ordering::Relaxed);
                let v: Value = serde_json::from_str(&reply).unwrap_or(Value::Null);
                let text = unsaved_reply(&app, &v, &e).to_string();
                shared.queued.fetch_add(text.len(), Ordering::Relaxed);
                out.push_back(text);
            }
        }
    }
    shared.kill();
    {
        let mut inner = app.lock();
        inner.conns.remove(&conn);
        if !admin {
            inner.core.connection_closed(Instant::now(), conn);
            inner.deliver();
        }
    }
    app.metrics.websocket_connections.dec();
    // a client that stopped reading must not pin this task
    let close = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None)));
    let _ = Box::pin(close).await;
}

/// What [`poll_io`] saw.
enum Io {
    /// Messages were queued for the connection, or it must close.
    Woken,
    /// The next message from the client (None: the connection ended).
    Read(Option<Result<Message, axum::Error>>),
    WriteFailed,
}

/// Drives the connection: takes what other tasks queued for it (or their order to
/// close), hands what is queued in `out` to the socket (without waiting for it to
/// drain), then reads the client's next message.
fn poll_io(
    cx: &mut Context<'_>,
    socket: &mut WebSocket,
    out: &mut VecDeque<String>,
    unflushed: &mut bool,
    shared: &ConnShared,
) -> Poll<Io> {
    if shared.poll_woken(cx).is_ready() {
        return Poll::Ready(Io::Woken);
    }
    if (!out.is_empty() || *unflushed)
        && let Poll::Ready(Err(_)) = poll_write(cx, socket, out, unflushed, &shared.queued)
    {
        return Poll::Ready(Io::WriteFailed);
    }
    socket.poll_next_unpin(cx).map(Io::Read)
}

/// Hands queued messages to the WebSocket and flushes them (one `write` for a burst);
/// a drained `out` gives its buffer back. Cancel-safe: a message leaves `out` only when
/// the socket has taken it.
pub(super) fn poll_write(
    cx: &mut Context<'_>,
    socket: &mut WebSocket,
    out: &mut VecDeque<String>,
    unflushed: &mut bool,
    queued: &AtomicUsize,
) -> Poll<Result<(), axum::Error>> {
    while !out.is_empty() {
        match socket.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let Some(text) = out.pop_front() else { break };
        queued.fetch_sub(text.len(), Ordering::Relaxed);
        socket.start_send_unpin(Message::Text(text.into()))?;
        *unflushed = true;
    }
    if out.capacity() > 0 {
        *out = VecDeque::new();
    }
    match socket.poll_flush_unpin(cx) {
        Poll::Ready(Ok(())) => {
            *unflushed = false;
            Poll::Ready(Ok(()))
        }
        other => other,
    }
}
