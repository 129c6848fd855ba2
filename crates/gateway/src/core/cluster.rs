//! Videocall users and calls across the nodes of a cluster (docs/scale-out.md), sans-IO.
//!
//! Each node's core owns its handles. A call between a handle here and one on another
//! node is a pair of half-calls: each core keeps its own handle's state and learns about
//! the other side only from [`NodeMessage`]s, which leave as [`ClusterOut::Send`] and come
//! in through [`Core::node_message`]. Presence (username → node and handle) is a
//! key-value bucket the shell keeps: a `register` here becomes a [`ClusterOut::Claim`]
//! (a create-if-absent, so a name is never held by two nodes), answered by
//! [`Core::claim_result`]; the other nodes' users come in through [`Core::remote_user`].

use super::counters::CallEnd;
use super::janus::{Jsep, VideocallError};
use super::videocall::hangup_result;
use super::{CallState, Core, ForwardKind, Timer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a `call` to a user of another node waits for that node's answer (ringing,
/// busy, no such user) before the caller gets error 499.
pub const RING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a videocall user of another node is: the value of its presence entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserLocation {
    /// The node holding the user's handle.
    pub node: String,
    /// The handle on that node.
    pub handle: u64,
}

/// A message from one node's core to another's, about the call between a handle of
/// each (`from` on the sender, `to` on the receiver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMessage {
    /// The sending node.
    pub from_node: String,
    /// The sender's handle.
    pub from: u64,
    /// The receiver's handle.
    pub to: u64,
    /// What happened.
    pub body: NodeBody,
}

/// The events of a call between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeBody {
    /// `caller` calls `callee` (the receiver's user): answered with `Ringing`, `Busy`
    /// or `NoSuchUser`.
    Call {
        /// The caller's username.
        caller: String,
        /// The username called.
        callee: String,
    },
    /// The callee's handle is now in the call (incoming).
    Ringing,
    /// The callee is in another call.
    Busy,
    /// The callee's handle is gone or holds another name.
    NoSuchUser,
    /// The sender's SDP, candidates merged: `incomingcall`, `accepted` or `update`.
    Forward {
        /// `incomingcall`, `accepted` or `update`.
        event: String,
        /// The sender's username (for `incomingcall` / `accepted`).
        username: Option<String>,
        /// The jsep to hand to the receiver's browser.
        jsep: Value,
    },
    /// Candidates trickled by the sender's browser after its SDP went.
    Trickle {
        /// Each as the browser sent it.
        candidates: Vec<Value>,
    },
    /// After a reconnect: is the receiver's handle still in this call? Answered with
    /// `gone` when not (the receiver's node ended it while the sender was unreachable).
    Probe,
    /// The receiver's handle is not in a call with the sender's (answer to `probe`).
    Gone,
    /// The sender's side of the call ended.
    Hangup {
        /// The sender's username.
        username: Option<String>,
        /// The reason the receiver's browser is told.
        reason: String,
        /// Also report "Remote WebRTC hangup" (the sender's PeerConnection closed).
        extra: bool,
    },
}

impl NodeBody {
    /// Every [`NodeBody::kind`].
    pub const KINDS: [&'static str; 9] = [
        "call",
        "ringing",
        "busy",
        "no_such_user",
        "forward",
        "trickle",
        "probe",
        "gone",
        "hangup",
    ];

    /// The message's kind, as its `t` field and the metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Call { .. } => "call",
            Self::Ringing => "ringing",
            Self::Busy => "busy",
            Self::NoSuchUser => "no_such_user",
            Self::Forward { .. } => "forward",
            Self::Trickle { .. } => "trickle",
            Self::Probe => "probe",
            Self::Gone => "gone",
            Self::Hangup { .. } => "hangup",
        }
    }
}

/// What the core asks the cluster shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterOut {
    /// Claim `username` for `handle` in the presence bucket (only if nobody holds it);
    /// answer with [`Core::claim_result`].
    Claim {
        /// The name.
        username: String,
        /// This node's handle.
        handle: u64,
    },
    /// Remove the presence entry of `username` if it still names this node's `handle`.
    Release {
        /// The name.
        username: String,
        /// This node's handle.
        handle: u64,
    },
    /// Deliver `msg` to `node`; if that cannot be done, tell [`Core::send_failed`].
    Send {
        /// The receiving node.
        node: String,
        /// The message.
        msg: NodeMessage,
    },
}

