//! TURN kernel offload bench (`callrelay-bench offload`, docs/performance.md): coturn, our
//! turn-server in userspace (`offload = "off"`) and with the kernel fast path (`"tc"`,
//! `"xdp"`), side by side in interleaved rounds, in three network namespaces the bench
//! makes itself and removes on exit (also on panic and Ctrl-C):
//!
//! ```text
//!  client ns                server ns                            peer ns
//!  c0 10.0.1.2 ───── s0 10.0.1.1 (listen)   s1 10.0.2.1 (relay) ───── p0 10.0.2.2
//!  agent: allocations,        server pinned to the relay CPU,        agent: peer sockets
//!  ChannelData senders        s0/s1 receive (NAPI) on the relay CPU  UDP senders
//! ```
//!
//! The two agents (`offload_agent.rs`, pinned to the generator CPU) send and count; the
//! relayed count is what the receiving namespace's UDP MIB says it delivered to a socket,
//! never the server's own counters. The server's interfaces s0 and s1 receive through
//! threaded NAPI (veth uses NAPI when an XDP program is attached, here one that only
//! returns XDP_PASS, or when GRO is on: `--napi`), so everything the kernel does with a
//! packet arriving at the server — the TC program, the forwarding and transmit of the
//! kernel path, the socket delivery of the userspace path — runs in two kernel threads
//! pinned to the relay CPU.
//! CPU per relayed packet counts, for every stack alike, the run time of the server
//! process (all threads) plus those two threads (`schedstat`, nanoseconds), per packet
//! delivered: exact, and blind to whatever else the machine runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Common;
use crate::procfs::{clk_tck, cpu_secs};
use crate::report::Figures;
use crate::servers::{
    ScratchDir, Server, command_output, register_child, register_netns, sibling_binary,
    unregister_child, unregister_netns,
};

const SERVER: &str = "10.0.1.1:3478";
const METRICS: &str = "10.0.1.1:9641";
const CLIENT_IP: &str = "10.0.1.2";
const PEER_IP: &str = "10.0.2.2";
const PEER_PORT_BASE: u16 = 40_000;
const REALM: &str = "bench";
/// The nice value of the processes the bench runs (server, agents), so that
/// other work on the machine (builds at nice 5) disturbs the measured paths less; the
/// same for every stack.
const PRIORITY: &str = "-10";
/// The NAPI threads run SCHED_FIFO at this priority: like the softirq they stand in
/// for, they preempt the processes on their CPU as soon as packets wait (otherwise the
/// 256-slot veth rings overflow while a process holds the CPU for its time slice).
const NAPI_RT_PRIORITY: &str = "50";
/// Longest any agent command may take (a blast is at most 60 s).
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Args, Clone, Debug)]
pub(crate) struct OffloadArgs {
    /// Stacks to compare (comma separated): coturn, off (turn-server in userspace), tc, xdp,
    /// fwd (no TURN: the client and the peer send to each other and the server namespace
    /// only forwards, the floor of any kernel path).
    #[arg(long, value_delimiter = ',', default_value = "fwd,coturn,off,tc,xdp")]
    stacks: Vec<String>,
    /// Our turn-server binary. Default: next to this binary.
    #[arg(long)]
    turn_server: Option<PathBuf>,
    /// coturn's turnserver binary.
    #[arg(long, default_value = "/usr/bin/turnserver")]
    coturn: PathBuf,
    /// Directions (comma separated): to_peer (ChannelData client → UDP to the peer),
    /// to_client (UDP from the peer → ChannelData to the client).
    #[arg(long, value_delimiter = ',', default_value = "to_peer,to_client")]
    directions: Vec<String>,
    /// Payload sizes for the fixed-rate steps.
    #[arg(long, value_delimiter = ',', default_value = "100,172,1200")]
    sizes: Vec<usize>,
    /// Payload sizes for the max-pps ramp.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    ramp_sizes: Vec<usize>,
    /// Allocations, each with one channel binding to its own peer port.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Seconds per step.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// Datagrams per send in the burst steps (one GSO call, segmented at c0).
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Offered datagrams/s of the fixed-rate burst steps.
    #[arg(long, default_value_t = 200_000.0)]
    fixed_rate: f64,
    /// Offered datagrams/s of the lone-packet steps (one datagram per send, evenly paced).
    #[arg(long, default_value_t = 20_000.0)]
    lone_rate: f64,
    /// First rate of the max-pps ramp (×1.6 per step, then two bisection steps).
    #[arg(long, default_value_t = 50_000.0)]
    ramp_start: f64,
    /// Highest rate the ramp offers.
    #[arg(long, default_value_t = 4_000_000.0)]
    max_rate: f64,
    /// Steps per ramp at most.
    #[arg(long, default_value_t = 9)]
    ramp_steps: usize,
    /// The CPU of the server and of its interfaces' receive work (NAPI threads of s0, s1).
    #[arg(long, default_value_t = 1)]
    relay_cpu: usize,
    /// The CPU of the load generator (both agents, NAPI threads of c0 and p0, this process).
    #[arg(long, default_value_t = 0)]
    gen_cpu: usize,
    /// Sender threads per agent.
    #[arg(long, default_value_t = 1)]
    sender_threads: usize,
    /// How s0 and s1 get their NAPI threads: `xdp` (an XDP program that passes every
    /// packet; built with clang, attached with `ip`; GRO stays off, as in the offload
    /// tests) or `gro` (GRO on: the kernel then coalesces a client's burst for turn-server's
    /// GRO listener, and the TC program passes such packets to userspace).
    #[arg(long, default_value = "xdp")]
    napi: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    /// Plain IP forwarding through the server namespace.
    Forward,
    Coturn,
    /// turn-server with this `offload` mode.
    Ours(&'static str),
}

impl Stack {
    fn column(self) -> &'static str {
        match self {
            Self::Forward => "kernel forwarding",
            Self::Coturn => "coturn",
            Self::Ours("off") => "turn-server off",
            Self::Ours("tc") => "turn-server tc",
            Self::Ours(_) => "turn-server xdp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToPeer,
    ToClient,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Self::ToPeer => "to_peer",
            Self::ToClient => "to_client",
        }
    }
}

