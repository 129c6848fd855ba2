//! Long-term-credential authentication of requests (RFC 8489 §9.2): the credential store
//! (static users, TURN REST secrets), stateless nonces, the 401/438 challenge, key lookup
//! with a per-username cache.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use shared_ice::auth::{LongTermKey, RestSecrets, parse_rest_username};
use shared_ice::stun::{Class, Message, attr, error_code};

use super::reply::encode;
use super::stats::AuthFail;
use super::{Core, FiveTuple};

/// Usernames whose verified key [`Core`] keeps (a few hundred bytes each).
pub(super) const KEY_CACHE_MAX: usize = 4096;

/// A static long-term user (`users` in the configuration), as the core takes it.
#[derive(Clone)]
pub struct StaticUser {
    /// Username.
    pub name: String,
    /// Password (never logged).
    pub password: String,
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticUser({}, <redacted>)", self.name)
    }
}

/// The credential store of one core, replaced on SIGHUP. The lookup policy: static users
/// first, then a TURN REST username under every live secret.
#[derive(Default)]
pub(super) struct Credentials {
    secrets: RestSecrets,
    /// Static users with their long-term key under the core's realm (derived once here,
    /// the password is not kept).
    users: Vec<(String, LongTermKey)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({} secrets, {} users, <redacted>)",
            self.secrets.len(),
            self.users.len()
        )
    }
}

impl Credentials {
    pub(super) fn new(secrets: RestSecrets, users: &[StaticUser], realm: &str) -> Self {
        Self {
            secrets,
            users: users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        LongTermKey::new(&u.name, realm, &u.password),
                    )
                })
                .collect(),
        }
    }

    fn is_static(&self, username: &str) -> bool {
        self.users.iter().any(|(n, _)| n == username)
    }

    /// The key of `username` that verifies `msg`'s MESSAGE-INTEGRITY, with the REST
    /// expiry when it is a REST username.
    fn lookup(
        &self,
        msg: &Message<'_>,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Result<(LongTermKey, Option<u64>), AuthFail> {
        if self.is_static(username) {
            return self
                .users
                .iter()
                .filter(|(n, _)| n == username)
                .find(|(_, k)| msg.verify_integrity(k.as_bytes()))
                .map(|(_, k)| (k.clone(), None))
                .ok_or(AuthFail::BadIntegrity);
        }
        if self.secrets.is_empty() {
            return Err(AuthFail::UnknownUser);
        }
        let Ok((expiry, _)) = parse_rest_username(username) else {
            return Err(AuthFail::BadUsername);
        };
        if expiry < unix_now {
            return Err(AuthFail::Expired);
        }
        self.secrets
            .candidate_keys(username, realm)
            .find(|k| msg.verify_integrity(k.as_bytes()))
            .map(|k| (k, Some(expiry)))
            .ok_or(AuthFail::BadIntegrity)
    }
}

/// An authenticated request's credentials.
pub(super) struct Authed {
    pub(super) username: String,
    pub(super) key: LongTermKey,
    pub(super) rest_expiry: Option<u64>,
}

/// How a request that failed authentication is answered.
#[derive(Clone, Copy)]
enum Answer {
    /// 401 or 438 with REALM and a fresh NONCE.
    Challenge(u16),
    /// 400 without attributes (a credential attribute is missing).
    BadRequest,
}

/// HMAC-SHA1 under a 20-byte key. HMAC zero-pads a key shorter than SHA-1's 64-byte block
/// (RFC 2104 §2), so the padded block is the same key, and a block-sized key needs no
/// length check: the constructor cannot fail.
fn hmac_sha1_key20(key: &[u8; 20]) -> Hmac<Sha1> {
    let mut block = [0u8; 64];
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    <Hmac<Sha1> as Mac>::new(&block.into())
}

impl<R: RngCore> Core<R> {
    /// A stateless nonce: its expiry (8 hex digits) and a tag binding it to `client`.
    pub(super) fn nonce(&self, unix_now: u64, client: IpAddr) -> String {
        let expiry = (unix_now + u64::from(self.cfg.nonce_lifetime)) as u32;
        let mut s = format!("{expiry:08x}");
        self.nonce_tag(expiry, client, &mut s);
        s
    }

