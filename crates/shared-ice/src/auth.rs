//! Credentials: the STUN long-term key and TURN REST shared-secret credentials.
//!
//! * Long-term key ([RFC 8489 §9.2.2](https://www.rfc-editor.org/rfc/rfc8489#section-9.2.2)):
//!   `MD5(username ":" realm ":" password)`.
//! * TURN REST (draft-uberti-behave-turn-rest-00, coturn `use-auth-secret`, and what
//!   Mattermost mints): username `"<expiry unix seconds>:<user>"`, password
//!   `base64(HMAC-SHA1(secret, username))`. A server holding the same secret
//!   recomputes the password and from it the long-term key; with several live
//!   secrets (rotation) it tries each.
//!
//! Secrets and keys are zeroized on drop and never printed by `Debug`. Nothing here
//! reads the clock: `unix_now` is passed in.

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::stun::Message;

/// `H(parts[0] ":" parts[1] ":" …)`: the one shape of the three RFC 8489 hashes below.
fn hash_joined<H: Digest>(parts: &[&str]) -> md5::digest::Output<H> {
    let mut h = H::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize()
}

/// `MD5(username ":" realm ":" password)`, the long-term key of RFC 8489 §9.2.2.
#[must_use]
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    hash_joined::<Md5>(&[username, realm, password]).into()
}

/// `SHA-256(username ":" realm ":" password)`, the long-term key when
/// PASSWORD-ALGORITHM is SHA-256 (RFC 8489 §9.2.2, §18.5.1.2).
#[must_use]
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    hash_joined::<sha2::Sha256>(&[username, realm, password]).into()
}

/// `SHA-256(username ":" realm)`, the USERHASH value (RFC 8489 §14.4).
#[must_use]
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    hash_joined::<sha2::Sha256>(&[username, realm]).into()
}

/// The impls every secret wrapper here shares (the bytes are its field `.0`; zeroizing
/// is each type's `#[derive(Zeroize, ZeroizeOnDrop)]`): a `Debug` that prints only
/// `Name(<redacted>)`, and with `eq` also a constant-time `PartialEq`/`Eq`.
macro_rules! secret_impls {
    ($name:ident) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
    ($name:ident, eq) => {
        secret_impls!($name);

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }

        impl Eq for $name {}
    };
}

secret_impls!(LongTermKey, eq);
secret_impls!(RestSecret);
secret_impls!(RestPassword, eq);

/// A long-term key (the HMAC key of MESSAGE-INTEGRITY), zeroized on drop, redacted
/// in `Debug`, compared in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct LongTermKey([u8; 16]);

impl LongTermKey {
    /// Derives the key from username, realm and password.
    #[must_use]
    pub fn new(username: &str, realm: &str, password: &str) -> Self {
        Self(long_term_key(username, realm, password))
    }

    /// Wraps an already-derived key.
    #[must_use]
    pub const fn from_bytes(key: [u8; 16]) -> Self {
        Self(key)
    }

    /// The key bytes (pass to [`Message::verify_integrity`] or a `finish_with_integrity`).
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl AsRef<[u8]> for LongTermKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A TURN REST shared secret (raw bytes, never base64-decoded), zeroized on drop and
/// redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RestSecret(Vec<u8>);

impl RestSecret {
    /// Wraps secret bytes (e.g. `"my shared key".into()`).
    #[must_use]
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The REST password for `username`: `base64(HMAC-SHA1(secret, username))`.
    #[must_use]
    pub fn password(&self, username: &str) -> RestPassword {
        #[expect(
            clippy::expect_used,
            reason = "infallible: HMAC accepts keys of any length"
        )]
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&self.0).expect("any key length");
        mac.update(username.as_bytes());
        let digest = Zeroizing::new(<[u8; 20]>::from(mac.finalize().into_bytes()));
        let mut out = [0u8; 28];
        // 20 bytes always encode to exactly 28 base64 characters.
        let n = BASE64
            .encode_slice(digest.as_slice(), &mut out)
            .unwrap_or(0);
        debug_assert_eq!(n, 28);
        RestPassword(out)
    }
}