/// Runs `cmd`, failing with its stderr when it fails.
fn run(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "failed: {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this machine cannot run the bench, if it cannot.
fn missing() -> Option<String> {
    let uid = command_output("id", &["-u"]);
    if uid.trim() != "0" {
        return Some("not root (network namespaces, NAPI settings and BPF need it)".into());
    }
    for tool in ["ip", "ethtool", "taskset"] {
        if !have(tool) {
            return Some(format!(
                "`{tool}` is not installed (iproute2, ethtool, util-linux)"
            ));
        }
    }
    None
}

/// The three namespaces `{prefix}c`, `{prefix}s`, `{prefix}p`, joined by veth pairs;
/// deleted on drop (and by the signal watchdog).
struct Namespaces {
    prefix: String,
    /// Prefix of the interface names (`x1234s0`): unique per run, so that the NAPI
    /// threads (`napi/x1234s0-<id>`) are told apart from other namespaces' s0.
    tag: String,
    /// NAPI threads of s0/s1-named devices that existed before ours (other namespaces').
    foreign_napi: Vec<u32>,
    /// The XDP_PASS object attached to s0 and s1 (with `--napi xdp`).
    pass_obj: Option<PathBuf>,
}

impl Namespaces {
    fn new(gen_cpu: usize, napi: &str, scratch: &Path) -> Result<Self> {
        remove_stale();
        let tag = format!("x{:04}", std::process::id() % 10_000);
        let mut ns = Self {
            prefix: format!("crob{}", std::process::id()),
            foreign_napi: napi_threads(&[format!("{tag}s0"), format!("{tag}s1")]),
            tag,
            pass_obj: None,
        };
        for r in ['c', 's', 'p'] {
            let n = ns.name(r);
            run(&["ip", "netns", "add", &n])?;
            register_netns(&n);
            run(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
        }
        ns.configure(gen_cpu, napi, scratch)?;
        Ok(ns)
    }

    fn configure(&mut self, gen_cpu: usize, napi: &str, scratch: &Path) -> Result<()> {
        let (c, s, p) = (self.name('c'), self.name('s'), self.name('p'));
        let (c0, s0, s1, p0) = (
            self.dev("c0"),
            self.dev("s0"),
            self.dev("s1"),
            self.dev("p0"),
        );
        // Fixed MAC addresses and permanent neighbours: no ARP during the steps.
        let (mc, ms0, ms1, mp) = (
            "02:00:0a:00:01:02",
            "02:00:0a:00:01:01",
            "02:00:0a:00:02:01",
            "02:00:0a:00:02:02",
        );
        run(&[
            "ip", "-n", &c, "link", "add", &c0, "address", mc, "type", "veth", "peer", "name", &s0,
            "address", ms0, "netns", &s,
        ])?;
        run(&[
            "ip", "-n", &p, "link", "add", &p0, "address", mp, "type", "veth", "peer", "name", &s1,
            "address", ms1, "netns", &s,
        ])?;
        for (n, dev, addr) in [
            (&c, &c0, "10.0.1.2/24"),
            (&s, &s0, "10.0.1.1/24"),
            (&s, &s1, "10.0.2.1/24"),
            (&p, &p0, "10.0.2.2/24"),
        ] {
            run(&["ip", "-n", n, "addr", "add", addr, "dev", dev])?;
            run(&["ip", "-n", n, "link", "set", dev, "up"])?;
        }
        run(&["ip", "-n", &c, "route", "add", "default", "via", "10.0.1.1"])?;
        run(&["ip", "-n", &p, "route", "add", "default", "via", "10.0.2.1"])?;
        for (n, dev, ip, mac) in [
            (&s, &s0, "10.0.1.2", mc),
            (&s, &s1, "10.0.2.2", mp),
            (&c, &c0, "10.0.1.1", ms0),
            (&p, &p0, "10.0.2.1", ms1),
        ] {
            run(&[
                "ip",
                "-n",
                n,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        // bpf_fib_lookup needs forwarding on the interfaces; the senders hand the server
        // complete checksums (veth otherwise leaves them to the "device", which the
        // program passes to userspace) and GSO bursts are segmented at c0 and p0.
        run(&[
            "ip",
            "netns",
            "exec",
            &s,
            "sh",
            "-c",
            &format!(
                "echo 1 > /proc/sys/net/ipv4/conf/{s0}/forwarding && echo 1 > /proc/sys/net/ipv4/conf/{s1}/forwarding"
            ),
        ])?;
        run(&["ip", "netns", "exec", &c, "ethtool", "-K", &c0, "tx", "off"])?;
        run(&["ip", "netns", "exec", &p, "ethtool", "-K", &p0, "tx", "off"])?;
        // What arrives back at the generator's interfaces is received in NAPI threads
        // of theirs on the generator CPU (GRO on gives veth a NAPI ring, which the XDP
        // path needs to transmit into; the agents' sockets do not ask for GRO, so nothing
        // is coalesced): the hand-off from the relay CPU is a thread wake-up.
        let before = all_napi_threads();
        for (n, dev) in [(&c, &c0), (&p, &p0)] {
            run(&["ip", "netns", "exec", n, "ethtool", "-K", dev, "gro", "on"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                n,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{dev}/threaded"),
            ])?;
        }
        let gen_napi: Vec<u32> = all_napi_threads()
            .into_iter()
            .filter(|(pid, comm)| {
                !before.iter().any(|(b, _)| b == pid)
                    && (comm.starts_with(&format!("napi/{c0}-"))
                        || comm.starts_with(&format!("napi/{p0}-")))
            })
            .map(|(pid, _)| pid)
            .collect();
        if gen_napi.len() != 2 {
            bail!("expected the NAPI threads of c0 and p0, found {gen_napi:?}");
        }
        for pid in &gen_napi {
            run(&[
                "taskset",
                "-p",
                "-c",
                &gen_cpu.to_string(),
                &pid.to_string(),
            ])?;
            run(&["chrt", "-f", "-p", NAPI_RT_PRIORITY, &pid.to_string()])?;
        }
        // The server's interfaces receive in NAPI threads of their own, pinned to the
        // relay CPU (`napi_pinned`): their run time is the kernel's share. veth uses NAPI
        // with an XDP program attached or with GRO on.
        match napi {
            "xdp" => {
                let src = scratch.join("pass.bpf.c");
                let obj = scratch.join("pass.bpf.o");
                std::fs::write(
                    &src,
                    "struct xdp_md;\n__attribute__((section(\"xdp\"), used)) int pass(struct xdp_md *ctx) { return 2; /* XDP_PASS */ }\nchar _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
                )?;
                let (src_s, obj_s) = (src.to_string_lossy(), obj.to_string_lossy());
                run(&["clang", "-O2", "-target", "bpf", "-c", &src_s, "-o", &obj_s])
                    .context("building the XDP_PASS program (clang with the BPF target)")?;
                self.pass_obj = Some(obj);
                self.attach_pass()?;
            }
            "gro" => {
                for dev in [self.dev("s0"), self.dev("s1")] {
                    let dev = dev.as_str();
                    run(&["ip", "netns", "exec", &s, "ethtool", "-K", dev, "gro", "on"])?;
                }
            }
            other => bail!("--napi: {other:?} is not xdp or gro"),
        }
        Ok(())
    }

    /// Attaches the XDP_PASS program to s0 and s1 (with `--napi xdp`).
    fn attach_pass(&self) -> Result<()> {
        let Some(obj) = &self.pass_obj else {
            return Ok(());
        };
        let obj = obj.to_string_lossy();
        for dev in [self.dev("s0"), self.dev("s1")] {
            let dev = dev.as_str();
            run(&[
                "ip",
                "-n",
                &self.name('s'),
                "link",
                "set",
                "dev",
                dev,
                "xdp",
                "obj",
                &obj,
                "sec",
                "xdp",
            ])?;
        }
        Ok(())
    }

    /// Detaches it (before a server that attaches XDP itself).
    fn detach_pass(&self) -> Result<()> {
        if self.pass_obj.is_some() {
            for dev in [self.dev("s0"), self.dev("s1")] {
                let dev = dev.as_str();
                run(&[
                    "ip",
                    "-n",
                    &self.name('s'),
                    "link",
                    "set",
                    "dev",
                    dev,
                    "xdp",
                    "off",
                ])?;
            }
        }
        Ok(())
    }

    /// Makes the NAPI of s0 and s1 threaded and pins the threads to `cpu`; returns
    /// their PIDs. Called once the server is up: a server that attaches XDP itself
    /// may give the devices a new NAPI.
    fn napi_pinned(&self, cpu: usize) -> Result<Vec<u32>> {
        for dev in [self.dev("s0"), self.dev("s1")] {
            let dev = dev.as_str();
            run(&[
                "ip",
                "netns",
                "exec",
                &self.name('s'),
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{dev}/threaded"),
            ])
            .with_context(|| format!("{dev} has no NAPI to thread"))?;
        }
        let napi: Vec<u32> = napi_threads(&[self.dev("s0"), self.dev("s1")])
            .into_iter()
            .filter(|p| !self.foreign_napi.contains(p))
            .collect();
        if napi.len() != 2 {
            bail!("expected the NAPI threads of s0 and s1, found {napi:?}");
        }
        for pid in &napi {
            run(&["taskset", "-p", "-c", &cpu.to_string(), &pid.to_string()])?;
            run(&["chrt", "-f", "-p", NAPI_RT_PRIORITY, &pid.to_string()])?;
        }
        Ok(napi)
    }

    fn name(&self, role: char) -> String {
        format!("{}{role}", self.prefix)
    }

    /// The interface this run calls `d` (c0, s0, s1, p0).
    fn dev(&self, d: &str) -> String {
        format!("{}{d}", self.tag)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for r in ['c', 's', 'p'] {
            let n = self.name(r);
            let _ = Command::new("ip")
                .args(["netns", "del", &n])
                .stderr(Stdio::null())
                .status();
            unregister_netns(&n);
        }
    }
}

/// PIDs of the kernel's NAPI threads of the devices `devs` (`napi/<dev>-<id>`).
fn napi_threads(devs: &[String]) -> Vec<u32> {
    all_napi_threads()
        .into_iter()
        .filter(|(_, c)| devs.iter().any(|d| c.starts_with(&format!("napi/{d}-"))))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every threaded-NAPI kernel thread: (PID, name).
fn all_napi_threads() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.starts_with("napi/") {
                out.push((pid, comm.trim().to_owned()));
            }
        }
    }
    out
}

/// Deletes namespaces of earlier runs of this bench whose process is gone (a run killed
/// with SIGKILL cannot clean up after itself).
fn remove_stale() {
    let list = command_output("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("crob") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tail = &rest[digits.len()..];
        if digits.is_empty() || !["c", "s", "p"].contains(&tail) {
            continue;
        }
        if !Path::new(&format!("/proc/{digits}")).exists() {
            eprintln!("note: removing namespace {name} left by an earlier run");
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// An agent process in a namespace, driven line by line; killed on drop.
struct Agent {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Agent {
    fn start(
        name: &'static str,
        ns: &str,
        gen_cpu: usize,
        args: &[&str],
        log: &Path,
    ) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let err = std::fs::File::create(log)?;
        let mut child = Command::new("taskset")
            .args(["-c", &gen_cpu.to_string(), "nice", "-n", PRIORITY])
            .args(["ip", "netns", "exec", ns])
            .arg(exe)
            .arg("offload-agent")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting the {name} agent"))?;
        register_child(child.id());
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("agent without pipes");
        };
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-agent-out"))
            .spawn(move || {
                for l in BufReader::new(stdout).lines() {
                    let Ok(l) = l else { break };
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            name,
            child,
            stdin,
            lines,
        })
    }

    /// Sends one command; returns the answer after `ok`.
    fn cmd(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{} agent gone", self.name))?;
        match self.lines.recv_timeout(AGENT_TIMEOUT) {
            Ok(a) => match a.strip_prefix("ok") {
                Some(rest) => Ok(rest.trim().to_owned()),
                None => bail!("{} agent, {line:?}: {a}", self.name),
            },
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{} agent: no answer to {line:?} in {AGENT_TIMEOUT:?}",
                    self.name
                )
            }
            Err(RecvTimeoutError::Disconnected) => bail!("{} agent exited", self.name),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister_child(self.child.id());
    }
}

/// Tick counters of one CPU from `/proc/stat`.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    softirq: u64,
}

fn cpu_ticks(cpu: usize) -> Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let key = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key.as_str()))
        .with_context(|| format!("no {key} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal …
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(CpuTicks {
        softirq: at(5) + at(6),
    })
}

/// Packets the kernel dropped for a full backlog, per CPU (`/proc/net/softnet_stat`).
fn softnet_drops() -> Vec<u64> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Where packets were dropped in the server namespace so far: UDP receive-buffer
/// overflows (a userspace relay's socket) and veth transmit drops (a full ring of the
/// receiving side), as "udp_rcvbuf=N s0_tx_drop=N s1_tx_drop=N".
fn server_drops(ns: &Namespaces) -> String {
    let snmp = command_output(
        "ip",
        &["netns", "exec", &ns.name('s'), "cat", "/proc/net/snmp"],
    );
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let rcvbuf = match (udp.next(), udp.next()) {
        (Some(n), Some(v)) => n
            .split_whitespace()
            .position(|x| x == "RcvbufErrors")
            .and_then(|i| v.split_whitespace().nth(i))
            .unwrap_or("?")
            .to_owned(),
        _ => "?".into(),
    };
    let mut out = format!("udp_rcvbuf={rcvbuf}");
    for (n, dev) in [(ns.name('c'), ns.dev("c0")), (ns.name('p'), ns.dev("p0"))] {
        // what c0/p0 could not hand to s0/s1 counts as their tx drop
        let t = command_output(
            "ip",
            &[
                "netns",
                "exec",
                &n,
                "cat",
                &format!("/sys/class/net/{dev}/statistics/tx_dropped"),
            ],
        );
        out.push_str(&format!(" {dev}_tx_drop={}", t.trim()));
    }
    out
}

/// A CPU reading of the relay side.
#[derive(Clone)]
struct Snap {
    relay: CpuTicks,
    server_secs: f64,
    napi_secs: f64,
    drops: Vec<u64>,
}

struct Bench<'a> {
    a: &'a OffloadArgs,
    client: Agent,
    peer: Agent,
    hz: f64,
    step: f64,
}

impl Bench<'_> {
    fn snap(&self, s: &Session) -> Result<Snap> {
        let mut napi_secs = 0.0;
        for &t in &s.napi {
            napi_secs += cpu_secs(t)?;
        }
        Ok(Snap {
            relay: cpu_ticks(self.a.relay_cpu)?,
            server_secs: match s.pid {
                Some(pid) => cpu_secs(pid)?,
                None => 0.0,
            },
            napi_secs,
            drops: softnet_drops(),
        })
    }
}

/// What one step measured.
struct StepResult {
    sent: u64,
    received: u64,
    secs: f64,
    /// Relay CPU seconds: the server process and the NAPI threads of s0 and s1.
    relay_cpu: f64,
    server_cpu: f64,
    napi_cpu: f64,
    /// softirq + irq ticks of the relay CPU (whatever ran there), seconds.
    softirq: f64,
    gen_cpu: f64,
}

impl StepResult {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
    fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.secs.max(1e-9)
    }
    fn relayed_pps(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }
    fn us_per_pkt(&self, secs: f64) -> f64 {
        secs * 1e6 / self.received.max(1) as f64
    }
}

