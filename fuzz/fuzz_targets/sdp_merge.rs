//! The SDP candidate merge (`gateway::sdp::merge_candidates`) with an SDP and candidates
//! taken from the fuzzer's bytes. Besides "no panic": every line of the input SDP is
//! kept, in order; the only lines added are the candidates (as `a=candidate:` lines) and
//! `a=end-of-candidates`; every well-formed candidate ends up in the output when there
//! is an m-section; one line ending throughout; merging again changes nothing.
//!
//! Input: SDP, then candidates, separated by NUL bytes; a candidate's first byte picks
//! its sdpMid / sdpMLineIndex.
#![no_main]

use gateway::sdp::{Candidate, merge_candidates};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|b| *b == 0);
    let sdp = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let cands: Vec<Candidate> = parts
        .take(64)
        .map(|p| {
            let (sel, text) = p.split_first().map_or((0, &[][..]), |(s, t)| (*s, t));
            Candidate {
                candidate: String::from_utf8_lossy(text).into_owned(),
                sdp_mid: (sel & 1 == 1).then(|| (sel >> 1 & 3).to_string()),
                sdp_mline_index: (sel & 8 == 8).then_some(u64::from(sel >> 4)),
            }
        })
        .collect();
    let eoc = flags & 1 == 1;
    let out = merge_candidates(&sdp, &cands, eoc);

    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    if eol == "\r\n" {
        assert!(
            !out.replace("\r\n", "").contains('\n'),
            "mixed line endings"
        );
    } else {
        assert!(!out.contains("\r\n"), "CRLF in an LF body");
    }
    let input_lines: Vec<&str> = sdp
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    let out_lines: Vec<&str> = out
        .strip_suffix(eol)
        .unwrap_or(&out)
        .split(eol)
        .filter(|l| !l.is_empty())
        .collect();
    if input_lines.is_empty() {
        assert!(out.is_empty(), "{out:?}");
        return;
    }
    // input lines kept in order; extra lines are candidates or end-of-candidates
    let mut it = input_lines.iter().peekable();
    for l in &out_lines {
        if it.peek() == Some(&l) {
            it.next();
        } else {
            assert!(
                *l == "a=end-of-candidates"
                    || (l.starts_with("a=candidate:")
                        && cands.iter().any(|c| {
                            let t = c.candidate.trim();
                            t.strip_prefix("a=").unwrap_or(t) == &l[2..]
                        })),
                "unexpected line {l:?}"
            );
        }
    }
    assert!(it.peek().is_none(), "input line {:?} lost", it.peek());
    let has_media = input_lines.iter().any(|l| l.starts_with("m="));
    for c in &cands {
        let t = c.candidate.trim();
        let t = t.strip_prefix("a=").unwrap_or(t);
        if has_media && t.starts_with("candidate:") && t.len() > 10 && !t.contains(['\r', '\n']) {
            assert!(
                out_lines.contains(&format!("a={t}").as_str()),
                "candidate {t:?} missing"
            );
        }
    }
    if has_media && eoc {
        let sections = out_lines.iter().filter(|l| l.starts_with("m=")).count();
        assert!(
            out_lines
                .iter()
                .filter(|l| **l == "a=end-of-candidates")
                .count()
                >= sections
        );
    }
    // idempotent: the merged SDP already has everything
    assert_eq!(merge_candidates(&out, &cands, eoc), out);
});
