//! A future that lets the executor's other ready tasks run once before it completes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Pending on its first poll (waking itself at once), ready on the next: the task goes to the
/// back of the executor's run queue.
#[derive(Debug, Default)]
pub struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
