//! openraft 0.9's `AsyncRuntime` over glommio (SPEC §10.9): openraft's tasks, timers and oneshot
//! channels run on the owning core's `LocalExecutor`; no tokio runtime is ever started.
//!
//! Nuances (STACK.md "openraft 0.9.25 on glommio"):
//! * `spawn` detaches the glommio task and returns its detached join handle. A `glommio::Task`
//!   would cancel the task when dropped, and openraft drops join handles freely.
//! * Timers panic outside a glommio executor, so `Raft::new` (and everything that sleeps) must run
//!   inside the owning executor.
//! * A panicking task unwinds the whole executor thread instead of surfacing as a join error, so
//!   `is_panic` is always false: a panic is a shard crash, handled at thread level.
//! * `Instant` is openraft's `TokioInstant` (tokio's `Instant`, a thin wrapper over
//!   `std::time::Instant`; without tokio's `test-util` feature `now()` is the std clock). openraft's
//!   `Instant` trait is foreign and so is `std::time::Instant`, so the orphan rule rules out using
//!   the std type directly; no tokio runtime is needed to read this clock.
//! * The oneshot is `futures::channel::oneshot`: it is `Send`, so `LogFlushed` callbacks can be
//!   completed by the log store's I/O thread and replies can cross cores.

use futures::channel::oneshot;
use openraft::async_runtime::AsyncOneshotSendExt;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The glommio runtime marker type for `TypeConfig::AsyncRuntime`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GlommioRuntime;

/// A spawned task ended without producing its output (glommio reports `None` when the task was
/// cancelled, e.g. because its executor is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("glommio task was cancelled before it completed")]
pub struct JoinError;

/// Timeout elapsed before the wrapped future completed.
#[derive(Debug, thiserror::Error)]
#[error("timed out")]
pub struct TimeoutError;

/// Join handle of a detached glommio task.
pub struct JoinHandle<T>(glommio::task::JoinHandle<T>);

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|out| out.ok_or(JoinError))
    }
}

/// A glommio timer as openraft's `Sleep`.
pub struct Sleep(glommio::timer::Timer);

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_elapsed| ())
    }
}

pin_project_lite::pin_project! {
    /// Polls the future first, then the timer, so a future that is ready at the deadline wins.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        timer: glommio::timer::Timer,
    }
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, TimeoutError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(TimeoutError)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sender half of the runtime's oneshot channel.
pub struct OneshotSender<T>(oneshot::Sender<T>);

impl<T> std::fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneshotSender").finish_non_exhaustive()
    }
}

impl<T> AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

fn until(deadline: TokioInstant) -> Duration {
    deadline.saturating_duration_since(TokioInstant::now())
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = TokioInstant;
    type TimeoutError = TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = oneshot::Canceled;
    type OneshotReceiver<T: OptionalSend> = oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        JoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep(glommio::timer::Timer::new(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep(glommio::timer::Timer::new(until(deadline)))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout { future, timer: glommio::timer::Timer::new(duration) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout { future, timer: glommio::timer::Timer::new(until(deadline)) }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = oneshot::channel();
        (OneshotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::time::Instant;

    /// Proves the adapter's primitives behave on a real executor: a spawned task's output comes
    /// back through the detached handle, sleep waits, and timeout fires only for slow futures.
    #[test]
    fn t01_spawn_sleep_timeout_oneshot() {
        let ex = LocalExecutorBuilder::default().make().unwrap();
        ex.run(async {
            let handle = GlommioRuntime::spawn(async { 7u32 });
            assert_eq!(handle.await.unwrap(), 7);

            let start = Instant::now();
            GlommioRuntime::sleep(Duration::from_millis(20)).await;
            assert!(start.elapsed() >= Duration::from_millis(20));

            let fast = GlommioRuntime::timeout(Duration::from_millis(200), async { 1u8 }).await;
            assert_eq!(fast.unwrap(), 1);
            let slow = GlommioRuntime::timeout(
                Duration::from_millis(10),
                GlommioRuntime::sleep(Duration::from_secs(5)),
            )
            .await;
            assert!(slow.is_err());

            let deadline = TokioInstant::now() + Duration::from_millis(10);
            GlommioRuntime::sleep_until(deadline).await;
            assert!(TokioInstant::now() >= deadline);

            let (tx, rx) = GlommioRuntime::oneshot::<u64>();
            std::thread::spawn(move || tx.send(5).unwrap());
            assert_eq!(rx.await.unwrap(), 5);
        });
    }
}