    /// Appends the hex of the first 8 bytes of HMAC-SHA1(nonce key, expiry ‖ client IP).
    fn nonce_tag(&self, expiry: u32, client: IpAddr, out: &mut String) {
        let mut mac = hmac_sha1_key20(&self.nonce_key);
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v) => mac.update(&v.octets()),
            IpAddr::V6(v) => mac.update(&v.octets()),
        }
        let tag = mac.finalize().into_bytes();
        for b in tag.iter().take(8) {
            out.push_str(&format!("{b:02x}"));
        }
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
        let mut want = String::with_capacity(16);
        self.nonce_tag(expiry, client, &mut want);
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
        let head = (msg.method(), Class::Error, msg.transaction_id());
        let realm = self.cfg.realm.as_bytes();
        // "Unauthorized" (RFC 5389's phrase) rather than RFC 8489's "Unauthenticated":
        // the bytes clients have always seen from us.
        let reason = if code == error_code::STALE_NONCE {
            "Stale Nonce"
        } else {
            "Unauthorized"
        };
        if let Some(out) = encode(80, head, None, msg.has_fingerprint(), |b| {
            b.error_code(code, reason)
                .attribute(attr::REALM, realm)
                .attribute(attr::NONCE, nonce.as_bytes())
        }) {
            self.send(from, out);
        }
    }

    /// A request that failed authentication: counts `why`, then answers if the source's
    /// request budget allows it ([`Self::rate_ok`]).
    fn reject(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
        why: AuthFail,
        answer: Answer,
    ) -> Result<Authed, ()> {
        self.stats.auth_failures[why as usize] += 1;
        if self.rate_ok(now, from) {
            match answer {
                Answer::Challenge(code) => self.challenge(unix_now, from, msg, code),
                Answer::BadRequest => {
                    self.error_plain(from, msg, error_code::BAD_REQUEST, msg.has_fingerprint());
                }
            }
        }
        Err(())
    }

    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Authed, ()> {
        const UNAUTHENTICATED: Answer = Answer::Challenge(error_code::UNAUTHENTICATED);
        let ip = from.remote.ip();
        if !msg.has_integrity() {
            return self.reject(now, unix_now, from, msg, AuthFail::Missing, UNAUTHENTICATED);
        }
        let (Some(user), Some(realm), Some(nonce)) = (
            msg.attribute(attr::USERNAME),
            msg.attribute(attr::REALM),
            msg.attribute(attr::NONCE),
        ) else {
            return self.reject(
                now,
                unix_now,
                from,
                msg,
                AuthFail::Missing,
                Answer::BadRequest,
            );
        };
        if !self.nonce_valid(nonce, unix_now, ip) {
            let stale = Answer::Challenge(error_code::STALE_NONCE);
            return self.reject(now, unix_now, from, msg, AuthFail::StaleNonce, stale);
        }
        let Ok(username) = std::str::from_utf8(user) else {
            return self.reject(
                now,
                unix_now,
                from,
                msg,
                AuthFail::BadUsername,
                UNAUTHENTICATED,
            );
        };
        if realm != self.cfg.realm.as_bytes() {
            return self.reject(
                now,
                unix_now,
                from,
                msg,
                AuthFail::BadIntegrity,
                UNAUTHENTICATED,
            );
        }
        // An existing allocation keeps its key: the call outlives its credentials.
        if let Some(a) = self
            .by_client
            .get(&from)
            .and_then(|s| self.slots.get(*s as usize))
            .and_then(Option::as_ref)
            && a.username == username
            && msg.verify_integrity(a.key.as_bytes())
        {
            if self.cfg.strict_expiry && a.rest_expiry.is_some_and(|e| e < unix_now) {
                // Not rate-limited: the client proved it holds the allocation's key.
                self.stats.auth_failures[AuthFail::Expired as usize] += 1;
                self.challenge(unix_now, from, msg, error_code::UNAUTHENTICATED);
                return Err(());
            }
            return Ok(Authed {
                username: username.to_owned(),
                key: a.key.clone(),
                rest_expiry: a.rest_expiry,
            });
        }
        if let Some((key, until)) = self.key_cache.get(username)
            && *until > now
            && msg.verify_integrity(key.as_bytes())
        {
            // Same checks as the lookup below, minus the key derivation.
            let rest_expiry = if self.creds.is_static(username) {
                None
            } else {
                parse_rest_username(username).ok().map(|(e, _)| e)
            };
            if rest_expiry.is_none_or(|e| e >= unix_now) {
                return Ok(Authed {
                    username: username.to_owned(),
                    key: key.clone(),
                    rest_expiry,
                });
            }
        }
        match self.creds.lookup(msg, username, &self.cfg.realm, unix_now) {
            Ok((key, rest_expiry)) => {
                if self.key_cache.len() >= KEY_CACHE_MAX {
                    self.key_cache.clear();
                }
                let until = now + Duration::from_secs(u64::from(self.cfg.nonce_lifetime));
                self.key_cache
                    .insert(username.to_owned(), (key.clone(), until));
                Ok(Authed {
                    username: username.to_owned(),
                    key,
                    rest_expiry,
                })
            }
            Err(why) => self.reject(now, unix_now, from, msg, why, UNAUTHENTICATED),
        }
    }
}

