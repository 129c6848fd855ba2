//! `callrelay-bench`: side-by-side benchmarks of our servers against coturn and Janus.
fn main() -> anyhow::Result<()> {
    Ok(())
}
