//! The Prometheus rules file: the PrometheusRule's `spec` (its rule groups), for plain Prometheus.
use anyhow::{Context as _, bail};
use serde_yaml::Value;

use super::{PROMETHEUS_RULE, objects::kind};

/// The rules file's content: the PrometheusRule's `spec` (its `groups`).
pub fn rules_from_prometheus_rule(text: &str) -> anyhow::Result<String> {
    let doc: Value = serde_yaml::from_str(text).context("parsing the PrometheusRule")?;
    if kind(&doc) != "PrometheusRule" {
        bail!("{PROMETHEUS_RULE} is not a PrometheusRule");
    }
    let spec = doc.get("spec").context("the PrometheusRule has no spec")?;
    Ok(serde_yaml::to_string(spec)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Deserialize;

    use super::*;
    use crate::deploy::{RULES_FILE, read};

    /// The part of a rules file the test reads.
    #[derive(Deserialize)]
    struct RulesFile {
        groups: Vec<Group>,
    }
    #[derive(Deserialize)]
    struct Group {
        rules: Vec<Rule>,
    }
    #[derive(Deserialize)]
    struct Rule {
        alert: Option<String>,
    }

    #[test]
    fn rules_file_is_the_prometheus_rule_spec() {
        let expected: Value = serde_yaml::from_str(
            &rules_from_prometheus_rule(&read(PROMETHEUS_RULE).unwrap()).unwrap(),
        )
        .unwrap();
        let committed: Value = serde_yaml::from_str(&read(RULES_FILE).unwrap()).unwrap();
        assert_eq!(expected, committed, "run `cargo xtask deploy-render`");
        let file = RulesFile::deserialize(&committed).unwrap();
        let alerts: BTreeSet<&str> = file
            .groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter_map(|r| r.alert.as_deref())
            .collect();
        for a in [
            "PodflowLargeWorkloadTransfer",
            "PodflowPlaintextInterNodeTraffic",
            "PodflowKernelLosses",
            "PodflowUserLosses",
            "PodflowExportFailing",
            "PodflowExportDropping",
            "PodflowMetadataStale",
            "PodflowClickHouseFailing",
            "PodflowClickHouseBufferFilling",
        ] {
            assert!(alerts.contains(a), "{a} missing from {alerts:?}");
        }
    }
}
