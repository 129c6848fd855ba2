//! Cluster mode (`nats_url`, docs/scale-out.md): this node's NATS connection and the
//! token table it shares with the other nodes through a JetStream key-value bucket.
//!
//! The core keeps its own copy of the table and stays sans-IO: its local changes come
//! out as [`TokenUpdate`]s, which [`Inner::deliver`](super::state::Inner::deliver)
//! hands to the [`Outbox`] under the core's lock; [`cluster_loop`] writes them to the
//! bucket and feeds the other nodes' changes, read from a watch of the bucket, back
//! into the core ([`Core::apply_shared_token`](crate::core::Core::apply_shared_token)).
//! While NATS is unreachable the node serves the tokens it knows, queues its own
//! changes (bounded, newest state per token) and, once connected again, writes them and
//! reads the whole bucket again.

use super::ServeError;
use super::forward::{Forwarder, forward_loop};
use super::presence::{NodeOutbox, presence_loop};
use super::state::App;
use crate::config::{ClusterConfig, NatsAuth};
use crate::core::TokenUpdate;
use crate::metrics::ClusterMetrics;
use crate::store::TokenEntry;
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::{Client, ConnectOptions, Event};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Token changes queued while they cannot be written (at most this many tokens; a
/// change of a token already queued replaces its queued state and takes no room).
pub(super) const CLUSTER_WRITE_QUEUE: usize = 10_000;
/// Attempts to write one change while connected before it is given up (a value the
/// server refuses, not an outage: during an outage nothing is attempted).
const WRITE_ATTEMPTS: u32 = 5;
/// Pause after a failed NATS operation before the next attempt.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for the bucket's current content when (re)connecting.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest stored token entry (the token, its plugins and a time: far less).
const MAX_VALUE_BYTES: i32 = 64 * 1024;

/// A token as stored in the bucket: JSON, under the key `t<base64url(token)>` (the
/// token may hold characters a key may not).
#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    token: String,
    plugins: Vec<String>,
    last_seen: u64,
}

fn key_of(token: &str) -> String {
    format!("t{}", URL_SAFE_NO_PAD.encode(token))
}

fn token_of(key: &str) -> Option<String> {
    let b = URL_SAFE_NO_PAD.decode(key.strip_prefix('t')?).ok()?;
    String::from_utf8(b).ok()
}

