//! TURN REST credentials (draft-uberti-behave-turn-rest-00, coturn `use-auth-secret`):
//! `username = "<expiry unix secs>:<user>"`, `password = base64(HMAC-SHA1(secret, username))`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use shared_ice::auth::{RestSecret, mint_with_ttl};
use shared_ice::ice::{IceServer, TurnRestResponse};

/// Mints `(username, password)` valid until `now_unix + ttl_secs` (shared-ice's minting,
/// the same code the turn-server verifies with).
pub fn mint(secret: &str, user: &str, ttl_secs: u64, now_unix: u64) -> (String, String) {
    let c = mint_with_ttl(
        &RestSecret::new(secret.as_bytes()),
        user,
        now_unix,
        ttl_secs,
    );
    (c.username.clone(), c.password.clone())
}

/// A stable, non-reversible user id for a Janus token (never the token itself).
pub fn user_for_token(secret: &str, token: &str) -> String {
    #[expect(
        clippy::expect_used,
        reason = "infallible: HMAC accepts keys of any length"
    )]
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("callrelay-user:{token}").as_bytes());
    let mac = mac.finalize().into_bytes();
    URL_SAFE_NO_PAD.encode(&mac[..9])
}

/// The `/turn-credentials` reply body (CONTRACTS.md): the TURN REST API fields plus
/// `iceServers` in the form `RTCPeerConnection` takes.
pub fn credentials_json(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    now_unix: u64,
    stun_uri: Option<&str>,
    turn_uris: &[String],
) -> Value {
    let creds = mint_with_ttl(
        &RestSecret::new(secret.as_bytes()),
        user,
        now_unix,
        ttl_secs,
    );
    let mut ice = Vec::new();
    if let Some(s) = stun_uri {
        ice.push(IceServer::stun([s.to_string()]));
    }
    if !turn_uris.is_empty() {
        ice.push(IceServer::turn(turn_uris.iter().cloned(), &creds));
    }
    let rest = TurnRestResponse::new(&creds, ttl_secs, turn_uris.to_vec());
    let mut v = serde_json::to_value(&rest).unwrap_or_else(|_| json!({}));
    v["iceServers"] = serde_json::to_value(&ice).unwrap_or_else(|_| json!([]));
    v
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
