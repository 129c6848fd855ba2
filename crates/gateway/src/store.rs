//! The two pieces of state a multi-node gateway shares: the Janus token store and the
//! registry of videocall usernames, behind small traits. In a cluster each node's core
//! keeps its own in-memory copy of the token table: local changes leave the core as
//! [`crate::core::TokenUpdate`]s that the shell writes to NATS, other nodes' changes come
//! back in through [`crate::core::Core::apply_shared_token`] (docs/scale-out.md).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where stored Janus tokens live (Admin API `add_token` & co., checked on every request).
pub trait TokenStore: Send {
    /// Adds `token` (or re-adds it) allowing `plugins` in addition to what it had.
    /// Returns the now-allowed plugin list.
    fn add(&mut self, token: &str, plugins: &[String], now_unix: u64) -> Vec<String>;
    /// Removes a token; false when it did not exist.
    fn remove(&mut self, token: &str) -> bool;
    /// The plugins a token may use, refreshing its last-seen time; None if unknown.
    fn check(&mut self, token: &str, now_unix: u64) -> Option<Vec<String>>;
    /// Adds plugins to an existing token; None if the token is unknown.
    fn allow(&mut self, token: &str, plugins: &[String]) -> Option<Vec<String>>;
    /// Removes plugins from an existing token; None if the token is unknown.
    fn disallow(&mut self, token: &str, plugins: &[String]) -> Option<Vec<String>>;
    /// All tokens with their allowed plugins, sorted by token.
    fn list(&self) -> Vec<(String, Vec<String>)>;
    /// Drops tokens not seen for more than `max_idle_secs`; returns them, sorted.
    fn expire(&mut self, now_unix: u64, max_idle_secs: u64) -> Vec<String>;
    /// One token's state, without refreshing its last-seen time.
    fn get(&self, token: &str) -> Option<TokenEntry>;
    /// Sets a token's plugins to `entry`'s (another node's change); its last-seen time
    /// becomes the later of both, so a use seen by either node counts.
    fn put(&mut self, entry: TokenEntry);
    /// Number of stored tokens.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A serialisable copy for persistence.
    fn snapshot(&self) -> TokenFile;
}

/// On-disk format of `<state-dir>/tokens.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Format version (1).
    pub version: u32,
    /// The tokens.
    pub tokens: Vec<TokenEntry>,
}

/// One persisted token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The token text.
    pub token: String,
    /// Allowed plugin packages.
    pub plugins: Vec<String>,
    /// Unix seconds of the last add/use.
    pub last_seen: u64,
}

#[derive(Debug, Clone)]
struct TokenState {
    plugins: BTreeSet<String>,
    last_seen: u64,
}

/// In-memory token store (persisted by the shell via [`TokenStore::snapshot`]).
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: HashMap<String, TokenState>,
}

impl MemoryTokenStore {
    /// Empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Store loaded from a persisted file.
    pub fn from_file(file: TokenFile) -> Self {
        let tokens = file
            .tokens
            .into_iter()
            .map(|e| {
                (
                    e.token,
                    TokenState {
                        plugins: e.plugins.into_iter().collect(),
                        last_seen: e.last_seen,
                    },
                )
            })
            .collect();
        Self { tokens }
    }
}

impl TokenStore for MemoryTokenStore {
    fn add(&mut self, token: &str, plugins: &[String], now_unix: u64) -> Vec<String> {
        let st = self.tokens.entry(token.to_string()).or_insert(TokenState {
            plugins: BTreeSet::new(),
            last_seen: now_unix,
        });
        st.last_seen = st.last_seen.max(now_unix);
        st.plugins.extend(plugins.iter().cloned());
        st.plugins.iter().cloned().collect()
    }

    fn remove(&mut self, token: &str) -> bool {
        self.tokens.remove(token).is_some()
    }

    fn check(&mut self, token: &str, now_unix: u64) -> Option<Vec<String>> {
        let st = self.tokens.get_mut(token)?;
        st.last_seen = st.last_seen.max(now_unix);
        Some(st.plugins.iter().cloned().collect())
    }

    fn allow(&mut self, token: &str, plugins: &[String]) -> Option<Vec<String>> {
        let st = self.tokens.get_mut(token)?;
        st.plugins.extend(plugins.iter().cloned());
        Some(st.plugins.iter().cloned().collect())
    }

    fn disallow(&mut self, token: &str, plugins: &[String]) -> Option<Vec<String>> {
        let st = self.tokens.get_mut(token)?;
        for p in plugins {
            st.plugins.remove(p);
        }
        Some(st.plugins.iter().cloned().collect())
    }

    fn list(&self) -> Vec<(String, Vec<String>)> {
        let sorted: BTreeMap<&String, &TokenState> = self.tokens.iter().collect();
        sorted
            .into_iter()
            .map(|(t, s)| (t.clone(), s.plugins.iter().cloned().collect()))
            .collect()
    }

