//! Long-term credentials: TURN REST shared secrets (several live at once) and static users.
//!
//! The formulas come from `shared_ice::auth` (the gateway mints with the same code): REST
//! username `"<expiry unix secs>:<user>"`, password `base64(HMAC-SHA1(secret, username))`,
//! long-term key `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2). This module keeps
//! the server's lookup policy: static users first, then every live secret. Secrets are never
//! `Debug`-printed.

use shared_ice::auth::{RestSecret, parse_rest_username};

use crate::config::StaticUser;

/// A long-term key (16 bytes MD5). Zeroed on drop.
#[derive(Clone, Copy)]
pub(crate) struct Key(pub(crate) [u8; 16]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// TURN REST password for `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    RestSecret::new(secret)
        .password(username)
        .as_str()
        .to_owned()
}

/// Mints TURN REST credentials (username, password) the way Mattermost and coturn do.
pub fn rest_credentials(secret: &[u8], expiry_unix: u64, user: &str) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    Key(shared_ice::auth::long_term_key(username, realm, password))
}

/// Expiry of a REST username: the decimal number before the first `:` (or the whole name).
pub(crate) fn rest_expiry(username: &str) -> Option<u64> {
    parse_rest_username(username).ok().map(|(expiry, _)| expiry)
}

/// The credential store of one core: reloadable on SIGHUP.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) secrets: Vec<Vec<u8>>,
    pub(crate) users: Vec<StaticUser>,
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

/// Outcome of looking up candidate keys for a username.
pub(crate) enum Lookup {
    /// Candidate keys to try against MESSAGE-INTEGRITY, plus REST expiry if REST.
    Keys(Vec<Key>, Option<u64>),
    /// REST username whose expiry passed.
    Expired,
    /// Not a static user and not a REST username.
    BadUsername,
}

impl Credentials {
    pub(crate) fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        let mut keys = Vec::new();
        for u in &self.users {
            if u.name == username {
                keys.push(long_term_key(username, realm, &u.password));
            }
        }
        if !keys.is_empty() {
            return Lookup::Keys(keys, None);
        }
        if self.secrets.is_empty() {
            return Lookup::BadUsername;
        }
        let Some(expiry) = rest_expiry(username) else {
            return Lookup::BadUsername;
        };
        if expiry < unix_now {
            return Lookup::Expired;
        }
        for s in &self.secrets {
            keys.push(long_term_key(username, realm, &rest_password(s, username)));
        }
        Lookup::Keys(keys, Some(expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_vectors() {
        // coturn README example format: timestamp first.
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), None);
        assert_eq!(rest_expiry(":x"), None);
        // base64(HMAC-SHA1("secret", "1700000000:mattermost")), computed with the openssl CLI.
        let (u, p) = rest_credentials(b"secret", 1_700_000_000, "mattermost");
        assert_eq!(u, "1700000000:mattermost");
        assert_eq!(p, "ExdB0SrMi6xMz8B12beJ8D6yLQg=");
        // MD5("u:r:p"), computed independently with md5sum.
        assert_eq!(
            long_term_key("u", "r", "p").0,
            hex_literal::hex!("44add22b6f3179b751eafd68ee370f7d")
        );
    }

    #[test]
    fn lookup_tries_every_secret() {
        let c = Credentials {
            secrets: vec![b"new".to_vec(), b"old".to_vec()],
            users: vec![],
        };
        let (u, p) = rest_credentials(b"old", 2000, "x");
        match c.lookup(&u, "r", 1000) {
            Lookup::Keys(keys, Some(2000)) => {
                assert_eq!(keys.len(), 2);
                assert_eq!(keys[1].0, long_term_key(&u, "r", &p).0);
            }
            _ => panic!("expected keys"),
        }
        assert!(matches!(c.lookup(&u, "r", 2001), Lookup::Expired));
        assert!(matches!(c.lookup("bob", "r", 0), Lookup::BadUsername));
    }
}
