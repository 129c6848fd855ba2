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
