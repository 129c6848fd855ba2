//! `callrelay-bench`: side-by-side benchmarks of our servers against the references
//! (coturn 4.6.1, Janus 1.1.2) in the same run. See docs/performance.md.
//!
//! * `callrelay-bench turn` — turn-server vs coturn vs a bare UDP forwarder.
//! * `callrelay-bench gateway` — gateway vs Janus (videocall signalling).
//! * `callrelay-bench all --smoke` — both, in a few seconds (CI).
//! * `callrelay-bench offload` — coturn vs turn-server userspace vs kernel fast path,
//!   in network namespaces (root).
//! * `callrelay-bench cluster` — gateway nodes over NATS (1, 2, 3) vs one node.
//! * `callrelay-bench soak --secs N` — churn, abuse and chaos, then leak checks.
// Library-style code: no unwrap/expect outside tests (clippy.toml relaxes them in tests).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod forwarder;
mod gateway;
mod load;
mod offload;
mod offload_agent;
mod procfs;
mod report;
mod servers;
mod soak;
mod stats;
mod stunc;
mod tcpload;
mod turn;
mod udp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::servers::{ScratchDir, command_output};
use crate::turn::{Target, TurnOpts};

/// Set when a target that was present failed; the command then exits non-zero after
/// printing what it measured.
static FAILED: AtomicBool = AtomicBool::new(false);

pub(crate) fn mark_failed() {
    FAILED.store(true, Ordering::Relaxed);
}

/// Whether an executable exists; a missing reference server is skipped with a note.
pub(crate) fn present(bin: &Path, what: &str) -> bool {
    if bin.is_file() {
        return true;
    }
    eprintln!(
        "note: {what} not found at {} — skipping that column",
        bin.display()
    );
    false
}

