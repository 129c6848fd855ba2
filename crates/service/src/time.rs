//! Wall-clock time: the one place the shells read it for the cores' `unix_now` input.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_now_is_after_2024() {
        // 2024-01-01T00:00:00Z: a clock error that returns 0 or a tiny number fails
        assert!(super::unix_now() > 1_704_067_200);
    }
}
