//! The shared state behind the handlers: the core's lock, per-connection queues, delivery.

use super::cluster::Outbox;
use super::core_config;
use super::presence::NodeOutbox;
use crate::config::Config;
use crate::core::{ConnId, Core, Output, Source};
use crate::metrics::Metrics;
use crate::store::{MemoryRegistry, MemoryTokenStore, TokenFile};
use futures_util::task::AtomicWaker;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

const HTTP_QUEUE_MAX: usize = 1000;

#[derive(Default)]
pub(super) struct HttpQueue {
    /// Serialised events, oldest first.
    pub(super) events: VecDeque<String>,
    /// Sum of the lengths of `events`.
    pub(super) bytes: usize,
    pub(super) notify: Arc<Notify>,
    /// The session is gone; its last events (e.g. `timeout`) wait for one more poll.
    pub(super) closed_at: Option<Instant>,
}

impl HttpQueue {
    pub(super) fn push(&mut self, text: String) {
        if self.events.len() >= HTTP_QUEUE_MAX
            && let Some(old) = self.events.pop_front()
        {
            self.bytes -= old.len();
        }
        self.bytes += text.len();
        self.events.push_back(text);
    }

    pub(super) fn take(&mut self, n: usize) -> Vec<String> {
        let n = n.min(self.events.len());
        let ev: Vec<String> = self.events.drain(..n).collect();
        self.bytes -= ev.iter().map(String::len).sum::<usize>();
        ev
    }
}

/// What other tasks hand a WebSocket connection's task: messages for it and the order
/// to close. One allocation per connection, holding no buffer while nothing is queued
/// (a channel would keep a block of slots and its own allocation per connection, and a
/// cancellation token a third: 1.4 kB per idle WebSocket, measured).
#[derive(Default)]
pub(super) struct ConnShared {
    /// Messages from other connections' requests and from timers, oldest first.
    queue: Mutex<VecDeque<String>>,
    /// Bytes queued for this connection and not yet handed to its socket (`queue` and
    /// the connection task's own `out` queue together).
    pub(super) queued: AtomicUsize,
    killed: AtomicBool,
    /// Something was queued, or the connection must close, since the task last looked.
    woken: AtomicBool,
    /// The connection's task, when it waits (a waker instead of a `Notify`: its
    /// `notified()` future would take 64 bytes in every connection's task).
    waker: AtomicWaker,
}

impl ConnShared {
    /// Queues a message; returns the bytes now queued for the connection.
    pub(super) fn push(&self, text: String) -> usize {
        let len = text.len();
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(text);
        self.wake();
        queued
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once something was queued or the connection must close since the last
    /// time it was Ready (registers the task to be woken otherwise).
    pub(super) fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Moves what is queued to the end of `out`, leaving no buffer behind.
    pub(super) fn take_into(&self, out: &mut VecDeque<String>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut q);
            *q = VecDeque::new();
        } else {
            out.extend(std::mem::take(&mut *q));
        }
    }

    /// Tells the connection's task to close the WebSocket.
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.wake();
    }

    pub(super) fn killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }
}

/// A WebSocket connection as the shared state knows it.
pub(super) struct ConnHandle {
    pub(super) shared: Arc<ConnShared>,
}

