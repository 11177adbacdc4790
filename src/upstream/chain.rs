//! An error and its sources as one line, for log fields and messages.
//!
//! A leaf module: the pool, the client and the callers that flatten an [`UpstreamError`]
//! (the proxy's error mapping, the login) all use it, and it uses none of them.
//!
//! [`UpstreamError`]: super::UpstreamError

/// `"a: b: c"` from an error and its sources; a source whose text the line already holds is
/// skipped (many errors repeat their source in their own message). hyper's, rustls' and the
/// connector's errors carry no header values or bodies, so the line holds no secret.
///
/// ```
/// use medusa_auth_proxy::upstream::error_chain;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot read the CA file")]
/// struct CaFile(#[source] std::io::Error);
///
/// let e = CaFile(std::io::Error::other("permission denied"));
/// assert_eq!(error_chain(&e), "cannot read the CA file: permission denied");
/// ```
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        let e = Repeats(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
