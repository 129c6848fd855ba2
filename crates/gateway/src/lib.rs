//! The callrelay gateway: Janus API + janus.plugin.videocall, sans-IO core plus axum shell.
