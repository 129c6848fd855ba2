//! Cluster mode, second half (docs/scale-out.md): videocall users and calls across
//! nodes. The core decides ([`ClusterOut`]); this task does the I/O:
//!
//! * **presence**: a key-value bucket `<cluster>_users` (memory storage: after a NATS
//!   restart every node claims its users again), key `u<base64url(username)>`, value a
//!   [`UserLocation`]. A claim is a create-if-absent, so two nodes never hold one name,
//!   even when both register it at the same instant.
//! * **liveness**: each node publishes a heartbeat on `<cluster>.alive` every second; a
//!   node not heard for [`NODE_LEASE`] while this one is connected is gone — its users
//!   leave the bucket and the list, and calls with them end here with `hangup`.
//! * **call messages**: [`NodeMessage`]s as JSON on `<cluster>.node.<node_id>`.
//!
//! While NATS is unreachable the core acts alone (users register locally, calls to other
//! nodes' users fail with 499); once connected again this task reads the bucket, claims
//! this node's users and drops entries of its own that are stale.

use super::state::App;
use crate::config::ClusterConfig;
use crate::core::{ClusterOut, MAX_SESSION_TAG, NodeBody, NodeMessage, UserLocation};
use crate::metrics::ClusterMetrics;
use async_nats::Client;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, Store};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A node not heard for this long (while this node is connected) is gone.
pub(super) const NODE_LEASE: Duration = Duration::from_secs(5);
/// How often a node says it is alive, and checks the others' leases.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bytes of call messages queued for NATS at most; more are dropped and counted (a
/// `call` dropped so ends with 499 after the ring timeout).
pub(super) const NODE_QUEUE_BYTES: usize = 8 << 20;
/// Longest wait for the presence bucket's content when (re)connecting.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest presence entry (a node name and a handle id: far less).
const MAX_VALUE_BYTES: i32 = 4096;

fn key_of(username: &str) -> String {
    format!("u{}", URL_SAFE_NO_PAD.encode(username))
}

fn username_of(key: &str) -> Option<String> {
    let b = URL_SAFE_NO_PAD.decode(key.strip_prefix('u')?).ok()?;
    String::from_utf8(b).ok()
}

/// A node's heartbeat: its name and a number drawn at its start (a restarted node's
/// old calls are gone even if it came back within the lease).
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    boot: u64,
    /// The node's session tag (two nodes with one tag: logged, see `heard`).
    tag: u16,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<ClusterOut>,
    bytes: usize,
}

/// What the core asked for and this task has not done yet: filled under the core's lock
/// ([`Inner::deliver`](super::state::Inner::deliver)), emptied here.
#[derive(Debug)]
pub(super) struct NodeOutbox {
    /// The tag of this node's session ids (drawn at start, 1..=[`MAX_SESSION_TAG`]), announced in its
    /// heartbeat; HTTP requests for them come to `<cluster>.http.<tag>` (forward.rs).
    pub(super) tag: u16,
    /// Connections to NATS made so far (counted by the client's event callback): a new
    /// one means the bucket must be read again, even when the loss was too short for
    /// this task to see.
    pub(super) epoch: Arc<AtomicU64>,
    queue: Mutex<Queue>,
    wake: Notify,
    metrics: ClusterMetrics,
}

fn cost(o: &ClusterOut) -> usize {
    match o {
        ClusterOut::Send { msg, .. } => match &msg.body {
            NodeBody::Forward { jsep, .. } => {
                256 + jsep.get("sdp").and_then(|s| s.as_str()).map_or(0, str::len)
            }
            NodeBody::Trickle { candidates } => 256 + 256 * candidates.len(),
            _ => 256,
        },
        ClusterOut::Claim { username, .. } | ClusterOut::Release { username, .. } => {
            64 + username.len()
        }
    }
}

