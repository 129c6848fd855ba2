//! Figures of one run and the side-by-side table (median of runs, ratio).

use crate::stats::median;

/// Named figures in insertion order.
#[derive(Clone, Default, Debug)]
pub(crate) struct Figures(Vec<(String, f64)>);

impl Figures {
    pub(crate) fn set(&mut self, name: &str, v: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = v,
            None => self.0.push((name.to_owned(), v)),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|e| e.1)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.is_nan() => "-".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// A Markdown table: one row per figure, one column per target (median over runs),
/// plus `ratio = ours / reference`.
pub(crate) fn table(
    columns: &[(&str, &[Figures])],
    ours: &str,
    reference: &str,
    extra_note: &str,
) -> String {
    let mut names: Vec<String> = Vec::new();
    for (_, runs) in columns {
        for f in runs.iter() {
            for n in f.names() {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_owned());
                }
            }
        }
    }
    let values = |col: &str, name: &str| -> Vec<f64> {
        columns
            .iter()
            .find(|(c, _)| *c == col)
            .map(|(_, runs)| {
                runs.iter()
                    .filter_map(|f| f.get(name))
                    .filter(|x| x.is_finite())
                    .collect()
            })
            .unwrap_or_default()
    };
    let med = |col: &str, name: &str| median(&values(col, name));
    // "median (min–max)" when there is more than one run, so noise shows.
    let cell = |col: &str, name: &str| -> String {
        let v = values(col, name);
        let m = fmt(median(&v));
        if v.len() < 2 {
            return m;
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{m} ({}–{})", fmt(Some(lo)), fmt(Some(hi)))
    };
    let mut out = String::new();
    out.push_str("| figure: median of runs (min–max) |");
    for (c, runs) in columns {
        out.push_str(&format!(" {c} (n={}) |", runs.len()));
    }
    out.push_str(&format!(" ratio {ours}/{reference} |\n|---|"));
    for _ in columns {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for n in &names {
        out.push_str(&format!("| {n} |"));
        for (c, _) in columns {
            out.push_str(&format!(" {} |", cell(c, n)));
        }
        let ratio = match (med(ours, n), med(reference, n)) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
                format!("{:.2}", a / b)
            }
            _ => "-".into(),
        };
        out.push_str(&format!(" {ratio} |\n"));
    }
    if !extra_note.is_empty() {
        out.push_str(extra_note);
        out.push('\n');
    }
    out
}
