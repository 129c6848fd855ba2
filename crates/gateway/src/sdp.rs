//! Merging trickled ICE candidates into an SDP before it is forwarded.
//!
//! janus.js before 0.5 ignores server `trickle` events, so the SDP the gateway forwards
//! to the other browser must already carry the sender's candidates (janus-api.md §11).
// The SDP and the candidates are remote input: no indexing that could panic on them.
#![deny(clippy::indexing_slicing)]

/// One trickled candidate as received in a Janus `trickle` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The `candidate:` attribute value (with or without a leading `a=`).
    pub candidate: String,
    /// `sdpMid`, when the browser sent one.
    pub sdp_mid: Option<String>,
    /// `sdpMLineIndex`, when the browser sent one.
    pub sdp_mline_index: Option<u64>,
}

impl Candidate {
    /// Bytes this candidate holds (for the per-handle bound).
    pub fn bytes(&self) -> usize {
        self.candidate.len() + self.sdp_mid.as_ref().map_or(0, String::len)
    }
}

/// The `ufrag` extension attribute of a candidate line (Chrome adds `ufrag XXXX`).
pub fn candidate_ufrag(candidate: &str) -> Option<&str> {
    let mut it = candidate.split_ascii_whitespace();
    while let Some(t) = it.next() {
        if t == "ufrag" {
            return it.next();
        }
    }
    None
}

/// The `typ` of a candidate line (`host`, `srflx`, `prflx`, `relay`).
pub fn candidate_type(candidate: &str) -> Option<&str> {
    let mut it = candidate.split_ascii_whitespace();
    while let Some(t) = it.next() {
        if t == "typ" {
            return it.next();
        }
    }
    None
}

/// The transport address (`connection-address` and `port`) of a candidate, when it is
/// an IP address (relay candidates always are; host candidates may be mDNS names).
pub fn candidate_addr(candidate: &str) -> Option<std::net::SocketAddr> {
    let c = candidate.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    let mut it = c.split_ascii_whitespace().skip(4);
    let ip: std::net::IpAddr = it.next()?.parse().ok()?;
    let port: u16 = it.next()?.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// The relayed addresses of the relay candidates in `sdp` (its `a=candidate:` lines) and
/// `candidates`, in order, without repeats, at most `max`.
pub fn relay_addrs(sdp: &str, candidates: &[Candidate], max: usize) -> Vec<std::net::SocketAddr> {
    let lines = sdp
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with("a=candidate:"));
    let trickled = candidates.iter().map(|c| c.candidate.as_str());
    let mut out = Vec::new();
    for c in lines.chain(trickled) {
        if out.len() >= max {
            break;
        }
        if candidate_type(c) == Some("relay")
            && let Some(a) = candidate_addr(c)
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

/// Every `a=ice-ufrag:` value in the SDP (session level and all m-sections).
pub fn sdp_ufrags(sdp: &str) -> Vec<&str> {
    sdp.split('\n')
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .collect()
}

/// True when `sdp` looks like an SDP body (starts with `v=`).
pub fn looks_like_sdp(sdp: &str) -> bool {
    sdp.trim_start().starts_with("v=")
}

fn normalise(candidate: &str) -> Option<String> {
    let c = candidate.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    if !c.starts_with("candidate:") || c.len() <= "candidate:".len() {
        return None;
    }
    // A candidate line must stay one SDP line.
    if c.contains('\r') || c.contains('\n') {
        return None;
    }
    Some(format!("a={c}"))
}

/// How far the candidates of a held SDP go toward a call that connects (janus-api.md §11):
/// decides whether it can be forwarded before its sender finished gathering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Some transport has no relay candidate yet: wait (for gathering to complete or the
    /// deadline, as for a sender without TURN).
    Wait,
    /// Every transport has a relay candidate, which connects whatever the NATs on the
    /// way, but the sender also gathers host candidates and some transport has no
    /// server-reflexive one yet: a direct path may still be on its way; wait a grace.
    Usable,
    /// Every transport has a relay candidate and nothing that could beat it is still to
    /// come: the sender is relay-only (no host candidate) or every transport also has a
    /// server-reflexive one. Forward now; later candidates go out as server `trickle`.
    Ready,
}

/// The m-sections whose candidates the answerer uses (RFC 9143 BUNDLE: the first m-section
/// of each group carries the group's one transport; every m-section outside a group and
/// not rejected with port 0 has its own), as indexes into the m-sections.
fn transport_sections(sdp: &str) -> Vec<usize> {
    let mut mids: Vec<Option<&str>> = Vec::new();
    let mut ports: Vec<bool> = Vec::new();
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for l in sdp.split('\n').map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = l.strip_prefix("m=") {
            mids.push(None);
            ports.push(m.split_ascii_whitespace().nth(1).is_some_and(|p| p != "0"));
        } else if let Some(mid) = l.strip_prefix("a=mid:") {
            if let Some(last) = mids.last_mut() {
                *last = Some(mid.trim());
            }
        } else if let Some(g) = l.strip_prefix("a=group:BUNDLE") {
            groups.push(g.split_ascii_whitespace().collect());
        }
    }
    let index_of = |mid: &str| mids.iter().position(|m| *m == Some(mid));
    let mut out: Vec<usize> = Vec::new();
    for g in &groups {
        if let Some(i) = g.iter().find_map(|m| index_of(m)) {
            out.push(i);
        }
    }
    for (i, (mid, open)) in mids.iter().zip(&ports).enumerate() {
        let bundled = mid.is_some_and(|m| groups.iter().any(|g| g.contains(&m)));
        if *open && !bundled && !out.contains(&i) {
            out.push(i);
        }
    }
    out.sort_unstable();
    out
}

