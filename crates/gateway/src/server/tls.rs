//! TLS: loading the certificate and key, the hot-swappable acceptor, expiry metric.

use super::ServeError;
use crate::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub(super) type SharedTls = Arc<std::sync::RwLock<Option<TlsAcceptor>>>;

/// Exports the expiry of the first certificate in `cert` (the leaf) as
/// `callrelay_gateway_tls_cert_not_after_seconds`. Called after the pair loaded.
pub(super) fn record_cert_expiry(metrics: &Metrics, cert: &Path) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok);
    match leaf.map(|d| shared_ice::x509::not_after(&d)) {
        Some(Ok(t)) => metrics.set_tls_cert_not_after(t),
        Some(Err(e)) => {
            tracing::warn!(cert = %cert.display(), error = ?e, "cannot read the certificate's expiry")
        }
        None => tracing::warn!(cert = %cert.display(), "no certificate to read the expiry of"),
    }
}

/// Loads the certificate chain and key as the start and SIGHUP do (`--check-config`).
pub fn check_tls(cert: &Path, key: &Path) -> Result<(), ServeError> {
    load_tls(cert, key).map(|_| ())
}

pub(super) fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(sc)))
}
