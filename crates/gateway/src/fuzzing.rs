//! Hooks for the cargo-fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz sets): internal consistency checks that are not part of the public API.

use crate::core::Core;

/// Panics when the core's tables are inconsistent (see `core::invariants`).
pub fn check_invariants(core: &Core) {
    crate::core::invariants::check(core);
}

/// True when the core holds nothing: no sessions, handles, registrations, buffered
/// candidates or cap tallies (the state after every client went away).
pub fn is_empty(core: &Core) -> bool {
    let (sessions, handles, users, _tokens) = core.stats();
    sessions == 0 && handles == 0 && users == 0 && crate::core::invariants::tallies_empty(core)
}

/// The id generator a target hands to `Core::new`: seeded from the input, so a crash
/// replays with the same session and handle ids.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}
