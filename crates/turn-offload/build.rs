//! Compiles `bpf/channel.bpf.c` with clang (`-target bpf`) into `$OUT_DIR/channel.bpf.o`.
//!
//! Where clang (or the kernel/libbpf headers) is missing the crate still builds: the object
//! is left empty and `TURN_OFFLOAD_BUILD` carries the reason, which the turn-server reports
//! at run time as its offload fallback (`not_built`). `TURN_OFFLOAD_CLANG` names another
//! clang binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/channel.bpf.c");
    println!("cargo:rerun-if-env-changed=TURN_OFFLOAD_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("channel.bpf.o");
    let clang = std::env::var("TURN_OFFLOAD_CLANG").unwrap_or_else(|_| "clang".into());
    let reason = compile(&clang, &out).err();
    if let Some(r) = &reason {
        println!(
            "cargo:warning=turn-offload: BPF program not built ({r}); the offload reports `not_built` at run time"
        );
        let _ = std::fs::write(&out, b"");
        // Build again once clang appears (a missing path always reruns the script).
        println!("cargo:rerun-if-changed=/usr/bin/{clang}");
    }
    // One line, no newlines: it goes into an env! string.
    let reason = reason.unwrap_or_default().replace(['\n', '\r'], " ");
    println!("cargo:rustc-env=TURN_OFFLOAD_BUILD={reason}");
}

fn compile(clang: &str, out: &std::path::Path) -> Result<(), String> {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    // <asm/types.h> lives in the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    if std::path::Path::new(&multiarch).is_dir() {
        cmd.arg(format!("-I{multiarch}"));
    }
    cmd.args(["-c", "bpf/channel.bpf.c", "-o"]).arg(out);
    let o = cmd
        .output()
        .map_err(|e| format!("`{clang}` could not run: {e}; install clang, llvm and libbpf-dev"))?;
    if o.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("failed");
        Err(format!("`{clang}` failed: {first}"))
    }
}
