//! `gateway`: callrelay's Janus-compatible signaling gateway.
// Outside tests (clippy.toml relaxes these there) nothing unwraps or expects.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Context as _;
use clap::Parser;
use gateway::{CliConfig, Config, FileConfig, Listeners};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "doctor")]
mod doctor;

/// Janus API (WebSocket, HTTP, Admin) gateway with janus.plugin.videocall and TURN REST
/// credentials. Without a subcommand it runs the server; flags override the TOML file
/// given with --config.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a Mattermost WebRTC deployment end to end (Admin URL, WebSocket URL, STUN,
    /// TURN) with Mattermost's eight settings, or with --calls the STUN/TURN servers of
    /// the Calls plugin; exit status 1 when a check fails.
    #[cfg(feature = "doctor")]
    Doctor(doctor::DoctorArgs),
}

/// Server flags.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only check the configuration (file, flags and environment, and load the TLS
    /// certificate and key), then exit: 0 when it is valid, 2 with the key named when it
    /// is not. Binds nothing, so it runs next to the running service (systemd ExecReload).
    #[arg(long)]
    check_config: bool,
    /// Janus WebSocket listener (subprotocol janus-protocol) [default: 0.0.0.0:8188].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Janus HTTP REST + long-poll listener [default: 0.0.0.0:8088].
    #[arg(long, value_name = "ADDR:PORT")]
    http_listen: Option<SocketAddr>,
    /// Admin API (/admin, WS janus-admin-protocol) and /metrics [default: 127.0.0.1:7088].
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<SocketAddr>,
    /// Admin API secret (Mattermost's "Gateway Admin Secret").
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_ADMIN_SECRET",
        hide_env_values = true
    )]
    admin_secret: Option<String>,
    /// Require a token added through the Admin API on every request.
    #[arg(long)]
    token_auth: bool,
    /// Janus api_secret accepted instead of a token.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_API_SECRET",
        hide_env_values = true
    )]
    api_secret: Option<String>,
    /// TLS certificate chain (PEM); with --key every listener speaks TLS.
    #[arg(long, value_name = "PEM")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// TLS on the WebSocket listener (wss) [default: true when --cert/--key are set].
    #[arg(long, value_name = "BOOL")]
    ws_tls: Option<bool>,
    /// TLS on the HTTP listener [default: true when --cert/--key are set].
    #[arg(long, value_name = "BOOL")]
    http_tls: Option<bool>,
    /// TLS on the admin listener [default: true when --cert/--key are set].
    #[arg(long, value_name = "BOOL")]
    admin_tls: Option<bool>,
    /// WebSocket URL the test call page (/test on the admin listener) connects to
    /// [default: ws(s)://<page host>:<WebSocket listener port>].
    #[arg(long, value_name = "URL")]
    test_page_ws_url: Option<String>,
    /// STUN URI handed out by /turn-credentials (stun:host:port).
    #[arg(long, value_name = "URI")]
    stun_uri: Option<String>,
    /// TURN URI handed out by /turn-credentials (repeatable).
    #[arg(long = "turn-uri", value_name = "URI")]
    turn_uri: Vec<String>,
    /// TURN REST shared secret (the turn-server's --auth-secret).
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_TURN_SECRET",
        hide_env_values = true
    )]
    turn_secret: Option<String>,
    /// Lifetime of minted TURN credentials in seconds [default: 86400].
    #[arg(long, value_name = "SECS")]
    turn_ttl: Option<u64>,
    /// Forward a local call's offer at once; the turn-server installs both browsers'
    /// permissions before the answer goes (only when every browser is relay-only on our
    /// turn-server: docs/gateway.md "Early offer") [default: false].
    #[arg(long, value_name = "BOOL")]
    early_offer: Option<bool>,
    /// How long an early-offer answer waits for the turn-server's confirmations, ms
    /// [default: 50].
    #[arg(long, value_name = "MS")]
    early_offer_timeout_ms: Option<u64>,
    /// A turn-server's control endpoint, http://IP:PORT of its metrics_listen (repeatable).
    #[arg(long = "turn-control-url", value_name = "URL")]
    turn_control_url: Vec<String>,
    /// The turn-servers' control_secret.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_TURN_CONTROL_SECRET",
        hide_env_values = true
    )]
    turn_control_secret: Option<String>,
    /// Directory for tokens.json [default: /var/lib/callrelay-gateway].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Session idle timeout in seconds, 0 = never [default: 60].
    #[arg(long, value_name = "SECS")]
    session_timeout: Option<u64>,
    /// How long an offer/answer waits for trickled candidates, ms [default: 1000].
    #[arg(long, value_name = "MS")]
    candidate_wait_ms: Option<u64>,
    /// How long an offer/answer that can connect (a relay candidate per transport) still
    /// waits for host/server-reflexive candidates, ms [default: 100].
    #[arg(long, value_name = "MS")]
    candidate_grace_ms: Option<u64>,
    /// Seconds a closed WebSocket's sessions wait for a claim, 0 = none [default: 0].
    #[arg(long, value_name = "SECS")]
    reclaim_session_timeout: Option<u64>,
    /// Drop tokens unused for this many seconds, 0 = never [default: 604800].
    #[arg(long, value_name = "SECS")]
    token_max_idle: Option<u64>,
    /// Most Janus sessions held at once; `create` beyond it gets 490 [default: 100000].
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Most sessions alive at once created with one token, 0 = no limit [default: 64].
    #[arg(long, value_name = "N")]
    max_sessions_per_token: Option<usize>,
    /// Most sessions alive at once owned by one WebSocket, 0 = no limit [default: 16].
    #[arg(long, value_name = "N")]
    max_sessions_per_connection: Option<usize>,
    /// HTTP long-poll wait before a keepalive answer, seconds [default: 30].
    #[arg(long, value_name = "SECS")]
    longpoll_timeout: Option<u64>,
    /// Largest WebSocket message / HTTP body in bytes [default: 262144].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Outgoing messages queued per WebSocket before a slow client is dropped [default: 1024].
    #[arg(long, value_name = "N")]
    ws_queue: Option<usize>,
    /// Outgoing bytes queued per WebSocket before a slow client is dropped [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    ws_queue_bytes: Option<usize>,
    /// Event bytes queued per HTTP session before the unread session is ended [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    http_queue_bytes: Option<usize>,
    /// Longest videocall username in bytes; `register` beyond it gets 474 [default: 128].
    #[arg(long, value_name = "BYTES")]
    max_username_bytes: Option<usize>,
    /// Seconds a WebSocket may stay open without a session before it is closed [default: 30].
    #[arg(long, value_name = "SECS")]
    ws_idle_timeout: Option<u64>,
    /// Seconds an HTTP request body may take to arrive [default: 10].
    #[arg(long, value_name = "SECS")]
    http_body_timeout: Option<u64>,
    /// Connections at once on the WebSocket + HTTP listeners [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections at once from one source address [default: 1000].
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Comma-separated CIDR blocks of reverse proxies, exempt from the per-address cap;
    /// "" = none [default: 127.0.0.0/8,::1].
    #[arg(long, value_name = "CIDRS")]
    trusted_proxies: Option<String>,
    /// Connections at once on the admin listener [default: 64].
    #[arg(long, value_name = "N")]
    max_admin_connections: Option<usize>,
    /// Largest trickled candidate in bytes; larger ones get 467 [default: 1024].
    #[arg(long, value_name = "BYTES")]
    max_candidate_bytes: Option<usize>,
    /// Candidate bytes buffered per handle; beyond it 467 [default: 32768].
    #[arg(long, value_name = "BYTES")]
    max_candidate_bytes_per_handle: Option<usize>,
    /// Access-Control-Allow-Origin of the HTTP transport [default: *].
    #[arg(long, value_name = "ORIGIN")]
    cors_allow_origin: Option<String>,
    /// NATS server URL, nats://HOST:PORT or tls://HOST:PORT (repeatable or
    /// comma-separated): run as one node of a cluster (docs/scale-out.md).
    #[arg(long = "nats-url", value_name = "URL")]
    nats_url: Vec<String>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
    /// Prefix of the cluster's NATS subjects and buckets [default: callrelay].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, value_name = "USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_NATS_PASSWORD",
        hide_env_values = true
    )]
    nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(
        long,
        value_name = "S",
        env = "CALLRELAY_GATEWAY_NATS_TOKEN",
        hide_env_values = true
    )]
    nats_token: Option<String>,
    /// File holding this node's NATS NKey seed (SU...).
    #[arg(long, value_name = "FILE")]
    nats_nkey_seed_file: Option<PathBuf>,
    /// CA certificate (PEM) of the NATS servers' certificates; implies TLS to NATS.
    #[arg(long, value_name = "PEM")]
    nats_ca_file: Option<PathBuf>,
}

