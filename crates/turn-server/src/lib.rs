//! The callrelay STUN/TURN relay: sans-IO core plus tokio runtime.
