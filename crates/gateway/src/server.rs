//! The tokio/axum shell around [`Core`]: WebSocket, HTTP REST + long poll, Admin API,
//! `/metrics`, `/turn-credentials`, TLS, timers and token persistence.
//!
//! The core lives behind one `std::sync::Mutex`; every handler locks it, feeds one
//! request, pushes the reply and the resulting events into bounded per-connection queues
//! with `try_send` (a WebSocket's own reply and events go straight to its own task, see
//! `ws_session`), and unlocks — the lock is never held across an `.await`.

use crate::config::Config;
use crate::core::{ConnId, Core, CoreConfig, LongPollError, Output, Source, error_reply};
use crate::metrics::Metrics;
use crate::store::{MemoryRegistry, MemoryTokenStore, TokenFile};
use crate::turn;
use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// state_dir unusable.
    #[error("state_dir: {0}")]
    StateDir(String),
    /// TLS files unusable.
    #[error("cert/key: {0}")]
    Tls(String),
    /// I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Stopped with token changes that could not be written to tokens.json.
    #[error("tokens: {0}")]
    TokensUnsaved(String),
}

/// The three bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket (`janus-protocol`) + `/turn-credentials`.
    pub ws: TcpListener,
    /// HTTP REST/long poll + `/turn-credentials`.
    pub http: TcpListener,
    /// Admin API + `/metrics`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(cfg: &Config) -> std::io::Result<Self> {
        Ok(Self {
            ws: TcpListener::bind(cfg.listen).await?,
            http: TcpListener::bind(cfg.http_listen).await?,
            admin: TcpListener::bind(cfg.admin_listen).await?,
        })
    }
}

const HTTP_QUEUE_MAX: usize = 1000;

#[derive(Default)]
struct HttpQueue {
    /// Serialised events, oldest first.
    events: VecDeque<String>,
    /// Sum of the lengths of `events`.
    bytes: usize,
    notify: Arc<Notify>,
    /// The session is gone; its last events (e.g. `timeout`) wait for one more poll.
    closed_at: Option<Instant>,
}

impl HttpQueue {
    fn push(&mut self, text: String) {
        if self.events.len() >= HTTP_QUEUE_MAX
            && let Some(old) = self.events.pop_front()
        {
            self.bytes -= old.len();
        }
        self.bytes += text.len();
        self.events.push_back(text);
    }

    fn take(&mut self, n: usize) -> Vec<String> {
        let n = n.min(self.events.len());
        let ev: Vec<String> = self.events.drain(..n).collect();
        self.bytes -= ev.iter().map(String::len).sum::<usize>();
        ev
    }
}

struct ConnHandle {
    tx: mpsc::UnboundedSender<String>,
    /// Bytes queued for this connection and not yet handed to its socket (the channel
    /// and the connection task's own `out` queue together).
    queued: Arc<AtomicUsize>,
    kill: CancellationToken,
}

struct Inner {
    core: Core,
    conns: HashMap<ConnId, ConnHandle>,
    http: HashMap<u64, HttpQueue>,
    next_conn: ConnId,
    /// While a WebSocket connection's request is handled: that connection and the
    /// messages for it, written by its own task instead of going through its queue.
    local: Option<(ConnId, Vec<Value>)>,
    /// Ended HTTP sessions whose last events wait for a poll, oldest first.
    closed_http: VecDeque<(Instant, u64)>,
    /// Wakes the timer task when a request armed an earlier deadline.
    timer_wake: Arc<Notify>,
    /// `ws_queue_bytes` and `http_queue_bytes`.
    ws_queue_bytes: usize,
    http_queue_bytes: usize,
    metrics: Metrics,
}

struct Shared {
    inner: Mutex<Inner>,
    metrics: Metrics,
    /// The running configuration; a SIGHUP reload swaps it (see [`apply_reload`]).
    cfg: std::sync::RwLock<Arc<Config>>,
    persist_lock: tokio::sync::Mutex<()>,
    tokens_path: PathBuf,
    /// The last tokens.json write failed (the timer task retries).
    tokens_unsaved: std::sync::atomic::AtomicBool,
    /// See [`Inner::timer_wake`].
    timer_wake: Arc<Notify>,
    /// Notified each time the timer task's loop turns (the systemd watchdog waits for it).
    timer_turned: Notify,
    /// Port of the WebSocket listener (for the test page's default WebSocket URL).
    ws_port: u16,
}