/// The m-section a trickled candidate belongs to, as [`merge_candidates`] places it.
fn section_of_candidate(sdp_mids: &[Option<&str>], c: &Candidate) -> usize {
    let by_mid = c
        .sdp_mid
        .as_deref()
        .and_then(|m| sdp_mids.iter().position(|x| *x == Some(m)));
    let by_index = c
        .sdp_mline_index
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < sdp_mids.len());
    by_mid.or(by_index).unwrap_or(0)
}

/// Whether `sdp` with the trickled `candidates` (and any `a=candidate:` lines it has
/// itself) may be forwarded before gathering completes; see [`Readiness`].
pub fn readiness(sdp: &str, candidates: &[Candidate]) -> Readiness {
    let transports = transport_sections(sdp);
    if transports.is_empty() {
        return Readiness::Wait;
    }
    // (m-section, candidate type) of every candidate known
    let mut mids: Vec<Option<&str>> = Vec::new();
    let mut known: Vec<(usize, &str)> = Vec::new();
    for l in sdp.split('\n').map(|l| l.trim_end_matches('\r')) {
        if l.starts_with("m=") {
            mids.push(None);
        } else if let Some(mid) = l.strip_prefix("a=mid:") {
            if let Some(last) = mids.last_mut() {
                *last = Some(mid.trim());
            }
        } else if l.starts_with("a=candidate:")
            && let (Some(i), Some(t)) = (mids.len().checked_sub(1), candidate_type(l))
        {
            known.push((i, t));
        }
    }
    for c in candidates {
        if let Some(t) = candidate_type(&c.candidate) {
            known.push((section_of_candidate(&mids, c), t));
        }
    }
    let has = |i: usize, typ: &str| known.iter().any(|(s, t)| *s == i && *t == typ);
    if !transports.iter().all(|i| has(*i, "relay")) {
        return Readiness::Wait;
    }
    let gathers_host = known.iter().any(|(_, t)| *t == "host");
    if !gathers_host || transports.iter().all(|i| has(*i, "srflx")) {
        Readiness::Ready
    } else {
        Readiness::Usable
    }
}

