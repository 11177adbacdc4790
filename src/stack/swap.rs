//! A listener's request path, replaceable while it serves: a reload that changes the
//! identities builds a whole new stack (identities, routes, the rules that map client keys to
//! them) and stores it here in one step. Each request is served entirely by the stack that was
//! current when it arrived, so no request ever sees the new rules with the old identities (a
//! client key's owner is an index into the identities it was built with). Requests in flight
//! finish on the stack they started on; connections are untouched.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::Service;

/// A service that serves each request with the current value of a [`Swap`] (a clone of it,
/// as the server clones its service for each request anyway).
///
/// ```
/// use medusa_auth_proxy::stack::swap::Swappable;
/// use tower::{Service, ServiceExt};
///
/// type Step = fn(u32) -> std::future::Ready<Result<u32, std::convert::Infallible>>;
/// fn add_one(n: u32) -> std::future::Ready<Result<u32, std::convert::Infallible>> {
///     std::future::ready(Ok(n + 1))
/// }
/// fn add_ten(n: u32) -> std::future::Ready<Result<u32, std::convert::Infallible>> {
///     std::future::ready(Ok(n + 10))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (service, swap) = Swappable::new(tower::service_fn(add_one as Step));
/// assert_eq!(service.clone().oneshot(1).await.unwrap(), 2);
/// // A service of the same type, built anew (a reload's new stack).
/// swap.store(tower::service_fn(add_ten as Step));
/// assert_eq!(service.clone().oneshot(1).await.unwrap(), 11);
/// # }
/// ```
pub struct Swappable<S> {
    current: Arc<ArcSwap<S>>,
    /// The clone taken by `poll_ready`, called by `call`.
    taken: Option<S>,
}

/// Where a new stack is stored for a [`Swappable`]: every request that arrives after
/// [`Swap::store`] is served by it.
pub struct Swap<S>(Arc<ArcSwap<S>>);

impl<S> Swappable<S> {
    /// A service serving with `first` until something else is stored in the [`Swap`].
    pub fn new(first: S) -> (Swappable<S>, Swap<S>) {
        let current = Arc::new(ArcSwap::from_pointee(first));
        (
            Swappable {
                current: current.clone(),
                taken: None,
            },
            Swap(current),
        )
    }
}

impl<S> Swap<S> {
    /// Serve every request from now on with `next`.
    pub fn store(&self, next: S) {
        self.0.store(Arc::new(next));
    }
}

impl<S> Clone for Swappable<S> {
    fn clone(&self) -> Self {
        Swappable {
            current: self.current.clone(),
            taken: None,
        }
    }
}

impl<S: Clone, R> Service<R> for Swappable<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let current = &self.current;
        self.taken
            .get_or_insert_with(|| S::clone(&current.load()))
            .poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        match self.taken.take() {
            Some(mut s) => s.call(req),
            // Called without `poll_ready` (a contract breach): the current stack, as if it had
            // been made ready; every stack of this proxy is always ready.
            None => S::clone(&self.current.load()).call(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Adds(u32);
    impl Service<u32> for Adds {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u32, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, n: u32) -> Self::Future {
            std::future::ready(Ok(n + self.0))
        }
    }

    #[tokio::test]
    async fn each_request_is_served_by_the_stack_current_when_it_arrived() {
        let (service, swap) = Swappable::new(Adds(1));
        let mut ready_before = service.clone();
        // Made ready (the stack taken) before the swap: it keeps the stack it took.
        ready_before.ready().await.unwrap();
        swap.store(Adds(100));
        assert_eq!(ready_before.call(1).await.unwrap(), 2);
        assert_eq!(service.clone().oneshot(1).await.unwrap(), 101);
        // A clone made before the swap serves with the new one too: clones share the slot.
        let old_clone = service.clone();
        swap.store(Adds(1000));
        assert_eq!(old_clone.oneshot(1).await.unwrap(), 1001);
    }

    #[tokio::test]
    async fn a_call_without_poll_ready_still_uses_the_current_stack() {
        let (mut service, swap) = Swappable::new(Adds(1));
        swap.store(Adds(7));
        assert_eq!(service.call(1).await.unwrap(), 8);
    }
}