type App = Arc<Shared>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running configuration (a snapshot: a reload does not change it under you).
    fn cfg(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Inner {
    fn send_conn(&mut self, conn: ConnId, msg: Value) {
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
        let text = msg.to_string();
        let len = text.len();
        let queued = c.queued.fetch_add(len, Ordering::Relaxed) + len;
        let full = queued > self.ws_queue_bytes || c.tx.send(text).is_err();
        if full && let Some(c) = self.conns.remove(&conn) {
            tracing::warn!(
                conn,
                queued,
                "WebSocket client too slow (queue full); disconnecting"
            );
            self.metrics
                .slow_clients
                .with_label_values(&["websocket"])
                .inc();
            c.kill.cancel();
        }
    }

    fn deliver(&mut self) {
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
            if unread.is_empty() {
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

fn load_tokens(path: &Path) -> Result<TokenFile, ServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            ServeError::StateDir(format!(
                "{} is not a valid token file ({e}); fix or remove it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile {
            version: 1,
            tokens: Vec::new(),
        }),
        Err(e) => Err(ServeError::StateDir(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn write_tokens(path: &Path, file: &TokenFile) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the current token store to disk (serialised with other writers; always the
/// newest state wins). On failure the in-memory store stays authoritative, the store is
/// flagged unsaved (`callrelay_gateway_token_store_unsaved` = 1) and the timer task
/// retries; the error text is returned for the Admin API reply.
async fn persist_tokens(app: &App) -> Result<(), String> {
    let _guard = app.persist_lock.lock().await;
    let snap = {
        let mut inner = app.lock();
        let _ = inner.core.take_token_snapshot();
        inner.core.token_snapshot()
    };
    let path = app.tokens_path.clone();
    let res = match tokio::task::spawn_blocking(move || write_tokens(&path, &snap)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("persistence task failed: {e}")),
    };
    match &res {
        Ok(()) => {
            if app.tokens_unsaved.swap(false, Ordering::Relaxed) {
                tracing::info!(path = %app.tokens_path.display(), "tokens saved again");
            }
            app.metrics.token_store_unsaved.set(0);
        }
        Err(e) => {
            app.tokens_unsaved.store(true, Ordering::Relaxed);
            app.metrics.token_store_unsaved.set(1);
            app.metrics.token_store_write_failures.inc();
            tracing::error!(error = %e, path = %app.tokens_path.display(), "cannot persist tokens; kept in memory, retrying");
        }
    }
    res
}

/// Seconds between retries of a failed tokens.json write.
const TOKEN_RETRY: Duration = Duration::from_secs(5);

/// The Admin API answer when a token change could not be written: a Janus error (490),
/// counted, instead of `success` (the change is kept in memory and the write retried).
fn unsaved_reply(app: &App, reply: &Value, error: &str) -> Value {
    app.metrics.error(490);
    let tx = reply.get("transaction").and_then(Value::as_str);
    error_reply(
        0,
        tx,
        490,
        &format!("Token change kept in memory but not saved to tokens.json ({error}); retrying"),
    )
}

/// Exports the expiry of the first certificate in `cert` (the leaf) as
/// `callrelay_gateway_tls_cert_not_after_seconds`. Called after the pair loaded.
fn record_cert_expiry(metrics: &Metrics, cert: &Path) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok);
    match leaf.map(|d| shared_ice::x509::not_after(&d)) {
        Some(Ok(t)) => metrics.set_tls_cert_not_after(t),
        Some(Err(e)) => {
            tracing::warn!(cert = %cert.display(), error = ?e, "cannot read the certificate's expiry")
        }
        None => tracing::warn!(cert = %cert.display(), "no certificate to read the expiry of"),
    }
}

/// Loads the certificate chain and key as the start and SIGHUP do (`--check-config`).
pub fn check_tls(cert: &Path, key: &Path) -> Result<(), ServeError> {
    load_tls(cert, key).map(|_| ())
}

fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(sc)))
}

/// The core's settings from the configuration.
fn core_config(cfg: &Config) -> CoreConfig {
    CoreConfig {
        session_timeout: cfg.session_timeout,
        reclaim_timeout: cfg.reclaim_timeout,
        candidate_wait: cfg.candidate_wait,
        token_auth: cfg.token_auth,
        api_secret: cfg.api_secret.clone(),
        admin_secret: cfg.admin_secret.clone(),
        token_max_idle: cfg.token_max_idle,
        max_sessions: cfg.max_sessions,
        max_sessions_per_token: cfg.max_sessions_per_token,
        max_sessions_per_connection: cfg.max_sessions_per_connection,
        max_username_bytes: cfg.max_username_bytes,
        max_candidate_bytes: cfg.max_candidate_bytes,
        max_candidate_bytes_per_handle: cfg.max_candidate_bytes_per_handle,
        ..CoreConfig::default()
    }
}

/// Reads the configuration again (the binary's file + flags) for a SIGHUP reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The keys a reload cannot change (sockets bound, caps and TLS set up at start): the
/// names of those that differ between `old` and `new`, and `new` with them reset to
/// `old`'s values.
fn restart_only(old: &Config, mut new: Config) -> (Vec<&'static str>, Config) {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if new.$field != old.$field {
                changed.push($key);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        listen => "listen",
        http_listen => "http_listen",
        admin_listen => "admin_listen",
        tls => "cert/key",
        tls_on => "ws_tls/http_tls/admin_tls",
        state_dir => "state_dir",
        // the core arms one timer per session at create: a changed timeout would not
        // reach the sessions already open (0 → N: they would never time out)
        session_timeout => "session_timeout",
        max_connections => "max_connections",
        max_connections_per_ip => "max_connections_per_ip",
        trusted_proxies => "trusted_proxies",
        max_admin_connections => "max_admin_connections",
    );
    (changed, new)
}

