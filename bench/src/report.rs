//! From numbers to text: a row per figure with its target, the markdown table, the machine
//! description and the generated section of docs/BENCHMARKS.md.
mod doc;
mod rows;
mod stats;

use std::fmt::Write as _;

pub use doc::{machine, write_doc};
pub use rows::rows;

/// One figure of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: &'static str,
    pub figure: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub target: String,
    /// true: value ≥ limit passes; false: value ≤ limit passes.
    pub at_least: bool,
    pub limit: f64,
    pub digits: usize,
    pub detail: String,
}

impl Row {
    /// Whether the figure met its target (`None`: not measured).
    pub fn pass(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_least {
            v >= self.limit
        } else {
            v <= self.limit
        })
    }
}

/// The markdown table of `rows`; with `smoke`, a result says the target is not enforced.
pub fn table(rows: &[Row], smoke: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| figure | measured | target | result | details |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in rows {
        let value = match r.value {
            Some(v) => format!("{:.*} {}", r.digits, v, r.unit).trim().to_string(),
            None => "not measured".to_string(),
        };
        let result = match (r.pass(), smoke) {
            (None, _) => "ERROR",
            (Some(p), true) => {
                if p {
                    "pass (smoke, not enforced)"
                } else {
                    "miss (smoke, not enforced)"
                }
            }
            (Some(true), false) => "pass",
            (Some(false), false) => "MISS",
        };
        let _ = writeln!(
            s,
            "| `{}` {} | {} | {} | {} | {} |",
            r.key, r.figure, value, r.target, result, r.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Option<f64>, at_least: bool) -> Row {
        Row {
            key: "k",
            figure: "fig".into(),
            value,
            unit: "ns",
            target: "≤ 1 ns".into(),
            at_least,
            limit: 1.0,
            digits: 1,
            detail: "d".into(),
        }
    }

    #[test]
    fn pass_compares_with_the_limit() {
        assert_eq!(row(Some(1.0), false).pass(), Some(true));
        assert_eq!(row(Some(1.5), false).pass(), Some(false));
        assert_eq!(row(Some(1.5), true).pass(), Some(true));
        assert_eq!(row(Some(0.5), true).pass(), Some(false));
        assert_eq!(row(None, true).pass(), None);
    }

    #[test]
    fn table_rows_and_results() {
        let rows = [
            row(Some(0.5), false),
            row(Some(2.0), false),
            row(None, false),
        ];
        let mut unit = rows[0].clone();
        unit.unit = "";
        assert_eq!(
            table(&rows, false),
            "| figure | measured | target | result | details |\n\
             |---|---|---|---|---|\n\
             | `k` fig | 0.5 ns | ≤ 1 ns | pass | d |\n\
             | `k` fig | 2.0 ns | ≤ 1 ns | MISS | d |\n\
             | `k` fig | not measured | ≤ 1 ns | ERROR | d |\n"
        );
        let smoke = table(&rows[..2], true);
        assert!(smoke.contains("| pass (smoke, not enforced) |"), "{smoke}");
        assert!(smoke.contains("| miss (smoke, not enforced) |"), "{smoke}");
        assert!(table(&[unit], false).contains("| 0.5 |"));
    }
}
