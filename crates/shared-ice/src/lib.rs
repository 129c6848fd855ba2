//! Sans-IO STUN/TURN codec, TURN REST credentials and ICE server config types shared
//! by callrelay's `turn-server` and `gateway`.
//!
//! * [`stun`] — zero-copy STUN messages (RFC 8489) with the TURN attributes of
//!   RFC 8656, 6156 and 6062: [`stun::Message::parse`] borrows the datagram,
//!   [`stun::MessageBuilder`] writes into your buffer.
//! * [`channel`] — TURN ChannelData, the relay fast path.
//! * [`framing`] — splitting a TCP/TLS stream into STUN and ChannelData frames.
//! * [`auth`] — long-term keys and TURN REST shared-secret credentials with rotation.
//! * [`ice`] — `RTCIceServer` and TURN REST API JSON types.
//!
//! No I/O, no clock, no randomness: callers pass `unix_now` and bytes in and get
//! bytes out. No input makes this crate panic.
//!
//! # Example: answer an authenticated Allocate
//!
//! ```
//! use shared_ice::auth::{mint_with_ttl, RestSecret, RestSecrets};
//! use shared_ice::stun::{
//!     error_code, Class, Message, MessageBuilder, Method, TransactionId, PROTOCOL_UDP,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secrets = RestSecrets::new([RestSecret::new("s3cret")]);
//! let now = 1_700_000_000;
//! let creds = mint_with_ttl(secrets.current().unwrap(), "alice", now, 3600);
//! let realm = "example.org";
//!
//! // What a client would send (built here with the same codec).
//! let mut request = Vec::new();
//! let client_key = shared_ice::auth::long_term_key(&creds.username, realm, &creds.password);
//! MessageBuilder::new(&mut request, Class::Request, Method::ALLOCATE, TransactionId([1; 12]))
//!     .requested_transport(PROTOCOL_UDP)
//!     .username(&creds.username)
//!     .realm(realm)
//!     .nonce("abcd")
//!     .finish_with_integrity_and_fingerprint(&client_key)?;
//!
//! // The server side: parse (no allocation), check, verify, answer.
//! let msg = Message::parse(&request)?;
//! assert!(msg.check_fingerprint());
//! assert_eq!(msg.unknown_comprehension_required().count(), 0);
//! let auth = secrets.authenticate(&msg, realm, now, 60)?;
//! assert_eq!(msg.requested_transport()?, Some(PROTOCOL_UDP));
//!
//! let mut out = Vec::with_capacity(1500);
//! let relayed = "192.0.2.15:50000".parse()?;
//! let mapped = "198.51.100.7:40000".parse()?;
//! let response = MessageBuilder::success_response(&mut out, &msg)
//!     .xor_relayed_address(relayed)
//!     .xor_mapped_address(mapped)
//!     .lifetime(600)
//!     .finish_with_integrity_and_fingerprint(auth.key.as_bytes())?;
//!
//! let parsed = Message::parse(response)?;
//! assert_eq!(parsed.class(), Class::Success);
//! assert!(parsed.verify_integrity(auth.key.as_bytes()));
//! assert_eq!(parsed.xor_relayed_address()?, Some(relayed));
//!
//! // A request with a bad key gets 401.
//! let mut err = Vec::new();
//! MessageBuilder::error_response(&mut err, &msg, error_code::UNAUTHENTICATED)
//!     .realm(realm)
//!     .nonce("fresh")
//!     .finish_with_fingerprint()?;
//! assert_eq!(Message::parse(&err)?.error_code()?.map(|e| e.code), Some(401));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
// No input makes the codec panic, and no call is assumed to succeed: outside tests
// (clippy.toml relaxes these there) nothing indexes, slices, unwraps or expects.
#![deny(clippy::indexing_slicing)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod auth;
pub mod channel;
mod error;
pub mod framing;
pub mod ice;
mod reader;
pub mod stun;
pub mod x509;

pub use error::{DecodeError, EncodeError};
