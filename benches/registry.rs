//! What the live-connection table costs a connection, in isolation, on one thread:
//!
//! - a relaying connection entering the table and leaving it, with the control thread's
//!   collection of both events (every connection pays this once);
//! - the drain watcher each connection held before the table took over closing at the drain
//!   deadline (a `watch` subscription and a boxed `Quiet`, polled once), for comparison;
//! - a relay's look at its progress after a wake-up that moved bytes (clock read, silences,
//!   the entry's atomics), against polling the same relay unwatched (what a busy connection
//!   pays per wake-up).
//!
//! Set against the relay's ~70 µs of CPU per short connection and ~13 µs per keep-alive request
//! (docs/performance.md). Results go to `target/bench/registry.md`.
//!
//!     cargo bench --bench registry
//!     ROUNDS=9 cargo bench --bench registry

mod support;

use std::future::Future;
use std::hint::black_box;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use l4relay::inbound::progress::Watched;
use l4relay::inbound::registry::{Connection, Registry};
use l4relay::lifecycle::quiet::Quiet;
use l4relay::lifecycle::Phase;
use l4relay::relay::{Ended, Running};
use support::*;
use tokio::net::TcpStream;

/// A relay that moves `step` bytes each way every poll and never ends.
struct Moving {
    bytes: (u64, u64),
    step: u64,
    socket: TcpStream,
}

impl Future for Moving {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Ended> {
        self.bytes.0 += self.step;
        self.bytes.1 += self.step;
        Poll::Pending
    }
}

impl Running for Moving {
    fn bytes(&self) -> (u64, u64) {
        self.bytes
    }

    fn server_socket(&self) -> &TcpStream {
        &self.socket
    }

    fn done(&self) -> (bool, bool) {
        (false, false)
    }

    fn mode(&self) -> &'static str {
        "copy"
    }
}

/// Median over `rounds` of the nanoseconds per iteration of `body` run `n` times.
fn time(rounds: u64, n: u64, mut body: impl FnMut(u64)) -> (f64, f64, f64) {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for i in 0..n {
                body(i);
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
    )
}

fn main() {
    if !benchmarking() {
        return;
    }
    let rounds = env_or("ROUNDS", 5);
    let n = env_or("ITERATIONS", 200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut rows = Vec::new();

    // Register, deregister, and the control thread's collection (every 256 connections, as if
    // a few hundred opened between two of its 250 ms tidies).
    let registry = Registry::new(1);
    let (listener, pool, server): (Arc<str>, Arc<str>, Arc<str>) =
        ("bench".into(), "p".into(), "s0".into());
    let client: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let server_addr: std::net::SocketAddr = "10.1.0.1:443".parse().unwrap();
    let registered = time(rounds, n, |i| {
        let now = Instant::now();
        let registration = registry.register(
            Connection {
                listener: Arc::clone(&listener),
                started: now,
                client,
                vpce: None,
                sni: None,
                pool: Arc::clone(&pool),
                server: Arc::clone(&server),
                server_addr,
            },
            now,
        );
        drop(black_box(registration));
        if i % 256 == 255 {
            registry.tidy();
        }
    });
    rows.push((
        "a connection in and out of the table, collected",
        registered,
    ));

    // The drain watcher it replaces: subscribe to the phase, box the future, poll it once (it
    // registers with the watch), drop it.
    let phase = tokio::sync::watch::Sender::new(Phase::Running);
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let watcher = time(rounds, n, |_| {
        let mut receiver = phase.subscribe();
        let mut quiet = Quiet::new(async move {
            if receiver.wait_for(|p| *p >= Phase::Closing).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let _ = Pin::new(&mut quiet).poll(&mut cx);
        drop(black_box(quiet));
    });
    rows.push(("the per-connection drain watcher it replaced", watcher));

    // Per wake-up that moved bytes: the watched relay against the bare one.
    let socket = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
        client.unwrap()
    });
    let mut relay = Moving {
        bytes: (0, 0),
        step: 100,
        socket,
    };
    let bare = time(rounds, n, |_| {
        let _ = Pin::new(&mut relay).poll(&mut cx);
    });
    let registration = registry
        .register(
            Connection {
                listener: Arc::clone(&listener),
                started: Instant::now(),
                client,
                vpce: None,
                sni: None,
                pool: Arc::clone(&pool),
                server: Arc::clone(&server),
                server_addr,
            },
            Instant::now(),
        )
        .unwrap();
    let histogram = metrics::Histogram::noop();
    let mut watched = Watched::new(
        &mut relay,
        Instant::now(),
        0,
        Some(registration.entry()),
        &histogram,
    );
    let watched_time = time(rounds, n, |_| {
        let _ = Pin::new(&mut watched).poll(&mut cx);
    });
    rows.push((
        "a wake-up that moved bytes, watched (minus unwatched)",
        (
            watched_time.0 - bare.0,
            watched_time.1 - bare.1,
            watched_time.2 - bare.2,
        ),
    ));

    let mut table = String::from("| what | ns (median, min–max) |\n|---|---|\n");
    for (what, (median, min, max)) in &rows {
        table.push_str(&format!("| {what} | {median:.0} ({min:.0}–{max:.0}) |\n"));
    }
    print!("{table}");
    let path = out_dir().join("registry.md");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(table.as_bytes()))
        .unwrap();
    eprintln!("wrote {}", path.display());
}