impl From<&str> for RestSecret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for RestSecret {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// A TURN REST password (28 base64 characters), zeroized on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RestPassword([u8; 28]);

impl RestPassword {
    /// The password text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The long-term key for this password.
    #[must_use]
    pub fn long_term_key(&self, username: &str, realm: &str) -> LongTermKey {
        LongTermKey::new(username, realm, self.as_str())
    }
}

/// The live shared secrets, current first. Keep the previous secret(s) here during a
/// rotation so credentials minted with them keep working until they expire.
#[derive(Clone, Debug, Default)]
pub struct RestSecrets(Vec<RestSecret>);

impl RestSecrets {
    /// From secrets, current first.
    #[must_use]
    pub fn new(secrets: impl IntoIterator<Item = RestSecret>) -> Self {
        Self(secrets.into_iter().collect())
    }

    /// The secret new credentials are minted with.
    #[must_use]
    pub fn current(&self) -> Option<&RestSecret> {
        self.0.first()
    }

    /// All live secrets, current first.
    pub fn iter(&self) -> impl Iterator<Item = &RestSecret> {
        self.0.iter()
    }

    /// Number of live secrets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no secrets (then nothing verifies).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The long-term key `username` would have under each live secret, in order.
    /// Check MESSAGE-INTEGRITY against each (see [`authenticate`](Self::authenticate)).
    pub fn candidate_keys<'s>(
        &'s self,
        username: &'s str,
        realm: &'s str,
    ) -> impl Iterator<Item = LongTermKey> + 's {
        self.0
            .iter()
            .map(move |s| s.password(username).long_term_key(username, realm))
    }

    /// Authenticates a request with TURN REST credentials: USERNAME must be a
    /// well-formed, unexpired REST username (see [`verify`]) and MESSAGE-INTEGRITY must
    /// verify with the key from one of the live secrets. Returns that key, to sign the
    /// response with.
    pub fn authenticate(
        &self,
        msg: &Message<'_>,
        realm: &str,
        unix_now: u64,
        skew_secs: u64,
    ) -> Result<RestAuthenticated, RestError> {
        if !msg.has_integrity() {
            return Err(RestError::MissingIntegrity);
        }
        let username = msg
            .username()
            .map_err(|_| RestError::BadUsername)?
            .ok_or(RestError::MissingUsername)?;
        let (expiry, _) = check_expiry(username, unix_now, skew_secs)?;
        if self.0.is_empty() {
            return Err(RestError::NoSecrets);
        }
        self.candidate_keys(username, realm)
            .enumerate()
            .find(|(_, key)| msg.verify_integrity(key.as_bytes()))
            .map(|(secret_index, key)| RestAuthenticated {
                key,
                secret_index,
                expiry,
            })
            .ok_or(RestError::BadIntegrity)
    }
}

/// The result of [`RestSecrets::authenticate`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RestAuthenticated {
    /// The long-term key that verified (sign the response with it).
    pub key: LongTermKey,
    /// Which secret matched (0 = current).
    pub secret_index: usize,
    /// The username's expiry, Unix seconds.
    pub expiry: u64,
}

/// Credentials handed to a client.
#[derive(Clone, Eq, PartialEq)]
pub struct RestCredentials {
    /// `"<expiry>:<user>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
}

impl fmt::Debug for RestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Drop for RestCredentials {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

/// Mints credentials for `user` that expire at `expiry_unix`. An empty `user` gives
/// a username that is just the expiry.
#[must_use]
pub fn mint(secret: &RestSecret, user: &str, expiry_unix: u64) -> RestCredentials {
    let username = if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}:{user}")
    };
    let password = secret.password(&username).as_str().to_owned();
    RestCredentials { username, password }
}

/// Mints credentials valid for `ttl_secs` from `unix_now`.
#[must_use]
pub fn mint_with_ttl(
    secret: &RestSecret,
    user: &str,
    unix_now: u64,
    ttl_secs: u64,
) -> RestCredentials {
    mint(secret, user, unix_now.saturating_add(ttl_secs))
}

/// Splits a REST username into `(expiry, user)`: `"<digits>:<user>"` or just
/// `"<digits>"` (then `user` is empty). The user part may itself contain `:`.
pub fn parse_rest_username(username: &str) -> Result<(u64, &str), RestError> {
    let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RestError::BadUsername);
    }
    let expiry = expiry.parse::<u64>().map_err(|_| RestError::BadUsername)?;
    Ok((expiry, user))
}

