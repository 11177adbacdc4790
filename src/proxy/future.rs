//! The one future type of the proxy's own layers.
//!
//! Every step of the request path either refuses at once, or calls the next service and
//! finishes its answer (a response header, a wrapped body, an error mapped to the proxy's
//! own), or, off the hot path, waits for something first (a body to buffer, a first login).
//! [`LayerFuture`] is those three cases: the first two are plain data, so the hot path stays
//! monomorphized with no allocation; only the third is boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::error::ProxyError;

/// Finishes what the next service answered: the per-layer half of a [`LayerFuture`].
pub trait Finish<T> {
    /// What the layer answers.
    type Output;
    /// Turn the inner answer into the layer's own.
    fn finish(self, answer: T) -> Result<Self::Output, ProxyError>;
}

/// Pass the inner answer through, mapping its error into the proxy's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pass;

impl<T, E: Into<ProxyError>> Finish<Result<T, E>> for Pass {
    type Output = T;
    fn finish(self, answer: Result<T, E>) -> Result<T, ProxyError> {
        answer.map_err(Into::into)
    }
}

/// A boxed, sendable future: the cold paths only.
pub type BoxFuture<O> = Pin<Box<dyn Future<Output = Result<O, ProxyError>> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// The future of every proxy layer: refused at once, the next service's call being
    /// finished by `M`, or a boxed slow path.
    // pin-project-lite takes no doc comments on fields: the variants describe theirs.
    #[allow(missing_docs)]
    #[project = Proj]
    pub enum LayerFuture<F, M, O> {
        /// Refused without calling the next service: `error` is the answer (taken on the
        /// first poll).
        Refused { error: Option<ProxyError> },
        /// The next service's future `inner`; `finish` turns its output into this layer's
        /// answer and is taken when it completes.
        Called { #[pin] inner: F, finish: Option<M> },
        /// A slow path (waiting for a body or a login) that calls the next service itself:
        /// `fut` gives the answer.
        Boxed { fut: BoxFuture<O> },
    }
}

impl<F, M, O> LayerFuture<F, M, O> {
    /// Refuse with `error`.
    pub fn refuse(error: impl Into<ProxyError>) -> Self {
        LayerFuture::Refused {
            error: Some(error.into()),
        }
    }

    /// The next service was called; `finish` completes its answer.
    pub fn called(inner: F, finish: M) -> Self {
        LayerFuture::Called {
            inner,
            finish: Some(finish),
        }
    }

    /// Take the slow path.
    pub fn boxed(fut: impl Future<Output = Result<O, ProxyError>> + Send + 'static) -> Self {
        LayerFuture::Boxed { fut: Box::pin(fut) }
    }
}

impl<F, M, O, T> Future for LayerFuture<F, M, O>
where
    F: Future<Output = T>,
    M: Finish<T, Output = O>,
{
    type Output = Result<O, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { error } => Poll::Ready(Err(error.take().unwrap_or(
                ProxyError::Internal("a layer future was polled after it ended"),
            ))),
            Proj::Called { inner, finish } => {
                let answer = ready!(inner.poll(cx));
                match finish.take() {
                    Some(m) => Poll::Ready(m.finish(answer)),
                    None => Poll::Ready(Err(ProxyError::Internal(
                        "a layer future was polled after it ended",
                    ))),
                }
            }
            Proj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
