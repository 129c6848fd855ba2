//! The callrelay gateway: Janus API + janus.plugin.videocall, sans-IO core plus axum shell.
//!
//! * [`core`] — the sans-IO state machine (sessions, handles, tokens, videocall, admin).
//! * [`sdp`] — merging trickled candidates into forwarded SDP.
//! * [`store`] — token store and videocall user registry traits (+ in-memory impls).
//! * [`server`] — the tokio/axum shell (WebSocket, HTTP long poll, Admin API, TLS).
//! * [`testpage`] — the test call page served on the admin listener.
#![warn(missing_docs)]
// Outside tests (clippy.toml relaxes these there) nothing unwraps or expects.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod core;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod metrics;
pub mod sdp;
pub mod server;
pub mod store;
pub mod testpage;
pub mod turn;

pub use config::{CliConfig, ClusterConfig, Config, ConfigError, FileConfig, NatsAuth};
pub use server::{
    Listeners, Reloader, ServeError, check_tls, serve, serve_with_reload, serve_with_reloader,
};
