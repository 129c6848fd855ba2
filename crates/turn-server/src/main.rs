//! `turn-server` binary: config, logging, worker threads, signals, metrics endpoint.
// Outside tests (clippy.toml relaxes these there) nothing unwraps or expects.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use callrelay_service::tls::ExpiryError;
use clap::Parser as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turn_server::config::{Cli, Config};
use turn_server::metrics::Metrics;
use turn_server::quota::SharedQuota;
use turn_server::runtime::{self, Control, SharedTls, WorkerArgs};

fn main() {
    let cli = Cli::parse();
    callrelay_service::logging::init_tracing();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turn-server: {e}");
            std::process::exit(2);
        }
    };
    if cli.check_config {
        std::process::exit(check_config(&cli, &cfg));
    }
    if let Err(e) = run(cli, cfg) {
        eprintln!("turn-server: {e:#}");
        std::process::exit(1);
    }
}

/// Exports the leaf's expiry read after the pair loaded as
/// `callrelay_turn_tls_cert_not_after_seconds`.
fn record_cert_expiry(
    metrics: &Metrics,
    cert: &std::path::Path,
    not_after: Result<u64, ExpiryError>,
) {
    match not_after {
        Ok(t) => metrics.set_tls_cert_not_after(t),
        Err(e) => tracing::warn!(cert = %cert.display(), "{e}"),
    }
}

/// `--check-config`: the parsed configuration is valid; also load what SIGHUP and the
/// start would load from disk (the TLS pair). Exit status 0 or 2.
fn check_config(cli: &Cli, cfg: &Config) -> i32 {
    let source = cli
        .config
        .as_ref()
        .map_or_else(|| "flags".to_string(), |p| p.display().to_string());
    if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key)
        && let Err(e) = callrelay_service::tls::load_acceptor(c, k, &[])
    {
        eprintln!(
            "turn-server: {source}: config key `cert`/`key`: {e}; fix the files or the paths"
        );
        return 2;
    }
    eprintln!(
        "turn-server: {source}: configuration OK ({} listen, {} TLS listen, {} secret(s), {} static user(s), TLS {})",
        cfg.listen.len(),
        cfg.tls_listen.len(),
        cfg.auth_secrets.len(),
        cfg.users.len(),
        if cfg.cert.is_some() { "loaded" } else { "off" }
    );
    0
}