/// Adds `candidates` as `a=candidate:` lines to the m-sections they belong to and, when
/// `end_of_candidates` is set, an `a=end-of-candidates` line to every m-section.
///
/// The m-section is chosen by `sdpMid` (matched against `a=mid:`), else by
/// `sdpMLineIndex`, else the first m-section (with BUNDLE all media share it). Lines
/// already present are not duplicated. The line ending of the input (CRLF or LF) is kept.
pub fn merge_candidates(sdp: &str, candidates: &[Candidate], end_of_candidates: bool) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // every trailing CR goes: a line "x\r" in an LF body must not come out as "x\r\n"
    let lines: Vec<&str> = sdp
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    // Section 0 is the session part; section i+1 is m-line i.
    let mut sections: Vec<Vec<String>> = vec![Vec::new()];
    for l in lines {
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(l.to_string());
        }
    }
    let media_count = sections.len() - 1;
    if media_count > 0 {
        let mids: Vec<Option<String>> = sections
            .iter()
            .skip(1)
            .map(|s| {
                s.iter()
                    .find_map(|l| l.strip_prefix("a=mid:").map(|m| m.trim().to_string()))
            })
            .collect();
        for c in candidates {
            let Some(line) = normalise(&c.candidate) else {
                continue;
            };
            let by_mid = c
                .sdp_mid
                .as_deref()
                .and_then(|m| mids.iter().position(|x| x.as_deref() == Some(m)));
            let by_index = c
                .sdp_mline_index
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < media_count);
            let idx = by_mid.or(by_index).unwrap_or(0) + 1;
            let Some(section) = sections.get_mut(idx) else {
                continue;
            };
            if !section.contains(&line) {
                // Keep candidates before an existing end-of-candidates marker.
                let pos = section
                    .iter()
                    .position(|l| l == "a=end-of-candidates")
                    .unwrap_or(section.len());
                section.insert(pos, line);
            }
        }
        if end_of_candidates {
            for section in sections.iter_mut().skip(1) {
                if !section.iter().any(|l| l == "a=end-of-candidates") {
                    section.push("a=end-of-candidates".to_string());
                }
            }
        }
    }
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 100 + 64);
    for section in &sections {
        for l in section {
            out.push_str(l);
            out.push_str(eol);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE_CRLF: &str = "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=mid:1\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n";

    fn cand(c: &str, mid: Option<&str>, idx: Option<u64>) -> Candidate {
        Candidate {
            candidate: c.to_string(),
            sdp_mid: mid.map(str::to_string),
            sdp_mline_index: idx,
        }
    }

    fn section_of<'a>(sdp: &'a str, line: &str) -> Option<&'a str> {
        // returns the mid of the section that holds `line`
        let mut mid = None;
        let mut found = false;
        for l in sdp.split("\r\n").chain(std::iter::once("m=end")) {
            if l.starts_with("m=") {
                if found {
                    return mid;
                }
                mid = None;
            }
            if let Some(m) = l.strip_prefix("a=mid:") {
                mid = Some(m);
            }
            if l == line {
                found = true;
            }
        }
        None
    }

    #[test]
    fn by_mid_into_right_section_crlf_kept() {
        let c1 = "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0";
        let c2 = "candidate:2 1 udp 2122260223 127.0.0.1 50002 typ host generation 0";
        let out = merge_candidates(
            BUNDLE_CRLF,
            &[cand(c1, Some("1"), Some(0)), cand(c2, Some("0"), None)],
            true,
        );
        assert!(
            !out.replace("\r\n", "").contains('\n'),
            "mixed line endings"
        );
        assert!(out.ends_with("\r\n"));
        assert_eq!(section_of(&out, &format!("a={c1}")), Some("1"), "{out}");
        assert_eq!(section_of(&out, &format!("a={c2}")), Some("0"), "{out}");
        assert_eq!(out.matches("a=end-of-candidates").count(), 2);
        // everything from the input is still there, in order
        let kept: Vec<&str> = out
            .split("\r\n")
            .filter(|l| !l.starts_with("a=candidate") && *l != "a=end-of-candidates")
            .collect();
        let orig: Vec<&str> = BUNDLE_CRLF.split("\r\n").collect();
        assert_eq!(kept, orig);
    }

    #[test]
    fn stray_carriage_returns_do_not_mix_line_endings() {
        // found by fuzz/sdp_merge: "\r\r" came out as "\r\n" (a CRLF in an LF body), and
        // merging that again gave "" (not idempotent)
        for (sdp, want) in [
            ("\r\r", ""),
            ("v=0\na=x\r\r", "v=0\na=x\n"),
            ("v=0\r\na=x\r\r\n", "v=0\r\na=x\r\n"),
        ] {
            let out = merge_candidates(sdp, &[], false);
            assert_eq!(out, want, "{sdp:?}");
            assert_eq!(merge_candidates(&out, &[], false), out);
        }
    }

    #[test]
    fn mid_missing_falls_back_to_index() {
        let c = "candidate:3 1 udp 1 127.0.0.1 4 typ host";
        let out = merge_candidates(BUNDLE_CRLF, &[cand(c, None, Some(1))], false);
        assert_eq!(section_of(&out, &format!("a={c}")), Some("1"));
        assert!(!out.contains("end-of-candidates"));
        // unknown mid, valid index
        let out = merge_candidates(BUNDLE_CRLF, &[cand(c, Some("video"), Some(1))], false);
        assert_eq!(section_of(&out, &format!("a={c}")), Some("1"));
        // neither usable: first m-section
        let out = merge_candidates(BUNDLE_CRLF, &[cand(c, Some("x"), Some(9))], false);
        assert_eq!(section_of(&out, &format!("a={c}")), Some("0"));
    }

    #[test]
    fn lf_only_input_keeps_lf_and_prefixed_candidates_and_dedup() {
        let sdp = BUNDLE_CRLF.replace("\r\n", "\n");
        let c = "a=candidate:5 1 udp 1 127.0.0.1 6 typ host";
        let out = merge_candidates(
            &sdp,
            &[cand(c, Some("0"), None), cand(c, Some("0"), None)],
            true,
        );
        assert!(!out.contains('\r'));
        assert_eq!(out.matches(c).count(), 1);
        // merging again is idempotent
        let again = merge_candidates(&out, &[cand(c, Some("0"), None)], true);
        assert_eq!(again, out);
    }

    #[test]
    fn garbage_candidates_are_ignored() {
        let out = merge_candidates(
            BUNDLE_CRLF,
            &[
                cand("", Some("0"), Some(0)),
                cand("foo", Some("0"), Some(0)),
                cand(
                    "candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil",
                    Some("0"),
                    None,
                ),
            ],
            false,
        );
        assert_eq!(out, BUNDLE_CRLF);
    }

    #[test]
    fn existing_end_of_candidates_stays_last() {
        let sdp = "v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\na=mid:a\r\na=end-of-candidates\r\n";
        let out = merge_candidates(
            sdp,
            &[cand(
                "candidate:1 1 udp 1 127.0.0.1 5 typ host",
                Some("a"),
                None,
            )],
            true,
        );
        assert_eq!(
            out,
            "v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\na=mid:a\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates\r\n"
        );
    }

    #[test]
    fn no_media_sections_is_unchanged() {
        let sdp = "v=0\r\ns=-\r\nt=0 0\r\n";
        assert_eq!(
            merge_candidates(
                sdp,
                &[cand(
                    "candidate:1 1 udp 1 1.1.1.1 1 typ host",
                    None,
                    Some(0)
                )],
                true
            ),
            sdp
        );
    }

    #[test]
    fn ufrags_of_candidates_and_sdp() {
        assert_eq!(
            candidate_ufrag(
                "candidate:1 1 udp 1 127.0.0.1 5 typ host generation 0 ufrag EsAw network-id 1"
            ),
            Some("EsAw")
        );
        assert_eq!(
            candidate_ufrag("candidate:1 1 udp 1 127.0.0.1 5 typ host"),
            None
        );
        assert_eq!(sdp_ufrags(BUNDLE_CRLF), vec!["abcd", "abcd"]);
    }

    #[test]
    fn readiness_needs_a_relay_candidate_per_transport() {
        let c = |typ: &str, mid: &str| {
            cand(
                &format!("candidate:1 1 udp 1 203.0.113.1 9 typ {typ}"),
                Some(mid),
                None,
            )
        };
        // BUNDLE 0 1: one transport, on mid 0
        assert_eq!(readiness(BUNDLE_CRLF, &[]), Readiness::Wait);
        assert_eq!(readiness(BUNDLE_CRLF, &[c("host", "0")]), Readiness::Wait);
        assert_eq!(readiness(BUNDLE_CRLF, &[c("relay", "1")]), Readiness::Wait);
        // relay-only sender: nothing better can follow
        assert_eq!(readiness(BUNDLE_CRLF, &[c("relay", "0")]), Readiness::Ready);
        // a sender that gathers host candidates may still find a direct path
        let host_relay = [c("host", "0"), c("relay", "0")];
        assert_eq!(readiness(BUNDLE_CRLF, &host_relay), Readiness::Usable);
        let all = [c("host", "0"), c("srflx", "0"), c("relay", "0")];
        assert_eq!(readiness(BUNDLE_CRLF, &all), Readiness::Ready);
        // without BUNDLE every open m-section is a transport; port 0 is rejected
        let plain = BUNDLE_CRLF.replace("a=group:BUNDLE 0 1\r\n", "");
        assert_eq!(readiness(&plain, &[c("relay", "0")]), Readiness::Wait);
        assert_eq!(
            readiness(&plain, &[c("relay", "0"), c("relay", "1")]),
            Readiness::Ready
        );
        let rejected = plain.replace("m=video 9 ", "m=video 0 ");
        assert_eq!(readiness(&rejected, &[c("relay", "0")]), Readiness::Ready);
        // candidates the SDP carries itself count too
        let inline = BUNDLE_CRLF.replace(
            "a=mid:0\r\n",
            "a=mid:0\r\na=candidate:1 1 udp 1 203.0.113.1 9 typ relay\r\n",
        );
        assert_eq!(readiness(&inline, &[]), Readiness::Ready);
        assert_eq!(
            readiness("v=0\r\ns=-\r\n", &[c("relay", "0")]),
            Readiness::Wait
        );
    }

    #[test]
    fn candidate_types() {
        let relay = "candidate:9 1 udp 41885439 203.0.113.1 50001 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag EsAw";
        assert_eq!(candidate_type(relay), Some("relay"));
        assert_eq!(
            candidate_type("a=candidate:1 1 UDP 2122252543 10.0.0.2 5000 typ host"),
            Some("host")
        );
        assert_eq!(
            candidate_type("candidate:1 1 udp 1 10.0.0.2 5000 typ"),
            None
        );
        assert_eq!(candidate_type("candidate:1 1 udp 1 10.0.0.2 5000"), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn sdp_with(mids: &[String], crlf: bool) -> String {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut s = format!("v=0{eol}o=- 1 2 IN IP4 127.0.0.1{eol}s=-{eol}t=0 0{eol}");
            for m in mids {
                s.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111{eol}a=ice-ufrag:x{eol}a=mid:{m}{eol}a=sendrecv{eol}"));
            }
            s
        }

        proptest! {
            #[test]
            fn merge_keeps_input_and_places_every_candidate_once(
                n in 1usize..5,
                crlf in any::<bool>(),
                cands in proptest::collection::vec((0u32..50, proptest::option::of(0usize..6), proptest::option::of(0u64..6)), 0..20),
                eoc in any::<bool>(),
            ) {
                let mids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
                let sdp = sdp_with(&mids, crlf);
                // distinct candidates (a repeated one is covered by the idempotence check)
                let cs: Vec<Candidate> = cands
                    .iter()
                    .enumerate()
                    .map(|(i, (f, mid, idx))| Candidate {
                        candidate: format!("candidate:{f} 1 udp 1 127.0.0.1 {} typ host", 1000 + i),
                        sdp_mid: mid.map(|m| format!("m{m}")),
                        sdp_mline_index: *idx,
                    })
                    .collect();
                let out = merge_candidates(&sdp, &cs, eoc);
                if crlf {
                    prop_assert!(!out.replace("\r\n", "").contains('\n'));
                } else {
                    prop_assert!(!out.contains('\r'));
                }
                let eol = if crlf { "\r\n" } else { "\n" };
                let kept: Vec<&str> = out
                    .split(eol)
                    .filter(|l| !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
                    .collect();
                prop_assert_eq!(kept, sdp.split(eol).collect::<Vec<_>>());
                prop_assert_eq!(out.matches("a=end-of-candidates").count(), if eoc { n } else { 0 });
                // each distinct candidate once, in the right m-section
                let sections: Vec<&str> = out.split("m=audio").skip(1).collect();
                for c in &cs {
                    let line = format!("a={}{eol}", c.candidate);
                    prop_assert_eq!(out.matches(&line).count(), 1);
                    let by_mid = c.sdp_mid.as_ref().and_then(|m| mids.iter().position(|x| x == m));
                    let by_idx = c.sdp_mline_index.map(|i| i as usize).filter(|i| *i < n);
                    let want = by_mid.or(by_idx).unwrap_or(0);
                    prop_assert!(sections[want].contains(&line));
                }
                prop_assert_eq!(merge_candidates(&out, &cs, eoc), out.clone());
            }
        }
    }

    #[test]
    fn looks_like_sdp_checks_v_line() {
        assert!(looks_like_sdp("v=0\r\n"));
        assert!(!looks_like_sdp("hello"));
    }
}