/// Applies a reloaded configuration: everything but the restart-only keys (logged).
fn apply_reload(app: &Shared, new: Config) {
    let old = app.cfg();
    let (needs_restart, new) = restart_only(&old, new);
    if !needs_restart.is_empty() {
        tracing::warn!(
            keys = %needs_restart.join(", "),
            "configuration reload: these keys change only on a restart; keeping their running values"
        );
    }
    {
        let mut inner = app.lock();
        inner.core.set_config(core_config(&new));
        inner.ws_queue_bytes = new.ws_queue_bytes;
        inner.http_queue_bytes = new.http_queue_bytes;
    }
    if new.admin_secret.is_none() {
        tracing::warn!("no admin_secret configured: every Admin API request will be refused (403)");
    }
    *app.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    app.metrics.config_reloads.with_label_values(&["ok"]).inc();
    tracing::info!("configuration reloaded");
}

/// Runs the gateway on already-bound listeners until `shutdown` is cancelled; then
/// closes the WebSockets, persists the tokens and returns.
pub async fn serve(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve_with_reload(
        cfg,
        listeners,
        shutdown,
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    )
    .await
}

/// Like [`serve_with_reload`]; each notification on `reload` also reads the
/// configuration again with `reloader` and applies it (see docs/gateway.md "Reload"):
/// an invalid one keeps the running settings, logged and counted in
/// `callrelay_gateway_config_reloads_total{result="error"}`.
pub async fn serve_with_reloader(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    reloader: Reloader,
    ready: Arc<Notify>,
) -> Result<(), ServeError> {
    serve_inner(cfg, listeners, shutdown, reload, Some(reloader), ready).await
}

/// Like [`serve`]; each notification on `reload` re-reads the TLS certificate and key
/// (new connections use them; a bad file keeps the old ones and logs an error).
/// `ready` is notified once the tokens are loaded and every listener is being served
/// (the binary tells systemd READY=1 then).
pub async fn serve_with_reload(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    ready: Arc<Notify>,
) -> Result<(), ServeError> {
    serve_inner(cfg, listeners, shutdown, reload, None, ready).await
}

