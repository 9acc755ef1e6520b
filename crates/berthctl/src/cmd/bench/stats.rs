//! Samples of one measured quantity and their summary.

use serde_json::{json, Value};

#[derive(Default, Clone)]
pub struct Series {
    pub ms: Vec<f64>,
    pub failures: usize,
    pub first_error: Option<String>,
}

impl Series {
    pub fn push(&mut self, d: std::time::Duration) {
        self.ms.push(d.as_secs_f64() * 1e3);
    }

    pub fn fail(&mut self, e: &anyhow::Error) {
        self.failures += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.ms.is_empty()).then(|| self.ms.iter().sum::<f64>() / self.ms.len() as f64)
    }

    pub fn summary(&self) -> Value {
        json!({
            "count": self.ms.len(),
            "failures": self.failures,
            "first_error": self.first_error,
            "min": self.pct(0.0),
            "p50": self.pct(50.0),
            "p90": self.pct(90.0),
            "p99": self.pct(99.0),
            "max": self.pct(100.0),
            "mean": self.mean(),
            "samples": self.ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Series {
            ms: (1..=100).map(f64::from).collect(),
            ..Default::default()
        };
        assert_eq!(s.pct(0.0), Some(1.0));
        assert_eq!(s.pct(50.0), Some(50.0));
        assert_eq!(s.pct(99.0), Some(99.0));
        assert_eq!(s.pct(100.0), Some(100.0));
        assert_eq!(Series::default().pct(50.0), None);
    }
}