/// One running stack.
struct Session {
    /// Stopped when the session ends (none for kernel forwarding).
    _server: Option<Server>,
    pid: Option<u32>,
    /// The NAPI threads of s0 and s1.
    napi: Vec<u32>,
}

impl Bench<'_> {
    /// The sending (`true`) or receiving agent of direction `dir`.
    fn agent(&mut self, dir: Dir, sender: bool) -> &mut Agent {
        match (dir, sender) {
            (Dir::ToPeer, true) | (Dir::ToClient, false) => &mut self.client,
            _ => &mut self.peer,
        }
    }

    fn step(
        &mut self,
        s: &Session,
        dir: Dir,
        size: usize,
        rate: f64,
        burst: usize,
    ) -> Result<StepResult> {
        let count = |agent: &mut Agent| -> Result<(u64, u64)> {
            let c = agent.cmd("count")?;
            let v: Vec<u64> = c
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Ok((
                v.first().copied().unwrap_or(0),
                v.get(1).copied().unwrap_or(0),
            ))
        };
        let (r0, csum0) = count(self.agent(dir, false))?;
        let s0 = self.snap(s)?;
        let step = self.step;
        let ans = self
            .agent(dir, true)
            .cmd(&format!("blast {step} {rate} {size} {burst}"))?;
        // Let the queues empty before the second reading.
        std::thread::sleep(Duration::from_millis(100));
        let s1 = self.snap(s)?;
        let (r1, csum1) = count(self.agent(dir, false))?;
        let v: Vec<f64> = ans
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let (sent, secs, gen_cpu) = (
            v.first().copied().unwrap_or(0.0) as u64,
            v.get(2).copied().unwrap_or(0.0),
            v.get(3).copied().unwrap_or(0.0),
        );
        let drops: Vec<String> = s1
            .drops
            .iter()
            .zip(&s0.drops)
            .map(|(a, b)| a.saturating_sub(*b).to_string())
            .collect();
        if csum1 > csum0 {
            eprintln!(
                "      {} datagrams with a bad UDP checksum arrived",
                csum1 - csum0
            );
        }
        let server_cpu = s1.server_secs - s0.server_secs;
        let napi_cpu = s1.napi_secs - s0.napi_secs;
        let r = StepResult {
            sent,
            received: r1.saturating_sub(r0),
            secs,
            relay_cpu: server_cpu + napi_cpu,
            server_cpu,
            napi_cpu,
            softirq: (s1.relay.softirq - s0.relay.softirq) as f64 / self.hz,
            gen_cpu,
        };
        eprintln!(
            "    {} {size} B burst {burst} @ {:.0}: offered {:.0} pps, relayed {:.0} pps, loss {:.3}%, relay CPU {:.3} µs/pkt (server {:.3}, NAPI threads {:.3}; relay-CPU softirq ticks {:.3}), generator senders {:.3} µs/pkt, backlog drops per CPU [{}]",
            dir.name(),
            rate,
            r.offered_pps(),
            r.relayed_pps(),
            r.loss() * 100.0,
            r.us_per_pkt(r.relay_cpu),
            r.us_per_pkt(r.server_cpu),
            r.us_per_pkt(r.napi_cpu),
            r.us_per_pkt(r.softirq),
            r.us_per_pkt(r.gen_cpu),
            drops.join(" "),
        );
        Ok(r)
    }

    /// The fixed-rate rows of one direction and size.
    fn fixed(
        &mut self,
        s: &Session,
        dir: Dir,
        size: usize,
        lone: bool,
        f: &mut Figures,
    ) -> Result<()> {
        let (rate, burst, what) = if lone {
            (
                self.a.lone_rate,
                1,
                format!("lone @ {:.0}k pps", self.a.lone_rate / 1e3),
            )
        } else {
            (
                self.a.fixed_rate,
                self.a.burst,
                format!(
                    "burst {} @ {:.0}k pps",
                    self.a.burst,
                    self.a.fixed_rate / 1e3
                ),
            )
        };
        let r = self.step(s, dir, size, rate, burst)?;
        let key = format!("{} {size} B, {what}", dir.name());
        f.set(
            &format!("relay CPU µs/pkt, {key}"),
            r.us_per_pkt(r.relay_cpu),
        );
        f.set(
            &format!("  server process µs/pkt, {key}"),
            r.us_per_pkt(r.server_cpu),
        );
        f.set(
            &format!("  kernel receive (NAPI threads) µs/pkt, {key}"),
            r.us_per_pkt(r.napi_cpu),
        );
        f.set(&format!("  relayed pps, {key}"), r.relayed_pps());
        f.set(&format!("  loss %, {key}"), r.loss() * 100.0);
        Ok(())
    }

    /// Max relayed pps with ≤ 1 % loss: ×1.6 from `--ramp-start` until a step loses more
    /// or the generator cannot offer the rate, then two bisection steps.
    fn ramp(&mut self, s: &Session, dir: Dir, size: usize, f: &mut Figures) -> Result<()> {
        let a = self.a;
        let mut rate = a.ramp_start;
        let (mut best, mut best_offered) = (0.0f64, 0.0f64);
        let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
        let mut capped = false;
        for _ in 0..a.ramp_steps.max(1) {
            let r = self.step(s, dir, size, rate, a.burst)?;
            best_offered = best_offered.max(r.offered_pps());
            let short = r.offered_pps() < 0.95 * rate;
            if r.loss() <= 0.01 {
                best = best.max(r.relayed_pps());
                good = Some(rate);
                if short {
                    // The generator offered less than asked and all of it was relayed:
                    // this is the generator's limit, not the relay's.
                    capped = true;
                    break;
                }
            } else {
                bad = Some(rate);
            }
            rate = match (good, bad) {
                (_, None) if rate >= a.max_rate => break,
                (_, None) => (rate * 1.6).min(a.max_rate),
                (Some(g), Some(b)) if b / g > 1.1 => (g + b) / 2.0,
                (None, Some(b)) if b > a.ramp_start / 8.0 => b / 2.0,
                _ => break,
            };
        }
        let key = format!("{} {size} B, burst {}", dir.name(), a.burst);
        f.set(&format!("max relayed pps ≤1% loss, {key}"), best);
        f.set(
            &format!("  at the generator's cap (1 = yes), {key}"),
            if capped { 1.0 } else { 0.0 },
        );
        f.set(
            &format!("  generator's highest offered pps, {key}"),
            best_offered,
        );
        Ok(())
    }
}

