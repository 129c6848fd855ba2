//! `gateway doctor`: checks a Mattermost WebRTC deployment end to end, from where it runs,
//! with the eight Mattermost settings (flags or Mattermost's `config.json`).
//!
//! Every check is an independent client: HTTP/1.1 + rustls for the Admin URL,
//! tokio-tungstenite for the WebSocket, the webrtc-rs `stun` codec for STUN and the
//! webrtc-rs `turn` client for TURN — none of it is callrelay's server code, so a bug
//! there cannot hide a bug here. Every network step is bounded by `--timeout`.
//!
//! Built with the `doctor` cargo feature (on by default), which also brings in those
//! client crates; `--no-default-features` leaves the subcommand and them out.

mod calls;
mod check_admin;
mod check_stun;
mod check_turn;
mod check_ws;
mod cli;
mod net;
mod report;
#[cfg(test)]
mod tests;
mod turn_tcp;

pub(crate) use self::cli::DoctorArgs;

use self::calls::{CallsSettings, run_calls};
use self::check_admin::{admin_call, check_admin};
use self::check_stun::check_stun;
use self::check_turn::{check_turn, local_utc_offset};
use self::check_ws::check_ws;
use self::cli::Settings;
use self::net::tls_connector;
use self::report::{Check, ms, render_json, render_text};
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// What `gateway doctor` checks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Mattermost 4.0-5.5 WebRTC (Beta): gateway and TURN.
    Webrtc(Settings),
    /// The Calls plugin: STUN and TURN of its ICE servers.
    Calls(CallsSettings),
}

/// What every run needs: the time limit of each network step, and the TLS client with
/// the system's roots and `--ca-file` (or the failed check that says why not).
fn start(args: &DoctorArgs) -> Result<(Duration, TlsConnector), Vec<Check>> {
    let t = Duration::from_secs(args.timeout.clamp(1, 60));
    match tls_connector(args.ca_file.as_ref()) {
        Ok((tls, _roots)) => Ok((t, tls)),
        Err(e) => Err(vec![
            Check::new("TLS roots", "").fail(e, "give a readable PEM file to --ca-file"),
        ]),
    }
}

/// Runs every check; returns them in display order.
pub(crate) async fn run(args: &DoctorArgs, s: &Settings) -> Vec<Check> {
    let (t, tls) = match start(args) {
        Ok(x) => x,
        Err(checks) => return checks,
    };
    let offset = args.utc_offset.unwrap_or_else(local_utc_offset);
    let bound = |d: Duration| d * 6;
    let (mut admin, state) = match tokio::time::timeout(bound(t), check_admin(s, &tls, t)).await {
        Ok(x) => x,
        Err(_) => (
            Check::new("Admin URL", s.admin_url.as_deref().unwrap_or(""))
                .fail("timed out", "see above"),
            None,
        ),
    };
    let ws = match tokio::time::timeout(
        bound(t),
        check_ws(
            s,
            &tls,
            state.as_ref().map(|st| st.token.as_str()),
            state.is_some(),
            t,
        ),
    )
    .await
    {
        Ok(c) => c,
        Err(_) => Check::new("Gateway WebSocket URL", s.ws_url.as_deref().unwrap_or("")).fail(
            "timed out",
            "the gateway stopped answering in the middle of the check",
        ),
    };
    if let Some(st) = &state {
        match admin_call(st, &tls, "remove_token", t).await {
            Ok((status, body, d)) if status < 300 && body.contains("\"success\"") => {
                admin.m("remove_token_ms", ms(d));
                admin
                    .detail
                    .push_str(&format!(", remove_token → success ({} ms)", ms(d)));
            }
            Ok((status, body, _)) => {
                admin.ok = false;
                admin.detail.push_str(&format!(
                    ", remove_token → HTTP {status} {:.100}",
                    body.trim()
                ));
                admin.fix = Some("the gateway refused remove_token; see its log".into());
            }
            Err(e) => {
                admin.ok = false;
                admin.detail.push_str(&format!(", remove_token: {e}"));
                admin.fix = Some("the gateway stopped answering; see its log".into());
            }
        }
    }
    let mut out = vec![admin, ws];
    match &s.stun_uri {
        Some(u) => out.push(check_stun(u, t).await),
        None => {
            let mut c = Check::new("STUN URI", "");
            c.warnings
                .push("not set: browsers will use only host candidates and TURN".into());
            out.push(c.pass("not set (optional)"));
        }
    }
    if s.turn_uris.is_empty() {
        out.push(Check::new("TURN URI", "").fail(
            "not set",
            "without TURN, calls between users behind NAT connect but carry no audio or video: set TURN URI, TURN Username and TURN Shared Key",
        ));
    }
    for u in &s.turn_uris {
        let c = match tokio::time::timeout(bound(t), check_turn(u, s, offset, t)).await {
            Ok(c) => c,
            Err(_) => {
                Check::new("TURN URI", u).fail("timed out", "the TURN server stopped answering")
            }
        };
        out.push(c);
    }
    out
}

/// `gateway doctor`: runs the plan the flags choose and prints the report (stdout);
/// exit status 0 when every check passed, 1 when one failed, 2 for unusable flags.
pub(crate) fn main(args: &DoctorArgs) -> std::process::ExitCode {
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gateway doctor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway doctor: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let checks = rt.block_on(async {
        match &plan {
            Plan::Webrtc(s) => run(args, s).await,
            Plan::Calls(c) => run_calls(args, c).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    // the report is the command's output: stdout, so `--json | jq` works
    let text = if args.json {
        format!("{}\n", render_json(&checks))
    } else {
        render_text(&checks)
    };
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    if checks.iter().all(|c| c.ok) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
