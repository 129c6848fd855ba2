//! The TLS certificate's expiry as a metric, through the real binary: exported at start,
//! updated by a SIGHUP reload (what the ACME hook does after a renewal), absent without
//! TLS. The alert `TlsCertificateExpiring` reads it.
mod common;

use std::path::{Path, PathBuf};

use common::{Server, TempDir, free_port, metric_sample};

const METRIC: &str = "callrelay_turn_tls_cert_not_after_seconds";

/// Test-only certificates for 127.0.0.1 (the gateway's TLS fixtures).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures")
        .join(name)
}

#[test]
fn certificate_expiry_is_exported_and_follows_a_reload() {
    let dir = TempDir::new("tls-expiry");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::copy(fixture("cert1.pem"), &cert).unwrap();
    std::fs::copy(fixture("key1.pem"), &key).unwrap();
    let tls = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&[
        "--tls-listen",
        &tls,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    // cert1.pem: notAfter=Nov  1 15:30:25 2126 GMT (a GeneralizedTime)
    assert_eq!(s.metric_strict(METRIC), 4_949_220_625.0);
    // renewed: cert3.pem, notAfter=Dec  1 20:50:11 2036 GMT (a UTCTime)
    std::fs::copy(fixture("cert3.pem"), &cert).unwrap();
    std::fs::copy(fixture("key3.pem"), &key).unwrap();
    s.signal("-HUP");
    let v = s.wait_metric(METRIC, |v| v != 4_949_220_625.0);
    assert_eq!(v, 2_111_777_411.0, "{}", s.log.lock().unwrap());
    s.stop();
}

#[test]
fn no_tls_no_expiry_metric() {
    let s = Server::start(&[]);
    let text = s.metrics_text();
    assert!(metric_sample(&text, METRIC).is_none(), "{text}");
    s.stop();
}