fn parse_stacks(a: &OffloadArgs) -> Result<Vec<Stack>> {
    a.stacks
        .iter()
        .map(|s| match s.as_str() {
            "coturn" => Ok(Stack::Coturn),
            "fwd" | "forward" => Ok(Stack::Forward),
            "off" | "userspace" => Ok(Stack::Ours("off")),
            "tc" => Ok(Stack::Ours("tc")),
            "xdp" => Ok(Stack::Ours("xdp")),
            other => bail!("--stacks: unknown stack {other:?} (fwd, coturn, off, tc, xdp)"),
        })
        .collect()
}

fn parse_dirs(a: &OffloadArgs) -> Result<Vec<Dir>> {
    a.directions
        .iter()
        .map(|d| match d.as_str() {
            "to_peer" => Ok(Dir::ToPeer),
            "to_client" => Ok(Dir::ToClient),
            other => bail!("--directions: unknown direction {other:?} (to_peer, to_client)"),
        })
        .collect()
}

/// Starts a stack in the server namespace, pinned to the relay CPU.
fn start_server(
    stack: Stack,
    a: &OffloadArgs,
    turn_server: &Path,
    ns: &Namespaces,
    scratch: &Path,
    tag: &str,
) -> Result<Option<Server>> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &a.relay_cpu.to_string(), "nice", "-n", PRIORITY])
        .args(["ip", "netns", "exec"])
        .arg(ns.name('s'));
    match stack {
        Stack::Forward => return Ok(None),
        Stack::Coturn => {
            cmd.arg(&a.coturn)
                .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--no-stdout-log"])
                .args(["--listening-ip", "10.0.1.1", "--relay-ip", "10.0.2.1"])
                .args(["--listening-port", "3478", "--relay-threads", "1"])
                .args(["--min-port", "50000", "--max-port", "50999"])
                .args([
                    "--use-auth-secret",
                    "--static-auth-secret",
                    crate::offload_agent::SECRET,
                ])
                .args(["--realm", REALM, "--simple-log"])
                .arg("--log-file")
                .arg(scratch.join(format!("coturn-{tag}-file.log")))
                .arg("--pidfile")
                .arg(scratch.join(format!("coturn-{tag}.pid")));
        }
        Stack::Ours(mode) => {
            cmd.arg(turn_server)
                .args(["--listen", SERVER, "--relay-ip", "10.0.2.1"])
                .args([
                    "--relay-ports",
                    "50000-50999",
                    "--allow-peer",
                    "10.0.2.0/24",
                ])
                .args([
                    "--auth-secret",
                    crate::offload_agent::SECRET,
                    "--realm",
                    REALM,
                ])
                .args([
                    "--user-quota",
                    "0",
                    "--bandwidth",
                    "0",
                    "--unauth-rate",
                    "1000000",
                ])
                .args(["--offload", mode, "--offload-interface", &ns.dev("s0")])
                .args([
                    "--offload-interface",
                    &ns.dev("s1"),
                    "--metrics-listen",
                    METRICS,
                ])
                .args(["--workers", "1", "--drain-timeout", "1"])
                .env("RUST_LOG", "warn");
        }
    }
    let log = scratch.join(format!("{}-{tag}.log", stack.column().replace(' ', "-")));
    let mut server = Server::spawn(stack.column(), cmd, &log)?;
    std::thread::sleep(Duration::from_millis(200));
    server
        .check_alive()
        .with_context(|| format!("see {log:?}"))?;
    Ok(Some(server))
}

