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

/// A gRPC status in one line: "Code: message: its sources" (a transport failure's cause, such
/// as a TLS alert, is in the sources, not in the message).
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    text
}

/// With mutual TLS 1.3, a server refuses a client's certificate after the client's side of the
/// handshake is done: the client sees its first request fail with the connection closed, often
/// without the server's alert. Says what that means, for errors of a TLS client.
pub fn refused_after_tls_handshake(status: &tonic::Status) -> Option<&'static str> {
    let text = status_text(status);
    let closed = text.contains("connection closed") || text.contains("fatal alert");
    (closed
        && matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown
        ))
    .then_some(
        "the server closed the connection after the TLS handshake: with mutual TLS, that is how \
         it refuses a client certificate (none, or one its client CA did not sign); its log \
         names the reason",
    )
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
