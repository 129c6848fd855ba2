//! The tokio/axum shell around [`Core`](crate::core::Core): WebSocket, HTTP REST + long
//! poll, Admin API, `/metrics`, `/turn-credentials`, TLS, timers and token persistence.
//!
//! The core lives behind one `std::sync::Mutex`; every handler locks it, feeds one
//! request, pushes the reply and the resulting events into bounded per-connection queues
//! with `try_send` (a WebSocket's own reply and events go straight to its own task, see
//! `ws_session`), and unlocks — the lock is never held across an `.await`.

mod admin;
mod cluster;
mod credentials;
mod forward;
mod http;
mod limits;
mod listener;
mod permits;
mod presence;
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
use self::limits::connection_limiters;
use self::listener::{Accounting, accept_loop};
use self::reload::reload_loop;
use self::state::{App, Shared};
use self::testpage::test_session;
use self::timers::{timer_loop, watchdog_loop};
use self::tls::{ALPN, record_cert_expiry};
use self::tokens::{open_token_file, persist_tokens};
use self::ws::ws_entry;
use crate::config::Config;
use crate::core::CoreConfig;
use crate::metrics::Metrics;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{any, get};
use callrelay_service::tls::SharedTls;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use callrelay_service::systemd::watchdog_interval;
pub use listener::PeerAddr;
pub use reload::Reloader;
pub use tls::check_tls;

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// state_dir unusable.
    #[error("state_dir: {0}")]
    StateDir(String),
    /// TLS files unusable.
    #[error("cert/key: {0}")]
    Tls(#[from] callrelay_service::tls::TlsError),
    /// I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Stopped with token changes that could not be written to tokens.json.
    #[error("tokens: {0}")]
    TokensUnsaved(String),
    /// The cluster settings cannot be used (NKey seed or CA file, NATS URL).
    #[error("{0}")]
    Cluster(String),
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
        candidate_grace: cfg.candidate_grace,
        early_offer: cfg.early_offer,
        early_offer_timeout: cfg.early_offer_timeout,
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
    let (tokens_path, file) = open_token_file(&cfg.state_dir)?;
    let tls = SharedTls::default();
    let not_after = match &cfg.tls {
        Some((c, k)) => Some((c, tls.reload(c, k, ALPN)?)),
        None => None,
    };
    let metrics = Metrics::new();
    if let Some((c, t)) = not_after {
        record_cert_expiry(&metrics, c, t);
    }
    let ws_port = listeners.ws.local_addr()?.port();
    let cluster_metrics = cfg.cluster.as_ref().map(|_| metrics.register_cluster());
    let (app, expired) = Shared::start(&cfg, metrics, tokens_path, file, ws_port);
    if expired > 0 {
        let _ = persist_tokens(&app).await;
    }
    // cluster mode: connect in the background and share the token table
    let mut cluster_task = None;
    if let (Some(ccfg), Some(cm)) = (&cfg.cluster, cluster_metrics) {
        let reconnected = Arc::new(Notify::new());
        let nodes = Arc::new(presence::NodeOutbox::new(cm.clone()));
        let (opts, addrs) =
            cluster::connect_options(ccfg, &cm, reconnected.clone(), nodes.epoch.clone())?;
        let outbox = Arc::new(cluster::Outbox::new(cm));
        {
            let mut inner = app.lock();
            inner.core.share_tokens();
            inner.core.join_cluster(&ccfg.node_id);
            inner.core.set_session_tag(nodes.tag);
            inner.cluster = Some(outbox.clone());
            inner.nodes = Some(nodes.clone());
        }
        tracing::info!(
            node = %ccfg.node_id,
            cluster = %ccfg.name,
            nats = %ccfg.urls.join(","),
            bucket = %ccfg.token_bucket(),
            "cluster mode: tokens, videocall users and calls are shared through NATS"
        );
        cluster_task = Some(tokio::spawn(cluster::cluster_loop(
            app.clone(),
            opts,
            addrs,
            ccfg.clone(),
            cfg.token_max_idle,
            outbox,
            nodes,
            reconnected,
            shutdown.clone(),
        )));
    }

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
    let (public, admin) = connection_limiters(&cfg);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_loop(
        listeners.ws,
        ws_app(app.clone()),
        cfg.tls_on.ws.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(public.clone(), "websocket", &app.metrics),
    ));
    tasks.spawn(accept_loop(
        listeners.http,
        http_app(app.clone()),
        cfg.tls_on.http.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(public, "http", &app.metrics),
    ));
    tasks.spawn(accept_loop(
        listeners.admin,
        admin_app(app.clone()),
        cfg.tls_on.admin.then(|| tls.clone()),
        shutdown.clone(),
        Accounting::new(admin, "admin", &app.metrics).plain_from_loopback(),
    ));
    tasks.spawn(timer_loop(app.clone(), shutdown.clone()));
    if let (false, Some(secret)) = (cfg.turn_control.is_empty(), &cfg.turn_control_secret) {
        let (tx, rx) = tokio::sync::mpsc::channel(permits::QUEUE);
        app.lock().permits = Some(tx);
        tracing::info!(turn_control = ?cfg.turn_control, early_offer = cfg.early_offer, "turn-server control endpoints configured");
        tasks.spawn(permits::permit_loop(
            app.clone(),
            rx,
            permits::Targets {
                addrs: cfg.turn_control.clone(),
                secret: secret.clone(),
            },
            shutdown.clone(),
        ));
    }
    tasks.spawn(reload_loop(
        app.clone(),
        reload,
        reloader,
        cfg.tls.clone(),
        tls,
        shutdown.clone(),
    ));
    if let Some(period) = watchdog_interval() {
        tracing::info!(watchdog = ?period, "systemd watchdog enabled");
        let dog = callrelay_service::systemd::Watchdog::new(Some(period));
        tasks.spawn(watchdog_loop(app.clone(), dog));
    }
    ready.notify_one();
    shutdown.cancelled().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(t) = cluster_task {
        // it writes what is queued when NATS is there; a moment at most
        if tokio::time::timeout(Duration::from_secs(3), t)
            .await
            .is_err()
        {
            tracing::warn!("NATS writes did not finish within 3 s at shutdown");
        }
    }
    stop(&app).await
}