    fn expire(&mut self, now_unix: u64, max_idle_secs: u64) -> Vec<String> {
        let mut gone = Vec::new();
        self.tokens.retain(|t, s| {
            let keep = now_unix.saturating_sub(s.last_seen) <= max_idle_secs;
            if !keep {
                gone.push(t.clone());
            }
            keep
        });
        gone.sort();
        gone
    }

    fn get(&self, token: &str) -> Option<TokenEntry> {
        self.tokens.get(token).map(|s| TokenEntry {
            token: token.to_string(),
            plugins: s.plugins.iter().cloned().collect(),
            last_seen: s.last_seen,
        })
    }

    fn put(&mut self, entry: TokenEntry) {
        let st = self.tokens.entry(entry.token).or_insert(TokenState {
            plugins: BTreeSet::new(),
            last_seen: entry.last_seen,
        });
        st.last_seen = st.last_seen.max(entry.last_seen);
        st.plugins = entry.plugins.into_iter().collect();
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    fn snapshot(&self) -> TokenFile {
        let sorted: BTreeMap<&String, &TokenState> = self.tokens.iter().collect();
        TokenFile {
            version: 1,
            tokens: sorted
                .into_iter()
                .map(|(t, s)| TokenEntry {
                    token: t.clone(),
                    plugins: s.plugins.iter().cloned().collect(),
                    last_seen: s.last_seen,
                })
                .collect(),
        }
    }
}

/// Where a registered videocall user can be reached. Today a local handle id; a
/// multi-node registry will add the node.
pub type HandleRef = u64;

/// Registry of videocall usernames (unique across the deployment).
pub trait UserRegistry: Send {
    /// Registers `username` for `handle`; false if the name is taken.
    fn register(&mut self, username: &str, handle: HandleRef) -> bool;
    /// Who has `username`.
    fn lookup(&self, username: &str) -> Option<HandleRef>;
    /// Frees `username` if it is held by `handle`.
    fn unregister(&mut self, username: &str, handle: HandleRef);
    /// All registered usernames.
    fn usernames(&self) -> Vec<String>;
    /// Number of registered users.
    fn len(&self) -> usize;
    /// True when nobody is registered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Single-node in-memory registry.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    users: HashMap<String, HandleRef>,
}

impl MemoryRegistry {
    /// Empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

impl UserRegistry for MemoryRegistry {
    fn register(&mut self, username: &str, handle: HandleRef) -> bool {
        if self.users.contains_key(username) {
            return false;
        }
        self.users.insert(username.to_string(), handle);
        true
    }

    fn lookup(&self, username: &str) -> Option<HandleRef> {
        self.users.get(username).copied()
    }

    fn unregister(&mut self, username: &str, handle: HandleRef) {
        if self.users.get(username) == Some(&handle) {
            self.users.remove(username);
        }
    }

    fn usernames(&self) -> Vec<String> {
        let mut v: Vec<String> = self.users.keys().cloned().collect();
        v.sort();
        v
    }

    fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_add_check_remove_expire_roundtrip() {
        let mut s = MemoryTokenStore::new();
        let vc = vec!["janus.plugin.videocall".to_string()];
        assert_eq!(s.add("t1", &vc, 100), vc);
        assert_eq!(s.add("t1", &vc, 200), vc, "repeated add succeeds");
        assert_eq!(s.add("t2", &[], 100), Vec::<String>::new());
        assert_eq!(s.check("t1", 300), Some(vc.clone()));
        assert_eq!(s.check("nope", 300), None);
        assert_eq!(s.disallow("t1", &vc), Some(vec![]));
        assert_eq!(s.allow("t1", &vc), Some(vc.clone()));
        let snap = s.snapshot();
        let back = MemoryTokenStore::from_file(snap.clone());
        assert_eq!(back.snapshot(), snap);
        assert_eq!(
            s.expire(1000, 800),
            ["t2"],
            "t2 last seen at 100 is dropped"
        );
        // another node's state: its plugins, the later last-seen time
        s.put(TokenEntry {
            token: "t1".into(),
            plugins: vec![],
            last_seen: 5,
        });
        assert_eq!(
            s.get("t1"),
            Some(TokenEntry {
                token: "t1".into(),
                plugins: vec![],
                last_seen: 300
            })
        );
        s.put(TokenEntry {
            token: "t3".into(),
            plugins: vc.clone(),
            last_seen: 7,
        });
        assert_eq!(s.get("t3").map(|e| e.last_seen), Some(7));
        assert!(s.remove("t3"));
        assert!(s.remove("t1"));
        assert!(!s.remove("t1"));
        assert!(s.is_empty());
    }

    #[test]
    fn registry_unique_names() {
        let mut r = MemoryRegistry::new();
        assert!(r.register("alice", 1));
        assert!(!r.register("alice", 2));
        r.unregister("alice", 2);
        assert_eq!(r.lookup("alice"), Some(1));
        r.unregister("alice", 1);
        assert_eq!(r.lookup("alice"), None);
    }
}
