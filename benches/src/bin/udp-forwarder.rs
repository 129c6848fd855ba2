//! Bare UDP forwarder (no TURN logic): the ceiling for relayed packets/s on this machine.
fn main() -> anyhow::Result<()> {
    Ok(())
}