#[derive(Parser)]
#[command(
    version,
    about = "Side-by-side benchmarks: turn-server vs coturn, gateway vs Janus"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// TURN relay bench: coturn vs turn-server vs bare forwarder.
    Turn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        turn: TurnArgs,
    },
    /// Gateway signalling bench: Janus vs gateway.
    Gateway {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        gateway: gateway::GatewayArgs,
    },
    /// Gateway cluster bench: 1, 2 and 3 nodes over NATS vs one node (call cycles,
    /// cross-node set-up latency, idle WebSockets across nodes).
    Cluster {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// TURN kernel offload: coturn vs turn-server in userspace vs the kernel path (tc,
    /// xdp), in network namespaces the bench makes (root only).
    Offload {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        offload: offload::OffloadArgs,
    },
    /// (internal) the offload bench's agent inside a network namespace.
    #[command(hide = true)]
    OffloadAgent {
        #[command(flatten)]
        agent: offload_agent::AgentArgs,
    },
    /// Both benches.
    All {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        turn: TurnArgs,
        #[command(flatten)]
        gateway: gateway::GatewayArgs,
    },
    /// Soak: churn, abuse and chaos against turn-server and gateway for a bounded
    /// time, then checks that nothing leaked (docs/reliability.md).
    Soak {
        #[command(flatten)]
        soak: soak::SoakArgs,
    },
    /// (internal) the bare UDP/TCP forwarder, started as a separate process by `turn`.
    #[command(hide = true)]
    Forwarder {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
}

/// Flags shared by both benches.
#[derive(Args, Clone, Copy)]
pub(crate) struct Common {
    /// Runs per figure (the table shows the median).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// A few seconds in total: 1 run, short steps, small counts (CI).
    #[arg(long)]
    pub(crate) smoke: bool,
}

#[derive(Args, Clone)]
struct TurnArgs {
    /// Which TURN targets to run (comma separated): coturn, ours, forwarder.
    #[arg(long, value_delimiter = ',', default_value = "coturn,ours,forwarder")]
    targets: Vec<String>,
    /// Our turn-server binary (release build). Default: next to this binary.
    #[arg(long)]
    turn_server: Option<PathBuf>,
    /// coturn's turnserver binary.
    #[arg(long, default_value = "/usr/bin/turnserver")]
    coturn: PathBuf,
    /// Seconds per load step.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// Load steps per max-pps search (doubling, then bisection).
    #[arg(long, default_value_t = 9)]
    search_steps: usize,
    /// First rate of the max-pps search, relayed packets/s.
    #[arg(long, default_value_t = 20_000.0)]
    start_rate: f64,
    /// Upper bound of the max-pps search, relayed packets/s.
    #[arg(long, default_value_t = 1_000_000.0)]
    max_rate: f64,
    /// Allocation counts for the max-pps search.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    alloc_counts: Vec<usize>,
    /// ChannelData payload sizes for CPU per packet.
    #[arg(long, value_delimiter = ',', default_value = "100,172,1200")]
    sizes: Vec<usize>,
    /// Relayed packets/s during the CPU-per-packet steps.
    #[arg(long, default_value_t = 20_000.0)]
    cpu_rate: f64,
    /// A second rate for the UDP CPU-per-packet rows (rows marked "@ N pps"): under load
    /// more datagrams share a wake-up, which is what capacity costs. 0 = skip.
    #[arg(long, default_value_t = 160_000.0)]
    cpu_rate_high: f64,
    /// Allocations carrying the CPU-per-packet load.
    #[arg(long, default_value_t = 10)]
    cpu_allocs: usize,
    /// Seconds of allocation cycles for allocations/s.
    #[arg(long, default_value_t = 3.0)]
    alloc_secs: f64,
    /// Concurrent allocation cycles (over all load threads). 64 on 2 threads drove
    /// turn-server to the machine's limit on 2 cores (server + client ≈ 190 % CPU).
    #[arg(long, default_value_t = 64)]
    alloc_concurrency: usize,
    /// Client threads for the allocation cycles, each with its own current-thread
    /// runtime; the concurrency is split across them so one client core does not
    /// cap the rate.
    #[arg(long, default_value_t = 2)]
    alloc_threads: usize,
    /// Also measure allocation cycles that all use ONE REST username (as Mattermost
    /// hands one TURN username a day to everybody), in extra rows next to the
    /// distinct-username ones.
    #[arg(long)]
    alloc_same_user: bool,
    /// Packets a flow sends back to back in one GSO call (a video-frame-like burst);
    /// batching keeps the load generator cheaper than the server it drives.
    #[arg(long, default_value_t = 8)]
    burst: u64,
    /// Idle allocations for RSS per allocation.
    #[arg(long, default_value_t = 10_000)]
    rss_allocs: usize,
    /// Threads for both TURN servers: coturn `--relay-threads N`, turn-server
    /// `--workers N`. Default: each server's own (coturn: one per CPU; ours: half the CPUs).
    #[arg(long)]
    server_threads: Option<usize>,
}

fn turn_opts(c: Common, a: &TurnArgs, scratch: &Path) -> Result<(TurnOpts, usize)> {
    let turn_server = a
        .turn_server
        .clone()
        .unwrap_or_else(TurnOpts::default_turn_server);
    let mut targets = Vec::new();
    for t in &a.targets {
        let t = match t.as_str() {
            "coturn" => Target::Coturn,
            "ours" | "turn-server" => Target::Ours,
            "forwarder" | "bare" => Target::Forwarder,
            other => bail!("--targets: unknown target {other:?} (coturn, ours, forwarder)"),
        };
        let ok = match t {
            Target::Coturn => present(&a.coturn, "coturn (Debian package coturn)"),
            Target::Ours => present(
                &turn_server,
                "turn-server (cargo build --release -p turn-server)",
            ),
            Target::Forwarder => true,
        };
        if ok {
            targets.push(t);
        }
    }
    let mut o = TurnOpts {
        targets,
        turn_server,
        coturn: a.coturn.clone(),
        step: Duration::from_secs_f64(a.step_secs),
        search_steps: a.search_steps,
        start_rate: a.start_rate,
        max_rate: a.max_rate,
        alloc_counts: a.alloc_counts.clone(),
        sizes: a.sizes.clone(),
        cpu_rate: a.cpu_rate,
        cpu_rate_high: a.cpu_rate_high,
        cpu_allocs: a.cpu_allocs,
        alloc_secs: a.alloc_secs,
        alloc_concurrency: a.alloc_concurrency,
        alloc_threads: a.alloc_threads,
        alloc_same_user: a.alloc_same_user,
        rss_allocs: a.rss_allocs,
        server_threads: a.server_threads,
        latency_allocs: 10,
        burst: a.burst.max(1),
        scratch: scratch.to_path_buf(),
    };
    let mut runs = c.runs.max(1);
    if c.smoke {
        runs = 1;
        o.step = Duration::from_millis(250);
        o.search_steps = 2;
        o.start_rate = 5_000.0;
        o.alloc_counts = vec![1, 10];
        o.sizes = vec![172];
        o.cpu_rate = 5_000.0;
        o.cpu_rate_high = 10_000.0;
        o.alloc_secs = 0.5;
        o.rss_allocs = 200;
    }
    Ok((o, runs))
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
pub(crate) fn print_header(title: &str) {
    println!("## {title}");
    println!();
    println!("machine: {}", procfs::machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
}

pub(crate) fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
fn run_turn(c: Common, a: &TurnArgs) -> Result<()> {
    let scratch = ScratchDir::new("turn")?;
    let (opts, runs) = turn_opts(c, a, &scratch.0)?;
    print_header("TURN relay: turn-server vs coturn");
    println!(
        "versions: coturn {} ({}); turn-server {} ({})",
        first_line(&command_output(
            &opts.coturn.to_string_lossy(),
            &["--version"]
        )),
        opts.coturn.display(),
        first_line(&command_output(
            &opts.turn_server.to_string_lossy(),
            &["--version"]
        )),
        opts.turn_server.display(),
    );
    println!(
        "runs={runs} step={:?} counts={:?} sizes={:?} cpu_rate={} cpu_rate_high={} burst={} rss_allocs={} server_threads={}",
        opts.step,
        opts.alloc_counts,
        opts.sizes,
        opts.cpu_rate,
        opts.cpu_rate_high,
        opts.burst,
        opts.rss_allocs,
        opts.server_threads
            .map_or_else(|| "default (CPUs)".to_owned(), |n| n.to_string()),
    );
    println!(
        "alloc_secs={} alloc_concurrency={} alloc_threads={} alloc_same_user={}",
        opts.alloc_secs, opts.alloc_concurrency, opts.alloc_threads, opts.alloc_same_user
    );
    println!();
    let results = turn::bench(&opts, runs)?;
    let cols: Vec<(&str, &[report::Figures])> = results
        .iter()
        .map(|(t, f)| (t.column(), f.as_slice()))
        .collect();
    println!(
        "{}",
        report::table(&cols, Target::Ours.column(), Target::Coturn.column(), "",)
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Forwarder { .. } | Cmd::OffloadAgent { .. }) {
        servers::install_signal_watchdog()?;
    }
    match cli.cmd {
        Cmd::Forwarder {
            listen,
            peer,
            max_secs,
        } => {
            if !listen.ip().is_loopback() || !peer.ip().is_loopback() {
                bail!("the forwarder only relays between loopback addresses");
            }
            return forwarder::run(listen, peer, max_secs);
        }
        Cmd::OffloadAgent { agent } => return offload_agent::run(&agent),
        Cmd::Offload { common, offload } => offload::run_bench(common, &offload),
        Cmd::Turn { common, turn } => run_turn(common, &turn),
        Cmd::Soak { soak } => soak::run(&soak),
        Cmd::Gateway { common, gateway } => gateway::run(common, &gateway),
        Cmd::Cluster { common, cluster } => cluster::run(common, &cluster),
        Cmd::All {
            common,
            turn,
            gateway,
        } => {
            run_turn(common, &turn)?;
            gateway::run(common, &gateway)
        }
    }?;
    if FAILED.load(Ordering::Relaxed) {
        bail!("at least one target failed (see the messages above)");
    }
    Ok(())
}
