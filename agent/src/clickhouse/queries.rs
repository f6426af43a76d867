//! The saved questions, shipped as `deploy/clickhouse/queries/*.sql` and run by `podflow query`.
//!
//! Parameters are written as ClickHouse query parameters (`{from:DateTime}`), so the files run
//! as they are with `clickhouse-client --param_from=...` on servers that have them (19.x and
//! later); podflow substitutes checked literals itself, which works on every server (18.16 has
//! no query parameters). Every answer counts each packet once (`counted = 1`).
use thiserror::Error;

/// A saved query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub name: &'static str,
    pub about: &'static str,
    pub sql: &'static str,
}

macro_rules! saved {
    ($name:literal, $about:literal) => {
        Saved {
            name: $name,
            about: $about,
            sql: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/clickhouse/queries/",
                $name,
                ".sql"
            )),
        }
    };
}

/// Every saved query.
pub const SAVED: [Saved; 6] = [
    saved!("top_pod_pairs", "pod pairs that moved the most bytes"),
    saved!(
        "top_workload_pairs",
        "workload pairs that moved the most bytes (5-minute roll-up)"
    ),
    saved!("same_node_namespaces", "same-node bytes per namespace pair"),
    saved!(
        "plaintext_inter_node",
        "inter-node flows that skipped WireGuard on a node that has it"
    ),
    saved!(
        "big_transfers",
        "more than --threshold bytes from one pod to another within 5 minutes"
    ),
    saved!("losses", "losses per node and reason"),
];

/// Looks a saved query up by name.
pub fn saved(name: &str) -> Option<&'static Saved> {
    SAVED.iter().find(|s| s.name == name)
}

/// The values of the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Seconds since the epoch, inclusive.
    pub from: i64,
    /// Seconds since the epoch, exclusive.
    pub to: i64,
    pub limit: u32,
    pub threshold: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("the query uses an unknown parameter {0:?}")]
    UnknownParameter(String),
    #[error("parameter {name} is a {found}, the query reads it as {expected}")]
    ParameterType {
        name: String,
        found: String,
        expected: &'static str,
    },
    #[error("unclosed parameter in the query")]
    Unclosed,
    #[error("times must lie in 1970..2106: {0}")]
    TimeRange(i64),
}

/// The SQL of `sql` with every `{name:Type}` replaced by the parameter's literal.
pub fn render(sql: &str, params: &Params) -> Result<String, QueryError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(QueryError::Unclosed)?;
        let inner = &after[..close];
        let Some((name, ty)) = inner.split_once(':') else {
            // Not a parameter (no type): keep it.
            out.push('{');
            rest = after;
            continue;
        };
        let (name, ty) = (name.trim(), ty.trim());
        let expect = |expected: &'static str| {
            if ty == expected {
                Ok(())
            } else {
                Err(QueryError::ParameterType {
                    name: name.to_owned(),
                    found: ty.to_owned(),
                    expected,
                })
            }
        };
        let time = |t: i64| {
            if (0..=i64::from(u32::MAX)).contains(&t) {
                Ok(format!("toDateTime({t})"))
            } else {
                Err(QueryError::TimeRange(t))
            }
        };
        let literal = match name {
            "from" => expect("DateTime").and_then(|()| time(params.from))?,
            "to" => expect("DateTime").and_then(|()| time(params.to))?,
            "limit" => expect("UInt32").map(|()| params.limit.to_string())?,
            "threshold" => expect("UInt64").map(|()| params.threshold.to_string())?,
            other => return Err(QueryError::UnknownParameter(other.to_owned())),
        };
        out.push_str(&literal);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        from: 1_800_000_000,
        to: 1_800_003_600,
        limit: 10,
        threshold: 1_000_000_000,
    };

    #[test]
    fn every_saved_query_renders_and_counts_once() {
        for s in &SAVED {
            let sql = render(s.sql, &P).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert!(!sql.contains(":DateTime}"), "{}", s.name);
            assert!(sql.contains("toDateTime(1800000000)"), "{}", s.name);
            assert!(sql.contains("LIMIT 10"), "{}", s.name);
            if s.sql.contains("FROM flows\n") {
                assert!(s.sql.contains("counted = 1"), "{} must count once", s.name);
            }
        }
        assert!(
            render(saved("big_transfers").unwrap().sql, &P)
                .unwrap()
                .contains("HAVING bytes > 1000000000")
        );
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            render("{evil:String}", &P),
            Err(QueryError::UnknownParameter("evil".into()))
        );
        assert!(matches!(
            render("{from:String}", &P),
            Err(QueryError::ParameterType { .. })
        ));
        assert_eq!(render("{from:DateTime", &P), Err(QueryError::Unclosed));
        assert_eq!(
            render("{from:DateTime}", &Params { from: -1, ..P }),
            Err(QueryError::TimeRange(-1))
        );
        assert_eq!(render("a {b} c", &P).unwrap(), "a {b} c");
    }
}
