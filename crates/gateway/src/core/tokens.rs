//! Credentials: api secret, stored tokens (with their idle expiry) and test-page tokens.

use super::Core;
use super::janus::Envelope;
use crate::store::TokenFile;
use subtle::ConstantTimeEq;

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
        let n = self.tokens.expire(unix, self.cfg.token_max_idle.as_secs());
        if n > 0 {
            self.tokens_dirty = true;
        }
        n
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