/// The WebSocket listener: `/turn-credentials`; any other path is a Janus WebSocket
/// (subprotocol `janus-protocol`).
fn ws_app(app: App) -> Router {
    Router::new()
        .route("/turn-credentials", any(turn_credentials))
        .fallback(ws_entry)
        .with_state(app)
}

/// The HTTP listener: `/turn-credentials`; any other path is the Janus REST API and its
/// long poll (`/janus…`, with CORS).
fn http_app(app: App) -> Router {
    Router::new()
        .route("/turn-credentials", any(turn_credentials))
        .fallback(http_entry)
        .with_state(app)
}

/// The admin listener: `/metrics`, the test call page, and the Admin API (`/admin…`,
/// HTTP or WebSocket, never with CORS).
fn admin_app(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/test", get(crate::testpage::page))
        .route("/test/client.js", get(crate::testpage::script))
        .route("/test/session", any(test_session))
        // browsers ask for it when they open the test page; answer instead of a 404
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(admin_entry)
        .with_state(app)
}

/// After the tasks ended: closes the WebSockets and writes tokens.json a last time.
async fn stop(app: &App) -> Result<(), ServeError> {
    {
        let mut inner = app.lock();
        for (_, c) in inner.conns.drain() {
            c.shared.kill();
        }
    }
    // give the WebSocket writers a moment to send their close frames
    let t = Instant::now();
    while app.metrics.websocket_connections.get() > 0 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = persist_tokens(app).await {
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

#[cfg(test)]
mod tests;