impl NodeOutbox {
    pub(super) fn new(metrics: ClusterMetrics) -> Self {
        Self {
            tag: rand::random_range(1..=MAX_SESSION_TAG),
            epoch: Arc::new(AtomicU64::new(0)),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one output of the core (under the core's lock: never blocks). Claims and
    /// releases always fit (one per handle at most); call messages beyond
    /// [`NODE_QUEUE_BYTES`] are dropped and counted.
    pub(super) fn push(&self, out: ClusterOut) {
        let n = cost(&out);
        let mut q = self.lock();
        if matches!(out, ClusterOut::Send { .. }) && q.bytes + n > NODE_QUEUE_BYTES {
            drop(q);
            self.metrics
                .message_failures
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        q.bytes += n;
        q.items.push_back(out);
        drop(q);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<ClusterOut> {
        let mut q = self.lock();
        q.bytes = 0;
        q.items.drain(..).collect()
    }
}

/// A node heard from.
struct Peer {
    boot: u64,
    seen: Instant,
}

/// This task's state.
struct Presence {
    app: App,
    client: Client,
    js: async_nats::jetstream::Context,
    cfg: ClusterConfig,
    outbox: Arc<NodeOutbox>,
    metrics: ClusterMetrics,
    boot: u64,
    /// The bucket as last read: username → (location, revision).
    mirror: HashMap<String, (UserLocation, u64)>,
    peers: HashMap<String, Peer>,
    /// `call`s sent and not answered yet: the caller's handle → when.
    rings: HashMap<u64, Instant>,
    kv: Option<Store>,
    /// The connection the bucket was last read on ([`NodeOutbox::epoch`]); None: read
    /// it again (a claim failed, the watch broke).
    synced: Option<u64>,
}

/// Runs presence, liveness and call messages until `shutdown`.
pub(super) async fn presence_loop(
    app: App,
    client: Client,
    cfg: ClusterConfig,
    outbox: Arc<NodeOutbox>,
    shutdown: CancellationToken,
) {
    let metrics = outbox.metrics.clone();
    let (mut inbox, mut alive) = loop {
        let subs = async {
            let a = client
                .subscribe(format!("{}.node.{}", cfg.name, cfg.node_id))
                .await?;
            let b = client.subscribe(format!("{}.alive", cfg.name)).await?;
            Ok::<_, async_nats::SubscribeError>((a, b))
        };
        match subs.await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to the cluster's subjects; retrying");
                tokio::select! {
                    () = tokio::time::sleep(HEARTBEAT) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut p = Presence {
        app,
        js: async_nats::jetstream::new(client.clone()),
        client,
        cfg,
        outbox,
        metrics,
        boot: rand::random(),
        mirror: HashMap::new(),
        peers: HashMap::new(),
        rings: HashMap::new(),
        kv: None,
        synced: None,
    };
    let mut watch: Option<kv::Watch> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let epoch = p.outbox.epoch.load(Ordering::Relaxed);
        if p.synced != Some(epoch) && p.connected() {
            match p.resync().await {
                Ok(w) => {
                    watch = Some(w);
                    p.synced = Some(epoch);
                }
                Err(e) => {
                    watch = None;
                    tracing::warn!(error = %e, "cannot read the presence bucket; retrying");
                }
            }
        }
        let next_entry = async {
            match &mut watch {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                if watch.is_some() && !p.connected() {
                    watch = None;
                    p.synced = None;
                    p.set_online(false);
                }
                p.heartbeat().await;
                if watch.is_some() {
                    p.check_leases().await;
                }
            }
            m = inbox.next() => match m {
                Some(m) => p.received(&m.payload),
                None => return,
            },
            h = alive.next() => match h {
                Some(h) => p.heard(&h.payload).await,
                None => return,
            },
            e = next_entry => match e {
                Some(Ok(e)) => p.entry(&e),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch of the presence bucket failed; reading it again");
                    watch = None;
                    p.synced = None;
                }
                None => {
                    watch = None;
                    p.synced = None;
                }
            },
            () = p.outbox.wake.notified() => p.run_outbox().await,
            () = shutdown.cancelled() => {
                p.leave().await;
                return;
            }
        }
    }
}

impl Presence {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn set_online(&self, online: bool) {
        self.app.lock().core.set_cluster_online(online);
        tracing::info!(
            online,
            "videocall users of other nodes {}",
            if online {
                "reachable"
            } else {
                "unreachable: calls stay on this node"
            }
        );
    }

    /// Opens (or creates) the bucket, reads it whole, claims this node's users, drops
    /// its stale entries, hands the other nodes' users to the core; returns the watch
    /// that follows the bucket from there.
    async fn resync(&mut self) -> Result<kv::Watch, String> {
        let kv = open_bucket(&self.js, &self.cfg).await?;
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        let status = kv.status().await.map_err(|e| e.to_string())?;
        let mut mirror = HashMap::new();
        if status.values() > 0 {
            let read = async {
                while let Some(e) = watch.next().await {
                    let e = e.map_err(|e| e.to_string())?;
                    let done = e.seen_current || e.delta == 0;
                    apply_entry(&mut mirror, &e);
                    if done {
                        return Ok(());
                    }
                }
                Err("the watch ended".to_string())
            };
            tokio::time::timeout(READ_TIMEOUT, read)
                .await
                .map_err(|_| format!("no answer within {READ_TIMEOUT:?}"))??;
        }
        self.mirror = mirror;
        let me = self.cfg.node_id.clone();
        let local: HashSet<(String, u64)> =
            self.app.lock().core.local_users().into_iter().collect();
        // entries of this node that no user here has (an earlier run, a missed release)
        let stale: Vec<(String, u64)> = self
            .mirror
            .iter()
            .filter(|(u, (l, _))| l.node == me && !local.contains(&((*u).clone(), l.handle)))
            .map(|(u, (_, rev))| (u.clone(), *rev))
            .collect();
        for (u, rev) in stale {
            let _ = kv.delete_expect_revision(key_of(&u), Some(rev)).await;
        }
        // users that registered here while NATS was away
        for (u, handle) in &local {
            if self.mirror.get(u).is_some_and(|(l, _)| l.node == me) {
                continue;
            }
            let won = claim(&kv, u, &me, *handle).await;
            self.count_claim(won);
            if won == Some(false) {
                tracing::warn!(username = %u, "a user of this node registered while NATS was unreachable holds a name another node claimed: only users of this node can call it");
            }
        }
        let now = Instant::now();
        let others: HashMap<String, UserLocation> = self
            .mirror
            .iter()
            .filter(|(_, (l, _))| l.node != me)
            .map(|(u, (l, _))| (u.clone(), l.clone()))
            .collect();
        // every node named in the bucket gets a full lease to be heard from
        for (l, _) in self.mirror.values() {
            if l.node != me {
                self.peers
                    .entry(l.node.clone())
                    .or_insert(Peer { boot: 0, seen: now });
            }
        }
        for peer in self.peers.values_mut() {
            peer.seen = now;
        }
        {
            let mut inner = self.app.lock();
            inner.core.replace_remote_users(others);
            inner.core.set_cluster_online(true);
            // calls the other side may have ended while this node could not hear it
            inner.core.probe_remote_calls();
            inner.deliver();
        }
        self.kv = Some(kv);
        self.gauges();
        tracing::info!(
            users = self.mirror.len(),
            "videocall users of other nodes reachable: presence read from NATS"
        );
        Ok(watch)
    }

    fn gauges(&self) {
        let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
        self.metrics.peers.set(n(self.peers.len()));
        let remote = self.app.lock().core.remote_users();
        self.metrics.remote_users.set(n(remote));
    }

    fn count_claim(&self, won: Option<bool>) {
        let label = match won {
            Some(true) => "won",
            Some(false) => "taken",
            None => "error",
        };
        self.metrics.claims.with_label_values(&[label]).inc();
    }

    /// A change of the bucket, from the watch.
    fn entry(&mut self, e: &kv::Entry) {
        let Some(u) = username_of(&e.key) else {
            return;
        };
        apply_entry(&mut self.mirror, e);
        let at = self.mirror.get(&u).map(|(l, _)| l.clone());
        if let Some(l) = &at
            && l.node != self.cfg.node_id
        {
            self.peers.entry(l.node.clone()).or_insert(Peer {
                boot: 0,
                seen: Instant::now(),
            });
        }
        self.app.lock().core.remote_user(&u, at);
        self.gauges();
    }

    async fn heartbeat(&self) {
        if !self.connected() {
            return;
        }
        let hb = Heartbeat {
            node: self.cfg.node_id.clone(),
            boot: self.boot,
            tag: self.outbox.tag,
        };
        let body = serde_json::to_vec(&hb).unwrap_or_default();
        let _ = self
            .client
            .publish(format!("{}.alive", self.cfg.name), body.into())
            .await;
    }

    /// Another node's heartbeat.
    async fn heard(&mut self, payload: &[u8]) {
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(payload) else {
            return;
        };
        if hb.node == self.cfg.node_id {
            return;
        }
        let now = Instant::now();
        let restarted = match self.peers.get_mut(&hb.node) {
            Some(p) => {
                let restarted = p.boot != 0 && p.boot != hb.boot;
                p.boot = hb.boot;
                p.seen = now;
                restarted
            }
            None => {
                self.peers.insert(
                    hb.node.clone(),
                    Peer {
                        boot: hb.boot,
                        seen: now,
                    },
                );
                tracing::info!(node = %hb.node, tag = hb.tag, "gateway node seen");
                if hb.tag == self.outbox.tag {
                    // 1 in 8191 per pair: HTTP requests for the sessions of these two
                    // nodes may reach the wrong one and get 458; a restart draws anew
                    tracing::warn!(node = %hb.node, tag = hb.tag, "another gateway node drew this node's session tag: restart one of them");
                }
                false
            }
        };
        if restarted {
            tracing::warn!(node = %hb.node, "gateway node restarted: its calls are over");
            self.node_gone(&hb.node, false).await;
            // the users it has now stay listed
            let mut inner = self.app.lock();
            for (u, (l, _)) in &self.mirror {
                if l.node == hb.node {
                    inner.core.remote_user(u, Some(l.clone()));
                }
            }
        }
        self.gauges();
    }

    async fn check_leases(&mut self) {
        let now = Instant::now();
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) > NODE_LEASE)
            .map(|(n, _)| n.clone())
            .collect();
        for node in gone {
            tracing::warn!(node = %node, lease = ?NODE_LEASE, "gateway node not heard from within its lease: gone; its users leave the list and their calls end");
            self.peers.remove(&node);
            self.node_gone(&node, true).await;
        }
        self.gauges();
    }

    /// `node`'s calls end here; with `forget`, its users leave the list and the bucket
    /// (every surviving node tries: the first delete wins, the others find the revision
    /// moved on).
    async fn node_gone(&mut self, node: &str, forget: bool) {
        self.metrics.nodes_gone.inc();
        {
            let mut inner = self.app.lock();
            inner.core.node_gone(Instant::now(), node);
            inner.deliver();
        }
        self.app.timer_wake.notify_one();
        if !forget {
            return;
        }
        let Some(kv) = &self.kv else {
            return;
        };
        let theirs: Vec<(String, u64)> = self
            .mirror
            .iter()
            .filter(|(_, (l, _))| l.node == node)
            .map(|(u, (_, rev))| (u.clone(), *rev))
            .collect();
        for (u, rev) in theirs {
            let _ = kv.delete_expect_revision(key_of(&u), Some(rev)).await;
        }
    }

    /// A call message for this node.
    fn received(&mut self, payload: &[u8]) {
        let msg = match serde_json::from_slice::<NodeMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .message_failures
                    .with_label_values(&["decode"])
                    .inc();
                tracing::debug!(error = %e, "cluster message not understood; ignored");
                return;
            }
        };
        let kind = msg.body.kind();
        self.metrics
            .messages
            .with_label_values(&["received", kind])
            .inc();
        if matches!(
            msg.body,
            NodeBody::Ringing | NodeBody::Busy | NodeBody::NoSuchUser
        ) && let Some(t0) = self.rings.remove(&msg.to)
        {
            self.metrics.call_setup.observe(t0.elapsed().as_secs_f64());
        }
        {
            let mut inner = self.app.lock();
            inner.core.node_message(Instant::now(), msg);
            inner.deliver();
        }
        self.app.timer_wake.notify_one();
    }

    /// Does what the core asked, in order.
    async fn run_outbox(&mut self) {
        for out in self.outbox.take() {
            match out {
                ClusterOut::Claim { username, handle } => {
                    let won = match (&self.kv, self.connected()) {
                        (Some(kv), true) => claim(kv, &username, &self.cfg.node_id, handle).await,
                        _ => None,
                    };
                    self.count_claim(won);
                    // not known (NATS away): the name stays this node's, and is claimed
                    // when the bucket is read again
                    if won.is_none() {
                        self.synced = None;
                    }
                    let mut inner = self.app.lock();
                    inner
                        .core
                        .claim_result(&username, handle, won != Some(false));
                    inner.deliver();
                }
                ClusterOut::Release { username, handle } => {
                    let ours = self.mirror.get(&username).and_then(|(l, rev)| {
                        (l.node == self.cfg.node_id && l.handle == handle).then_some(*rev)
                    });
                    if let (Some(kv), true) = (&self.kv, self.connected()) {
                        // the claim's revision may not be mirrored yet: then delete
                        // what the bucket holds if it is still this handle's
                        let rev = match ours {
                            Some(r) => Some(r),
                            None => match kv.entry(key_of(&username)).await {
                                Ok(Some(e)) if e.operation == Operation::Put => {
                                    serde_json::from_slice::<UserLocation>(&e.value)
                                        .ok()
                                        .filter(|l| {
                                            l.node == self.cfg.node_id && l.handle == handle
                                        })
                                        .map(|_| e.revision)
                                }
                                _ => None,
                            },
                        };
                        if let Some(rev) = rev {
                            let _ = kv
                                .delete_expect_revision(key_of(&username), Some(rev))
                                .await;
                        }
                    }
                }
                ClusterOut::Send { node, msg } => self.send(node, msg).await,
            }
        }
        self.app.timer_wake.notify_one();
    }

    async fn send(&mut self, node: String, msg: NodeMessage) {
        let kind = msg.body.kind();
        let failed = if self.connected() {
            let body = serde_json::to_vec(&msg).unwrap_or_default();
            let subject = format!("{}.node.{}", self.cfg.name, node);
            match self.client.publish(subject, body.into()).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::debug!(error = %e, node, "cluster message not sent");
                    Some("publish")
                }
            }
        } else {
            Some("disconnected")
        };
        match failed {
            None => {
                self.metrics
                    .messages
                    .with_label_values(&["sent", kind])
                    .inc();
                if matches!(msg.body, NodeBody::Call { .. }) {
                    self.rings.insert(msg.from, Instant::now());
                    // answered or given up within the ring timeout: bounded by handles
                    let stale = Instant::now() - crate::core::RING_TIMEOUT;
                    self.rings.retain(|_, t| *t > stale);
                }
            }
            Some(reason) => {
                self.metrics
                    .message_failures
                    .with_label_values(&[reason])
                    .inc();
                let mut inner = self.app.lock();
                inner.core.send_failed(&node, &msg);
                inner.deliver();
            }
        }
    }

    /// Graceful stop: this node's entries leave the bucket now (the others would drop
    /// them after the lease anyway).
    async fn leave(&self) {
        let Some(kv) = &self.kv else {
            return;
        };
        if !self.connected() {
            return;
        }
        let ours: Vec<(String, u64)> = self
            .mirror
            .iter()
            .filter(|(_, (l, _))| l.node == self.cfg.node_id)
            .map(|(u, (_, rev))| (u.clone(), *rev))
            .collect();
        let del = async {
            for (u, rev) in ours {
                let _ = kv.delete_expect_revision(key_of(&u), Some(rev)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), del).await;
    }
}

