//! A check's outcome and the report (text or JSON).

use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// "Admin URL", "Gateway WebSocket URL", "STUN URI", "TURN URI".
    pub(crate) check: String,
    /// The URL/URI checked.
    pub(crate) target: String,
    /// Passed?
    pub(crate) ok: bool,
    /// What was measured (or where it failed).
    pub(crate) detail: String,
    /// Warnings (the check passed but something will bite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fix: Option<String>,
    /// Measured values (milliseconds, addresses).
    pub(crate) measured: serde_json::Map<String, Value>,
}

impl Check {
    pub(super) fn new(check: &str, target: &str) -> Self {
        Self {
            check: check.into(),
            target: target.into(),
            ok: false,
            detail: String::new(),
            warnings: Vec::new(),
            fix: None,
            measured: serde_json::Map::new(),
        }
    }
    pub(super) fn fail(mut self, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        self.ok = false;
        self.detail = detail.into();
        self.fix = Some(fix.into());
        self
    }
    /// Fails on a target that does not parse: `form` is what a valid one looks like.
    pub(super) fn unparsable(self, e: impl std::fmt::Display, form: &str) -> Self {
        self.fail(format!("cannot parse: {e}"), format!("use the form {form}"))
    }
    pub(super) fn pass(mut self, detail: impl Into<String>) -> Self {
        self.ok = true;
        self.detail = detail.into();
        self
    }
    pub(super) fn m(&mut self, k: &str, v: impl Into<Value>) {
        self.measured.insert(k.into(), v.into());
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Renders the checks as text, one line per check (+ warning and fix lines).
pub(crate) fn render_text(checks: &[Check]) -> String {
    let mut out = String::new();
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    for c in checks {
        out.push_str(&format!(
            "{} {:width$}  {}: {}\n",
            if c.ok { "✓" } else { "✗" },
            c.check,
            c.target,
            c.detail,
        ));
        for w in &c.warnings {
            out.push_str(&format!("    ! {w}\n"));
        }
        if let Some(f) = &c.fix {
            out.push_str(&format!("    fix: {f}\n"));
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        out.push_str(&format!("all {} checks passed\n", checks.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", checks.len()));
    }
    out
}

/// JSON form of the report.
pub(crate) fn render_json(checks: &[Check]) -> Value {
    json!({
        "ok": checks.iter().all(|c| c.ok),
        "checks": checks,
    })
}
