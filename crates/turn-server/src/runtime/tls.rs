//! The TLS certificate pair: loading (ring provider) and the acceptor a SIGHUP swaps.
//! Self-contained (no other runtime module needed), so it can move to a shared crate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a certificate pair could not be loaded. The message (`TLS: …`) names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or holds a malformed PEM section.
    #[error("TLS: cert {}: {source}", path.display())]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no CERTIFICATE section.
    #[error("TLS: cert {}: no CERTIFICATE in PEM", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file cannot be read or holds no usable private key.
    #[error("TLS: key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads a rustls acceptor (ring provider) from PEM files.
pub fn load_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |source| TlsError::Cert {
        path: cert.into(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(cert_err)?
        .collect::<Result<_, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.into(),
        source,
    })?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Shared, reloadable TLS acceptor.
pub type SharedTls = Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>;

/// Loads the pair and, only when it loads, puts it in place of `tls`'s acceptor (at start,
/// and on SIGHUP: connections accepted afterwards get the new certificate, open ones keep
/// theirs). A pair that does not load leaves the running acceptor as it was.
pub fn swap_tls(tls: &SharedTls, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let acceptor = load_tls(cert, key)?;
    if let Ok(mut g) = tls.write() {
        *g = Some(acceptor);
    }
    Ok(())
}