/// Claims `username` for this node's `handle`: Some(true) won, Some(false) another node
/// holds it, None NATS failed.
async fn claim(kv: &Store, username: &str, node: &str, handle: u64) -> Option<bool> {
    let value = UserLocation {
        node: node.to_string(),
        handle,
    };
    let body = serde_json::to_vec(&value).unwrap_or_default();
    match kv.create(key_of(username), body.into()).await {
        Ok(_) => Some(true),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Some(false),
        Err(e) => {
            tracing::warn!(error = %e, username, "cannot claim the username in NATS");
            None
        }
    }
}

fn apply_entry(mirror: &mut HashMap<String, (UserLocation, u64)>, e: &kv::Entry) {
    let Some(u) = username_of(&e.key) else {
        return;
    };
    match e.operation {
        Operation::Delete | Operation::Purge => {
            mirror.remove(&u);
        }
        Operation::Put => match serde_json::from_slice::<UserLocation>(&e.value) {
            Ok(l) => {
                mirror.insert(u, (l, e.revision));
            }
            Err(_) => {
                tracing::debug!(key = %e.key, "presence bucket: value not written by a gateway; ignored");
            }
        },
    }
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<Store, String> {
    let name = cfg.user_bucket();
    if let Ok(kv) = js.get_key_value(&name).await {
        return Ok(kv);
    }
    // created directly, as the token bucket is (see cluster.rs: nats-server 2.9)
    use async_nats::jetstream::stream;
    js.create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(
            "callrelay gateway: videocall usernames and the node holding each".to_string(),
        ),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_message_size: MAX_VALUE_BYTES,
        // presence is rebuilt by the nodes after a NATS restart: memory is enough
        storage: stream::StorageType::Memory,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_any_username_and_decode_back() {
        for u in ["alice", "a.b c/d+e=", "ünïcode", ""] {
            assert_eq!(username_of(&key_of(u)).as_deref(), Some(u));
        }
        assert_eq!(username_of("tabc"), None, "a token key is not a user key");
    }
}
