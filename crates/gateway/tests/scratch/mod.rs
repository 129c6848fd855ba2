//! Scratch directories for the integration tests: `/tmp/<prefix>-<pid>-<n>`. A test may
//! hand its directory to a server that outlives the statement (or is killed), so nothing
//! removes a directory when its test ends; instead the first directory a test process
//! asks for removes the directories of test processes that are no longer running, so
//! at most the last run's directories stay behind.
#![allow(dead_code, reason = "not every test binary uses every helper")]

use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefixes the gateway's tests use (each sweep removes dead processes' dirs of all).
const PREFIXES: [&str; 3] = [
    "callrelay-gw-test-",
    "callrelay-doctor-test-",
    "callrelay-gw-check-config-",
];

static N: AtomicU64 = AtomicU64::new(0);
static SWEEP: Once = Once::new();

/// A fresh, empty directory `/tmp/<prefix><pid>-<n>`; `prefix` is one of [`PREFIXES`].
pub(crate) fn scratch_dir(prefix: &str) -> PathBuf {
    debug_assert!(PREFIXES.contains(&prefix), "{prefix}");
    SWEEP.call_once(sweep);
    let d = std::env::temp_dir().join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes the scratch directories of test processes that have exited.
fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
