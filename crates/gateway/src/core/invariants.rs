//! Consistency of the core's tables, checked by the fuzz targets after every step
//! (`cargo fuzz` builds with `--cfg fuzzing`; see `crate::fuzzing`).

use super::{CallState, Core, Source};

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
        assert!(
            h.peer.is_none() || h.remote.is_none(),
            "handle {hid} has a local and a remote peer"
        );
        match (h.call, h.peer) {
            (CallState::Idle, _) => {}
            // the other half of the call is another node's to check
            (_, None) if h.remote.is_some() => {}
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

    // Recount the tallies from the sessions. Sorted vectors rather than hash maps: this
    // runs after every fuzz step and hashing dominated the targets' time.
    let mut conns: Vec<u64> = Vec::with_capacity(core.sessions.len());
    let mut tokens: Vec<&str> = Vec::with_capacity(core.sessions.len());
    for s in core.sessions.values() {
        if let Source::Ws(c) = s.owner {
            conns.push(c);
        }
        if let Some(t) = &s.token {
            tokens.push(t.as_str());
        }
    }
    conns.sort_unstable();
    tokens.sort_unstable();
    for (c, n) in &core.per_conn {
        // a tally with no session behind it (even one of 0) is a leak
        let held = count(&conns, c);
        assert!(
            held > 0 && held == *n,
            "per-connection tally {n} of {c}, {held} sessions"
        );
    }
    conns.dedup();
    assert_eq!(conns.len(), core.per_conn.len(), "per-connection tallies");
    for (t, n) in &core.per_token {
        let held = count(&tokens, &t.as_str());
        assert!(
            held > 0 && held >= *n,
            "per-token tally {n} above the {held} sessions holding the token"
        );
    }
}

/// How often `x` occurs in the sorted `xs`.
fn count<T: Ord>(xs: &[T], x: &T) -> usize {
    let first = xs.partition_point(|y| y < x);
    xs.get(first..)
        .unwrap_or_default()
        .iter()
        .take_while(|y| *y == x)
        .count()
}

/// No per-connection or per-token tallies left.
pub(crate) fn tallies_empty(core: &Core) -> bool {
    core.per_conn.is_empty() && core.per_token.is_empty()
}
