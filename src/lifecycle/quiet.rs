//! `Quiet`: a future that is cheap to poll often, for the rare events a relaying session
//! selects on beside the relay itself (its server must close, a drain reached its deadline).
//!
//! `select!` polls every branch each time the task wakes, which for a relay is every burst of
//! bytes. Polling a `watch` receiver that often would take the watch's waiter lock each time, a
//! lock shared by every session. `Quiet` polls its inner future only after that future's own
//! waker fired; otherwise a poll costs one atomic swap and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Completes when its inner future does; never, when made with `never`.
pub struct Quiet {
    inner: Option<Inner>,
}

struct Inner {
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    flag: Arc<Flag>,
    /// The task waker last handed to `flag`, to skip re-registering the same one.
    registered: Option<Waker>,
}

/// The waker the watch sees: records that the watch fired, then wakes the session's task.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Quiet {
    pub fn never() -> Quiet {
        Quiet { inner: None }
    }

    pub fn new(wait: impl Future<Output = ()> + Send + 'static) -> Quiet {
        Quiet {
            inner: Some(Inner {
                wait: Box::pin(wait),
                // Set, so the first poll reaches the inner future and registers its waker.
                flag: Arc::new(Flag {
                    woken: AtomicBool::new(true),
                    task: Mutex::new(None),
                }),
                registered: None,
            }),
        }
    }
}

impl Future for Quiet {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(inner) = &mut self.get_mut().inner else {
            return Poll::Pending;
        };
        if !inner
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *inner.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
            inner.registered = Some(waker);
        }
        if !inner.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&inner.flag));
        inner.wait.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn completes_when_the_watch_says_close_and_not_before() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let mut signal = Quiet::new(async move {
            let _ = rx.wait_for(|close| *close).await;
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut signal)
                .await
                .is_err(),
            "closed without cause"
        );
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send_replace(true);
            tx
        });
        tokio::time::timeout(Duration::from_secs(5), &mut signal)
            .await
            .expect("closed in time");
        drop(closer.await);
    }

    #[tokio::test]
    async fn never_never_completes() {
        let mut signal = Quiet::never();
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut signal)
            .await
            .is_err());
    }
}
