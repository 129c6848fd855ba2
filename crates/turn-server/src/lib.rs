//! The callrelay STUN/TURN relay: a sans-IO core ([`core`]) driven by a thin tokio runtime
//! ([`runtime`]). See docs/turn-server.md and docs/architecture.md.
#![warn(missing_docs)]
// Outside tests (clippy.toml relaxes these there) nothing unwraps or expects.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod core;
pub mod metrics;
pub mod policy;
pub mod quota;
pub mod runtime;
