//! The service shell both callrelay binaries (turn-server, gateway) share: what each did
//! the same way in its own style, now once.
//!
//! * [`tls`] — a PEM certificate chain + key → rustls acceptor, the hot-swappable
//!   acceptor a SIGHUP replaces (a broken pair keeps the old one), the leaf's expiry.
//! * [`time`] — wall-clock Unix time for the sans-IO cores' `unix_now` input.
//! * [`systemd`] — `READY=1`/`STOPPING=1`, the watchdog interval, [`systemd::Heartbeat`]
//!   and the [`systemd::Watchdog`] that pings only while the watched loops turn.
//! * [`config`] — the TOML file, flags over file over defaults, range checks and the
//!   address/CIDR parsers, with errors that name the key (each service keeps its keys).
//! * [`metrics`] — `register`, the one place a metric that does not build or is registered twice is caught.
//! * [`logging`] — the `tracing` subscriber (stderr, `RUST_LOG`, default `info`).
//!
//! It depends only downward (on shared-ice); the services depend on it and never on each
//! other.
#![warn(missing_docs)]
// Outside tests (clippy.toml relaxes these there) nothing unwraps or expects.
#![warn(clippy::unwrap_used, clippy::expect_used)]
// It parses operator input (config files, flags, PEM): no indexing that could panic.
#![deny(clippy::indexing_slicing)]

pub mod config;
pub mod logging;
pub mod metrics;
pub mod systemd;
pub mod time;
pub mod tls;
