//! The executor that hyper (under tonic) spawns its HTTP/2 tasks on: tokio's,
//! with each task wrapped in [`Rewake`].
//!
//! Why: hyper's body pipe wakes its own task for every DATA frame it sends
//! (it reserves send capacity, h2 assigns it and notifies the stream's send
//! task, which is the pipe itself). tokio treats a task woken while it runs
//! as one that yielded: it queues the task behind the others and wakes an
//! idle worker thread to come and steal it. On a round trip that is, in each
//! process and for each message, a futex wake, a context switch and the
//! preemption of the thread doing the work (docs/benchmarks.md, peers
//! section, "The self-wake, removed"). [`Rewake`] polls such a task again
//! at once instead.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

/// Spawns futures on the current tokio runtime, each wrapped in [`Rewake`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Rewake::new(future));
    }
}

/// Polls in a row at most this many times when the future keeps waking
/// itself, then yields to the runtime like any task (fairness).
const POLLS_IN_A_ROW: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN_WHILE_POLLING: u8 = 2;

/// A future that absorbs wake-ups it gives itself while it is being polled:
/// it polls the inner future again straight away, rather than letting the
/// runtime reschedule it. Wake-ups from anywhere else reach the task as
/// usual.
pub struct Rewake<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    waker: Waker,
}

struct Signal {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While the future is being polled, a note is enough: `poll` sees
        // it and polls again. Otherwise the task must be woken.
        if self
            .state
            .compare_exchange(
                POLLING,
                WOKEN_WHILE_POLLING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            self.task.wake();
        }
    }
}

impl<F: Future> Rewake<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(future),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for Rewake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.signal.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..POLLS_IN_A_ROW {
            this.signal.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.signal.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            if this
                .signal
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        this.signal.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wake-ups it receives.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself during its first `self_wakes` polls, then is ready.
    struct WakesItself {
        self_wakes: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.self_wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_while_polling_is_a_poll_again_not_a_wake_of_the_task() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut f = Rewake::new(WakesItself {
            self_wakes: 2,
            polls: 0,
        });
        let r = Pin::new(&mut f).poll(&mut Context::from_waker(&task));
        assert_eq!(r, Poll::Ready(3), "polled three times in one poll");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_runtime() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut f = Rewake::new(WakesItself {
            self_wakes: 100,
            polls: 0,
        });
        let r = Pin::new(&mut f).poll(&mut Context::from_waker(&task));
        assert!(r.is_pending());
        assert_eq!(f.inner.polls, POLLS_IN_A_ROW);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once to yield");
    }

    /// Pending until `flag` is set; keeps the last waker it was given.
    struct Gate {
        flag: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.flag.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().expect("test lock") = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_from_elsewhere_wakes_the_task() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stored = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut f = Rewake::new(Gate {
            flag: flag.clone(),
            waker: stored.clone(),
        });
        assert!(
            Pin::new(&mut f)
                .poll(&mut Context::from_waker(&task))
                .is_pending()
        );
        let inner = stored
            .lock()
            .expect("test lock")
            .take()
            .expect("registered");
        let other = std::thread::spawn(move || {
            flag.store(true, Ordering::SeqCst);
            inner.wake();
        });
        other.join().expect("waking thread");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(
            Pin::new(&mut f)
                .poll(&mut Context::from_waker(&task))
                .is_ready()
        );
    }
}
