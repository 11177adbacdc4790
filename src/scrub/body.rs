//! The response body that scrubs as it streams: a [`Scanner`] around Medusa's body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{Scanner, Scrub};

/// A response body with the [`Scrub`]bed fields' values replaced as it streams (see
/// [`Scanner`]): same length, same trailers. Without fields to scrub it is a plain
/// pass-through.
pub struct ScrubBody<B> {
    inner: B,
    scanner: Option<Box<Scanner>>,
    /// Trailers that came after held-back bytes, sent next.
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl<B> ScrubBody<B> {
    /// `inner` unchanged, until [`ScrubBody::scrub`] says which fields to blank.
    pub fn passthrough(inner: B) -> ScrubBody<B> {
        ScrubBody {
            inner,
            scanner: None,
            trailers: None,
            done: false,
        }
    }

    /// `inner` with the values of the `scrub` fields blanked.
    ///
    /// ```
    /// use http_body_util::{BodyExt, Full};
    /// use medusa_auth_proxy::scrub::{Scrub, ScrubBody};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let medusa = Full::new(bytes::Bytes::from_static(br#"{"api_token":"s3cret"}"#));
    /// let scrub = Scrub { api_token: true, invite_token: false };
    /// let body = ScrubBody::new(medusa, scrub).collect().await.unwrap().to_bytes();
    /// assert_eq!(&body[..], br#"{"api_token":null    }"#);
    /// # });
    /// ```
    pub fn new(inner: B, scrub: Scrub) -> ScrubBody<B> {
        let mut body = ScrubBody::passthrough(inner);
        body.scrub(scrub);
        body
    }

    /// Start scrubbing (before the first frame is read).
    pub fn scrub(&mut self, scrub: Scrub) {
        self.scanner = scrub.any().then(|| Box::new(Scanner::new(scrub)));
    }
}

impl<B> Body for ScrubBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(scanner) = this.scanner.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(t)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(out) = scanner.push(data) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => match scanner.finish() {
                        Some(out) => {
                            this.trailers = Some(trailers);
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        None => return Poll::Ready(Some(Ok(trailers))),
                    },
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    if let Some(out) = scanner.finish() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.scanner {
            None => self.inner.is_end_stream(),
            Some(s) => {
                self.trailers.is_none()
                    && s.pending() == 0
                    && (self.done || self.inner.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let inner = if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let Some(s) = &self.scanner else {
            return inner;
        };
        // Output is exactly as long as input: what is held back is still to come.
        let held = s.pending();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: Scrub = Scrub {
        api_token: true,
        invite_token: false,
    };

    #[tokio::test]
    async fn body_keeps_trailers_and_length() {
        use http_body_util::{BodyExt, StreamBody};
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"a\":1,\"api_"))),
            Ok(Frame::data(Bytes::from_static(
                b"token\":\"abcdef\",\"b\":\"api_tok",
            ))),
            Ok(Frame::trailers(http::HeaderMap::from_iter([(
                http::header::HeaderName::from_static("x-t"),
                http::HeaderValue::from_static("1"),
            )]))),
        ];
        let body = ScrubBody::new(StreamBody::new(futures_util::stream::iter(frames)), API);
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => match e {},
        };
        assert_eq!(
            collected.trailers().and_then(|t| t.get("x-t")),
            Some(&http::HeaderValue::from_static("1"))
        );
        assert_eq!(
            collected.to_bytes(),
            Bytes::from_static(b"{\"a\":1,\"api_token\":null    ,\"b\":\"api_tok")
        );
    }
}
