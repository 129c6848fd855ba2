//! tokens.json: loading, atomic writes, persistence after Admin API changes.

use super::ServeError;
use super::state::App;
use crate::core::{JanusError, error_reply};
use crate::store::TokenFile;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Creates `state_dir` and reads its tokens.json (none yet: no tokens), then writes it
/// back, so an unwritable directory stops the start instead of the first token change.
pub(super) fn open_token_file(state_dir: &Path) -> Result<(PathBuf, TokenFile), ServeError> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        ServeError::StateDir(format!(
            "cannot create {}: {e}; set --state-dir to a writable directory",
            state_dir.display()
        ))
    })?;
    let tokens_path = state_dir.join("tokens.json");
    let file = load_tokens(&tokens_path)?;
    // fail early if the directory is not writable
    write_tokens(&tokens_path, &file).map_err(|e| {
        ServeError::StateDir(format!(
            "cannot write {}: {e}; set --state-dir to a writable directory",
            tokens_path.display()
        ))
    })?;
    Ok((tokens_path, file))
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
pub(super) async fn persist_tokens(app: &App) -> Result<(), String> {
    // the guard moves into the blocking write: a caller aborted at shutdown drops its
    // future, not the write, and the final write waits for it instead of racing it
    // for tokens.json.tmp
    let guard = app.persist_lock.clone().lock_owned().await;
    let snap = {
        let mut inner = app.lock();
        let _ = inner.core.take_token_snapshot();
        inner.core.token_snapshot()
    };
    let path = app.tokens_path.clone();
    let res = match tokio::task::spawn_blocking(move || {
        let r = write_tokens(&path, &snap);
        drop(guard);
        r
    })
    .await
    {
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
pub(super) const TOKEN_RETRY: Duration = Duration::from_secs(5);

/// The Admin API answer when a token change could not be written: a Janus error (490),
/// counted, instead of `success` (the change is kept in memory and the write retried).
pub(super) fn unsaved_reply(app: &App, reply: &Value, error: &str) -> Value {
    app.metrics.error(JanusError::Unknown.code());
    let tx = reply.get("transaction").and_then(Value::as_str);
    error_reply(
        0,
        tx,
        JanusError::Unknown.code(),
        &format!("Token change kept in memory but not saved to tokens.json ({error}); retrying"),
    )
}
