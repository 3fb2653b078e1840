//! A store call that outlives a caller who stopped waiting for it.
//!
//! Dropping a Redis call's future does not take back the command: it is on
//! its way, or already queued in a paused server, and it runs when the server
//! gets to it. Whatever it writes then has no owner. So a call the caller
//! gives up on (its time limit passed, or its own future was dropped) is not
//! dropped but handed to a background task that waits for the reply and gives
//! it to a clean-up (a reservation that came back is cancelled; a settlement
//! that came back is only logged, since it was applied once as asked).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::background;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A call in flight with what to do with its reply if nobody waits for it.
pub(crate) struct InFlight<T: Send + 'static> {
    call: Option<Boxed<T>>,
    orphan: Option<Box<dyn FnOnce(T) -> Boxed<()> + Send>>,
}

impl<T: Send + 'static> InFlight<T> {
    pub(crate) fn new<F, O, G>(call: F, orphan: O) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        O: FnOnce(T) -> G + Send + 'static,
        G: Future<Output = ()> + Send + 'static,
    {
        InFlight {
            call: Some(Box::pin(call)),
            orphan: Some(Box::new(move |reply| Box::pin(orphan(reply)))),
        }
    }
}

impl<T: Send + 'static> Future for InFlight<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let call = self.call.as_mut().expect("polled after it completed");
        match call.as_mut().poll(cx) {
            Poll::Ready(reply) => {
                self.call = None;
                Poll::Ready(reply)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        if let (Some(call), Some(orphan)) = (self.call.take(), self.orphan.take()) {
            background::finish(async move { orphan(call.await).await });
        }
    }
}
