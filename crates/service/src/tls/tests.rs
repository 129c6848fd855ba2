use super::*;
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `notAfter=Nov  1 15:30:25 2126 GMT` of cert1.pem and cert2.pem (`openssl x509 -enddate`).
const FIXTURE_NOT_AFTER: u64 = 4_949_220_625;

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callrelay-service-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs a TLS handshake in memory between `server` and a client that trusts only
/// `trusted` (a self-signed PEM certificate) and asks for `localhost`: Ok when the server
/// presented that certificate.
fn handshake(server: &TlsAcceptor, trusted: &Path) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(trusted).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(cc), name).unwrap();
    let mut srv = rustls::ServerConnection::new(server.config().clone()).unwrap();
    // bounded: a TLS 1.3 handshake takes two flights each way
    for _ in 0..10 {
        if !client.is_handshaking() && !srv.is_handshaking() {
            return Ok(());
        }
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        srv.read_tls(&mut buf.as_slice()).unwrap();
        srv.process_new_packets()?;
        let mut buf = Vec::new();
        srv.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
    }
    panic!("handshake did not finish in 10 rounds");
}

#[test]
fn a_pair_loads_and_serves_its_certificate() {
    let a = load_acceptor(&fixture("cert1.pem"), &fixture("key1.pem"), &[]).unwrap();
    handshake(&a, &fixture("cert1.pem")).unwrap();
    assert!(
        handshake(&a, &fixture("cert2.pem")).is_err(),
        "a client trusting only cert2 must refuse cert1"
    );
    assert!(a.config().alpn_protocols.is_empty());
    let a = load_acceptor(&fixture("cert1.pem"), &fixture("key1.pem"), &[b"http/1.1"]).unwrap();
    assert_eq!(a.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
}

#[test]
fn errors_name_the_key_and_the_file() {
    let garbage = temp_file("garbage.pem", "not a pem file\n");
    let missing = fixture("missing.pem");
    for (cert, key, variant, names) in [
        (
            &garbage,
            &fixture("key1.pem"),
            "NoCertificate",
            vec!["cert ", "garbage.pem"],
        ),
        (
            &missing,
            &fixture("key1.pem"),
            "Cert",
            vec!["cert ", "missing.pem"],
        ),
        (
            &fixture("cert1.pem"),
            &garbage,
            "Key",
            vec!["key ", "garbage.pem"],
        ),
        (
            &fixture("cert1.pem"),
            &fixture("key2.pem"),
            "Pair",
            vec!["cert ", "cert1.pem", "key ", "key2.pem"],
        ),
    ] {
        let Err(e) = load_acceptor(cert, key, &[]) else {
            panic!("{} with {} loaded", cert.display(), key.display())
        };
        assert!(format!("{e:?}").starts_with(variant), "{e:?}");
        let msg = e.to_string();
        for n in names {
            assert!(msg.contains(n), "{msg:?} does not name {n}");
        }
    }
}

#[test]
fn a_broken_pair_keeps_the_running_acceptor() {
    let shared = SharedTls::default();
    assert!(shared.current().is_none());
    let not_after = shared
        .reload(&fixture("cert1.pem"), &fixture("key1.pem"), &[])
        .unwrap();
    assert_eq!(not_after.ok(), Some(FIXTURE_NOT_AFTER));
    let running = shared.current().unwrap();
    let garbage = temp_file("broken-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    for (cert, key) in [
        (garbage.clone(), fixture("key1.pem")),
        (fixture("cert1.pem"), fixture("key2.pem")),
        (fixture("missing.pem"), fixture("key1.pem")),
    ] {
        assert!(shared.reload(&cert, &key, &[]).is_err());
        let now = shared.current().unwrap();
        assert!(
            Arc::ptr_eq(now.config(), running.config()),
            "a failed reload replaced the acceptor"
        );
        handshake(&now, &fixture("cert1.pem")).unwrap();
    }
    // a clone is the same slot: a good pair reaches every listener holding it
    let listener = shared.clone();
    let not_after = shared
        .reload(&fixture("cert2.pem"), &fixture("key2.pem"), &[])
        .unwrap();
    assert_eq!(not_after.ok(), Some(FIXTURE_NOT_AFTER));
    handshake(&listener.current().unwrap(), &fixture("cert2.pem")).unwrap();
    assert!(handshake(&listener.current().unwrap(), &fixture("cert1.pem")).is_err());
}

#[test]
fn not_after_of_an_unreadable_certificate_is_an_error() {
    for f in ["missing.pem", "key1.pem"] {
        assert!(matches!(
            cert_not_after(&fixture(f)),
            Err(ExpiryError::NoCertificate)
        ));
    }
    assert_eq!(
        cert_not_after(&fixture("cert2.pem")).ok(),
        Some(FIXTURE_NOT_AFTER)
    );
}