/// A call's other side, on another node.
#[derive(Debug, Clone)]
pub(super) struct RemotePeer {
    pub(super) node: Arc<str>,
    pub(super) handle: u64,
    pub(super) username: String,
    /// The caller's `call` waiting for the callee's node: the request's transaction and
    /// offer. None once ringing (and always on the callee's side).
    pub(super) ring: Option<Ring>,
}

/// A caller's `call` waiting for the callee's node.
#[derive(Debug, Clone)]
pub(super) struct Ring {
    /// The `call` request's transaction.
    pub(super) tx: String,
    /// Its offer, forwarded once the callee's node says it is ringing.
    pub(super) jsep: Jsep,
    /// When it fails with 499 ([`RING_TIMEOUT`] after the `call`). Kept here, not only in
    /// the timer: a handle's earlier call may have left a timer that falls due during
    /// this one.
    pub(super) until: Instant,
}

impl RemotePeer {
    fn is(&self, node: &str, handle: u64) -> bool {
        &*self.node == node && self.handle == handle
    }
}

/// The core's cluster state ([`Core::join_cluster`]).
#[derive(Debug)]
pub(super) struct ClusterState {
    pub(super) node: Arc<str>,
    /// The shell can reach NATS: claims and cross-node calls are possible.
    pub(super) online: bool,
    /// Users of the other nodes (never this node's).
    pub(super) remote_users: HashMap<String, UserLocation>,
    pub(super) out: Vec<ClusterOut>,
}

impl Core {
    /// Cluster mode for videocall users and calls: this node's name. Until
    /// [`Core::set_cluster_online`] says so, the node acts alone (users register
    /// locally; the shell claims them once NATS is reachable, see [`Core::local_users`]).
    pub fn join_cluster(&mut self, node: &str) {
        self.cluster = Some(ClusterState {
            node: node.into(),
            online: false,
            remote_users: HashMap::new(),
            out: Vec::new(),
        });
    }

    /// What the shell must do for the cluster, oldest first.
    pub fn take_cluster_out(&mut self) -> Vec<ClusterOut> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    /// The shell's NATS connection (and presence bucket) is usable, or no longer is.
    /// While offline, users register on this node only and calls to other nodes' users
    /// fail with 499.
    pub fn set_cluster_online(&mut self, online: bool) {
        if let Some(c) = &mut self.cluster {
            c.online = online;
        }
    }

    /// This node's registered users and their handles (the shell makes sure each is
    /// claimed in the presence bucket after a reconnect), sorted.
    pub fn local_users(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .handles
            .iter()
            .filter_map(|(id, h)| h.username.clone().map(|u| (u, *id)))
            .collect();
        v.sort();
        v
    }