async fn serve_inner(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    reloader: Option<Reloader>,
    ready: Arc<Notify>,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        ServeError::StateDir(format!(
            "cannot create {}: {e}; set --state-dir to a writable directory",
            cfg.state_dir.display()
        ))
    })?;
    let tokens_path = cfg.state_dir.join("tokens.json");
    let file = load_tokens(&tokens_path)?;
    // fail early if the directory is not writable
    write_tokens(&tokens_path, &file).map_err(|e| {
        ServeError::StateDir(format!(
            "cannot write {}: {e}; set --state-dir to a writable directory",
            tokens_path.display()
        ))
    })?;
    let tls: SharedTls = Arc::new(std::sync::RwLock::new(match &cfg.tls {
        Some((c, k)) => Some(load_tls(c, k)?),
        None => None,
    }));
    let metrics = Metrics::new();
    if let Some((c, _)) = &cfg.tls {
        record_cert_expiry(&metrics, c);
    }
    let core_cfg = core_config(&cfg);
    let loaded = file.tokens.len();
    let mut core = Core::new(
        core_cfg,
        Box::new(MemoryTokenStore::from_file(file)),
        Box::new(MemoryRegistry::new()),
        metrics.clone(),
    );
    let expired = core.expire_tokens(unix_now());
    tracing::info!(loaded, expired, path = %tokens_path.display(), "tokens loaded");
    if cfg.admin_secret.is_none() {
        tracing::warn!("no admin_secret configured: every Admin API request will be refused (403)");
    }
    let timer_wake = Arc::new(Notify::new());
    let app: App = Arc::new(Shared {
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
        }),
        metrics,
        cfg: std::sync::RwLock::new(Arc::new(cfg.clone())),
        persist_lock: tokio::sync::Mutex::new(()),
        tokens_path,
        tokens_unsaved: std::sync::atomic::AtomicBool::new(false),
        timer_wake,
        timer_turned: Notify::new(),
        ws_port: listeners.ws.local_addr()?.port(),
    });
    if expired > 0 {
        let _ = persist_tokens(&app).await;
    }

    let ws_router = Router::new()
        .route("/turn-credentials", any(turn_credentials))
        .fallback(ws_entry)
        .with_state(app.clone());
    let http_router = Router::new()
        .route("/turn-credentials", any(turn_credentials))
        .fallback(http_entry)
        .with_state(app.clone());
    let admin_router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/test", get(crate::testpage::page))
        .route("/test/client.js", get(crate::testpage::script))
        .route("/test/session", any(test_session))
        // browsers ask for it when they open the test page; answer instead of a 404
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(admin_entry)
        .with_state(app.clone());

    for (name, l) in [
        ("websocket", &listeners.ws),
        ("http", &listeners.http),
        ("admin", &listeners.admin),
    ] {
        let tls = match name {
            "websocket" => cfg.tls_on.ws,
            "http" => cfg.tls_on.http,
            _ => cfg.tls_on.admin,
        };
        tracing::info!(listener = name, addr = %l.local_addr()?, tls, "listening");
    }
    let public = Arc::new(
        ConnLimiter::new(
            public_connection_cap(cfg.max_connections, cfg.max_admin_connections),
            cfg.max_connections_per_ip,
            "max_connections",
        )
        .exempt(cfg.trusted_proxies.clone()),
    );
    // the admin listener has its own cap, and the public cap leaves fds for it: a
    // flood on the public listeners never stops Mattermost's add_token
    let admin = Arc::new(ConnLimiter::new(
        cfg.max_admin_connections,
        usize::MAX,
        "admin",
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_loop(
        listeners.ws,
        ws_router,
        cfg.tls_on.ws.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(public.clone(), "websocket", &app.metrics),
    ));
    tasks.spawn(accept_loop(
        listeners.http,
        http_router,
        cfg.tls_on.http.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(public, "http", &app.metrics),
    ));
    tasks.spawn(accept_loop(
        listeners.admin,
        admin_router,
        cfg.tls_on.admin.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(admin, "admin", &app.metrics).plain_from_loopback(),
    ));
    tasks.spawn(timer_loop(app.clone(), shutdown.clone()));
    {
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let app = app.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = reload.notified() => {}
                    () = shutdown.cancelled() => return,
                }
                if let Some(reloader) = &reloader {
                    match reloader() {
                        Ok(new) => apply_reload(&app, new),
                        Err(e) => {
                            app.metrics.config_reloads.with_label_values(&["error"]).inc();
                            tracing::error!(error = %e, "configuration reload failed; keeping the running settings");
                        }
                    }
                }
                // the certificate files are re-read even when the config is unchanged or
                // invalid: a renewed certificate does not wait for a config fix
                if let Some((cert, key)) = &cfg.tls {
                    match load_tls(cert, key) {
                        Ok(a) => {
                            *tls.write().unwrap_or_else(|p| p.into_inner()) = Some(a);
                            record_cert_expiry(&app.metrics, cert);
                            tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                        }
                        Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate"),
                    }
                }
            }
        });
    }
    if let Some(period) = watchdog_interval() {
        tracing::info!(watchdog = ?period, "systemd watchdog enabled");
        tasks.spawn(watchdog_loop(app.clone(), period));
    }
    ready.notify_one();
    shutdown.cancelled().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    {
        let mut inner = app.lock();
        for (_, c) in inner.conns.drain() {
            c.kill.cancel();
        }
    }
    // give the WebSocket writers a moment to send their close frames
    let t = Instant::now();
    while app.metrics.websocket_connections.get() > 0 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = persist_tokens(&app).await {
        let n = app.lock().core.stats().3;
        tracing::error!(
            tokens = n,
            error = %e,
            path = %app.tokens_path.display(),
            "stopping with token changes NOT saved to tokens.json: tokens added since the last successful write are lost"
        );
        return Err(ServeError::TokensUnsaved(format!(
            "{} not written ({e}); token changes since the last successful write are lost",
            app.tokens_path.display()
        )));
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long the last events of an ended HTTP session wait for a long poll.
const HTTP_LEFTOVER: Duration = Duration::from_secs(60);

/// Sleeps until the core's next deadline (O(1) to ask), or until a request armed an
/// earlier one (`timer_wake`), then runs what is due: no periodic tick, so idle
/// sessions and handles cost nothing.
async fn timer_loop(app: App, shutdown: CancellationToken) {
    let mut next_retry = Instant::now();
    loop {
        app.timer_turned.notify_waiters();
        let (dirty, next) = {
            let mut inner = app.lock();
            let now = Instant::now();
            inner.core.handle_timeout(now, unix_now());
            inner.deliver();
            // last events of ended HTTP sessions that nobody fetched (oldest first)
            while let Some(&(t, sid)) = inner.closed_http.front() {
                if now.saturating_duration_since(t) < HTTP_LEFTOVER {
                    break;
                }
                inner.closed_http.pop_front();
                if inner.http.get(&sid).is_some_and(|q| q.closed_at == Some(t)) {
                    inner.http.remove(&sid);
                }
            }
            let leftover = inner.closed_http.front().map(|&(t, _)| t + HTTP_LEFTOVER);
            // taken under the lock: a request arming an earlier deadline after this
            // point notifies `timer_wake`, whose permit the select below sees
            let _ = inner.core.take_timer_moved();
            let next = [inner.core.poll_timeout(), leftover]
                .into_iter()
                .flatten()
                .min();
            (inner.core.take_token_snapshot().is_some(), next)
        };
        let retry = app.tokens_unsaved.load(Ordering::Relaxed) && Instant::now() >= next_retry;
        if (dirty || retry) && persist_tokens(&app).await.is_err() {
            next_retry = Instant::now() + TOKEN_RETRY;
        }
        let mut next = next;
        if app.tokens_unsaved.load(Ordering::Relaxed) {
            next = Some(next.map_or(next_retry, |t| t.min(next_retry)));
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = app.timer_wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`; `WATCHDOG_PID`, when set,
/// must be this process), as libsystemd's `sd_watchdog_enabled` reads it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The systemd watchdog: every quarter of `WatchdogSec`, wake the timer task and wait
/// (up to half of it) for its loop to turn — which takes the core's lock and needs the
/// runtime to schedule tasks — and only then send `WATCHDOG=1`. A deadlocked core or a
/// starved runtime stops the pings, and systemd restarts the gateway.
async fn watchdog_loop(app: App, period: Duration) {
    let mut stalled = false;
    loop {
        tokio::time::sleep(period / 4).await;
        let turned = app.timer_turned.notified();
        tokio::pin!(turned);
        turned.as_mut().enable();
        app.timer_wake.notify_one();
        if tokio::time::timeout(period / 2, turned).await.is_ok() {
            stalled = false;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else if !stalled {
            stalled = true;
            tracing::error!(
                "timer task stalled: withholding the systemd watchdog ping (systemd restarts the gateway after WatchdogSec)"
            );
        }
    }
}

type SharedTls = Arc<std::sync::RwLock<Option<TlsAcceptor>>>;

/// File descriptors kept free beyond the public listeners' cap: the admin listener's
/// connections, tokens.json writes, the runtime's own descriptors.
const RESERVED_FDS: usize = 64;

/// The soft `RLIMIT_NOFILE` of this process (from /proc; None where unavailable).
fn nofile_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `max_connections`, lowered when the fd limit could not hold it plus the admin
/// listener's connections and [`RESERVED_FDS`].
fn public_connection_cap(max_connections: usize, max_admin: usize) -> usize {
    let Some(nofile) = nofile_limit() else {
        return max_connections;
    };
    let fit = nofile.saturating_sub(max_admin + RESERVED_FDS).max(16);
    if fit < max_connections {
        tracing::warn!(
            max_connections,
            nofile,
            cap = fit,
            "max_connections lowered to fit the file descriptor limit (raise LimitNOFILE)"
        );
        fit
    } else {
        max_connections
    }
}

/// Connection caps shared by the listeners that use it: open connections in all, and
/// per source address.
struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    /// The `reason` label when `max_total` refuses.
    total_reason: &'static str,
    /// Sources exempt from `max_per_ip` (reverse proxies: every client of theirs
    /// arrives from their address).
    exempt: Vec<crate::config::Cidr>,
    state: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
}

impl ConnLimiter {
    fn new(max_total: usize, max_per_ip: usize, total_reason: &'static str) -> Self {
        Self {
            max_total,
            max_per_ip,
            total_reason,
            exempt: Vec::new(),
            state: Mutex::new((0, HashMap::new())),
        }
    }

    /// Exempts these sources from the per-address cap (never from `max_total`).
    fn exempt(mut self, nets: Vec<crate::config::Cidr>) -> Self {
        self.exempt = nets;
        self
    }

    /// Counts one more connection from `ip`, or the reason label of the cap it hits.
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<ConnSlot, &'static str> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.max_total {
            return Err(self.total_reason);
        }
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip && !self.exempt.iter().any(|c| c.contains(ip)) {
            return Err("per_ip");
        }
        *n += 1;
        st.0 += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it releases the slot.
struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: std::net::IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.ip);
            }
        }
    }
}

/// A listener's caps and metrics.
struct Accounting {
    limiter: Arc<ConnLimiter>,
    rejected: Metrics,
    open: prometheus::IntGauge,
    /// On a TLS listener, also serve plain HTTP to loopback peers (see [`speaks_plain`]).
    plain_from_loopback: bool,
}

impl Accounting {
    fn new(limiter: Arc<ConnLimiter>, listener: &str, metrics: &Metrics) -> Self {
        Self {
            limiter,
            rejected: metrics.clone(),
            open: metrics.tcp_connections.with_label_values(&[listener]),
            plain_from_loopback: false,
        }
    }

    fn plain_from_loopback(mut self) -> Self {
        self.plain_from_loopback = true;
        self
    }
}

/// Whether a connection to a TLS listener is served as plain HTTP: only from a loopback
/// peer (an ssh tunnel, `ssh -L 7089:127.0.0.1:7089`, or a local client) whose first
/// byte is not a TLS handshake record (22). Through a tunnel the browser addresses
/// `127.0.0.1`, which no certificate names, and `http://127.0.0.1` is a secure context
/// (camera and microphone work); everything else still needs TLS.
fn speaks_plain(peer: std::net::IpAddr, first_byte: u8) -> bool {
    const TLS_HANDSHAKE: u8 = 22;
    peer.to_canonical().is_loopback() && first_byte != TLS_HANDSHAKE
}

async fn accept_loop(
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
        let tls = tls
            .as_ref()
            .and_then(|t| t.read().unwrap_or_else(|p| p.into_inner()).clone());
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

/// A connection's stream together with its slot under the caps: both go when the
/// stream is dropped (by hyper, or by the WebSocket it was upgraded to).
struct Counted<S> {
    io: S,
    _slot: ConnSlot,
    _open: GaugeGuard,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
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
struct GaugeGuard(prometheus::IntGauge);

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

// ---------------------------------------------------------------------------- helpers

fn json_response(status: StatusCode, v: &Value) -> Response {
    json_text(status, v.to_string())
}

/// A response with an already serialised JSON body.
fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn cors(app: &Shared, mut resp: Response, req_headers: &HeaderMap) -> Response {
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

fn random_transaction() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}

fn query_params(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(percent_decode(k), percent_decode(v));
    }
    m
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Janus error reply; Janus answers errors with HTTP 200 and the error in the body.
fn janus_error(code: u16, reason: &str) -> Response {
    json_response(StatusCode::OK, &error_reply(0, None, code, reason))
}

/// A Janus error reply counted in `callrelay_gateway_errors_total`.
fn counted_error(app: &App, code: u16, reason: &str) -> Response {
    app.metrics.error(code);
    janus_error(code, reason)
}

/// A request body parsed as a JSON object, or the 454/455 error Janus answers.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, (u16, String)> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err((455, "JSON error: not an object".to_string())),
        Err(e) => Err((454, format!("JSON error: on line {}: {}", e.line(), e))),
    }
}

/// The request body, at most `max_message_bytes`, arriving within `http_body_timeout`;
/// otherwise the response to send (a body that trickles in gets 408 and the
/// connection is closed).
async fn read_body(app: &App, body: Body) -> Result<Vec<u8>, Box<Response>> {
    let cfg = app.cfg();
    let read = axum::body::to_bytes(body, cfg.max_message_bytes);
    match tokio::time::timeout(cfg.http_body_timeout, read).await {
        Ok(Ok(b)) => Ok(b.to_vec()),
        Ok(Err(_)) => Err(Box::new(counted_error(
            app,
            454,
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

// ---------------------------------------------------------------------------- /turn-credentials

async fn turn_credentials(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    if req.method() == Method::OPTIONS {
        return cors(&app, StatusCode::OK.into_response(), &headers);
    }
    if req.method() != Method::GET {
        return cors(
            &app,
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
            &headers,
        );
    }
    let q = query_params(req.uri().query());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::trim).map(str::to_string));
    let token = q.get("token").cloned().or(bearer);
    let apisecret = q.get("apisecret").cloned();
    let ok = app
        .lock()
        .core
        .check_credentials(token.as_deref(), apisecret.as_deref(), unix_now());
    if !ok {
        return cors(
            &app,
            json_response(StatusCode::FORBIDDEN, &json!({"error": "unauthorized"})),
            &headers,
        );
    }
    let cfg = app.cfg();
    let Some(secret) = cfg.turn_secret.as_deref() else {
        return cors(
            &app,
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "turn credentials not configured (no turn_secret)"}),
            ),
            &headers,
        );
    };
    let user = match &token {
        Some(t) => turn::user_for_token(secret, t),
        None => {
            let r: u64 = rand::random();
            format!("{r:016x}")
        }
    };
    let body = turn::credentials_json(
        secret,
        &user,
        cfg.turn_ttl.as_secs(),
        unix_now(),
        cfg.stun_uri.as_deref(),
        &cfg.turn_uris,
    );
    app.metrics.turn_credentials_issued.inc();
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(&app, resp, &headers)
}

// ---------------------------------------------------------------------------- WebSocket

/// Bytes tungstenite reads per `read` (its default, 128 KiB, is zero-filled before
/// every read: 13 % of the gateway's CPU under load). Larger messages still arrive whole.
const WS_READ_BUFFER: usize = 8 * 1024;

fn wants_protocol(headers: &HeaderMap, proto: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(proto))
}

async fn ws_entry(State(app): State<App>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let headers = parts.headers.clone();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "this port speaks WebSocket (subprotocol janus-protocol); /turn-credentials is also served here"}),
        );
    };
    let max = app.cfg().max_message_bytes;
    let mut upgrade = upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER);
    if wants_protocol(&headers, "janus-protocol") {
        upgrade = upgrade.protocols(["janus-protocol"]);
    }
    upgrade.on_upgrade(move |socket| ws_session(app, socket, false))
}