fn run(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    let tls = SharedTls::default();
    // the leaf's expiry, exported once the metrics exist
    let mut not_after = None;
    if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) {
        not_after = Some(tls.reload(c, k, &[]).context("TLS")?);
    }
    let metrics_std = std::net::TcpListener::bind(cfg.metrics_listen).with_context(|| {
        format!(
            "config key `metrics_listen`: cannot bind {}",
            cfg.metrics_listen
        )
    })?;
    metrics_std.set_nonblocking(true)?;
    let (sockets, bound, tls_bound) = runtime::bind_all(&cfg)?;
    let metrics = Metrics::new();
    if let (Some(c), Some(t)) = (&cfg.cert, not_after) {
        record_cert_expiry(&metrics, c, t);
    }
    let quota = Arc::new(SharedQuota::new(
        cfg.user_quota,
        cfg.total_quota,
        cfg.relay_ports,
    ));
    let nofile = runtime::nofile_limit();
    let stream_cap = runtime::stream_cap(cfg.max_stream_connections, nofile);
    if stream_cap < cfg.max_stream_connections as usize {
        tracing::warn!(
            max_stream_connections = cfg.max_stream_connections,
            nofile = ?nofile,
            stream_cap,
            "RLIMIT_NOFILE is too small for max_stream_connections: TCP/TLS connections capped at a quarter of the file descriptors (raise LimitNOFILE to 64 + 4 x max_stream_connections)"
        );
    }
    let streams = Arc::new(runtime::StreamLimits::new(
        stream_cap,
        cfg.max_stream_connections_per_ip,
    ));
    let offload = start_offload(&cfg, &metrics);
    let shutdown = CancellationToken::new();
    let peer_streams: runtime::PeerStreams = Arc::default();
    let mut nonce_key = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce_key);
    let mut controls = Vec::new();
    let mut threads = Vec::new();
    let (mesh, inboxes) = runtime::Mesh::new(sockets.len());
    let epoch = Instant::now();
    let mut heartbeats = Vec::new();
    // The control endpoint (docs/turn-server.md): only with a secret. Without one each
    // worker's queue has no sender and its receiver stays idle.
    let (control, permit_rxs) = match &cfg.control_secret {
        Some(secret) => {
            let (api, rxs) = runtime::ControlApi::new(
                secret.clone(),
                sockets.len(),
                quota.clone(),
                cfg.control_rate,
                metrics.clone(),
            );
            (Some(api), rxs)
        }
        None => (
            None,
            (0..sockets.len()).map(|_| mpsc::channel(1).1).collect(),
        ),
    };
    for (((index, sockets), inbox), permits) in
        sockets.into_iter().enumerate().zip(inboxes).zip(permit_rxs)
    {
        let (tx, rx) = mpsc::unbounded_channel();
        controls.push(tx);
        let args = WorkerArgs {
            index,
            cfg: cfg.clone(),
            sockets,
            quota: quota.clone(),
            nonce_key,
            peer_streams: peer_streams.clone(),
            metrics: metrics.clone(),
            tls: tls.clone(),
            control: rx,
            shutdown: shutdown.clone(),
            mesh: mesh.clone(),
            inbox,
            streams: streams.clone(),
            heartbeat: {
                let h = runtime::Heartbeat::new(epoch);
                heartbeats.push(h.clone());
                h
            },
            offload: offload.clone(),
            permits,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("turn-worker-{index}"))
                .spawn(move || runtime::run_worker(args))
                .context("spawning worker thread")?,
        );
    }
    let worker_stop = cfg.worker_stop_timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics_listener = tokio::net::TcpListener::from_std(metrics_std)?;
        let metrics_addr = metrics_listener.local_addr()?;
        let metrics_task = tokio::spawn(runtime::serve_metrics(
            metrics_listener,
            metrics.clone(),
            runtime::MetricsBounds::from_config(&cfg),
            control,
            shutdown.clone(),
        ));
        tracing::info!(
            listen = ?bound,
            tls_listen = ?tls_bound,
            metrics = %metrics_addr,
            control = cfg.control_secret.is_some(),
            relay_ports = ?cfg.relay_ports,
            workers = cfg.workers,
            realm = %cfg.realm,
            secrets = cfg.auth_secrets.len(),
            "turn-server ready"
        );
        callrelay_service::systemd::notify_ready();
        let mut watchdog = runtime::Watchdog::new(runtime::watchdog_interval(), heartbeats);

        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut offload_seen = turn_offload::Counters::default();
        let mut offload_tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&cli, &tls, &controls, &metrics),
                () = watchdog.tick() => {}
                _ = offload_tick.tick(), if offload.is_some() => {
                    report_offload(offload.as_ref(), &metrics, &mut offload_seen);
                }
            }
        }
        callrelay_service::systemd::notify_stopping();
        for c in &controls {
            let _ = c.send(Control::Drain);
        }
        let deadline = Instant::now() + cfg.drain_timeout;
        let active = quota.total();
        if active > 0 {
            tracing::info!(active, timeout = ?cfg.drain_timeout, "draining: no new allocations, waiting for active ones");
        }
        while quota.total() > 0 && Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
                // the workers still relay during the drain: keep proving it
                () = watchdog.tick() => {}
            }
        }
        shutdown.cancel();
        report_offload(offload.as_ref(), &metrics, &mut offload_seen);
        // Bounded: serve_metrics gives answers in flight `metrics_shutdown_grace`, then closes.
        let _ = metrics_task.await;
        anyhow::Ok(())
    })?;
    // The workers stop at the cancel (their tasks are dropped with their runtimes); bound
    // the wait anyway, so the exit never depends on what a client does.
    let deadline = Instant::now() + worker_stop;
    while !threads.iter().all(std::thread::JoinHandle::is_finished) {
        if Instant::now() >= deadline {
            tracing::error!(timeout = ?worker_stop, "workers did not stop in time, exiting anyway");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
            Err(_) => tracing::error!("worker panicked"),
        }
    }
    tracing::info!("turn-server stopped");
    Ok(())
}

