//! ICE server configuration handed to browsers, and the TURN REST API reply.
//!
//! With the default `serde` feature these serialize to exactly the JSON the WebRTC
//! `RTCIceServer` dictionary and the TURN REST API
//! (draft-uberti-behave-turn-rest-00 §2.2) use.

use core::fmt;

use crate::auth::RestCredentials;

/// One `RTCIceServer`: `{"urls": [...], "username": "...", "credential": "..."}`,
/// with absent fields omitted.
#[derive(Clone, Default, Eq, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URIs.
    pub urls: Vec<String>,
    /// TURN username.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub username: Option<String>,
    /// TURN password.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub credential: Option<String>,
}

impl IceServer {
    /// A server without credentials (STUN).
    #[must_use]
    pub fn stun(urls: impl IntoIterator<Item = String>) -> Self {
        Self {
            urls: urls.into_iter().collect(),
            username: None,
            credential: None,
        }
    }

    /// A TURN server with REST credentials.
    #[must_use]
    pub fn turn(urls: impl IntoIterator<Item = String>, creds: &RestCredentials) -> Self {
        Self {
            urls: urls.into_iter().collect(),
            username: Some(creds.username.clone()),
            credential: Some(creds.password.clone()),
        }
    }
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The TURN REST API reply: `{"username", "password", "ttl", "uris"}`.
#[derive(Clone, Default, Eq, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
pub struct TurnRestResponse {
    /// `"<expiry>:<user>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
    /// TURN URIs.
    pub uris: Vec<String>,
}

impl TurnRestResponse {
    /// From minted credentials.
    #[must_use]
    pub fn new(creds: &RestCredentials, ttl: u64, uris: Vec<String>) -> Self {
        Self {
            username: creds.username.clone(),
            password: creds.password.clone(),
            ttl,
            uris,
        }
    }
}

impl fmt::Debug for TurnRestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnRestResponse")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("uris", &self.uris)
            .finish()
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;
    use crate::auth::{RestSecret, mint};

    #[test]
    fn serializes_like_rtc_ice_server() {
        let stun = IceServer::stun(["stun:turn.example.org:3478".to_owned()]);
        assert_eq!(
            serde_json::to_string(&stun).unwrap(),
            r#"{"urls":["stun:turn.example.org:3478"]}"#
        );
        let c = mint(&RestSecret::new("s"), "u", 10);
        let turn = IceServer::turn(
            [
                "turn:h:3478".to_owned(),
                "turn:h:3478?transport=tcp".to_owned(),
            ],
            &c,
        );
        let v: serde_json::Value = serde_json::to_value(&turn).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"urls": ["turn:h:3478", "turn:h:3478?transport=tcp"],
                               "username": "10:u", "credential": c.password})
        );
        assert!(!format!("{turn:?}").contains(&c.password));
        let back: IceServer = serde_json::from_value(v).unwrap();
        assert_eq!(back, turn);
    }

    #[test]
    fn serializes_turn_rest_response() {
        let c = mint(&RestSecret::new("s"), "u", 10);
        let r = TurnRestResponse::new(&c, 86_400, vec!["turn:h:3478".to_owned()]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"username": "10:u", "password": c.password, "ttl": 86400, "uris": ["turn:h:3478"]})
        );
        assert!(!format!("{r:?}").contains(&c.password));
    }
}
