//! TLS: the gateway's ALPN and the `--check-config` load. Loading, the hot-swappable
//! acceptor and the certificate's expiry are [`callrelay_service::tls`]'s.

use super::ServeError;
use crate::metrics::Metrics;
use callrelay_service::tls::ExpiryError;
use std::path::Path;

/// The ALPN protocol every TLS listener offers (hyper serves HTTP/1.1 only).
pub(super) const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Exports the leaf's expiry read after the pair loaded as
/// `callrelay_gateway_tls_cert_not_after_seconds`.
pub(super) fn record_cert_expiry(
    metrics: &Metrics,
    cert: &Path,
    not_after: Result<u64, ExpiryError>,
) {
    match not_after {
        Ok(t) => metrics.set_tls_cert_not_after(t),
        Err(e) => tracing::warn!(cert = %cert.display(), "{e}"),
    }
}

/// Loads the certificate chain and key as the start and SIGHUP do (`--check-config`).
pub fn check_tls(cert: &Path, key: &Path) -> Result<(), ServeError> {
    callrelay_service::tls::load_acceptor(cert, key, ALPN)?;
    Ok(())
}