#[cfg(test)]
mod tests {
    use shared_ice::auth::{RestSecret, long_term_key, mint};
    use shared_ice::stun::{MessageBuilder, Method, TransactionId};

    use super::*;

    /// A request signed with `key`, carrying `username`.
    fn signed(buf: &mut Vec<u8>, username: &str, key: &LongTermKey) {
        MessageBuilder::new(
            buf,
            Class::Request,
            Method::ALLOCATE,
            TransactionId([1; 12]),
        )
        .username(username)
        .finish_with(Some(key.as_bytes()), false)
        .unwrap();
    }

    #[test]
    fn nonce_hmac_is_hmac_sha1_of_the_20_byte_key() {
        // RFC 2202 §3 test case 1: a 20-byte key.
        let mut mac = hmac_sha1_key20(&[0x0b; 20]);
        mac.update(b"Hi There");
        assert_eq!(
            mac.finalize().into_bytes().as_slice(),
            hex_literal::hex!("b617318655057264e28bc0b6fb378c8ef146be00")
        );
        // and the same as the variable-length constructor for other keys
        for seed in [0u8, 1, 0x5c, 0xff] {
            let key: [u8; 20] =
                std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8));
            let mut a = hmac_sha1_key20(&key);
            let mut b = Hmac::<Sha1>::new_from_slice(&key).unwrap();
            a.update(b"expiry and address");
            b.update(b"expiry and address");
            assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
        }
    }

    #[test]
    fn rest_vectors() {
        // coturn README example format: timestamp first.
        assert_eq!(
            parse_rest_username("1700000000:alice").map(|(e, _)| e),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_rest_username("1700000000").map(|(e, _)| e),
            Ok(1_700_000_000)
        );
        assert!(parse_rest_username("alice:1700000000").is_err());
        assert!(parse_rest_username(":x").is_err());
        // base64(HMAC-SHA1("secret", "1700000000:mattermost")), computed with the openssl CLI.
        let c = mint(&RestSecret::new("secret"), "mattermost", 1_700_000_000);
        assert_eq!(c.username, "1700000000:mattermost");
        assert_eq!(c.password, "ExdB0SrMi6xMz8B12beJ8D6yLQg=");
        // MD5("u:r:p"), computed independently with md5sum.
        assert_eq!(
            long_term_key("u", "r", "p"),
            hex_literal::hex!("44add22b6f3179b751eafd68ee370f7d")
        );
    }

    #[test]
    fn lookup_tries_every_secret() {
        let c = Credentials::new(
            RestSecrets::new([RestSecret::new("new"), RestSecret::new("old")]),
            &[],
            "r",
        );
        let old = mint(&RestSecret::new("old"), "x", 2000);
        let key = LongTermKey::new(&old.username, "r", &old.password);
        let mut buf = Vec::new();
        signed(&mut buf, &old.username, &key);
        let msg = Message::parse(&buf).unwrap();
        match c.lookup(&msg, &old.username, "r", 1000) {
            Ok((k, Some(2000))) => assert_eq!(k, key),
            _ => panic!("expected the key under the second secret"),
        }
        assert!(matches!(
            c.lookup(&msg, &old.username, "r", 2001),
            Err(AuthFail::Expired)
        ));
        assert!(matches!(
            c.lookup(&msg, "bob", "r", 0),
            Err(AuthFail::BadUsername)
        ));
    }

    #[test]
    fn static_users_first_then_unknown_without_secrets() {
        let users = [StaticUser {
            name: "alice".into(),
            password: "pw".into(),
        }];
        let c = Credentials::new(RestSecrets::default(), &users, "r");
        let key = LongTermKey::new("alice", "r", "pw");
        let mut buf = Vec::new();
        signed(&mut buf, "alice", &key);
        let msg = Message::parse(&buf).unwrap();
        assert!(matches!(c.lookup(&msg, "alice", "r", 0), Ok((_, None))));
        let wrong = LongTermKey::new("alice", "r", "other");
        let mut buf = Vec::new();
        signed(&mut buf, "alice", &wrong);
        let msg = Message::parse(&buf).unwrap();
        assert!(matches!(
            c.lookup(&msg, "alice", "r", 0),
            Err(AuthFail::BadIntegrity)
        ));
        assert!(matches!(
            c.lookup(&msg, "1700000000:bob", "r", 0),
            Err(AuthFail::UnknownUser)
        ));
        assert!(!format!("{c:?}").contains("pw"));
    }
}