/// One task per WebSocket connection reads requests and writes everything addressed to
/// it. Replies and the events a request produces for its own connection never pass
/// through the connection's queue: they are collected under the core's lock (after
/// whatever the queue already held, so the order is the order the core produced them)
/// and written by this task right away — no wake-up of another task or thread per
/// request. Events caused by other connections arrive through the bounded queue.
/// Writing never stops reading: a client that does not read sees its messages pile up
/// in `out`; more than `ws_queue` messages or `ws_queue_bytes` bytes queued for it (here
/// and in its channel together) disconnect it.
async fn ws_session(app: App, socket: WebSocket, admin: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let kill = CancellationToken::new();
    let queued = Arc::new(AtomicUsize::new(0));
    let conn = {
        let mut inner = app.lock();
        let id = inner.next_conn;
        inner.next_conn += 1;
        inner.conns.insert(
            id,
            ConnHandle {
                tx,
                queued: queued.clone(),
                kill: kill.clone(),
            },
        );
        id
    };
    app.metrics.websocket_connections.inc();
    let (mut sink, mut stream) = socket.split();
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
            () = kill.cancelled() => break,
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
            r = std::future::poll_fn(|cx| poll_write(cx, &mut sink, &mut out, &mut unflushed, &queued)),
                if !out.is_empty() || unflushed => {
                if r.is_err() {
                    break;
                }
                continue;
            }
            queued = rx.recv() => match queued {
                Some(text) => {
                    out.push_back(text);
                    continue;
                }
                None => break,
            },
            m = stream.next() => m,
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
            while let Ok(t) = rx.try_recv() {
                out.push_back(t);
            }
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
            queued.fetch_add(text.len(), Ordering::Relaxed);
            out.push_back(text);
        }
        let bytes = queued.load(Ordering::Relaxed);
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
        if persist && let Err(e) = persist_tokens(&app).await {
            // the reply is still queued: an admin WebSocket only gets its own replies
            if let Some(reply) = out.pop_back() {
                queued.fetch_sub(reply.len(), Ordering::Relaxed);
                let v: Value = serde_json::from_str(&reply).unwrap_or(Value::Null);
                let text = unsaved_reply(&app, &v, &e).to_string();
                queued.fetch_add(text.len(), Ordering::Relaxed);
                out.push_back(text);
            }
        }
    }
    kill.cancel();
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
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
}