/// One queued change: the token's newest state (None: deleted) and the failed attempts.
#[derive(Debug)]
struct Queued {
    entry: Option<TokenEntry>,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Pending {
    /// Tokens in the order first changed.
    order: VecDeque<String>,
    latest: HashMap<String, Queued>,
}

/// The token changes made here that are not written yet, shared by the core's lock
/// holder (who pushes) and [`cluster_loop`] (who writes).
#[derive(Debug)]
pub(super) struct Outbox {
    pending: Mutex<Pending>,
    wake: Notify,
    metrics: ClusterMetrics,
}

impl Outbox {
    pub(super) fn new(metrics: ClusterMetrics) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a change of the core (called under the core's lock: never blocks).
    pub(super) fn push(&self, update: TokenUpdate) {
        let (token, entry) = match update {
            TokenUpdate::Put(e) => (e.token.clone(), Some(e)),
            TokenUpdate::Delete(t) => (t, None),
        };
        let mut p = self.lock();
        if let Some(q) = p.latest.get_mut(&token) {
            *q = Queued { entry, attempts: 0 };
        } else if p.order.len() >= CLUSTER_WRITE_QUEUE {
            drop(p);
            self.metrics.kv_writes_dropped.inc();
            // the first drop and every 1000th: a long outage must not flood the log
            let dropped = self.metrics.kv_writes_dropped.get();
            if dropped % 1000 == 1 {
                tracing::error!(
                    queued = CLUSTER_WRITE_QUEUE,
                    dropped,
                    "token change not queued for NATS (queue full): the other nodes will not see it"
                );
            }
            return;
        } else {
            p.order.push_back(token.clone());
            p.latest.insert(token, Queued { entry, attempts: 0 });
        }
        self.metrics.kv_writes_pending.set(gauge(p.order.len()));
        drop(p);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<(String, Queued)> {
        let mut p = self.lock();
        let token = p.order.pop_front()?;
        let q = p.latest.remove(&token)?;
        self.metrics.kv_writes_pending.set(gauge(p.order.len()));
        Some((token, q))
    }

    /// Puts a change that could not be written back in front, unless a newer one of
    /// the same token was queued meanwhile.
    fn retry(&self, token: String, q: Queued) {
        let mut p = self.lock();
        if p.latest.contains_key(&token) {
            return;
        }
        p.order.push_front(token.clone());
        p.latest.insert(token, q);
        self.metrics.kv_writes_pending.set(gauge(p.order.len()));
    }

    fn tokens(&self) -> HashSet<String> {
        self.lock().latest.keys().cloned().collect()
    }

    fn contains(&self, token: &str) -> bool {
        self.lock().latest.contains_key(token)
    }

    fn len(&self) -> usize {
        self.lock().order.len()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How this node connects to NATS: the options (credentials, TLS, the events that
/// drive the connection gauge and `reconnected`) and the servers. Errors here are
/// configuration errors, found at start: an unreadable NKey seed or CA file, a bad URL.
pub(super) fn connect_options(
    cfg: &ClusterConfig,
    metrics: &ClusterMetrics,
    reconnected: Arc<Notify>,
    epoch: Arc<AtomicU64>,
) -> Result<(ConnectOptions, Vec<async_nats::ServerAddr>), ServeError> {
    let mut opts = ConnectOptions::new()
        .name(format!("callrelay-gateway {}", cfg.node_id))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // a reconnect is attempted at once, then with growing pauses up to 2 s: a
        // restarted server is found again within about 2 s
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(attempts as u64))
                .min(Duration::from_secs(2))
        });
    opts = match &cfg.auth {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::NkeySeedFile(path) => {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                ServeError::Cluster(format!(
                    "nats_nkey_seed_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            opts.nkey(seed.trim().to_string())
        }
    };
    if cfg.tls {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.ca_file {
        std::fs::metadata(ca).map_err(|e| {
            ServeError::Cluster(format!("nats_ca_file: cannot read {}: {e}", ca.display()))
        })?;
        opts = opts.add_root_certificates(ca.clone());
    }
    let m = metrics.clone();
    let was_connected = Arc::new(AtomicBool::new(false));
    opts = opts.event_callback(move |event| {
        let (m, reconnected, was) = (m.clone(), reconnected.clone(), was_connected.clone());
        let epoch = epoch.clone();
        async move {
            match event {
                Event::Connected => {
                    m.nats_connected.set(1);
                    epoch.fetch_add(1, Ordering::Relaxed);
                    if was.swap(true, Ordering::Relaxed) {
                        tracing::info!("NATS connection back: writing queued token changes and reading the shared tokens again");
                    } else {
                        tracing::info!("connected to NATS");
                    }
                    reconnected.notify_one();
                }
                Event::Disconnected => {
                    m.nats_connected.set(0);
                    tracing::warn!("NATS connection lost: serving the tokens this node knows, queueing token changes, reconnecting");
                }
                Event::Closed => tracing::info!("NATS connection closed"),
                other => tracing::warn!(event = %other, "NATS"),
            }
        }
    });
    let addrs = cfg
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Cluster(format!("nats_url: {e}")))?;
    Ok((opts, addrs))
}

/// Connects, retrying until it succeeds or `shutdown` (None then): the node serves
/// alone meanwhile. Each new reason of failure is logged (a wrong CA, a refused
/// password, no server listening); once connected, the client reconnects by itself.
async fn connect(
    opts: &ConnectOptions,
    addrs: &[async_nats::ServerAddr],
    shutdown: &CancellationToken,
) -> Option<Client> {
    let mut last = String::new();
    loop {
        match opts.clone().connect(addrs.to_vec()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let why = e.to_string();
                if why != last {
                    tracing::warn!(error = %why, "cannot connect to NATS: serving alone with the tokens this node knows, retrying");
                    last = why;
                }
            }
        }
        if pause(shutdown).await {
            return None;
        }
    }
}

/// The shared token table's driver: until `shutdown`, (re)opens the bucket whenever the
/// connection is up, writes what is queued, reads the whole bucket into the core, then
/// follows its changes and writes new local ones as they come.
#[expect(
    clippy::too_many_arguments,
    reason = "the task's whole state, handed over once at start"
)]
pub(super) async fn cluster_loop(
    app: App,
    opts: ConnectOptions,
    addrs: Vec<async_nats::ServerAddr>,
    cfg: ClusterConfig,
    token_max_idle: Duration,
    outbox: Arc<Outbox>,
    nodes: Arc<NodeOutbox>,
    reconnected: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(client) = connect(&opts, &addrs, &shutdown).await else {
        return;
    };
    // HTTP requests for other nodes' sessions, and theirs for this node's
    let tag = nodes.tag;
    let _ = app.forward.set(Forwarder::new(
        client.clone(),
        cfg.name.clone(),
        tag,
        outbox.metrics.clone(),
    ));
    let forwarded = tokio::spawn(forward_loop(
        app.clone(),
        client.clone(),
        cfg.name.clone(),
        tag,
        outbox.metrics.clone(),
        shutdown.clone(),
    ));
    // videocall users and calls across nodes: the same connection, its own task
    let presence = tokio::spawn(presence_loop(
        app.clone(),
        client.clone(),
        cfg.clone(),
        nodes,
        shutdown.clone(),
    ));
    tokens_loop(
        app,
        client,
        cfg,
        token_max_idle,
        outbox,
        reconnected,
        shutdown,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), presence).await;
    forwarded.abort();
}

/// The token half of [`cluster_loop`], once connected.
async fn tokens_loop(
    app: App,
    client: Client,
    cfg: ClusterConfig,
    token_max_idle: Duration,
    outbox: Arc<Outbox>,
    reconnected: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let js = async_nats::jetstream::new(client.clone());
    let metrics = outbox.metrics.clone();
    // revision of this node's last write per token: the watch echoes our own writes,
    // and an older one arriving after a newer local change must not undo it
    let mut written: HashMap<String, u64> = HashMap::new();
    loop {
        // wait for a connection
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::select! {
                () = reconnected.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let kv = match open_bucket(&js, &cfg, token_max_idle).await {
            Ok(kv) => kv,
            Err(e) => {
                metrics.kv_failures.with_label_values(&["bucket"]).inc();
                tracing::error!(bucket = %cfg.token_bucket(), error = %e, "cannot open the NATS token bucket; retrying");
                if pause(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        // a bucket never written gets this node's tokens (a single node joining a new
        // cluster keeps its tokens.json); several nodes doing this at once is harmless
        match kv.status().await {
            Ok(st) if st.info.state.last_sequence == 0 => {
                let snap = app.lock().core.token_snapshot();
                tracing::info!(
                    tokens = snap.tokens.len(),
                    "new token bucket: seeding it with this node's tokens"
                );
                for e in snap.tokens {
                    outbox.push(TokenUpdate::Put(e));
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.kv_failures.with_label_values(&["bucket"]).inc();
                tracing::warn!(error = %e, "cannot read the token bucket's state; retrying");
                if pause(&shutdown).await {
                    return;
                }
                continue;
            }
        }
        if !flush(&client, &kv, &outbox, &mut written).await {
            if pause(&shutdown).await {
                return;
            }
            continue;
        }
        // the full read below is the state: echoes of older writes no longer matter
        // (the read keeps what it may have missed of them, see `snapshot`)
        let mut watch = match snapshot(&app, &kv, &outbox, &written).await {
            Ok(w) => {
                written.clear();
                w
            }
            Err(e) => {
                metrics.kv_failures.with_label_values(&["watch"]).inc();
                tracing::warn!(error = %e, "cannot read the shared tokens; retrying");
                if pause(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        // follow the bucket until the watch breaks or the connection comes back after
        // a loss (then read everything again: changes may have been missed)
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(e)) => apply(&app, &outbox, &mut written, e),
                    Some(Err(e)) => {
                        metrics.kv_failures.with_label_values(&["watch"]).inc();
                        tracing::warn!(error = %e, "watch of the token bucket failed; reading it again");
                        break;
                    }
                    None => {
                        metrics.kv_failures.with_label_values(&["watch"]).inc();
                        tracing::warn!("watch of the token bucket ended; reading it again");
                        break;
                    }
                },
                () = outbox.wake.notified() => {
                    retry_at = (!flush(&client, &kv, &outbox, &mut written).await)
                        .then(|| tokio::time::Instant::now() + RETRY);
                }
                () = retry => {
                    retry_at = (!flush(&client, &kv, &outbox, &mut written).await)
                        .then(|| tokio::time::Instant::now() + RETRY);
                }
                () = reconnected.notified() => break,
                () = shutdown.cancelled() => {
                    // last chance for what is queued (bounded: the caller waits a moment)
                    if outbox.len() > 0 {
                        flush(&client, &kv, &outbox, &mut written).await;
                    }
                    let left = outbox.len();
                    if left > 0 {
                        tracing::warn!(left, "stopping with token changes not written to NATS: the other nodes will not see them");
                    }
                    return;
                }
            }
        }
    }
}

/// Waits [`RETRY`]; true when `shutdown` came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => false,
        () = shutdown.cancelled() => true,
    }
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    cfg: &ClusterConfig,
    token_max_idle: Duration,
) -> Result<Store, String> {
    let name = cfg.token_bucket();
    if let Ok(kv) = js.get_key_value(&name).await {
        return Ok(kv);
    }
    // the stream a key-value bucket is, created directly: async-nats' create_key_value
    // first reads the account's JetStream info in a shape nats-server 2.9 (Debian's)
    // does not send; this is the configuration it would create (one value per key,
    // delete markers by rollup, direct gets)
    use async_nats::jetstream::stream;
    js.create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some("callrelay gateway: Admin API tokens shared by the nodes".to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        // an entry (or a delete marker) not rewritten for this long is gone: tokens in
        // use are rewritten hourly with their last use, so only idle tokens and old
        // delete markers age out (0 = token_max_idle never: keep them)
        max_age: if token_max_idle.is_zero() {
            Duration::ZERO
        } else {
            token_max_idle + Duration::from_secs(86_400)
        },
        max_message_size: MAX_VALUE_BYTES,
        storage: stream::StorageType::File,
        num_replicas: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(&name).await.map_err(|e| e.to_string())
}

/// Writes what is queued, oldest first; false when a write failed (the change is
/// queued again, or given up after [`WRITE_ATTEMPTS`] failures while connected) or the
/// connection is down (nothing is attempted then: an outage gives up no change).
async fn flush(
    client: &Client,
    kv: &Store,
    outbox: &Outbox,
    written: &mut HashMap<String, u64>,
) -> bool {
    let m = &outbox.metrics;
    let connected = || client.connection_state() == async_nats::connection::State::Connected;
    loop {
        if !connected() {
            return outbox.len() == 0;
        }
        let Some((token, mut q)) = outbox.pop() else {
            return true;
        };
        let key = key_of(&token);
        let (op, res) = match &q.entry {
            Some(e) => {
                let value = StoredToken {
                    token: e.token.clone(),
                    plugins: e.plugins.clone(),
                    last_seen: e.last_seen,
                };
                let body = serde_json::to_vec(&value).unwrap_or_default();
                (
                    "put",
                    kv.put(&key, body.into()).await.map_err(|e| e.to_string()),
                )
            }
            // the delete marker's revision is not returned: nothing to compare echoes with
            None => (
                "delete",
                kv.delete(&key).await.map(|()| 0).map_err(|e| e.to_string()),
            ),
        };
        match res {
            Ok(rev) => {
                m.kv_writes.inc();
                if rev > 0 {
                    written.insert(token, rev);
                } else {
                    written.remove(&token);
                }
            }
            Err(e) => {
                m.kv_failures.with_label_values(&[op]).inc();
                if connected() {
                    q.attempts += 1;
                }
                if q.attempts >= WRITE_ATTEMPTS {
                    m.kv_writes_dropped.inc();
                    tracing::error!(error = %e, op, attempts = q.attempts, "token change given up: NATS refused it");
                } else {
                    tracing::warn!(error = %e, op, "token change not written to NATS; retrying");
                    outbox.retry(token, q);
                }
                return false;
            }
        }
    }
}

/// Reads the whole bucket into the core (tokens not in it are dropped here, except
/// changes still queued and this node's writes newer than the read: `written` holds their
/// revisions) and returns the watch that follows it from there.
async fn snapshot(
    app: &App,
    kv: &Store,
    outbox: &Outbox,
    written: &HashMap<String, u64>,
) -> Result<kv::Watch, String> {
    let status = kv.status().await.map_err(|e| e.to_string())?;
    // a token this node wrote after the state read here cannot be in the read: keep it
    // (one written before it and missing from the read was deleted since: dropped)
    let seq = status.info.state.last_sequence;
    let fresh: Vec<String> = written
        .iter()
        .filter(|(_, rev)| **rev > seq)
        .map(|(t, _)| t.clone())
        .collect();
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut table: HashMap<String, TokenEntry> = HashMap::new();
    if status.values() > 0 {
        let read = async {
            while let Some(e) = watch.next().await {
                let e = e.map_err(|e| e.to_string())?;
                let done = e.seen_current || e.delta == 0;
                match decode(&e) {
                    Some((token, Some(entry))) => {
                        table.insert(token, entry);
                    }
                    Some((token, None)) => {
                        table.remove(&token);
                    }
                    None => {}
                }
                if done {
                    return Ok(());
                }
            }
            Err("the watch ended".to_string())
        };
        tokio::time::timeout(SNAPSHOT_TIMEOUT, read)
            .await
            .map_err(|_| format!("no answer within {SNAPSHOT_TIMEOUT:?}"))??;
    }
    let n = table.len();
    let dropped = {
        let mut inner = app.lock();
        // under the core's lock, where local changes are queued: none slips between
        let mut keep = outbox.tokens();
        keep.extend(fresh);
        inner
            .core
            .replace_shared_tokens(table.into_values().collect(), &keep)
    };
    outbox.metrics.kv_updates_received.inc_by(n as u64);
    app.timer_wake.notify_one();
    tracing::info!(tokens = n, dropped, "shared tokens read from NATS");
    Ok(watch)
}

/// The token and its state (None: deleted) of a bucket entry; None for a key or value
/// that is not ours (logged).
fn decode(e: &kv::Entry) -> Option<(String, Option<TokenEntry>)> {
    let Some(token) = token_of(&e.key) else {
        tracing::debug!(key = %e.key, "token bucket: key not written by a gateway; ignored");
        return None;
    };
    match e.operation {
        Operation::Delete | Operation::Purge => Some((token, None)),
        Operation::Put => match serde_json::from_slice::<StoredToken>(&e.value) {
            Ok(v) if v.token == token => Some((
                token,
                Some(TokenEntry {
                    token: v.token,
                    plugins: v.plugins,
                    last_seen: v.last_seen,
                }),
            )),
            _ => {
                tracing::debug!(key = %e.key, "token bucket: value not written by a gateway; ignored");
                None
            }
        },
    }
}

/// One change read from the watch, into the core; our own writes coming back are
/// skipped when a newer local change exists (queued, or written at a later revision).
fn apply(app: &App, outbox: &Outbox, written: &mut HashMap<String, u64>, e: kv::Entry) {
    let Some((token, entry)) = decode(&e) else {
        return;
    };
    match written.get(&token) {
        Some(&rev) if e.revision < rev => return,
        Some(&rev) if e.revision == rev => {
            // our own write: the core has it already
            written.remove(&token);
            return;
        }
        _ => {}
    }
    let mut inner = app.lock();
    // checked under the core's lock, where local changes are queued
    if outbox.contains(&token) {
        return;
    }
    inner.core.apply_shared_token(&token, entry);
    drop(inner);
    outbox.metrics.kv_updates_received.inc();
    app.timer_wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_any_token_and_decode_back() {
        for t in ["", "abc", "a.b c/*>", "ünï", "x".repeat(300).as_str()] {
            let k = key_of(t);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{k}"
            );
            assert_eq!(token_of(&k).as_deref(), Some(t));
        }
        assert_eq!(token_of("zzz"), None);
    }

    #[test]
    fn outbox_keeps_the_newest_state_per_token_and_drops_beyond_its_bound() {
        let m = crate::metrics::Metrics::new().register_cluster();
        let o = Outbox::new(m.clone());
        let e = |t: &str, last_seen| TokenEntry {
            token: t.into(),
            plugins: vec![],
            last_seen,
        };
        o.push(TokenUpdate::Put(e("a", 1)));
        o.push(TokenUpdate::Put(e("b", 1)));
        o.push(TokenUpdate::Delete("a".into()));
        assert_eq!(o.len(), 2, "a's newer state replaced its queued one");
        let (t, q) = o.pop().unwrap();
        assert_eq!((t.as_str(), q.entry), ("a", None));
        // a failed write goes back in front, unless a newer change came meanwhile
        let (t, q) = o.pop().unwrap();
        o.retry(t, q);
        assert_eq!(o.pop().unwrap().0, "b");
        let (t, q) = (
            String::from("c"),
            Queued {
                entry: None,
                attempts: 1,
            },
        );
        o.push(TokenUpdate::Put(e("c", 2)));
        o.retry(t, q);
        assert_eq!(o.pop().unwrap().1.entry, Some(e("c", 2)));
        for i in 0..CLUSTER_WRITE_QUEUE + 3 {
            o.push(TokenUpdate::Delete(format!("t{i}")));
        }
        assert_eq!(o.len(), CLUSTER_WRITE_QUEUE);
        assert_eq!(m.kv_writes_dropped.get(), 3);
        assert_eq!(m.kv_writes_pending.get(), CLUSTER_WRITE_QUEUE as i64);
    }
}