    /// Another node's user appeared (`Some`) or left (`None`). Entries naming this
    /// node are ignored: this node's own users are its handles.
    pub fn remote_user(&mut self, username: &str, at: Option<UserLocation>) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        match at {
            Some(loc) if *loc.node != *c.node => {
                c.remote_users.insert(username.to_string(), loc);
            }
            Some(_) => {}
            None => {
                c.remote_users.remove(username);
            }
        }
    }

    /// The presence bucket as read after a (re)connect: replaces every other node's
    /// users.
    pub fn replace_remote_users(&mut self, users: HashMap<String, UserLocation>) {
        if let Some(c) = &mut self.cluster {
            let me = c.node.clone();
            c.remote_users = users.into_iter().filter(|(_, l)| *l.node != *me).collect();
        }
    }

    /// Number of other nodes' users known here (a gauge).
    pub fn remote_users(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.remote_users.len())
    }

    /// The answer to a [`ClusterOut::Claim`]: the name is now this handle's (`true`), or
    /// another node holds it (`false`: the `register` gets 476).
    pub fn claim_result(&mut self, username: &str, handle: u64, ok: bool) {
        let claiming = self
            .handles
            .get(&handle)
            .and_then(|h| h.claim.as_ref())
            .is_some_and(|c| c.0 == username);
        if !claiming {
            // the handle went (or registered another way) while the claim was on its
            // way: give back what it won
            if ok && self.registry.lookup(username) != Some(handle) {
                self.cluster_push(ClusterOut::Release {
                    username: username.to_string(),
                    handle,
                });
            }
            return;
        }
        let Some((name, tx)) = self
            .handles
            .get_mut(&handle)
            .and_then(|h| h.claim.take())
            .map(|c| *c)
        else {
            return;
        };
        if ok {
            if let Some(h) = self.handles.get_mut(&handle) {
                h.username = Some(name.clone());
            }
            self.plugin_result(
                handle,
                Some(&tx),
                json!({"event": "registered", "username": name}),
            );
        } else {
            self.registry.unregister(&name, handle);
            self.plugin_error(
                handle,
                &tx,
                VideocallError::UsernameTaken,
                &format!("Username '{name}' already taken"),
            );
        }
    }

    /// A message from another node's core.
    pub fn node_message(&mut self, now: Instant, msg: NodeMessage) {
        let Some(me) = self.cluster.as_ref().map(|c| c.node.clone()) else {
            return;
        };
        let NodeMessage {
            from_node,
            from,
            to,
            body,
        } = msg;
        let reply = |body: NodeBody| ClusterOut::Send {
            node: from_node.clone(),
            msg: NodeMessage {
                from_node: me.to_string(),
                from: to,
                to: from,
                body,
            },
        };
        if let NodeBody::Call { caller, callee } = body {
            let answer = match self.handles.get_mut(&to) {
                Some(c) if c.username.as_deref() == Some(callee.as_str()) => {
                    if c.in_call() {
                        NodeBody::Busy
                    } else {
                        c.reset_call();
                        c.remote = Some(Box::new(RemotePeer {
                            node: from_node.as_str().into(),
                            handle: from,
                            username: caller,
                            ring: None,
                        }));
                        c.call = CallState::Incoming;
                        NodeBody::Ringing
                    }
                }
                _ => NodeBody::NoSuchUser,
            };
            self.cluster_push(reply(answer));
            return;
        }
        // everything else is about a call this handle is in with the sender's handle
        let matches = self
            .handles
            .get(&to)
            .and_then(|h| h.remote.as_ref())
            .is_some_and(|r| r.is(&from_node, from));
        if !matches {
            if body == NodeBody::Probe {
                self.cluster_push(reply(NodeBody::Gone));
            } else {
                tracing::debug!(
                    handle = to,
                    from_node,
                    from,
                    "message for a call that is over; ignored"
                );
            }
            return;
        }
        match body {
            NodeBody::Call { .. } | NodeBody::Probe => {}
            NodeBody::Gone => {
                // ended over there while this node could not hear it
                let name = self
                    .handles
                    .get(&to)
                    .and_then(|h| h.remote.as_ref())
                    .map(|r| r.username.clone());
                self.counters.call_ended(CallEnd::Disconnect);
                self.remote_hangup(to, name.as_deref(), "Remote WebRTC hangup", false);
            }
            NodeBody::Ringing => {
                let Some((tx, jsep)) = self.take_ring(to) else {
                    return;
                };
                self.plugin_result(to, Some(&tx), json!({"event": "calling"}));
                // an offer that carries all its candidates goes at once, as in `message`
                if let Some(h) = self.handles.get_mut(&to) {
                    h.jsep_complete = jsep.complete;
                }
                self.queue_forward(now, to, ForwardKind::IncomingCall, jsep);
            }
            NodeBody::Busy => {
                let Some((tx, _)) = self.take_ring(to) else {
                    return;
                };
                let own = self.handles.get(&to).and_then(|h| h.username.clone());
                self.counters.call_ended(CallEnd::Busy);
                self.plugin_result(
                    to,
                    Some(&tx),
                    json!({"event": "hangup", "username": own, "reason": "User busy"}),
                );
                self.core_hangup(to, "Close PC");
                if let Some(h) = self.handles.get_mut(&to) {
                    h.reset_call();
                }
            }
            NodeBody::NoSuchUser => {
                let Some((tx, _)) = self.take_ring(to) else {
                    return;
                };
                let target = self.end_remote_attempt(to);
                self.plugin_error(
                    to,
                    &tx,
                    VideocallError::NoSuchUsername,
                    &format!("Username '{target}' doesn't exist"),
                );
            }
            NodeBody::Forward {
                event,
                username,
                jsep,
            } => {
                let offer = jsep.get("type").and_then(Value::as_str) == Some("offer");
                if let Some(h) = self.handles.get_mut(&to) {
                    h.has_pc = true;
                    if offer {
                        h.got_offer = true;
                    }
                    if event == "accepted" {
                        h.call = CallState::Connected;
                    }
                }
                let result = match event.as_str() {
                    "update" => json!({"event": "update"}),
                    _ => json!({"event": event, "username": username}),
                };
                self.plugin_event(
                    to,
                    None,
                    json!({"videocall": "event", "result": result}),
                    Some(jsep),
                );
            }
            NodeBody::Trickle { candidates } => {
                for c in candidates {
                    self.emit_to_handle(to, json!({"janus": "trickle", "candidate": c}));
                }
            }
            NodeBody::Hangup {
                username,
                reason,
                extra,
            } => self.remote_hangup(to, username.as_deref(), &reason, extra),
        }
    }

    /// A message to `node` could not be delivered (NATS unreachable). A `call` waiting
    /// for its answer fails at once with 499; anything else is left to the call's own
    /// end.
    pub fn send_failed(&mut self, node: &str, msg: &NodeMessage) {
        if !matches!(msg.body, NodeBody::Call { .. }) {
            return;
        }
        let waiting = self
            .handles
            .get(&msg.from)
            .and_then(|h| h.remote.as_ref())
            .is_some_and(|r| r.is(node, msg.to) && r.ring.is_some());
        if waiting {
            self.ring_failed(msg.from, "cannot be reached (no connection to NATS)");
        }
    }

    /// The shell reached NATS again after a loss: asks the other node of every call in
    /// progress whether its half is still there (a node that thought this one gone has
    /// ended it; `gone` comes back and the call ends here too).
    pub fn probe_remote_calls(&mut self) {
        let mut hids: Vec<u64> = self
            .handles
            .iter()
            .filter(|(_, h)| h.remote.as_ref().is_some_and(|r| r.ring.is_none()))
            .map(|(id, _)| *id)
            .collect();
        hids.sort_unstable();
        for hid in hids {
            self.send_to_remote(hid, NodeBody::Probe);
        }
    }

    /// `node` is gone (its liveness lease ran out, or it restarted): its users leave the
    /// list and every call with one of them ends as if that user's connection closed.
    pub fn node_gone(&mut self, _now: Instant, node: &str) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        c.remote_users.retain(|_, l| l.node != node);
        let mut hids: Vec<u64> = self
            .handles
            .iter()
            .filter(|(_, h)| h.remote.as_ref().is_some_and(|r| &*r.node == node))
            .map(|(id, _)| *id)
            .collect();
        hids.sort_unstable();
        for hid in hids {
            if self
                .handles
                .get(&hid)
                .and_then(|h| h.remote.as_ref())
                .is_some_and(|r| r.ring.is_some())
            {
                self.ring_failed(hid, "is gone");
                continue;
            }
            let name = self
                .handles
                .get(&hid)
                .and_then(|h| h.remote.as_ref())
                .map(|r| r.username.clone());
            self.counters.call_ended(CallEnd::Disconnect);
            self.remote_hangup(hid, name.as_deref(), "Remote WebRTC hangup", false);
        }
    }

    /// The caller's `call` to a user of another node (`callee`, its `ring` set): sent
    /// there, answered later.
    pub(super) fn call_remote(
        &mut self,
        now: Instant,
        hid: u64,
        own: String,
        callee: RemotePeer,
    ) -> Result<(), (VideocallError, String)> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let me = c.node.to_string();
        if !c.online {
            self.counters.call_ended(CallEnd::Error);
            return Err((
                VideocallError::Unknown,
                format!(
                    "Username '{}' is on gateway node {}, which cannot be reached (no connection to NATS)",
                    callee.username, callee.node
                ),
            ));
        }
        let (node, to, name) = (
            callee.node.to_string(),
            callee.handle,
            callee.username.clone(),
        );
        if let Some(h) = self.handles.get_mut(&hid) {
            h.remote = Some(Box::new(callee));
            h.call = CallState::Outgoing;
            h.has_pc = true;
        }
        self.cluster_push(ClusterOut::Send {
            node,
            msg: NodeMessage {
                from_node: me,
                from: hid,
                to,
                body: NodeBody::Call {
                    caller: own,
                    callee: name,
                },
            },
        });
        self.arm(now + RING_TIMEOUT, Timer::Ring(hid));
        Ok(())
    }

    /// [`Timer::Ring`]: the callee's node never answered (unless the timer is an earlier
    /// call's).
    pub(super) fn ring_timeout(&mut self, now: Instant, hid: u64) {
        let waiting = self
            .handles
            .get(&hid)
            .and_then(|h| h.remote.as_ref())
            .and_then(|r| r.ring.as_ref())
            .is_some_and(|r| r.until <= now);
        if waiting {
            self.ring_failed(hid, "did not answer");
        }
    }

    /// Sends a message about `hid`'s call to its peer on another node.
    pub(super) fn send_to_remote(&mut self, hid: u64, body: NodeBody) {
        let Some(me) = self.cluster.as_ref().map(|c| c.node.to_string()) else {
            return;
        };
        let Some(r) = self.handles.get(&hid).and_then(|h| h.remote.as_ref()) else {
            return;
        };
        let out = ClusterOut::Send {
            node: r.node.to_string(),
            msg: NodeMessage {
                from_node: me,
                from: hid,
                to: r.handle,
                body,
            },
        };
        self.cluster_push(out);
    }

    /// The SDP `flush_pending` forwards, for a peer on another node.
    pub(super) fn forward_remote(
        &mut self,
        hid: u64,
        kind: ForwardKind,
        username: Option<String>,
        jsep: Value,
    ) {
        let event = match kind {
            ForwardKind::IncomingCall => "incomingcall",
            ForwardKind::Accepted => "accepted",
            ForwardKind::Update => "update",
        };
        self.send_to_remote(
            hid,
            NodeBody::Forward {
                event: event.to_string(),
                username,
                jsep,
            },
        );
    }

    /// Where `username` is, if it is another node's user.
    pub(super) fn remote_location(&self, username: &str) -> Option<UserLocation> {
        self.cluster
            .as_ref()
            .and_then(|c| c.remote_users.get(username).cloned())
    }

    /// Every username of the cluster (this node's and the others'), sorted, once each.
    pub(super) fn all_usernames(&self) -> Vec<String> {
        let mut list = self.registry.usernames();
        if let Some(c) = &self.cluster {
            list.extend(c.remote_users.keys().cloned());
            list.sort();
            list.dedup();
        }
        list
    }

    pub(super) fn cluster_push(&mut self, out: ClusterOut) {
        if let Some(c) = &mut self.cluster {
            c.out.push(out);
        }
    }

    /// Takes the waiting `call` of `hid` (None when it is not waiting any more).
    fn take_ring(&mut self, hid: u64) -> Option<(String, Jsep)> {
        let ring = self
            .handles
            .get_mut(&hid)
            .and_then(|h| h.remote.as_mut())
            .and_then(|r| r.ring.take())?;
        Some((ring.tx, ring.jsep))
    }

    /// Ends a `call` that never rang; returns the name called.
    fn end_remote_attempt(&mut self, hid: u64) -> String {
        self.counters.call_ended(CallEnd::Error);
        let Some(h) = self.handles.get_mut(&hid) else {
            return String::new();
        };
        let target = h.remote.as_ref().map(|r| r.username.clone());
        h.reset_call();
        target.unwrap_or_default()
    }

    /// The callee's node did not take the `call` (`why`: "did not answer", …): 499 to
    /// the caller, and a hangup to that node in case the call reached it after all.
    fn ring_failed(&mut self, hid: u64, why: &str) {
        let Some((tx, _)) = self.take_ring(hid) else {
            return;
        };
        let node = self
            .handles
            .get(&hid)
            .and_then(|h| h.remote.as_ref())
            .map(|r| r.node.to_string())
            .unwrap_or_default();
        let own = self.handles.get(&hid).and_then(|h| h.username.clone());
        self.send_to_remote(
            hid,
            NodeBody::Hangup {
                username: own,
                reason: "Remote WebRTC hangup".to_string(),
                extra: false,
            },
        );
        let target = self.end_remote_attempt(hid);
        self.plugin_error(
            hid,
            &tx,
            VideocallError::Unknown,
            &format!("Username '{target}' is on gateway node {node}, which {why}"),
        );
    }

    /// The other side of `hid`'s call (on another node) ended it: as a local peer's
    /// teardown does to the peer (`teardown_call`).
    fn remote_hangup(&mut self, hid: u64, username: Option<&str>, reason: &str, extra: bool) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        let had_pc = h.has_pc;
        h.reset_call();
        self.plugin_result(hid, None, hangup_result(username, reason));
        if had_pc {
            self.core_hangup(hid, "Close PC");
            if extra {
                self.plugin_result(hid, None, hangup_result(username, "Remote WebRTC hangup"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
