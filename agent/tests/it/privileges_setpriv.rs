//! `privileges::check()` in a real process whose capabilities are cut down with `setpriv` to the
//! DaemonSet's set (passes) or that set minus one (fails naming exactly the missing one).
//!
//! The test re-runs this test binary under `setpriv` with `PODFLOW_PRIVILEGES_CHILD=1`; the child
//! test prints the check's outcome. Root only (setpriv needs to hold the capabilities it keeps);
//! without root it fails, unless `PODFLOW_SKIP_PRIVILEGED=1`.
use std::process::Command;

use podflow::privileges::{self, required_capabilities};

use crate::support::{one_test, this_binary};

const CHILD: &str = "PODFLOW_PRIVILEGES_CHILD";

/// Runs in the child only: prints the outcome of the start-up check.
#[test]
fn child_reports_check() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    match privileges::check() {
        Ok(()) => println!("CHECK-RESULT: ok"),
        Err(e) => println!("CHECK-RESULT: err: {e}"),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The check's outcome in a process holding exactly `caps` (names without `CAP_`, lower case).
fn check_with(caps: &[String]) -> String {
    let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let out = Command::new("setpriv")
        .arg(format!("--bounding-set=-all{keep}"))
        .arg("--inh-caps=-all")
        .arg(this_binary())
        .args(one_test("privileges_setpriv::child_reports_check"))
        .env(CHILD, "1")
        .output()
        .expect("run setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("CHECK-RESULT: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"))
        .to_string()
}

#[test]
fn check_passes_with_the_manifest_capabilities_and_names_a_dropped_one() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    if !is_root() {
        assert!(
            std::env::var_os("PODFLOW_SKIP_PRIVILEGED").is_some(),
            "needs root (setpriv); set PODFLOW_SKIP_PRIVILEGED=1 to skip"
        );
        return;
    }
    let all: Vec<String> = required_capabilities()
        .iter()
        .map(|(name, _)| name.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    assert_eq!(check_with(&all), "ok");
    for (name, _) in required_capabilities() {
        let lower = name.trim_start_matches("CAP_").to_ascii_lowercase();
        let without: Vec<String> = all.iter().filter(|c| **c != lower).cloned().collect();
        let result = check_with(&without);
        assert!(
            result.starts_with(&format!("err: missing capability {name} (")),
            "without {name}: {result}"
        );
        assert!(
            result.contains("grant it in the pod securityContext.capabilities.add"),
            "{result}"
        );
    }
    // CAP_SYS_ADMIN stands in for BPF and PERFMON, never for NET_ADMIN.
    assert_eq!(check_with(&["sys_admin".into(), "net_admin".into()]), "ok");
    assert!(
        check_with(&["sys_admin".into()]).starts_with("err: missing capability CAP_NET_ADMIN ("),
        "sys_admin alone"
    );
}
