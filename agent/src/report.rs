//! Error reports for logs and messages: an error and its sources in one line.

/// "outer: inner: innermost". A source whose text the report already contains is skipped
/// (wrappers such as tonic's repeat their source's message; TLS verification errors are in the
/// sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let next = err.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct E {
        msg: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(msg: &'static str, source: Option<E>) -> E {
        E {
            msg,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn chains_sources_and_skips_repeats() {
        let err = e("connect", Some(e("tls", Some(e("unknown ca", None)))));
        assert_eq!(error_chain(&err), "connect: tls: unknown ca");
        let repeated = e("status: tls: unknown ca", Some(e("unknown ca", None)));
        assert_eq!(error_chain(&repeated), "status: tls: unknown ca");
        assert_eq!(error_chain(&e("alone", None)), "alone");
    }
}