fn check_expiry(username: &str, unix_now: u64, skew_secs: u64) -> Result<(u64, &str), RestError> {
    let (expiry, user) = parse_rest_username(username)?;
    if expiry.saturating_add(skew_secs) < unix_now {
        return Err(RestError::Expired {
            expiry,
            now: unix_now,
        });
    }
    Ok((expiry, user))
}

/// The outcome of [`verify`]: the username is well-formed and unexpired.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RestVerified<'u> {
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// The user part (after the first `:`), possibly empty.
    pub user: &'u str,
    /// The password under the current (first) secret.
    pub password: RestPassword,
}

/// Checks a REST `username` at `unix_now`: well-formed, not expired by more than
/// `skew_secs`, and at least one live secret. Returns the password under the current
/// secret. This alone proves nothing about the client: the proof is its
/// MESSAGE-INTEGRITY, checked against every secret by
/// [`RestSecrets::candidate_keys`] / [`RestSecrets::authenticate`].
pub fn verify<'u>(
    secrets: &RestSecrets,
    username: &'u str,
    unix_now: u64,
    skew_secs: u64,
) -> Result<RestVerified<'u>, RestError> {
    let (expiry, user) = check_expiry(username, unix_now, skew_secs)?;
    let secret = secrets.current().ok_or(RestError::NoSecrets)?;
    Ok(RestVerified {
        expiry,
        user,
        password: secret.password(username),
    })
}

/// The expiry Mattermost puts in TURN usernames: 23:59:59 of the day after
/// `unix_now`, in the fixed UTC offset `utc_offset_secs` (its server's local time).
#[must_use]
pub fn mattermost_expiry(unix_now: u64, utc_offset_secs: i32) -> u64 {
    const DAY: i64 = 86_400;
    let now = i64::try_from(unix_now).unwrap_or(i64::MAX / 2);
    let local = now.saturating_add(i64::from(utc_offset_secs));
    let local_midnight = local.div_euclid(DAY) * DAY;
    let expiry_local = local_midnight + 2 * DAY - 1;
    u64::try_from(expiry_local - i64::from(utc_offset_secs)).unwrap_or(0)
}

/// Why TURN REST credentials were rejected.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum RestError {
    /// No USERNAME attribute.
    MissingUsername,
    /// The username is not `<expiry>[:<user>]` (or not valid UTF-8).
    BadUsername,
    /// The username expired (beyond the allowed skew).
    Expired {
        /// Its expiry, Unix seconds.
        expiry: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// No shared secret is configured.
    NoSecrets,
    /// The request has no MESSAGE-INTEGRITY.
    MissingIntegrity,
    /// MESSAGE-INTEGRITY matches no live secret.
    BadIntegrity,
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MissingUsername => f.write_str("no USERNAME"),
            Self::BadUsername => f.write_str("username is not <expiry>:<user>"),
            Self::Expired { expiry, now } => {
                write!(f, "credentials expired at {expiry} (now {now})")
            }
            Self::NoSecrets => f.write_str("no shared secret configured"),
            Self::MissingIntegrity => f.write_str("no MESSAGE-INTEGRITY"),
            Self::BadIntegrity => f.write_str("MESSAGE-INTEGRITY matches no live secret"),
        }
    }
}

