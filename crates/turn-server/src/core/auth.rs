//! Long-term-credential authentication of requests (RFC 8489 §9.2): stateless nonces, the
//! 401/438 challenge, key lookup with a per-username cache.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;

use super::stats::AuthFail;
use super::{Core, FiveTuple, Transmit};
use crate::auth::{Key, Lookup};
use crate::stun::{Builder, Class, Message, attr};

/// Usernames whose verified key [`Core`] keeps (a few hundred bytes each).
pub(super) const KEY_CACHE_MAX: usize = 4096;

pub(super) struct Authed {
    pub(super) username: String,
    pub(super) key: Key,
    pub(super) rest_expiry: Option<u64>,
}

impl<R: RngCore> Core<R> {
    pub(super) fn nonce(&self, unix_now: u64, client: IpAddr) -> String {
        let expiry = (unix_now + u64::from(self.cfg.nonce_lifetime)) as u32;
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v) => mac.update(&v.octets()),
            IpAddr::V6(v) => mac.update(&v.octets()),
        }
        let tag = mac.finalize().into_bytes();
        let mut s = format!("{expiry:08x}");
        for b in tag.iter().take(8) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub(super) fn nonce_valid(&self, nonce: &[u8], unix_now: u64, client: IpAddr) -> bool {
        let Ok(s) = std::str::from_utf8(nonce) else {
            return false;
        };
        if s.len() != 24 {
            return false;
        }
        let Some(Ok(expiry)) = s.get(..8).map(|h| u32::from_str_radix(h, 16)) else {
            return false;
        };
        if u64::from(expiry) <= unix_now {
            return false;
        }
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v) => mac.update(&v.octets()),
            IpAddr::V6(v) => mac.update(&v.octets()),
        }
        let tag = mac.finalize().into_bytes();
        let mut want = String::with_capacity(16);
        for b in tag.iter().take(8) {
            want.push_str(&format!("{b:02x}"));
        }
        use subtle::ConstantTimeEq as _;
        s.get(8..)
            .is_some_and(|got| bool::from(got.as_bytes().ct_eq(want.as_bytes())))
    }

    /// 401 / 438 challenge: only mandatory attributes, no SOFTWARE (keeps the answer small).
    pub(super) fn challenge(
        &mut self,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
        code: u16,
    ) {
        let nonce = self.nonce(unix_now, from.remote.ip());
        let mut out = Vec::with_capacity(80);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(
            code,
            if code == 438 {
                "Stale Nonce"
            } else {
                "Unauthorized"
            },
        );
        b.attr(attr::REALM, self.cfg.realm.as_bytes());
        b.attr(attr::NONCE, nonce.as_bytes());
        if !b.finish(None, msg.has_fingerprint()) {
            return;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Authed, ()> {
        let ip = from.remote.ip();
        if !msg.has(attr::MESSAGE_INTEGRITY) {
            self.stats.auth_failures[AuthFail::Missing as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        }
        let (Some(user), Some(realm), Some(nonce)) = (
            msg.get(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.stats.auth_failures[AuthFail::Missing as usize] += 1;
            if self.rate_ok(now, from) {
                self.error_plain(from, msg, 400, msg.has_fingerprint());
            }
            return Err(());
        };
        if !self.nonce_valid(nonce, unix_now, ip) {
            self.stats.auth_failures[AuthFail::StaleNonce as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 438);
            }
            return Err(());
        }
        let Ok(username) = std::str::from_utf8(user) else {
            self.stats.auth_failures[AuthFail::BadUsername as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        };
        if realm != self.cfg.realm.as_bytes() {
            self.stats.auth_failures[AuthFail::BadIntegrity as usize] += 1;
            if self.rate_ok(now, from) {
                self.challenge(unix_now, from, msg, 401);
            }
            return Err(());
        }
        // An existing allocation keeps its key: the call outlives its credentials.
        if let Some(a) = self
            .by_client
            .get(&from)
            .and_then(|s| self.slots.get(*s as usize))
            .and_then(Option::as_ref)
            && a.username == username
            && msg.integrity_ok(&a.key.0)
        {
            if self.cfg.strict_expiry && a.rest_expiry.is_some_and(|e| e < unix_now) {
                self.stats.auth_failures[AuthFail::Expired as usize] += 1;
                self.challenge(unix_now, from, msg, 401);
                return Err(());
            }
            return Ok(Authed {
                username: username.to_owned(),
                key: a.key,
                rest_expiry: a.rest_expiry,
            });
        }
        if let Some((key, until)) = self.key_cache.get(username)
            && *until > now
            && msg.integrity_ok(&key.0)
        {
            let key = *key;
            // Same checks as the lookup below, minus the key derivation.
            let rest_expiry = if self.creds.users.iter().any(|u| u.name == username) {
                None
            } else {
                crate::auth::rest_expiry(username)
            };
            if rest_expiry.is_none_or(|e| e >= unix_now) {
                return Ok(Authed {
                    username: username.to_owned(),
                    key,
                    rest_expiry,
                });
            }
        }
        match self.creds.lookup(username, &self.cfg.realm, unix_now) {
            Lookup::Keys(keys, rest_expiry) => {
                if let Some(key) = keys.into_iter().find(|k| msg.integrity_ok(&k.0)) {
                    if self.key_cache.len() >= KEY_CACHE_MAX {
                        self.key_cache.clear();
                    }
                    let until = now + Duration::from_secs(u64::from(self.cfg.nonce_lifetime));
                    self.key_cache.insert(username.to_owned(), (key, until));
                    return Ok(Authed {
                        username: username.to_owned(),
                        key,
                        rest_expiry,
                    });
                }
                self.stats.auth_failures[AuthFail::BadIntegrity as usize] += 1;
            }
            Lookup::Expired => self.stats.auth_failures[AuthFail::Expired as usize] += 1,
            Lookup::BadUsername => {
                let reason = if self.creds.secrets.is_empty() {
                    AuthFail::UnknownUser
                } else {
                    AuthFail::BadUsername
                };
                self.stats.auth_failures[reason as usize] += 1;
            }
        }
        if self.rate_ok(now, from) {
            self.challenge(unix_now, from, msg, 401);
        }
        Err(())
    }
}