pub(super) struct Inner {
    pub(super) core: Core,
    pub(super) conns: HashMap<ConnId, ConnHandle>,
    pub(super) http: HashMap<u64, HttpQueue>,
    pub(super) next_conn: ConnId,
    /// While a WebSocket connection's request is handled: that connection and the
    /// messages for it, written by its own task instead of going through its queue.
    pub(super) local: Option<(ConnId, Vec<Value>)>,
    /// Ended HTTP sessions whose last events wait for a poll, oldest first.
    pub(super) closed_http: VecDeque<(Instant, u64)>,
    /// Wakes the timer task when a request armed an earlier deadline.
    pub(super) timer_wake: Arc<Notify>,
    /// `ws_queue_bytes` and `http_queue_bytes`.
    pub(super) ws_queue_bytes: usize,
    pub(super) http_queue_bytes: usize,
    pub(super) metrics: Metrics,
    /// Cluster mode: the core's token changes go here, to be written to NATS.
    pub(super) cluster: Option<Arc<Outbox>>,
    /// Cluster mode: the core's presence claims and call messages go here.
    pub(super) nodes: Option<Arc<NodeOutbox>>,
    /// `early_offer`: the core's permission requests go here, to the turn-servers
    /// (`permits::permit_loop`); None without `turn_control_urls`.
    pub(super) permits: Option<tokio::sync::mpsc::Sender<crate::core::PermitRequest>>,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) metrics: Metrics,
    /// The running configuration; a SIGHUP reload swaps it (see [`apply_reload`]).
    pub(super) cfg: std::sync::RwLock<Arc<Config>>,
    /// Held by the tokens.json write in progress, until its blocking write ends (the
    /// write outlives a task aborted at shutdown: the last write must wait for it).
    pub(super) persist_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) tokens_path: PathBuf,
    /// The last tokens.json write failed (the timer task retries).
    pub(super) tokens_unsaved: AtomicBool,
    /// See [`Inner::timer_wake`].
    pub(super) timer_wake: Arc<Notify>,
    /// Notified each time the timer task's loop turns (the systemd watchdog waits for it).
    pub(super) timer_turned: Notify,
    /// Port of the WebSocket listener (for the test page's default WebSocket URL).
    pub(super) ws_port: u16,
    /// Cluster mode, once connected to NATS: HTTP requests for other nodes' sessions
    /// go through it.
    pub(super) forward: std::sync::OnceLock<super::forward::Forwarder>,
}

pub(super) type App = Arc<Shared>;

pub(super) use callrelay_service::time::unix_now;

