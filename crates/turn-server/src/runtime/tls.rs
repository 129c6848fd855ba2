//! The TLS certificate pair: loading (ring provider) and the acceptor a SIGHUP swaps.

use std::sync::{Arc, RwLock};

use super::RuntimeError;

/// Loads a rustls acceptor (ring provider) from PEM files.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, RuntimeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| RuntimeError::Tls(format!("cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::Tls(format!("cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(RuntimeError::Tls(format!(
            "cert {}: no CERTIFICATE in PEM",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| RuntimeError::Tls(format!("key {}: {e}", key.display())))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RuntimeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| RuntimeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Shared, reloadable TLS acceptor.
pub type SharedTls = Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>;
