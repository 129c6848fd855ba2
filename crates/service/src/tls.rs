//! TLS for the stream listeners: a PEM certificate chain and private key loaded into a
//! rustls acceptor (ring provider, safe default protocol versions, no client auth), the
//! shared acceptor a SIGHUP swaps, and the leaf certificate's expiry for the services'
//! `*_tls_cert_not_after_seconds` gauges.
//!
//! A reload that fails leaves the running acceptor in place: a renewal that wrote a
//! broken or mismatched pair never takes TLS down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a certificate/key pair did not load. The message names the config key (`cert` or
/// `key`) and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file (config key `cert`) cannot be read or holds a malformed
    /// PEM section.
    #[error("cert {}: {source}", path.display())]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no CERTIFICATE section.
    #[error("cert {}: no CERTIFICATE in PEM", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The private key file (config key `key`) cannot be read or holds no usable key.
    #[error("key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// Both files parsed but rustls refused them together (e.g. the key does not match
    /// the certificate).
    #[error("cert {} with key {}: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// Loads `cert` (PEM chain, leaf first) and `key` (PEM private key) into an acceptor that
/// offers the ALPN protocols `alpn` (empty: no ALPN).
pub fn load_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
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
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.into(),
        source,
    })?;
    let pair_err = |source| TlsError::Pair {
        cert: cert.into(),
        key: key.into(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(pair_err)?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(sc)))
}

/// Why [`cert_not_after`] found no expiry.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    /// The file holds no readable certificate.
    #[error("no certificate to read the expiry of")]
    NoCertificate,
    /// The leaf's DER does not parse as far as its validity.
    #[error("cannot read the certificate's expiry: {0:?}")]
    Der(shared_ice::x509::CertError),
}

/// The expiry (`notAfter`, Unix seconds) of the first certificate in `cert` (the leaf),
/// the value of the services' `*_tls_cert_not_after_seconds` gauge.
pub fn cert_not_after(cert: &Path) -> Result<u64, ExpiryError> {
    let leaf = CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok)
        .ok_or(ExpiryError::NoCertificate)?;
    shared_ice::x509::not_after(&leaf).map_err(ExpiryError::Der)
}

/// The acceptor every listener task reads at each accept and a SIGHUP replaces; `None`
/// when TLS is off. Cloning shares it.
#[derive(Clone, Default)]
pub struct SharedTls(Arc<RwLock<Option<TlsAcceptor>>>);

impl std::fmt::Debug for SharedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTls")
            .field("loaded", &self.current().is_some())
            .finish()
    }
}

impl SharedTls {
    /// A shared slot holding `acceptor`.
    pub fn new(acceptor: Option<TlsAcceptor>) -> Self {
        Self(Arc::new(RwLock::new(acceptor)))
    }

    /// The acceptor for the connection being accepted now (a handshake in progress keeps
    /// the one it started with).
    pub fn current(&self) -> Option<TlsAcceptor> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the pair again ([`load_acceptor`]) and, when it loads, swaps it in and
    /// returns the new leaf's expiry ([`cert_not_after`]; `Err` inside when unreadable,
    /// for the service to log). On an error the running acceptor stays.
    pub fn reload(
        &self,
        cert: &Path,
        key: &Path,
        alpn: &[&[u8]],
    ) -> Result<Result<u64, ExpiryError>, TlsError> {
        let acceptor = load_acceptor(cert, key, alpn)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(acceptor);
        Ok(cert_not_after(cert))
    }
}

#[cfg(test)]
mod tests;