/// Starts the kernel fast path when `offload` asks for it; otherwise, or when it cannot
/// run here, logs (INFO under `auto`, the default, WARN when a hook was asked for) and
/// counts why, and the relay serves every packet in userspace.
///
/// Without `offload_interface` it attaches to the interfaces that carry a UDP listen
/// address (any address of its family for a wildcard one) or a relay address, never
/// `lo`: on loopback (every test, a laptop) it attaches to nothing and says so, instead
/// of to the machine's other interfaces.
fn start_offload(cfg: &Config, metrics: &Metrics) -> Option<runtime::SharedOffload> {
    use turn_offload::{Fallback, Mode as OffloadMode, Offload, Unavailable};
    let started = if cfg.offload == OffloadMode::Off {
        Err(Unavailable {
            reason: Fallback::Disabled,
            detail: "offload = \"off\"".into(),
        })
    } else if let Err(e) = turn_offload::built().and_then(|()| turn_offload::permitted()) {
        Err(e)
    } else if !cfg.offload_interfaces.is_empty() {
        Offload::start(cfg.offload, &cfg.offload_interfaces, cfg.bandwidth)
    } else {
        let relay: Vec<std::net::IpAddr> = [cfg.relay_ip4, cfg.relay_ip6]
            .into_iter()
            .flatten()
            .collect();
        let addrs = turn_offload::attach_addresses(&cfg.listen, &relay);
        let interfaces = turn_offload::interfaces_with(&addrs);
        if interfaces.is_empty() {
            Err(Unavailable {
                reason: Fallback::Interface,
                detail: format!(
                    "no interface but lo carries the listen or relay addresses {addrs:?}: nothing to attach to (set `offload_interface` to choose)"
                ),
            })
        } else {
            Offload::start(cfg.offload, &interfaces, cfg.bandwidth)
        }
    };
    match started {
        Ok(o) => {
            let hooks: Vec<String> = o
                .hooks()
                .map(|(i, h)| format!("{i}:{}", h.label()))
                .collect();
            tracing::info!(mode = cfg.offload.label(), hooks = ?hooks, "kernel offload for UDP ChannelData attached (IPv4 and IPv6)");
            metrics.set_offload_active(true);
            for (i, h) in o.hooks() {
                metrics.set_offload_hook(i, h);
            }
            Some(Arc::new(std::sync::Mutex::new(o)))
        }
        Err(e) if e.reason == Fallback::Disabled => None,
        Err(e) => {
            if cfg.offload == OffloadMode::Auto {
                tracing::info!(mode = cfg.offload.label(), reason = e.reason.label(), detail = %e.detail, "kernel offload unavailable: relaying in userspace");
            } else {
                tracing::warn!(mode = cfg.offload.label(), reason = e.reason.label(), detail = %e.detail, "kernel offload unavailable: relaying in userspace");
            }
            metrics.offload_fallback(e.reason);
            None
        }
    }
}

/// Adds what the kernel relayed since the last call to `/metrics`.
fn report_offload(
    offload: Option<&runtime::SharedOffload>,
    metrics: &Metrics,
    seen: &mut turn_offload::Counters,
) {
    if let Some(o) = offload {
        let now = o
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters();
        metrics.report_offload(seen, now);
    }
}

/// SIGHUP: re-read the config file; swap secrets, users, peer policy and the TLS cert.
/// Allocations, permissions and channels stay. A bad file keeps the old settings.
fn reload(
    cli: &Cli,
    tls: &SharedTls,
    controls: &[mpsc::UnboundedSender<Control>],
    metrics: &Metrics,
) {
    let cfg = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload failed, keeping the running configuration");
            return;
        }
    };
    if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) {
        match tls.reload(c, k, &[]) {
            Ok(not_after) => record_cert_expiry(metrics, c, not_after),
            Err(e) => tracing::error!(error = %e, "TLS reload failed, keeping the old certificate"),
        }
    }
    for c in controls {
        let _ = c.send(Control::Reload {
            secrets: cfg.auth_secrets.clone(),
            users: cfg.users.clone(),
            policy: cfg.policy.clone(),
        });
    }
    tracing::info!(
        secrets = cfg.auth_secrets.len(),
        users = cfg.users.len(),
        "configuration reloaded"
    );
}
