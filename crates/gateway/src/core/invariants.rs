//! Consistency of the core's tables, checked by the fuzz targets after every step
//! (`cargo fuzz` builds with `--cfg fuzzing`; see `crate::fuzzing`).

use super::{CallState, Core, Source};
use std::collections::HashMap;

/// Panics (with the broken rule) when the core's tables disagree with each other: a
/// handle without its session, a session listing a handle it does not own, a
/// registration without its handle, a call with only one side, a cap tally that
/// differs from the sessions it counts, or a candidate buffer beyond its bounds.
pub(crate) fn check(core: &Core) {
    for (hid, h) in &core.handles {
        let s = core
            .sessions
            .get(&h.session_id)
            .unwrap_or_else(|| panic!("handle {hid} of a missing session {}", h.session_id));
        assert!(
            s.handles.contains(hid),
            "session {} does not list handle {hid}",
            h.session_id
        );
        if let Some(name) = &h.username {
            assert_eq!(
                core.registry.lookup(name),
                Some(*hid),
                "handle {hid} registered as {name:?} but the registry disagrees"
            );
        }
        match (h.call, h.peer) {
            (CallState::Idle, _) => {}
            (state, None) => panic!("handle {hid} in {state:?} without a peer"),
            (state, Some(p)) => {
                let ph = core
                    .handles
                    .get(&p)
                    .unwrap_or_else(|| panic!("handle {hid} in {state:?} with a missing peer {p}"));
                assert_eq!(ph.peer, Some(*hid), "peer {p} of {hid} points elsewhere");
                let expected = match state {
                    CallState::Outgoing => CallState::Incoming,
                    CallState::Incoming => CallState::Outgoing,
                    CallState::Connected => CallState::Connected,
                    CallState::Idle => unreachable!(),
                };
                assert_eq!(
                    ph.call, expected,
                    "handle {hid} {state:?} but peer {p} {:?}",
                    ph.call
                );
            }
        }
        assert!(
            h.cands.len() <= core.cfg.max_candidates,
            "handle {hid}: too many candidates"
        );
        let bytes: usize = h.cands.iter().map(super::Candidate::bytes).sum();
        assert!(
            bytes <= core.cfg.max_candidate_bytes_per_handle,
            "handle {hid}: {bytes} candidate bytes buffered"
        );
    }
    for (sid, s) in &core.sessions {
        for hid in &s.handles {
            let h = core
                .handles
                .get(hid)
                .unwrap_or_else(|| panic!("session {sid} lists a missing handle {hid}"));
            assert_eq!(h.session_id, *sid, "handle {hid} listed by session {sid}");
        }
        assert!(s.handles.len() <= core.cfg.max_handles_per_session);
    }
    for name in core.registry.usernames() {
        let hid = core.registry.lookup(&name).expect("listed name resolves");
        let h = core
            .handles
            .get(&hid)
            .unwrap_or_else(|| panic!("{name:?} registered to a missing handle {hid}"));
        assert_eq!(
            h.username.as_deref(),
            Some(name.as_str()),
            "registry entry {name:?}"
        );
    }
    let registered = core
        .handles
        .values()
        .filter(|h| h.username.is_some())
        .count();
    assert_eq!(core.registry.len(), registered, "registry size");

    let mut per_conn: HashMap<u64, usize> = HashMap::new();
    let mut per_token: HashMap<&str, usize> = HashMap::new();
    for s in core.sessions.values() {
        if let Source::Ws(c) = s.owner {
            *per_conn.entry(c).or_default() += 1;
        }
        if let Some(t) = &s.token {
            *per_token.entry(t.as_str()).or_default() += 1;
        }
    }
    for (c, n) in &core.per_conn {
        assert_eq!(per_conn.get(c), Some(n), "per-connection tally of {c}");
    }
    assert_eq!(
        per_conn.len(),
        core.per_conn.len(),
        "per-connection tallies"
    );
    for (t, n) in &core.per_token {
        assert!(
            per_token.get(t.as_str()).is_some_and(|m| m >= n),
            "per-token tally {n} above the sessions holding the token"
        );
    }
}

/// No per-connection or per-token tallies left.
pub(crate) fn tallies_empty(core: &Core) -> bool {
    core.per_conn.is_empty() && core.per_token.is_empty()
}