impl RunArgs {
    fn into_config(self) -> CliConfig {
        CliConfig {
            config: self.config,
            values: FileConfig {
                listen: self.listen,
                http_listen: self.http_listen,
                admin_listen: self.admin_listen,
                admin_secret: self.admin_secret,
                token_auth: self.token_auth.then_some(true),
                api_secret: self.api_secret,
                cert: self.cert,
                key: self.key,
                ws_tls: self.ws_tls,
                http_tls: self.http_tls,
                admin_tls: self.admin_tls,
                test_page_ws_url: self.test_page_ws_url,
                stun_uri: self.stun_uri,
                turn_uris: (!self.turn_uri.is_empty()).then_some(self.turn_uri),
                turn_secret: self.turn_secret,
                turn_ttl: self.turn_ttl,
                early_offer: self.early_offer,
                early_offer_timeout_ms: self.early_offer_timeout_ms,
                turn_control_urls: (!self.turn_control_url.is_empty())
                    .then_some(self.turn_control_url),
                turn_control_secret: self.turn_control_secret,
                state_dir: self.state_dir,
                session_timeout: self.session_timeout,
                candidate_wait_ms: self.candidate_wait_ms,
                candidate_grace_ms: self.candidate_grace_ms,
                reclaim_session_timeout: self.reclaim_session_timeout,
                token_max_idle: self.token_max_idle,
                max_sessions: self.max_sessions,
                max_sessions_per_token: self.max_sessions_per_token,
                max_sessions_per_connection: self.max_sessions_per_connection,
                longpoll_timeout: self.longpoll_timeout,
                max_message_bytes: self.max_message_bytes,
                ws_queue: self.ws_queue,
                ws_queue_bytes: self.ws_queue_bytes,
                http_queue_bytes: self.http_queue_bytes,
                max_username_bytes: self.max_username_bytes,
                ws_idle_timeout: self.ws_idle_timeout,
                http_body_timeout: self.http_body_timeout,
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                trusted_proxies: self.trusted_proxies.map(|l| {
                    l.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }),
                max_admin_connections: self.max_admin_connections,
                max_candidate_bytes: self.max_candidate_bytes,
                max_candidate_bytes_per_handle: self.max_candidate_bytes_per_handle,
                cors_allow_origin: self.cors_allow_origin,
                nats_url: (!self.nats_url.is_empty()).then_some(self.nats_url),
                node_id: self.node_id,
                cluster: self.cluster,
                nats_user: self.nats_user,
                nats_password: self.nats_password,
                nats_token: self.nats_token,
                nats_nkey_seed_file: self.nats_nkey_seed_file,
                nats_ca_file: self.nats_ca_file,
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "doctor")]
    if let Some(Command::Doctor(args)) = cli.command {
        return doctor::main(&args);
    }
    callrelay_service::logging::init_tracing();
    let check = cli.run.check_config;
    let source = cli
        .run
        .config
        .as_ref()
        .map_or_else(|| "flags".to_string(), |p| p.display().to_string());
    let cli_config = cli.run.into_config();
    let cfg = match Config::load(cli_config.clone()) {
        Ok(c) => c,
        Err(e @ gateway::ConfigError::File { .. }) => {
            eprintln!("gateway: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            // a key error: say where the keys came from (the file, or the flags alone)
            eprintln!("gateway: configuration error: {source}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if check {
        return check_config(&source, &cfg);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // SIGHUP reads the same file and flags again
    let reloader: gateway::Reloader = Box::new(move || {
        Config::load(cli_config.clone()).map_err(|e| match e {
            e @ gateway::ConfigError::File { .. } => e.to_string(),
            e => format!("{source}: {e}"),
        })
    });
    match rt.block_on(run(cfg, reloader)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the parsed configuration is valid; also load what the start and
/// SIGHUP would load from disk (the TLS pair) and look at `state_dir`. Exit 0 or 2.
fn check_config(source: &str, cfg: &Config) -> std::process::ExitCode {
    if let Some((c, k)) = &cfg.tls
        && let Err(e) = gateway::check_tls(c, k)
    {
        eprintln!(
            "gateway: configuration error: {source}: config key `cert`/`key`: {e}; fix the files or the paths"
        );
        return std::process::ExitCode::from(2);
    }
    if let Some(c) = &cfg.cluster {
        for (key, path) in [
            (
                "nats_nkey_seed_file",
                match &c.auth {
                    gateway::NatsAuth::NkeySeedFile(p) => Some(p),
                    _ => None,
                },
            ),
            ("nats_ca_file", c.ca_file.as_ref()),
        ] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                eprintln!(
                    "gateway: configuration error: {source}: config key `{key}`: {}: {e}",
                    p.display()
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    if cfg.state_dir.exists() && !cfg.state_dir.is_dir() {
        eprintln!(
            "gateway: configuration error: {source}: config key `state_dir`: {} is not a directory",
            cfg.state_dir.display()
        );
        return std::process::ExitCode::from(2);
    }
    eprintln!(
        "gateway: {source}: configuration OK (TLS {}, token_auth {}, admin_secret {}, {} TURN URI(s))",
        if cfg.tls.is_some() { "loaded" } else { "off" },
        cfg.token_auth,
        if cfg.admin_secret.is_some() {
            "set"
        } else {
            "not set"
        },
        cfg.turn_uris.len()
    );
    std::process::ExitCode::SUCCESS
}

async fn run(cfg: Config, reloader: gateway::Reloader) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&cfg).await.context("binding listeners")?;
    let shutdown = CancellationToken::new();
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let reload = reload.clone();
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration and the TLS certificate");
                reload.notify_one();
            }
        });
    }
    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal received, shutting down");
        s.cancel();
    });
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    let r = ready.clone();
    tokio::spawn(async move {
        r.notified().await;
        callrelay_service::systemd::notify_ready();
    });
    gateway::serve_with_reloader(cfg, listeners, shutdown, reload, reloader, ready).await?;
    callrelay_service::systemd::notify_stopping();
    Ok(())
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