impl Shared {
    /// The state of a gateway starting with `cfg`: a core holding the tokens of `file`
    /// (those expired by now dropped: how many is returned), no connections yet.
    pub(super) fn start(
        cfg: &Config,
        metrics: Metrics,
        tokens_path: PathBuf,
        file: TokenFile,
        ws_port: u16,
    ) -> (App, usize) {
        let loaded = file.tokens.len();
        let mut core = Core::new(
            core_config(cfg),
            Box::new(MemoryTokenStore::from_file(file)),
            Box::new(MemoryRegistry::new()),
            rand::SeedableRng::from_os_rng(),
        );
        let expired = core.expire_tokens(unix_now());
        tracing::info!(loaded, expired, path = %tokens_path.display(), "tokens loaded");
        if cfg.admin_secret.is_none() {
            tracing::warn!(
                "no admin_secret configured: every Admin API request will be refused (403)"
            );
        }
        let timer_wake = Arc::new(Notify::new());
        let app = Arc::new(Self {
            inner: Mutex::new(Inner {
                core,
                conns: HashMap::new(),
                http: HashMap::new(),
                local: None,
                next_conn: 1,
                ws_queue_bytes: cfg.ws_queue_bytes,
                http_queue_bytes: cfg.http_queue_bytes,
                metrics: metrics.clone(),
                closed_http: VecDeque::new(),
                timer_wake: timer_wake.clone(),
                cluster: None,
                nodes: None,
                permits: None,
            }),
            metrics,
            cfg: std::sync::RwLock::new(Arc::new(cfg.clone())),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
            tokens_path,
            tokens_unsaved: AtomicBool::new(false),
            timer_wake,
            timer_turned: Notify::new(),
            ws_port,
            forward: std::sync::OnceLock::new(),
        });
        (app, expired)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running configuration (a snapshot: a reload does not change it under you).
    pub(super) fn cfg(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Inner {
    pub(super) fn send_conn(&mut self, conn: ConnId, msg: Value) {
        if let Some((c, out)) = &mut self.local
            && *c == conn
        {
            // serialised by the connection's task, outside the lock
            out.push(msg);
            return;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let queued = c.shared.push(msg.to_string());
        if queued > self.ws_queue_bytes
            && let Some(c) = self.conns.remove(&conn)
        {
            tracing::warn!(
                conn,
                queued,
                "WebSocket client too slow (queue full); disconnecting"
            );
            self.metrics
                .slow_clients
                .with_label_values(&["websocket"])
                .inc();
            c.shared.kill();
        }
    }

    pub(super) fn deliver(&mut self) {
        if let Some(outbox) = &self.cluster {
            for u in self.core.take_token_updates() {
                outbox.push(u);
            }
        }
        let mut unread: Vec<u64> = Vec::new();
        loop {
            for out in self.core.drain() {
                match out {
                    Output::Event {
                        owner: Source::Ws(c),
                        msg,
                        ..
                    } => self.send_conn(c, msg),
                    Output::Event {
                        owner: Source::Http,
                        session_id,
                        msg,
                    } => {
                        let q = self.http.entry(session_id).or_default();
                        q.push(msg.to_string());
                        q.notify.notify_waiters();
                        if q.bytes > self.http_queue_bytes && q.closed_at.is_none() {
                            unread.push(session_id);
                        }
                    }
                    Output::SessionClosed { session_id, .. } => {
                        let keep = self
                            .http
                            .get(&session_id)
                            .is_some_and(|q| !q.events.is_empty());
                        if keep {
                            if let Some(q) = self.http.get_mut(&session_id) {
                                let now = Instant::now();
                                q.closed_at = Some(now);
                                q.notify.notify_waiters();
                                self.closed_http.push_back((now, session_id));
                            }
                        } else if let Some(q) = self.http.remove(&session_id) {
                            q.notify.notify_waiters();
                        }
                    }
                }
            }
            if let Some(nodes) = &self.nodes {
                for o in self.core.take_cluster_out() {
                    nodes.push(o);
                }
            }
            // `early_offer`: a request that cannot be queued is answered at once (the
            // answer it holds then goes, counted as a fallback): nothing waits unbounded
            let mut again = false;
            for r in self.core.take_permit_requests() {
                let id = r.id;
                let queued = self
                    .permits
                    .as_ref()
                    .is_some_and(|tx| tx.try_send(r).is_ok());
                if !queued {
                    self.core
                        .permit_result(Instant::now(), id, crate::core::PermitResult::Error);
                    again = true;
                }
            }
            if unread.is_empty() && !again {
                if self.core.take_timer_moved() {
                    self.timer_wake.notify_one();
                }
                return;
            }
            // Sessions whose client stopped polling: end them (as a closed WebSocket
            // would be) instead of buffering more; their queued events are dropped.
            for sid in std::mem::take(&mut unread) {
                tracing::warn!(
                    session = sid,
                    "HTTP session not polled (event queue full); ending it"
                );
                self.metrics.slow_clients.with_label_values(&["http"]).inc();
                if let Some(q) = self.http.remove(&sid) {
                    q.notify.notify_waiters();
                }
                self.core.drop_unread_session(Instant::now(), sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn conn_shared_wakes_once_per_burst_and_keeps_no_buffer() {
        let s = ConnShared::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(s.poll_woken(&mut cx).is_pending());
        assert_eq!(s.push("a".into()), 1);
        assert_eq!(s.push("bc".into()), 3);
        assert_eq!(s.poll_woken(&mut cx), Poll::Ready(()));
        assert!(s.poll_woken(&mut cx).is_pending(), "one wake-up per burst");
        let mut out = VecDeque::from(["first".to_string()]);
        s.take_into(&mut out);
        assert_eq!(out, ["first", "a", "bc"]);
        let q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(q.capacity(), 0, "an emptied queue gives its buffer back");
        drop(q);
        // the bytes stay counted until the connection's task hands them to the socket
        assert_eq!(s.queued.load(Ordering::Relaxed), 3);
        assert!(!s.killed());
        s.kill();
        assert!(s.killed());
        assert_eq!(s.poll_woken(&mut cx), Poll::Ready(()));
    }
}
