//! The problems a check finds, reported together.
use anyhow::bail;

/// Problems found, reported together.
#[derive(Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records `msg()` unless `ok`.
    pub fn expect(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    /// Records `msg`.
    pub fn push(&mut self, msg: String) {
        self.0.push(msg);
    }

    pub fn into_result(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} problem(s):\n  - {}",
                self.0.len(),
                self.0.join("\n  - ")
            )
        }
    }
}