impl std::error::Error for RestError {}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;
    use crate::stun::{Class, MessageBuilder, Method, TransactionId};

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // `printf 'user:realm:pass' | md5sum`
        assert_eq!(
            long_term_key("user", "realm", "pass"),
            hex!("8493fbc53ba582fb4c044c456bdc40eb")
        );
        let k = LongTermKey::new("user", "realm", "pass");
        assert_eq!(
            k,
            LongTermKey::from_bytes(hex!("8493fbc53ba582fb4c044c456bdc40eb"))
        );
        assert_eq!(format!("{k:?}"), "LongTermKey(<redacted>)");
    }

    #[test]
    fn rest_password_matches_coturn_formula() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let s = RestSecret::new("secret");
        let c = mint(&s, "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(c.password, s.password("1700000000:alice").as_str());
        assert_eq!(c.password.len(), 28);
        assert_eq!(format!("{s:?}"), "RestSecret(<redacted>)");
        let p = s.password("1700000000:alice");
        assert_eq!(format!("{p:?}"), "RestPassword(<redacted>)");
        assert_eq!(p, s.password("1700000000:alice"));
        assert_ne!(p, s.password("1700000000:bob"));
        let k = p.long_term_key("1700000000:alice", "realm");
        assert_eq!(k, LongTermKey::new("1700000000:alice", "realm", p.as_str()));
        assert_ne!(k, LongTermKey::from_bytes([0; 16]));
        assert!(!format!("{c:?}").contains(&c.password));
        assert_eq!(mint(&s, "", 5).username, "5");
        assert_eq!(mint_with_ttl(&s, "bob", 100, 86_400).username, "86500:bob");
        assert_eq!(
            mint_with_ttl(&s, "bob", u64::MAX, 10).username,
            format!("{}:bob", u64::MAX)
        );
    }

    #[test]
    fn parse_and_verify_usernames() {
        assert_eq!(parse_rest_username("123:alice"), Ok((123, "alice")));
        assert_eq!(parse_rest_username("123:a:b"), Ok((123, "a:b")));
        assert_eq!(parse_rest_username("123"), Ok((123, "")));
        assert_eq!(parse_rest_username("123:"), Ok((123, "")));
        for bad in [
            "",
            ":alice",
            "alice:123",
            "12a:x",
            "-1:x",
            "+1:x",
            " 1:x",
            "99999999999999999999999:x",
        ] {
            assert_eq!(
                parse_rest_username(bad),
                Err(RestError::BadUsername),
                "{bad}"
            );
        }
        let secrets = RestSecrets::new([RestSecret::new("new"), RestSecret::new("old")]);
        let v = verify(&secrets, "1000:alice", 1000, 0).unwrap();
        assert_eq!((v.expiry, v.user), (1000, "alice"));
        assert_eq!(
            v.password,
            secrets.current().unwrap().password("1000:alice")
        );
        assert!(verify(&secrets, "1000:alice", 1060, 60).is_ok());
        assert_eq!(
            verify(&secrets, "1000:alice", 1061, 60),
            Err(RestError::Expired {
                expiry: 1000,
                now: 1061
            })
        );
        assert_eq!(
            verify(&RestSecrets::default(), "1000", 0, 0),
            Err(RestError::NoSecrets)
        );
        assert_eq!(verify(&secrets, "nope", 0, 0), Err(RestError::BadUsername));
    }

    fn request(username: &str, key: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        MessageBuilder::new(
            &mut buf,
            Class::Request,
            Method::ALLOCATE,
            TransactionId([4; 12]),
        )
        .requested_transport(17)
        .username(username)
        .realm("r")
        .nonce("n")
        .finish_with_integrity_and_fingerprint(key)
        .unwrap();
        buf
    }

    #[test]
    fn authenticate_accepts_every_live_secret_and_nothing_else() {
        let old = RestSecret::new("old");
        let new = RestSecret::new("new");
        let secrets = RestSecrets::new([new.clone(), old.clone()]);
        let now = 10_000;
        for (idx, s) in [(0, &new), (1, &old)] {
            let c = mint_with_ttl(s, "u", now, 600);
            let bytes = request(&c.username, &long_term_key(&c.username, "r", &c.password));
            let m = Message::parse(&bytes).unwrap();
            let a = secrets.authenticate(&m, "r", now, 0).unwrap();
            assert_eq!(a.secret_index, idx);
            assert_eq!(a.expiry, now + 600);
            assert_eq!(
                a.key.as_bytes(),
                &long_term_key(&c.username, "r", &c.password)
            );
            // Wrong realm → different key → rejected.
            assert_eq!(
                secrets.authenticate(&m, "other", now, 0),
                Err(RestError::BadIntegrity)
            );
            // Expired.
            assert_eq!(
                secrets.authenticate(&m, "r", now + 601, 0),
                Err(RestError::Expired {
                    expiry: now + 600,
                    now: now + 601
                })
            );
            assert_eq!(secrets.candidate_keys(&c.username, "r").count(), 2);
        }
        let stranger = mint_with_ttl(&RestSecret::new("stranger"), "u", now, 600);
        let bytes = request(
            &stranger.username,
            &long_term_key(&stranger.username, "r", &stranger.password),
        );
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            secrets.authenticate(&m, "r", now, 0),
            Err(RestError::BadIntegrity)
        );
        assert_eq!(
            RestSecrets::default().authenticate(&m, "r", now, 0),
            Err(RestError::NoSecrets)
        );

        let mut buf = Vec::new();
        MessageBuilder::new(
            &mut buf,
            Class::Request,
            Method::ALLOCATE,
            TransactionId([4; 12]),
        )
        .username("1:x")
        .finish()
        .unwrap();
        let m = Message::parse(&buf).unwrap();
        assert_eq!(
            secrets.authenticate(&m, "r", now, 0),
            Err(RestError::MissingIntegrity)
        );
        let mut buf = Vec::new();
        MessageBuilder::new(
            &mut buf,
            Class::Request,
            Method::ALLOCATE,
            TransactionId([4; 12]),
        )
        .finish_with_integrity(b"k")
        .unwrap();
        let m = Message::parse(&buf).unwrap();
        assert_eq!(
            secrets.authenticate(&m, "r", now, 0),
            Err(RestError::MissingUsername)
        );
    }

    /// Credentials as the Mattermost server mints them (TurnUsername "mattermost",
    /// TurnSharedKey used as raw bytes, expiry 23:59:59 tomorrow in its local time)
    /// authenticate a TURN request until that expiry (plus skew) and not after.
    #[test]
    fn mattermost_minted_credentials_authenticate() {
        let shared_key = RestSecret::new("TurnSharedKey from config.json");
        let now = 1_795_618_800;
        let expiry = mattermost_expiry(now, 3600);
        let c = mint(&shared_key, "mattermost", expiry);
        assert_eq!(c.username, format!("{expiry}:mattermost"));
        let bytes = request(&c.username, &long_term_key(&c.username, "r", &c.password));
        let m = Message::parse(&bytes).unwrap();
        let secrets = RestSecrets::new([shared_key]);
        assert!(secrets.authenticate(&m, "r", now, 0).is_ok());
        assert!(secrets.authenticate(&m, "r", expiry, 0).is_ok());
        assert!(secrets.authenticate(&m, "r", expiry + 30, 30).is_ok());
        assert_eq!(
            secrets.authenticate(&m, "r", expiry + 31, 30),
            Err(RestError::Expired {
                expiry,
                now: expiry + 31
            })
        );
    }

    #[test]
    fn mattermost_expiry_is_end_of_tomorrow_local_time() {
        // Reference values from GNU date:
        // `date -u -d 2026-11-25T15:00:00Z +%s` = 1795618800,
        // `date -u -d 2026-11-26T23:59:59Z +%s` = 1795737599,
        // `TZ=Pacific/Honolulu date -d '2026-11-26 23:59:59' +%s` = 1795773599 (UTC-10),
        // `TZ=Australia/Brisbane date -d '2026-11-27 23:59:59' +%s` = 1795787999 (UTC+10).
        let now = 1_795_618_800;
        assert_eq!(mattermost_expiry(now, 0), 1_795_737_599);
        // UTC+2: local 17:00 on the 25th → 2026-11-26T23:59:59+02:00 = 21:59:59Z.
        assert_eq!(mattermost_expiry(now, 7200), 1_795_737_599 - 7200);
        // UTC-10: local 05:00 on the 25th → 2026-11-26T23:59:59-10:00.
        assert_eq!(mattermost_expiry(now, -36_000), 1_795_773_599);
        // UTC+10: local 01:00 on the 26th → end of the 27th local.
        assert_eq!(mattermost_expiry(now, 36_000), 1_795_787_999);
        // Always between 24 h and 48 h ahead.
        for off in (-12 * 3600..=14 * 3600).step_by(1800) {
            let e = mattermost_expiry(now, off);
            assert!(
                e > now + 86_400 - 1 && e <= now + 2 * 86_400,
                "offset {off}"
            );
        }
    }
}
