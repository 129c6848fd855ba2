//! SIGHUP: reloading the configuration (restart-only keys kept).

use super::core_config;
use super::state::Shared;
use crate::config::Config;
use std::sync::Arc;

/// Reads the configuration again (the binary's file + flags) for a SIGHUP reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The keys a reload cannot change (sockets bound, caps and TLS set up at start): the
/// names of those that differ between `old` and `new`, and `new` with them reset to
/// `old`'s values.
pub(super) fn restart_only(old: &Config, mut new: Config) -> (Vec<&'static str>, Config) {
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
