//! TLS: the gateway's ALPN and the `--check-config` load. Loading, the hot-swappable
//! acceptor and the certificate's expiry are [`callrelay_service::tls`]'s.

use super::ServeError;
use std::path::Path;

/// The ALPN protocol every TLS listener offers (hyper serves HTTP/1.1 only).
pub(super) const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Loads the certificate chain and key as the start and SIGHUP do (`--check-config`).
pub fn check_tls(cert: &Path, key: &Path) -> Result<(), ServeError> {
    callrelay_service::tls::load_acceptor(cert, key, ALPN)?;
    Ok(())
}
