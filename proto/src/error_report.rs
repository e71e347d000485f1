//! A failure that crosses the wire: the message and its chain of causes.

use serde::{Deserialize, Serialize};

/// An error as the peer should see it: top-level message, then each `source()` in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The outermost error's message.
    pub message: String,
    /// Messages of the source chain, outermost first.
    #[serde(default)]
    pub causes: Vec<String>,
}

impl ErrorReport {
    /// Builds a report from an error by walking its `source()` chain.
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut next = error.source();
        while let Some(cause) = next {
            causes.push(cause.to_string());
            next = cause.source();
        }
        Self {
            message: error.to_string(),
            causes,
        }
    }
}

impl std::fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn walks_the_source_chain() {
        let e = Outer(std::io::Error::other("inner"));
        let report = ErrorReport::from_error(&e);
        assert_eq!(report.to_string(), "outer: inner");
        assert_eq!(report.causes, vec!["inner".to_string()]);
    }
}
