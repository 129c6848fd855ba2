//! TURN REST credentials (draft-uberti-behave-turn-rest-00, coturn `use-auth-secret`):
//! `username = "<expiry unix secs>:<user>"`, `password = base64(HMAC-SHA1(secret, username))`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Mints `(username, password)` valid until `now_unix + ttl_secs`.
pub fn mint(secret: &str, user: &str, ttl_secs: u64, now_unix: u64) -> (String, String) {
    let username = format!("{}:{}", now_unix.saturating_add(ttl_secs), user);
    let password = STANDARD.encode(hmac_sha1(secret.as_bytes(), username.as_bytes()));
    (username, password)
}

/// A stable, non-reversible user id for a Janus token (never the token itself).
pub fn user_for_token(secret: &str, token: &str) -> String {
    let mac = hmac_sha1(
        secret.as_bytes(),
        format!("callrelay-user:{token}").as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(&mac[..9])
}

/// The `/turn-credentials` reply body (CONTRACTS.md).
pub fn credentials_json(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    now_unix: u64,
    stun_uri: Option<&str>,
    turn_uris: &[String],
) -> Value {
    let (username, password) = mint(secret, user, ttl_secs, now_unix);
    let mut ice = Vec::new();
    if let Some(s) = stun_uri {
        ice.push(json!({"urls": [s]}));
    }
    if !turn_uris.is_empty() {
        ice.push(json!({"urls": turn_uris, "username": username, "credential": password}));
    }
    json!({
        "username": username,
        "password": password,
        "ttl": ttl_secs,
        "uris": turn_uris,
        "iceServers": ice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_known_vector() {
        // base64(HMAC-SHA1("secret", "1700000000:mattermost")) computed independently
        // with `printf %s 1700000000:mattermost | openssl dgst -sha1 -hmac secret -binary | base64`
        let (u, p) = mint("secret", "mattermost", 100, 1_699_999_900);
        assert_eq!(u, "1700000000:mattermost");
        assert_eq!(p, "ExdB0SrMi6xMz8B12beJ8D6yLQg=");
    }

    #[test]
    fn user_id_is_not_the_token() {
        let u = user_for_token("s", "dG9rZW4=");
        assert!(!u.contains("dG9rZW4"));
        assert_eq!(u, user_for_token("s", "dG9rZW4="));
        assert_ne!(u, user_for_token("s", "other"));
    }
}
