//! Small statistics helpers: medians and a fixed-resolution latency histogram.

/// Median of the finite values (NaN-free); None when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Latency histogram with 1 µs buckets up to 100 ms and an overflow bucket.
#[derive(Clone)]
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    overflow: u64,
    count: u64,
}

const MAX_US: usize = 100_000;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; MAX_US],
            overflow: 0,
            count: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record_us(&mut self, us: u64) {
        self.count += 1;
        match self.buckets.get_mut(us as usize) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.count += other.count;
    }

    /// Quantile in µs (q in 0..=1); None when empty. Overflow reads as MAX_US.
    pub(crate) fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(us as f64);
            }
        }
        Some(MAX_US as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for us in 1..=100 {
            h.record_us(us);
        }
        assert_eq!(h.quantile_us(0.5), Some(50.0));
        assert_eq!(h.quantile_us(0.99), Some(99.0));
        h.record_us(1_000_000);
        assert_eq!(h.count, 101);
        assert_eq!(h.quantile_us(1.0), Some(100_000.0));
    }
}
