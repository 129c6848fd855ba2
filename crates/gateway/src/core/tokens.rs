//! Credentials: api secret, stored tokens (with their idle expiry) and test-page tokens.

use super::janus::Envelope;
use super::{Core, SharedTokens};
use crate::store::{TokenEntry, TokenFile};
use std::collections::HashSet;
use subtle::ConstantTimeEq;

/// A change of the token table made on this node, for the other nodes of a cluster: the
/// shell writes it to the shared store ([`Core::take_token_updates`]). State, not
/// operations: a `Put` carries the token's whole state after the change, so writing
/// the newest one is enough and the order of two writes of one token does not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUpdate {
    /// The token as it is now (`add_token`, `allow_token`, `disallow_token`, or its
    /// last use published by the hourly sweep).
    Put(TokenEntry),
    /// The token is gone (`remove_token`, or idle longer than `token_max_idle`).
    Delete(String),
}

pub(super) fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Core {
    /// True when a token or api secret is needed for requests.
    pub fn auth_required(&self) -> bool {
        self.cfg.token_auth || self.cfg.api_secret.is_some()
    }

    /// Checks credentials the way the core does for requests (used by `/turn-credentials`
    /// and long polls): a valid apisecret or a valid stored token.
    pub fn check_credentials(
        &mut self,
        token: Option<&str>,
        apisecret: Option<&str>,
        unix: u64,
    ) -> bool {
        if !self.auth_required() {
            return true;
        }
        if let (Some(secret), Some(given)) = (self.cfg.api_secret.as_deref(), apisecret)
            && ct_eq(secret, given)
        {
            return true;
        }
        if self.cfg.token_auth
            && let Some(t) = token
            && self.tokens.check(t, unix).is_some()
        {
            // remembered for the hourly sweep, which runs only with an idle expiry
            // (without one nothing would ever empty the set)
            if let Some(sh) = &mut self.shared
                && !self.cfg.token_max_idle.is_zero()
                && !sh.used.contains(t)
            {
                sh.used.insert(t.to_string());
            }
            return true;
        }
        token.is_some_and(|t| self.test_token_valid(t, unix))
    }

    /// Adds a test-page token valid until `expires_unix` (janus.plugin.videocall only).
    pub fn add_test_token(&mut self, token: &str, expires_unix: u64, unix: u64) {
        self.test_tokens.retain(|_, e| *e > unix);
        self.test_tokens.insert(token.to_string(), expires_unix);
    }

    /// Number of live test-page tokens.
    pub fn test_tokens(&self) -> usize {
        self.test_tokens.len()
    }

    pub(super) fn test_token_valid(&mut self, token: &str, unix: u64) -> bool {
        match self.test_tokens.get(token) {
            Some(&e) if e > unix => true,
            Some(_) => {
                self.test_tokens.remove(token);
                false
            }
            None => false,
        }
    }

    /// Snapshot of the token store if it changed since the last call.
    pub fn take_token_snapshot(&mut self) -> Option<TokenFile> {
        if self.tokens_dirty {
            self.tokens_dirty = false;
            Some(self.tokens.snapshot())
        } else {
            None
        }
    }

    /// Snapshot of the token store.
    pub fn token_snapshot(&self) -> TokenFile {
        self.tokens.snapshot()
    }

    /// Drops tokens idle for longer than `token_max_idle` (run once at start too).
    pub fn expire_tokens(&mut self, unix: u64) -> usize {
        if self.cfg.token_max_idle.is_zero() {
            return 0;
        }
        let gone = self.tokens.expire(unix, self.cfg.token_max_idle.as_secs());
        if !gone.is_empty() {
            self.tokens_dirty = true;
        }
        let n = gone.len();
        if let Some(sh) = &mut self.shared {
            sh.updates.extend(gone.into_iter().map(TokenUpdate::Delete));
        }
        n
    }

    /// The hourly sweep: publishes the last-seen times of the tokens used since the
    /// previous sweep (cluster mode), then drops the idle ones.
    pub(super) fn sweep_tokens(&mut self, unix: u64) {
        if let Some(sh) = &mut self.shared {
            let mut used: Vec<String> = sh.used.drain().collect();
            used.sort();
            // a token removed since its use is not published (that would delete it
            // again, perhaps after another node re-added it)
            let entries: Vec<TokenEntry> = used.iter().filter_map(|t| self.tokens.get(t)).collect();
            if let Some(sh) = &mut self.shared {
                sh.updates.extend(entries.into_iter().map(TokenUpdate::Put));
            }
        }
        self.expire_tokens(unix);
        // also persists the last-seen times refreshed by token use
        self.tokens_dirty = true;
    }

    /// Cluster mode: from now on every change of the token table made here is queued as
    /// a [`TokenUpdate`] for [`Core::take_token_updates`].
    pub fn share_tokens(&mut self) {
        self.shared.get_or_insert_with(SharedTokens::default);
    }

    /// The token changes made here since the last call, oldest first (always empty
    /// unless [`Core::share_tokens`] was called). The shell takes them after each
    /// request and timer run, as it takes the events.
    pub fn take_token_updates(&mut self) -> Vec<TokenUpdate> {
        self.shared
            .as_mut()
            .map(|sh| std::mem::take(&mut sh.updates))
            .unwrap_or_default()
    }

    /// Queues the current state of `token` (after a local change) for the other nodes.
    pub(super) fn token_changed(&mut self, token: &str) {
        let entry = self.tokens.get(token);
        if let Some(sh) = &mut self.shared {
            sh.updates.push(match entry {
                Some(e) => TokenUpdate::Put(e),
                None => TokenUpdate::Delete(token.to_string()),
            });
        }
    }

    /// Another node's change of one token (`None`: removed there). Applied as it is,
    /// queued for nobody (it came from the shared store); tokens.json follows.
    pub fn apply_shared_token(&mut self, token: &str, entry: Option<TokenEntry>) {
        match entry {
            Some(e) => self.tokens.put(e),
            None => {
                self.tokens.remove(token);
            }
        }
        self.tokens_dirty = true;
    }

    /// The whole shared table (read when the node (re)connects): tokens it does not
    /// hold are dropped here, except those in `keep` (changes made here that are not
    /// written yet); every entry of it is applied as [`Core::apply_shared_token`] does.
    /// Returns how many local tokens were dropped.
    pub fn replace_shared_tokens(
        &mut self,
        entries: Vec<TokenEntry>,
        keep: &HashSet<String>,
    ) -> usize {
        let names: HashSet<&str> = entries.iter().map(|e| e.token.as_str()).collect();
        let stale: Vec<String> = self
            .tokens
            .list()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| !names.contains(t.as_str()) && !keep.contains(t))
            .collect();
        for t in &stale {
            self.tokens.remove(t);
        }
        for e in entries {
            if !keep.contains(&e.token) {
                self.tokens.put(e);
            }
        }
        self.tokens_dirty = true;
        stale.len()
    }

    /// The token a `create` was authorised by, for the per-token cap: None when no
    /// authentication is configured or the api secret authorised it.
    pub(super) fn session_token(&self, env: &Envelope<'_>) -> Option<String> {
        if !self.auth_required() {
            return None;
        }
        let via_secret = match (self.cfg.api_secret.as_deref(), env.apisecret) {
            (Some(secret), Some(given)) => ct_eq(secret, given),
            _ => false,
        };
        if via_secret {
            return None;
        }
        env.token.map(str::to_string)
    }

    /// The request's `token` or `apisecret` is good (or none is needed).
    pub(super) fn check_secret(&mut self, env: &Envelope<'_>, unix: u64) -> bool {
        self.check_credentials(env.token, env.apisecret, unix)
    }
}