/// Runs every row of one stack; returns Ok(false) when the stack is unavailable here.
fn session(
    b: &mut Bench<'_>,
    stack: Stack,
    turn_server: &Path,
    ns: &Namespaces,
    scratch: &Path,
    round: usize,
    f: &mut Figures,
) -> Result<bool> {
    let own_xdp = stack == Stack::Ours("xdp");
    if own_xdp {
        ns.detach_pass()?;
    }
    let r = session_on(b, stack, turn_server, ns, scratch, round, f);
    if own_xdp {
        ns.attach_pass()?;
    }
    r
}

fn session_on(
    b: &mut Bench<'_>,
    stack: Stack,
    turn_server: &Path,
    ns: &Namespaces,
    scratch: &Path,
    round: usize,
    f: &mut Figures,
) -> Result<bool> {
    let a = b.a;
    let server = start_server(stack, a, turn_server, ns, scratch, &format!("r{round}"))?;
    let pid = server.as_ref().map(Server::pid);
    let relays = if stack == Stack::Forward {
        b.client
            .cmd(&format!("direct {} {PEER_IP} {PEER_PORT_BASE}", a.channels))?
    } else {
        b.client.cmd(&format!(
            "alloc {SERVER} {} {PEER_IP} {PEER_PORT_BASE}",
            a.channels
        ))?
    };
    let metrics = |b: &mut Bench<'_>| -> Result<Vec<String>> {
        Ok(b.client
            .cmd(&format!("metrics {METRICS}"))?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    };
    let mut m0 = Vec::new();
    if let Stack::Ours(mode) = stack {
        m0 = metrics(b)?;
        if mode != "off" && m0.first().map(String::as_str) != Some("1") {
            eprintln!(
                "  SKIP {}: the kernel path is not active (fallback reason: {}); see docs/offload.md",
                stack.column(),
                m0.get(5).map_or("?", String::as_str)
            );
            b.client.cmd("release")?;
            return Ok(false);
        }
    }
    b.peer.cmd(&format!("dests {relays}"))?;
    eprintln!("  {}: {} channels bound", stack.column(), a.channels);
    let s = Session {
        _server: server,
        pid,
        napi: ns.napi_pinned(a.relay_cpu)?,
    };
    for dir in parse_dirs(a)? {
        for lone in [false, true] {
            for &size in &a.sizes {
                b.fixed(&s, dir, size, lone, f)?;
            }
        }
        for &size in &a.ramp_sizes {
            b.ramp(&s, dir, size, f)?;
        }
    }
    if let Stack::Ours(_) = stack {
        let m1 = metrics(b)?;
        let num = |m: &[String], i: usize| -> f64 {
            m.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        };
        let kernel = num(&m1, 1) + num(&m1, 2) - num(&m0, 1) - num(&m0, 2);
        let relayed = num(&m1, 3) + num(&m1, 4) - num(&m0, 3) - num(&m0, 4);
        eprintln!(
            "  {}: /metrics says {relayed:.0} relayed, {kernel:.0} of them by the kernel",
            stack.column()
        );
        f.set(
            "kernel path share of relayed packets % (/metrics)",
            100.0 * kernel / relayed.max(1.0),
        );
    }
    eprintln!(
        "  {}: drops in the lab so far (all stacks): {}",
        stack.column(),
        server_drops(ns)
    );
    b.client.cmd("release")?;
    drop(s);
    Ok(true)
}

