//! Active health checks: one task per server, on the control thread, for as long as the server
//! is in its pool and the pool runs.
//!
//! Each task runs a check (`check`: a TCP connect, a TLS handshake, or an HTTP exchange over
//! either), hands the result to the pool, which applies rise and fall (`pool::state`), then
//! waits `interval`, or `fast_interval` while a change is being confirmed, plus a random part of
//! `jitter`. The first check runs at once, so a starting relay knows its servers within one
//! check timeout. Passive detection (failed live connects) lives in the pool; it only needs
//! these checks to bring a server back.

mod check;
mod http;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::upstream::pool::{Pool, Server};

/// Starts checking `server` on the current runtime; the task ends when the pool stops or the
/// server leaves it.
pub fn spawn(pool: Arc<Pool>, server: Arc<Server>) {
    tokio::spawn(run(pool, server));
}

async fn run(pool: Arc<Pool>, server: Arc<Server>) {
    let Some(config) = pool.config.health.clone() else {
        return;
    };
    let mut stop = pool.stopped();
    loop {
        if *stop.borrow() || server.status().removed.is_some() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = check::run(&pool, &server, &config) => result,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let changing = pool.record_check(&server, result, started.elapsed());
        let interval = if changing {
            config.fast_interval
        } else {
            config.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(interval + jitter(config.jitter)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// A random part of `max`, so the checks of many servers drift apart.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}
