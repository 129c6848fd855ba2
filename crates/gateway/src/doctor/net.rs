//! The clients' plumbing: URLs, name resolution, TLS, HTTP/1.1 by hand, ids.

use rand::Rng as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
}

/// Parses `scheme://host[:port][/path]` for http/https/ws/wss.
pub(super) fn parse_url(u: &str) -> Result<Url, String> {
    let (scheme, rest) = u.split_once("://").ok_or("no scheme")?;
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => (false, 80),
        "https" | "wss" => (true, 443),
        other => return Err(format!("unsupported scheme {other}:")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    let (host, port) = split_host_port(authority, default_port)?;
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(r) = authority.strip_prefix('[') {
        let (h, rest) = r.split_once(']').ok_or("unclosed [ in host")?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default_port,
        };
        return Ok((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port {p:?}"))?,
        )),
        None if authority.is_empty() => Err("no host".into()),
        None => Ok((authority.to_string(), default_port)),
    }
}

/// `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`,
/// `turns:host[:port][?transport=tcp]` (RFC 7064/7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IceUri {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tcp: bool,
    /// `turns:`: TLS over TCP.
    pub(super) tls: bool,
}

impl IceUri {
    pub(super) fn transport(&self) -> &'static str {
        match (self.tls, self.tcp) {
            (true, _) => "TLS",
            (false, true) => "TCP",
            (false, false) => "UDP",
        }
    }
}

pub(super) fn parse_ice_uri(u: &str, scheme: &str) -> Result<IceUri, String> {
    let rest = u
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| format!("must start with {scheme}:"))?;
    let tls = scheme == "turns";
    let (hp, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = match query {
        "" => tls,
        "transport=udp" if tls => {
            return Err("turns: over UDP (DTLS) is not supported: use ?transport=tcp".into());
        }
        "transport=udp" => false,
        "transport=tcp" => true,
        q => return Err(format!("unknown parameter ?{q} (only transport=udp|tcp)")),
    };
    let (host, port) = split_host_port(hp, if tls { 5349 } else { 3478 })?;
    Ok(IceUri {
        host,
        port,
        tcp,
        tls,
    })
}

pub(super) async fn resolve(host: &str, port: u16, t: Duration) -> Result<SocketAddr, String> {
    let fut = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("DNS lookup of {host} timed out")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Ok(Ok(mut it)) => it.next().ok_or_else(|| format!("{host} has no address")),
    }
}

pub(super) fn tls_connector(ca_file: Option<&PathBuf>) -> Result<(TlsConnector, usize), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut files = vec![system];
    if let Some(f) = ca_file {
        files.push(f.clone());
    }
    for (i, f) in files.iter().enumerate() {
        match CertificateDer::pem_file_iter(f) {
            Ok(it) => {
                for c in it.flatten() {
                    let _ = roots.add(c);
                }
            }
            // the system bundle may be absent (ca-certificates not installed): report
            // certificates as untrusted rather than failing; an explicit --ca-file must exist
            Err(e) if i > 0 => return Err(format!("--ca-file {}: {e}", f.display())),
            Err(_) => {}
        }
    }
    let n = roots.len();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((TlsConnector::from(Arc::new(cfg)), n))
}

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a connection attempt failed.
pub(super) enum ConnErr {
    Tcp(String),
    Tls(String),
}

pub(super) struct Connected {
    pub(super) io: Box<dyn Io>,
    pub(super) addr: SocketAddr,
    pub(super) tcp: Duration,
    pub(super) tls: Option<(Duration, String)>,
}

pub(super) async fn connect(
    url: &Url,
    tls: &TlsConnector,
    t: Duration,
) -> Result<Connected, ConnErr> {
    let addr = resolve(&url.host, url.port, t)
        .await
        .map_err(ConnErr::Tcp)?;
    let t0 = Instant::now();
    let tcp = match tokio::time::timeout(t, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(ConnErr::Tcp(format!(
                "TCP connect to {addr} timed out after {} s",
                t.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(ConnErr::Tcp(format!("TCP connect to {addr}: {e}"))),
        Ok(Ok(s)) => s,
    };
    let tcp_time = t0.elapsed();
    if !url.tls {
        return Ok(Connected {
            io: Box::new(tcp),
            addr,
            tcp: tcp_time,
            tls: None,
        });
    }
    let name = rustls_pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| ConnErr::Tls(format!("bad host name {}: {e}", url.host)))?;
    let t1 = Instant::now();
    match tokio::time::timeout(t, tls.connect(name, tcp)).await {
        Err(_) => Err(ConnErr::Tls(format!(
            "TLS handshake with {addr} timed out after {} s",
            t.as_secs()
        ))),
        Ok(Err(e)) => Err(ConnErr::Tls(format!("TLS handshake with {addr}: {e}"))),
        Ok(Ok(s)) => {
            let v = s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}").replace("TLSv1_", "TLS 1."))
                .unwrap_or_default();
            Ok(Connected {
                io: Box::new(s),
                addr,
                tcp: tcp_time,
                tls: Some((t1.elapsed(), v)),
            })
        }
    }
}

pub(super) fn tls_fix(err: &str, host: &str, for_browsers: bool) -> String {
    let who = if for_browsers {
        "Browsers refuse wss:// to an untrusted certificate without any message to the user."
    } else {
        "Mattermost verifies this certificate and rejects self-signed ones unless \"Enable Insecure Outgoing Connections\" is on (which disables checks for all its outgoing connections: don't)."
    };
    if err.contains("corrupt message") || err.contains("InvalidContentType") {
        return "the listener does not speak TLS: use http:// / ws:// in the URL, or enable TLS on that listener (admin_tls / ws_tls = true with cert and key)".into();
    }
    format!(
        "the certificate is not valid for {host} ({err}). {who} Use a certificate from a public CA for this host name (docs/mattermost.md §3){}",
        if for_browsers {
            ""
        } else {
            ", or plain http:// to the admin port on loopback or a private network"
        }
    )
}

pub(super) async fn http_post(
    io: &mut Box<dyn Io>,
    url: &Url,
    body: &str,
    t: Duration,
) -> Result<(u16, String), String> {
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: callrelay-gateway-doctor\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        body.len()
    );
    let exchange = async {
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(n) => n,
                // a TLS peer that closes without close_notify: keep what arrived
                Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                break;
            }
            if let Some(done) = complete_response(&buf) {
                buf.truncate(done);
                break;
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(t, exchange).await {
        Err(_) => return Err(format!("no HTTP answer within {} s", t.as_secs())),
        Ok(Err(e)) => return Err(format!("HTTP exchange failed: {e}")),
        Ok(Ok(b)) => b,
    };
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response ({} bytes)", buf.len()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or("not an HTTP response")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Length of a complete response in `buf` (Content-Length or chunked), if complete.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let head_len = head.len() + 4;
    for l in head.lines() {
        let l = l.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            let n: usize = v.trim().parse().ok()?;
            return (body.len() >= n).then_some(head_len + n);
        }
    }
    body.ends_with("0\r\n\r\n").then_some(buf.len())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// A Mattermost id: 26 characters of its base32 alphabet (model.NewId).
pub(super) fn mattermost_id() -> String {
    pub(super) const A: &[u8] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut r = rand::rng();
    (0..26)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect()
}
