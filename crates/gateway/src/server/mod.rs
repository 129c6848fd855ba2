//! The tokio/axum shell around [`Core`]: WebSocket, HTTP REST + long poll, Admin API,
//! `/metrics`, `/turn-credentials`, TLS, timers and token persistence.
//!
//! The core lives behind one `std::sync::Mutex`; every handler locks it, feeds one
//! request, pushes the reply and the resulting events into bounded per-connection queues
//! with `try_send` (a WebSocket's own reply and events go straight to its own task, see
//! `ws_session`), and unlocks — the lock is never held across an `.await`.

mod admin;
mod credentials;
mod http;
mod limits;
mod listener;
mod reload;
mod respond;
mod state;
mod testpage;
mod timers;
mod tls;
mod tokens;
mod ws;

use self::admin::{admin_entry, metrics_handler};
use self::credentials::turn_credentials;
use self::http::http_entry;
use self::limits::{ConnLimiter, public_connection_cap};
use self::listener::{Accounting, accept_loop};
use self::reload::apply_reload;
use self::state::{App, Inner, Shared, unix_now};
use self::testpage::test_session;
use self::timers::{timer_loop, watchdog_loop};
use self::tls::{SharedTls, load_tls, record_cert_expiry};
use self::tokens::{load_tokens, persist_tokens, write_tokens};
use self::ws::ws_entry;
use crate::config::Config;
use crate::core::{Core, CoreConfig};
use crate::metrics::Metrics;
use crate::store::{MemoryRegistry, MemoryTokenStore};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{any, get};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use listener::PeerAddr;
pub use reload::Reloader;
pub use timers::watchdog_interval;
pub use tls::check_tls;

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
