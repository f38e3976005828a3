//! Run control shared by the client modes: the stop signal workers watch,
//! SIGINT/SIGTERM handling, tracking of live workers, and the coordinator's
//! timed wait that prints progress once a second.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::report::Progress;

/// Tells workers to finish. Cloned into each worker; raising it cancels
/// whatever the worker is awaiting at its next `select!`.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

pub struct StopHandle(watch::Sender<bool>);

pub fn stop_pair() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopHandle(tx), Stop(rx))
}

impl StopHandle {
    pub fn raise(&self) {
        let _ = self.0.send(true);
    }
}

impl Stop {
    /// Completes once stop is raised (or the handle is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps for `d` unless stopped first; returns false if stopped.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Runs `fut` unless stopped first.
    pub async fn run<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.wait() => None,
            v = fut => Some(v),
        }
    }
}

/// SIGINT and SIGTERM, so an interrupted run still reports what it measured.
pub struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Signals {
    pub fn new() -> Self {
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    pub async fn recv(&mut self) {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => {}
            _ = one(&mut self.term) => {}
        }
    }
}

/// Counts live workers and wakes the coordinator when the last one exits, so
/// a run whose every connection died ends early instead of idling out.
#[derive(Default)]
pub struct Active {
    n: AtomicUsize,
    all_done: Notify,
}

pub struct ActiveGuard(Arc<Active>);

impl Active {
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.n.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            // notify_one keeps a permit if the coordinator is not waiting yet.
            self.0.all_done.notify_one();
        }
    }
}

/// Why [`Coordinator::until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    Deadline,
    Interrupted,
    AllDone,
}

/// The coordinator's side of a run.
pub struct Coordinator {
    pub signals: Signals,
    pub progress: Progress,
    pub active: Arc<Active>,
    pub started: Instant,
    pub interrupted: bool,
    next_tick: Instant,
}

impl Coordinator {
    pub fn new(quiet: bool) -> Self {
        let now = Instant::now();
        Self {
            signals: Signals::new(),
            progress: Progress::new(quiet),
            active: Arc::new(Active::default()),
            started: now,
            interrupted: false,
            next_tick: now + Duration::from_secs(1),
        }
    }

    /// Restarts the progress clock (after connection setup, say).
    pub fn reset_clock(&mut self) {
        self.started = Instant::now();
        self.next_tick = self.started + Duration::from_secs(1);
    }

    /// Waits for `deadline`, calling `line` about once a second for the
    /// progress text. Returns early on a signal, or once every worker
    /// registered with `active` has exited.
    pub async fn until(&mut self, deadline: Instant, line: impl FnMut() -> String) -> Woke {
        self.wait(deadline, line, true).await
    }

    /// Like [`Self::until`] but ignores workers: for phases with none, such
    /// as holding idle connections.
    pub async fn hold(&mut self, deadline: Instant, line: impl FnMut() -> String) -> Woke {
        self.wait(deadline, line, false).await
    }

    async fn wait(
        &mut self,
        deadline: Instant,
        mut line: impl FnMut() -> String,
        watch_workers: bool,
    ) -> Woke {
        if self.interrupted {
            return Woke::Interrupted;
        }
        loop {
            let wake = deadline.min(self.next_tick);
            let active = self.active.clone();
            let all_done = async move {
                if !watch_workers {
                    std::future::pending::<()>().await;
                }
                // notify_one leaves a permit when nobody is waiting, so a worker
                // exiting between the check and the await is not missed.
                let notified = active.all_done.notified();
                if active.count() > 0 {
                    notified.await;
                }
            };
            tokio::select! {
                _ = self.signals.recv() => {
                    self.interrupted = true;
                    return Woke::Interrupted;
                }
                _ = all_done => {
                    if self.active.count() == 0 {
                        return Woke::AllDone;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if now >= self.next_tick {
                self.progress.update(now - self.started, &line());
                while self.next_tick <= now {
                    self.next_tick += Duration::from_secs(1);
                }
            }
            if now >= deadline {
                return Woke::Deadline;
            }
        }
    }

    /// Runs `fut` (setup work such as opening connections) but gives up on a
    /// signal.
    pub async fn interruptible<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.signals.recv() => {
                self.interrupted = true;
                None
            }
            v = fut => Some(v),
        }
    }
}

/// Waits for workers after stop was raised; any still running after `grace`
/// are aborted so a wedged worker can never hang the run.
pub async fn join_all<T>(handles: Vec<JoinHandle<T>>, grace: Duration) -> Vec<T> {
    let deadline = Instant::now() + grace;
    let mut out = Vec::with_capacity(handles.len());
    for mut h in handles {
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(_)) => {}
            Err(_) => h.abort(),
        }
    }
    out
}