#[expect(clippy::print_stdout, reason = "the report goes to stdout")]
pub(crate) fn run_bench(c: Common, args: &OffloadArgs) -> Result<()> {
    if let Some(why) = missing() {
        if c.smoke {
            eprintln!("SKIP offload bench smoke: {why}");
            return Ok(());
        }
        bail!("the offload bench cannot run here: {why}");
    }
    let mut a = args.clone();
    let mut runs = c.runs.max(1);
    if c.smoke {
        runs = 1;
        a.sizes = vec![172];
        a.ramp_sizes = vec![172];
        a.step_secs = a.step_secs.min(0.3);
        a.ramp_steps = a.ramp_steps.min(2);
        a.ramp_start = a.ramp_start.min(20_000.0);
        a.fixed_rate = a.fixed_rate.min(20_000.0);
        a.lone_rate = a.lone_rate.min(5_000.0);
        a.channels = a.channels.min(4);
    }
    let nproc = std::thread::available_parallelism().map_or(1, usize::from);
    if a.relay_cpu >= nproc || a.gen_cpu >= nproc || a.relay_cpu == a.gen_cpu {
        bail!("--relay-cpu and --gen-cpu must be two different CPUs below {nproc}");
    }
    let turn_server = a
        .turn_server
        .clone()
        .unwrap_or_else(|| sibling_binary("turn-server"));
    let mut stacks = Vec::new();
    for s in parse_stacks(&a)? {
        let ok = match s {
            Stack::Coturn => crate::present(&a.coturn, "coturn (Debian package coturn)"),
            Stack::Ours(_) => crate::present(&turn_server, "turn-server"),
            Stack::Forward => true,
        };
        if ok {
            stacks.push(s);
        }
    }
    let scratch = ScratchDir::new("offload")?;
    crate::print_header("TURN kernel offload: coturn vs turn-server userspace vs kernel path");
    println!(
        "versions: coturn {} ({}); turn-server {} ({})",
        crate::first_line(&command_output(&a.coturn.to_string_lossy(), &["--version"])),
        a.coturn.display(),
        crate::first_line(&command_output(
            &turn_server.to_string_lossy(),
            &["--version"]
        )),
        turn_server.display(),
    );
    println!(
        "runs={runs} stacks={:?} directions={:?} sizes={:?} ramp_sizes={:?} channels={} step_secs={} burst={} fixed_rate={} lone_rate={} ramp_start={} max_rate={} relay_cpu={} gen_cpu={} sender_threads={} napi={}",
        stacks.iter().map(|s| s.column()).collect::<Vec<_>>(),
        a.directions,
        a.sizes,
        a.ramp_sizes,
        a.channels,
        a.step_secs,
        a.burst,
        a.fixed_rate,
        a.lone_rate,
        a.ramp_start,
        a.max_rate,
        a.relay_cpu,
        a.gen_cpu,
        a.sender_threads,
        a.napi,
    );
    println!();
    // This process (reading /proc, waiting on agents) stays off the relay CPU.
    let _ = run(&[
        "taskset",
        "-a",
        "-p",
        "-c",
        &a.gen_cpu.to_string(),
        &std::process::id().to_string(),
    ]);
    if a.napi == "xdp" && !have("clang") {
        eprintln!(
            "note: no clang for the XDP_PASS program: s0 and s1 get their NAPI threads from GRO (--napi gro)"
        );
        a.napi = "gro".into();
    }
    let ns = Namespaces::new(a.gen_cpu, &a.napi, &scratch.0)?;
    let threads = a.sender_threads.to_string();
    let client = Agent::start(
        "client",
        &ns.name('c'),
        a.gen_cpu,
        &["--bind", CLIENT_IP, "--threads", &threads],
        &scratch.0.join("client-agent.log"),
    )?;
    let peers = a.channels.to_string();
    let base = PEER_PORT_BASE.to_string();
    let peer = Agent::start(
        "peer",
        &ns.name('p'),
        a.gen_cpu,
        &[
            "--bind",
            PEER_IP,
            "--peers",
            &peers,
            "--port-base",
            &base,
            "--threads",
            &threads,
        ],
        &scratch.0.join("peer-agent.log"),
    )?;
    let mut b = Bench {
        a: &a,
        client,
        peer,
        hz: clk_tck() as f64,
        step: a.step_secs,
    };
    let mut all: Vec<(Stack, Vec<Figures>)> = stacks.iter().map(|&s| (s, Vec::new())).collect();
    for round in 0..runs {
        eprintln!("== offload round {}/{runs}", round + 1);
        // Each round starts with a different stack, so drift over the run spreads evenly.
        let n = all.len();
        for k in 0..n {
            let i = (k + round) % n;
            let stack = all[i].0;
            eprintln!("- {}", stack.column());
            let mut f = Figures::default();
            match session(&mut b, stack, &turn_server, &ns, &scratch.0, round, &mut f) {
                Ok(true) => all[i].1.push(f),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("  {} failed: {e:#}", stack.column());
                    let _ = b.client.cmd("release");
                    crate::mark_failed();
                }
            }
        }
    }
    drop(b);
    drop(ns);
    let cols: Vec<(&str, &[Figures])> = all
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(s, f)| (s.column(), f.as_slice()))
        .collect();
    let (ours, reference) = ("turn-server tc", "turn-server off");
    println!(
        "{}",
        crate::report::table(
            &cols,
            ours,
            reference,
            "relay CPU = run time of the server process + the NAPI threads of s0 and s1 (schedstat), per packet the receiving namespace delivered",
        )
    );
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
