//! SIGHUP: reloading the configuration (restart-only keys kept).

use super::core_config;
use super::state::{App, Shared};
use super::tls::{ALPN, record_cert_expiry};
use crate::config::Config;
use callrelay_service::tls::SharedTls;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
        // the NATS connection and the node's name are set up once at start
        cluster => "nats_url/node_id/cluster/nats_*",
        // the task that talks to the turn-servers is set up once at start
        // (`early_offer` itself reloads)
        turn_control => "turn_control_urls",
        turn_control_secret => "turn_control_secret",
    );
    (changed, new)
}

/// Applies a reloaded configuration: everything but the restart-only keys (logged).
pub(super) fn apply_reload(app: &Shared, new: Config) {
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

/// Waits for `reload` (SIGHUP) and applies it: the configuration read again with
/// `reloader` (an invalid one keeps the running settings), then the certificate files
/// `tls_files` read again into `tls` (a bad pair keeps the previous one).
pub(super) async fn reload_loop(
    app: App,
    reload: Arc<Notify>,
    reloader: Option<Reloader>,
    tls_files: Option<(PathBuf, PathBuf)>,
    tls: SharedTls,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = reload.notified() => {}
            () = shutdown.cancelled() => return,
        }
        if let Some(reloader) = &reloader {
            match reloader() {
                Ok(new) => apply_reload(&app, new),
                Err(e) => {
                    app.metrics
                        .config_reloads
                        .with_label_values(&["error"])
                        .inc();
                    tracing::error!(error = %e, "configuration reload failed; keeping the running settings");
                }
            }
        }
        // the certificate files are re-read even when the config is unchanged or
        // invalid: a renewed certificate does not wait for a config fix
        if let Some((cert, key)) = &tls_files {
            match tls.reload(cert, key, ALPN) {
                Ok(not_after) => {
                    record_cert_expiry(&app.metrics, cert, not_after);
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
                }
            }
        }
    }
}