/// Hands queued messages to the WebSocket and flushes them (one `write` for a burst).
/// Cancel-safe: a message leaves `out` only when the sink has taken it.
fn poll_write(
    cx: &mut std::task::Context<'_>,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    out: &mut VecDeque<String>,
    unflushed: &mut bool,
    queued: &AtomicUsize,
) -> std::task::Poll<Result<(), axum::Error>> {
    use std::task::Poll;
    while !out.is_empty() {
        match sink.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let Some(text) = out.pop_front() else { break };
        queued.fetch_sub(text.len(), Ordering::Relaxed);
        sink.start_send_unpin(Message::Text(text.into()))?;
        *unflushed = true;
    }
    match sink.poll_flush_unpin(cx) {
        Poll::Ready(Ok(())) => {
            *unflushed = false;
            Poll::Ready(Ok(()))
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------- HTTP transport

async fn http_entry(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    let resp = http_inner(&app, req).await;
    cors(&app, resp, &headers)
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
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
    if method == Method::GET {
        let Some(sid) = session else {
            return counted_error(app, 450, "GET on the root path is not supported (use POST)");
        };
        if handle.is_some() {
            let mut r = empty(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&format!("/janus/{sid}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        return long_poll(app, sid, query.as_deref()).await;
    }
    if method != Method::POST {
        return counted_error(app, 450, "Transport specific error (unsupported method)");
    }
    let body = match read_body(app, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut obj = match json_object(&body) {
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
                    457,
                    &format!("Conflicting {what} ID (payload and path)"),
                );
            }
        }
    }
    if session.is_none() && handle.is_none() {
        // POST /janus: ids in the body are not allowed to address a session here
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

// ---------------------------------------------------------------------------- test call page

/// Lifetime of a test-page token and of its TURN credentials.
const TEST_TOKEN_TTL: u64 = 600;

/// `POST /test/session` on the admin listener: mints a short-lived videocall-only token
/// and TURN credentials for the test call page (see docs/gateway.md § Test call page).
async fn test_session(State(app): State<App>, req: Request) -> Response {
    let nostore = |mut r: Response| {
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    if req.method() != Method::POST {
        return nostore(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "use POST"}),
        ));
    }
    let h = req.headers();
    // a custom header: a cross-site form or fetch cannot send it without a CORS
    // preflight, which this endpoint never grants
    if !h.contains_key("x-callrelay-test-page") {
        return nostore(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "missing header X-Callrelay-Test-Page"}),
        ));
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let given = h.get("x-admin-secret").and_then(|v| v.to_str().ok());
    let proxied = crate::testpage::PROXY_HEADERS
        .iter()
        .any(|name| h.contains_key(*name));
    if let Err(why) = crate::testpage::authorize(
        peer,
        host,
        proxied,
        given,
        app.cfg().admin_secret.as_deref(),
    ) {
        app.metrics.error(403);
        return nostore(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": why, "need_secret": true}),
        ));
    }
    let now = unix_now();
    let token = {
        use base64::Engine as _;
        let bytes: [u8; 24] = rand::random();
        format!(
            "test-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    };
    app.lock()
        .core
        .add_test_token(&token, now + TEST_TOKEN_TTL, now);
    app.metrics.test_tokens_issued.inc();
    let cfg = app.cfg();
    let ws_url = cfg.test_page_ws_url.clone().unwrap_or_else(|| {
        crate::testpage::default_ws_url(host, cfg.tls_on.ws, app.ws_port, cfg.admin_listen)
    });
    let ice = match cfg.turn_secret.as_deref() {
        Some(secret) => {
            let v = turn::credentials_json(
                secret,
                "test-page",
                TEST_TOKEN_TTL,
                now,
                cfg.stun_uri.as_deref(),
                &cfg.turn_uris,
            );
            app.metrics.turn_credentials_issued.inc();
            v["iceServers"].clone()
        }
        None => match &cfg.stun_uri {
            Some(u) => json!([{"urls": [u]}]),
            None => json!([]),
        },
    };
    nostore(json_response(
        StatusCode::OK,
        &json!({
            "token": token,
            "expires_in": TEST_TOKEN_TTL,
            "expires_at": now + TEST_TOKEN_TTL,
            "plugins": [crate::core::VIDEOCALL],
            "ws_url": ws_url,
            "iceServers": ice,
            "relay_available": !cfg.turn_uris.is_empty() && cfg.turn_secret.is_some(),
        }),
    ))
}

// ---------------------------------------------------------------------------- Admin API

async fn metrics_handler(State(app): State<App>) -> Response {
    let (s, h, u, t) = app.lock().core.stats();
    let to_i = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
    app.metrics.sessions.set(to_i(s));
    app.metrics.handles.set(to_i(h));
    app.metrics.registered_users.set(to_i(u));
    app.metrics.tokens.set(to_i(t));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn admin_entry(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let (mut parts, _b) = req.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => {
                let max = app.cfg().max_message_bytes;
                let mut u = u
                    .max_message_size(max)
                    .max_frame_size(max)
                    .read_buffer_size(WS_READ_BUFFER);
                if wants_protocol(&headers, "janus-admin-protocol") {
                    u = u.protocols(["janus-admin-protocol"]);
                }
                u.on_upgrade(move |socket| ws_session(app, socket, true))
            }
            Err(e) => e.into_response(),
        };
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // No CORS headers: the Admin API is for servers (Mattermost), never for pages in a
    // browser, and the test call page is same-origin. A preflight gets no grant (no
    // Access-Control-Allow-Origin, no Access-Control-Allow-Private-Network).
    admin_http(&app, method, &path, req.into_body()).await
}

async fn admin_http(app: &App, method: Method, path: &str, body: Body) -> Response {
    let Some(rest) = path.strip_prefix("/admin") else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found; the Admin API is at /admin, metrics at /metrics"}),
        );
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    }
    if method == Method::OPTIONS {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if method != Method::POST {
        return counted_error(app, 450, "Transport specific error (use POST)");
    }
    if segs.len() > 1 {
        return counted_error(app, 457, "Invalid path for this request");
    }
    let path_session = match segs.first() {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(x) if x > 0 => Some(x),
            _ => {
                return counted_error(app, 458, &format!("Invalid session {s}"));
            }
        },
    };
    let bytes = match read_body(app, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let v = match json_object(&bytes) {
        Ok(obj) => Value::Object(obj),
        Err((code, reason)) => return counted_error(app, code, &reason),
    };
    let r = {
        let mut inner = app.lock();
        let r = inner
            .core
            .admin_value(Instant::now(), unix_now(), v, path_session);
        inner.deliver();
        r
    };
    if r.tokens_changed
        && let Err(e) = persist_tokens(app).await
    {
        return json_response(StatusCode::OK, &unsaved_reply(app, &r.reply, &e));
    }
    json_response(StatusCode::OK, &r.reply)
}

#[cfg(test)]
mod tests {
    use super::speaks_plain;

    #[test]
    fn plain_http_on_a_tls_listener_only_from_loopback() {
        let ip = |s: &str| s.parse().unwrap();
        // "G" of GET from an ssh tunnel (127.0.0.1), IPv6 loopback, IPv4-mapped loopback
        for a in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(speaks_plain(ip(a), b'G'), "{a}");
            assert!(!speaks_plain(ip(a), 22), "{a}: a TLS ClientHello is TLS");
        }
        // the Mattermost server, anyone else: TLS only
        for a in ["192.0.2.10", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.10"] {
            assert!(!speaks_plain(ip(a), b'G'), "{a}");
        }
    }
}
