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

/// What a [`LayerFuture`] polled again after it answered answers (a bug of the caller's).
const ENDED: &str = "a layer future was polled after it ended";

impl<F, M, O, T> Future for LayerFuture<F, M, O>
where
    F: Future<Output = T>,
    M: Finish<T, Output = O>,
{
    type Output = Result<O, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { error } => {
                Poll::Ready(Err(error.take().unwrap_or(ProxyError::Internal(ENDED))))
            }
            Proj::Called { inner, finish } => {
                // Ended (`finish` taken): the inner future must not be polled again, many
                // (`Ready`, hyper's) panic when they are.
                if finish.is_none() {
                    return Poll::Ready(Err(ProxyError::Internal(ENDED)));
                }
                let answer = ready!(inner.poll(cx));
                match finish.take() {
                    Some(m) => Poll::Ready(m.finish(answer)),
                    None => Poll::Ready(Err(ProxyError::Internal(ENDED))),
                }
            }
            Proj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};
    use std::task::Waker;

    use super::*;

    /// Adds one to the inner answer: shows `finish` ran, once, on the inner answer.
    struct AddOne;

    impl Finish<Result<u32, ProxyError>> for AddOne {
        type Output = u32;
        fn finish(self, answer: Result<u32, ProxyError>) -> Result<u32, ProxyError> {
            answer.map(|n| n + 1)
        }
    }

    type Fut<M> = LayerFuture<Ready<Result<u32, ProxyError>>, M, u32>;

    fn poll<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ended_error(answer: Poll<Result<u32, ProxyError>>) -> &'static str {
        match answer {
            Poll::Ready(Err(ProxyError::Internal(why))) => why,
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_answers_its_error() {
        let fut: Fut<Pass> = LayerFuture::refuse(ProxyError::Overloaded(3));
        assert!(matches!(fut.await, Err(ProxyError::Overloaded(3))));
    }

    #[tokio::test]
    async fn called_finishes_the_inner_answer() {
        let fut: Fut<AddOne> = LayerFuture::called(ready(Ok(41)), AddOne);
        assert_eq!(fut.await.unwrap(), 42);
        // `Pass` maps the inner error into the proxy's.
        let fut: Fut<Pass> = LayerFuture::called(ready(Err(ProxyError::BadRequest("inner"))), Pass);
        assert!(matches!(fut.await, Err(ProxyError::BadRequest("inner"))));
    }

    #[test]
    fn called_waits_for_the_inner_future() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        struct Got;
        impl Finish<Result<u32, tokio::sync::oneshot::error::RecvError>> for Got {
            type Output = u32;
            fn finish(
                self,
                answer: Result<u32, tokio::sync::oneshot::error::RecvError>,
            ) -> Result<u32, ProxyError> {
                answer.map_err(|_| ProxyError::Internal("sender dropped"))
            }
        }
        let mut fut = std::pin::pin!(LayerFuture::<_, Got, u32>::called(rx, Got));
        assert!(poll(fut.as_mut()).is_pending());
        tx.send(7).unwrap();
        assert!(matches!(poll(fut.as_mut()), Poll::Ready(Ok(7))));
    }

    #[tokio::test]
    async fn boxed_runs_the_slow_path() {
        let fut: Fut<Pass> = LayerFuture::boxed(async {
            tokio::task::yield_now().await;
            Ok(9)
        });
        assert_eq!(fut.await.unwrap(), 9);
        let fut: Fut<Pass> = LayerFuture::boxed(async { Err(ProxyError::Overloaded(1)) });
        assert!(matches!(fut.await, Err(ProxyError::Overloaded(1))));
    }

    #[test]
    fn polled_after_the_end_is_an_internal_error_not_a_panic() {
        let mut fut = std::pin::pin!(Fut::<Pass>::refuse(ProxyError::Overloaded(3)));
        assert!(matches!(
            poll(fut.as_mut()),
            Poll::Ready(Err(ProxyError::Overloaded(3)))
        ));
        assert!(ended_error(poll(fut.as_mut())).contains("after it ended"));

        let mut fut = std::pin::pin!(Fut::<AddOne>::called(ready(Ok(1)), AddOne));
        assert!(matches!(poll(fut.as_mut()), Poll::Ready(Ok(2))));
        // The inner future is not polled again (`Ready` would panic if it were).
        assert!(ended_error(poll(fut.as_mut())).contains("after it ended"));
    }
}
