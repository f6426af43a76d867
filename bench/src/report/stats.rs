//! Summary statistics of the samples of a figure: median, minimum and maximum.
use anyhow::anyhow;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of the finite samples of `v`, `None` without any.
pub fn summary(v: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// [`summary`] of a figure that must have samples.
pub fn summarize(v: &[f64]) -> anyhow::Result<Summary> {
    summary(v).ok_or_else(|| anyhow!("no samples"))
}

/// "median (min–max)" with `digits` decimals.
pub fn fmt_range(s: &Summary, digits: usize) -> String {
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

/// The summary in thousands.
pub fn kilo(v: &Summary) -> Summary {
    Summary {
        median: v.median / 1e3,
        min: v.min / 1e3,
        max: v.max / 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_the_finite_samples() {
        let s = summary(&[3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(summary(&[f64::NAN, f64::INFINITY]).is_none());
        assert!(summarize(&[]).is_err());
    }

    #[test]
    fn range_and_kilo() {
        let s = summary(&[1500.0, 2500.0, 2000.0]).unwrap();
        assert_eq!(fmt_range(&s, 1), "2000.0 (1500.0–2500.0)");
        assert_eq!(fmt_range(&kilo(&s), 0), "2 (2–2)");
        assert_eq!(fmt_range(&kilo(&s), 2), "2.00 (1.50–2.50)");
    }
}
