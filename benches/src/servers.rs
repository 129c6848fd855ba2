//! Starting and stopping the servers under test. Every server lives in a [`Server`]
//! guard that terminates it on drop, including when the bench panics.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// PIDs of the servers alive right now, for the signal watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Network namespaces the offload bench made, deleted by the signal watchdog too.
static NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Lets the signal watchdog kill `pid` (a child not held in a [`Server`]).
pub(crate) fn register_child(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
}

pub(crate) fn unregister_child(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|p| *p != pid);
    }
}

/// Lets the signal watchdog delete network namespace `name` (after killing the children).
pub(crate) fn register_netns(name: &str) {
    if let Ok(mut n) = NETNS.lock() {
        n.push(name.to_owned());
    }
}

pub(crate) fn unregister_netns(name: &str) {
    if let Ok(mut n) = NETNS.lock() {
        n.retain(|x| x != name);
    }
}

/// On SIGINT/SIGTERM (where no destructor runs) kill every server we started, then
/// exit. Panics unwind and drop the [`Server`] guards themselves.
pub(crate) fn install_signal_watchdog() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signal-watchdog".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
            for pid in pids {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .status();
            }
            let namespaces = NETNS.lock().map(|n| n.clone()).unwrap_or_default();
            for ns in namespaces {
                let _ = Command::new("ip")
                    .args(["netns", "del", &ns])
                    .stderr(Stdio::null())
                    .status();
            }
            eprintln!("interrupted: stopped every server this bench started");
            std::process::exit(130);
        })?;
    Ok(())
}

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Server {
    pub(crate) name: String,
    child: Child,
}

impl Server {
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut children = CHILDREN
            .lock()
            .map_err(|_| anyhow::anyhow!("child registry poisoned"))?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        children.push(child.id());
        drop(children);
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the process has exited.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Fails when the process has already exited (bad flags, port in use...).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Server {
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        // turn-server drains allocations on SIGTERM; a bench server need not wait.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
        let pid = self.child.id();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| *p != pid);
        }
    }
}

/// A loopback port that is free for both UDP and TCP right now.
pub(crate) fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port")
}

/// Waits until a TCP listener accepts on `addr`.
pub(crate) fn wait_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on {addr} after {timeout:?}")
}

/// First line of a command's output (for versions).
pub(crate) fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

/// Path of a sibling binary of the running bench (e.g. `udp-forwarder`), or of the
/// workspace release binaries.
pub(crate) fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A private scratch directory, removed on drop.
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl ScratchDir {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "callrelay-bench-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("CALLRELAY_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
